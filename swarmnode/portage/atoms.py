"""Validation of build targets and package versions, before they reach the log or emerge.

Profile-independent: only `portage.dep` and `portage.versions` are used, which read no
configuration, so the daemon may import this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from portage.dep import Atom
from portage.exception import InvalidAtom
from portage.versions import catpkgsplit

from swarmnode.errors import UserError

MAX_TARGETS = 1000
MAX_TARGET_LEN = 256
# Sets from portage's sets.conf that make sense for a build root that starts empty; sets about
# an installed system (@installed, @preserved-rebuild, @module-rebuild …) select nothing there.
KNOWN_SETS = frozenset({"world", "system", "selected", "profile", "selected-packages",
                        "selected-sets"})
_EXAMPLE = "use e.g. app-misc/foo, =app-misc/foo-1.0 or @world"


def _atom_problem(text: str) -> str | None:
    """Why text is not a package atom we can build, or None when it is one."""
    try:
        atom = Atom(text)
    except InvalidAtom:
        pass
    else:
        if atom.blocker:
            return "a blocker cannot be built"
        return None
    if "/" not in text:
        return "missing category"
    if text[0] not in "<>=~" and _parses("=" + text):
        return "a version needs an operator (=, >=, <=, <, >, ~)"
    if text[0] in "<>=~" and _parses(text.lstrip("<>=~")):
        return "an operator needs a version"
    if "*" in text.split("/", 1)[0] or text.endswith("/*"):
        return "wildcards are not allowed"
    return "portage does not accept it as a package atom"


def _parses(text: str) -> bool:
    try:
        Atom(text)
    except InvalidAtom:
        return False
    return True


def validate_targets(targets: list[str], extra_sets: Iterable[str] = ()) -> list[str]:
    """Each target must be a known set (@world …) or a portage atom; returns them stripped.

    extra_sets names user sets the profile defines (files in its portage config's sets/).
    """
    if not isinstance(targets, (list, tuple)):
        raise UserError("targets must be a list of atoms or sets")
    if not targets:
        raise UserError(f"no targets given; {_EXAMPLE}")
    if len(targets) > MAX_TARGETS:
        raise UserError(f"too many targets ({len(targets)}); at most {MAX_TARGETS}")
    sets = KNOWN_SETS | set(extra_sets)
    out: list[str] = []
    for raw in targets:
        if not isinstance(raw, str):
            raise UserError(f"invalid target {raw!r}: must be a string; {_EXAMPLE}")
        target = raw.strip()
        shown = target[:60] + ("…" if len(target) > 60 else "")
        if len(target) > MAX_TARGET_LEN:
            raise UserError(f"invalid atom '{shown}': longer than {MAX_TARGET_LEN} characters")
        if not target:
            raise UserError(f"invalid atom '': empty; {_EXAMPLE}")
        if target.startswith("@"):
            if target[1:] not in sets:
                known = ", ".join("@" + s for s in sorted(sets))
                raise UserError(f"unknown set '{shown}': known sets are {known}")
        else:
            problem = _atom_problem(target)
            if problem:
                raise UserError(f"invalid atom '{shown}': {problem}; {_EXAMPLE}")
        out.append(target)
    return out


def validate_cpv(cpv: str) -> str:
    """A full package version "cat/pn-ver[-rN]" (what a job builds), else UserError."""
    ok = isinstance(cpv, str) and len(cpv) <= MAX_TARGET_LEN and "/" in cpv
    parts = catpkgsplit(cpv) if ok else None
    if parts is None or parts[0] == "null" or cpv != cpv.strip():
        shown = str(cpv)[:60]
        raise UserError(f"invalid package version {shown!r}: expected e.g. app-misc/foo-1.0")
    return cpv


def validate_package_key(key: str) -> str:
    """A package without a version, "cat/pn" (what build times are kept by), else UserError."""
    ok = isinstance(key, str) and 0 < len(key) <= MAX_TARGET_LEN and key == key.strip()
    try:
        ok = ok and Atom(key).cp == key
    except InvalidAtom:
        ok = False
    if not ok:
        raise UserError(f"invalid package name {str(key)[:60]!r}: expected category/package "
                        "without a version, e.g. dev-libs/glib")
    return key
