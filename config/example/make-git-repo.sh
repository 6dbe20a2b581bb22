#!/bin/sh
# Offers the example repository as a git repository: writes a bare repository at DEST holding
# config/example/repo as one commit on branch master, so a profile can sync it with
#     sync_uris = ["file:///absolute/path/to/DEST"]
#
# The commit is reproducible: fixed author, committer and dates, and no user or system git
# configuration is read, so the same repo/ always gives the same commit id.
#
# Usage: config/example/make-git-repo.sh DEST    (DEST must not exist or be an empty directory)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$here/repo

[ $# -eq 1 ] && [ -n "$1" ] || { echo "usage: $0 DEST (a new bare git repository)" >&2; exit 2; }
dest=$1
if [ -e "$dest" ] && [ -n "$(ls -A "$dest" 2>/dev/null)" ]; then
	echo "make-git-repo: $dest exists and is not empty; choose a new directory" >&2
	exit 1
fi
command -v git >/dev/null || { echo "make-git-repo: git is not installed" >&2; exit 1; }

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME="swarmnode example" GIT_AUTHOR_EMAIL="example@swarmnode.invalid"
export GIT_COMMITTER_NAME="swarmnode example" GIT_COMMITTER_EMAIL="example@swarmnode.invalid"
export GIT_AUTHOR_DATE="2024-01-01T00:00:00Z" GIT_COMMITTER_DATE="2024-01-01T00:00:00Z"

mkdir -p "$dest"
git init -q --bare "$dest"
git --git-dir="$dest" symbolic-ref HEAD refs/heads/master
index=$(mktemp "${TMPDIR:-/tmp}/make-git-repo.XXXXXX")
trap 'rm -f "$index"' EXIT
rm -f "$index"  # git creates the index itself; an empty file is not a valid one
GIT_INDEX_FILE=$index git --git-dir="$dest" --work-tree="$src" add -A .
tree=$(GIT_INDEX_FILE=$index git --git-dir="$dest" write-tree)
commit=$(echo "swarm-example repository" | git --git-dir="$dest" commit-tree "$tree")
git --git-dir="$dest" update-ref refs/heads/master "$commit"
echo "make-git-repo: $dest at $commit"
