#!/bin/sh
# Regenerates the example distfiles from src/<P>/ and the repository's Manifests.
#
# The tarballs are reproducible (sorted names, mtime 0, root owner, fixed modes,
# gzip -n), so running this on an unchanged tree changes nothing.  Manifests are
# written by real portage (`ebuild ... manifest`) following docs/portage-on-debian.md.
#
# Usage: config/example/make-distfiles.sh          regenerate (VENV=/path/to/venv overrides)
#        config/example/make-distfiles.sh --check  exit 1 if distfiles/ is stale (writes nothing)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/../.." && pwd)
venv=${VENV:-$project/.venv}
repo=$here/repo
src=$here/src
distdir=$here/distfiles

# make_tarballs DIR: writes <P>.tar.gz for every src/<P>/ into DIR.
make_tarballs() {
	for dir in "$src"/*/; do
		p=$(basename "$dir")
		tar --format=gnu --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
			--mode='u+rw,go+r,go-w,a+X' -C "$src" -cf - "$p" | gzip -n -9 > "$1/$p.tar.gz.tmp"
		mv "$1/$p.tar.gz.tmp" "$1/$p.tar.gz"
	done
}

if [ "${1:-}" = --check ]; then
	fresh=$(mktemp -d "${TMPDIR:-/tmp}/make-distfiles.XXXXXX")
	trap 'rm -rf "$fresh"' EXIT
	make_tarballs "$fresh"
	if diff -r "$fresh" "$distdir" >/dev/null; then
		echo "make-distfiles: distfiles are up to date"
		exit 0
	fi
	echo "make-distfiles: distfiles differ from src/ (run config/example/make-distfiles.sh)" >&2
	exit 1
fi

[ -x "$venv/bin/ebuild" ] || { echo "make-distfiles: no portage at $venv/bin/ebuild (run make setup)" >&2; exit 1; }
mkdir -p "$distdir"
make_tarballs "$distdir"

# A throw-away portage configuration pointing at this repository and distdir.
work=$(mktemp -d "${TMPDIR:-/tmp}/make-distfiles.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/host/share/portage/config" "$work/host/etc" "$work/cfg/etc/portage/repos.conf" \
	"$work/bin" "$work/root" "$work/tmp"
# portage's own defaults, minus the built-in [gentoo] repository (absent here: it only warns).
for f in "$venv/share/portage/config"/*; do
	[ "$(basename "$f")" = repos.conf ] || ln -s "$f" "$work/host/share/portage/config/"
done
printf '[DEFAULT]\nmain-repo = swarm-example\n' > "$work/host/share/portage/config/repos.conf"
ln -s "$work/cfg/etc/portage" "$work/host/etc/portage"
ln -s "$(command -v tar)" "$work/bin/gtar"
ln -s "$repo/profiles/swarm/amd64" "$work/cfg/etc/portage/make.profile"
cat > "$work/cfg/etc/portage/repos.conf/swarm-example.conf" <<EOF
[DEFAULT]
main-repo = swarm-example

[swarm-example]
location = $repo
EOF
cat > "$work/cfg/etc/portage/make.conf" <<EOF
FEATURES="-sandbox -usersandbox -userpriv -usersync -network-sandbox -pid-sandbox -ipc-sandbox -mount-sandbox -news"
DISTDIR="$distdir"
PORTAGE_TMPDIR="$work/tmp"
PKGDIR="$work/pkg"
PORTAGE_DEPCACHEDIR="$work/depcache"
ACCEPT_LICENSE="*"
EOF

for ebuild in "$repo"/*/*/*.ebuild; do
	env PORTAGE_OVERRIDE_EPREFIX="$work/host" EPREFIX="" PORTAGE_CONFIGROOT="$work/cfg" \
		ROOT="$work/root" SYSROOT="$work/root" \
		PATH="$work/bin:$venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		"$venv/bin/ebuild" "$ebuild" manifest >/dev/null
done
echo "make-distfiles: $(ls "$distdir" | wc -l) distfiles, $(ls "$repo"/*/*/Manifest | wc -l) Manifests"
