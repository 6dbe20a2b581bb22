"""Child-process side of planning: resolve targets with portage's depgraph, print JSON.

Run as `python -m swarmnode.portage._plan_child` in a PortageEnv's environment (portage reads
its configuration at import time). Request on stdin: {"targets": [...], "usepkg": bool}.
Everything portage prints (and its subprocesses, e.g. metadata generation) goes to a capture
file; the only thing on the real stdout is one JSON document:

    {"ok": true, "packages": [{"cpv", "slot", "subslot", "use", "repo", "binary",
                               "deps", "reason"}, ...]}      # in merge order
    {"ok": false, "error": "<portage's relevant output>"}

Uses private _emerge APIs (portage is pinned in pyproject.toml for this reason).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import traceback
from typing import Any

# Lines of emerge output that say nothing about why resolution failed.
_NOISE = ("Calculating dependencies", "Dependency resolution took", "These are the packages",
          "Total:", "Local copy of remote index", "!!! Problems have been detected with your",
          "!!! Please run emaint", "(dependency required by \"@", "For more information, see",
          "man page or refer to the Gentoo Handbook", "emerge: searching for similar names")


def _resolve(targets: list[str], usepkg: bool) -> dict[str, Any]:
    from _emerge.actions import adjust_configs, load_emerge_config, profile_check
    from _emerge.create_depgraph_params import create_depgraph_params
    from _emerge.depgraph import backtrack_depgraph
    from _emerge.main import parse_opts
    from _emerge.Package import Package
    from _emerge.stdout_spinner import stdout_spinner
    from portage.exception import PackageSetNotFound

    # --with-bdeps=y: BDEPEND tools are part of the closure (the builders need them from the
    # binhost), also when the package needing them is itself reused as a binary.
    args = ["--pretend", "--with-bdeps=y", "--backtrack=30"]
    if usepkg:
        # What `emerge --usepkg` on a client would consider stale: USE and dependency changes
        # (slot-operator := rebuilds follow from the binaries' recorded sub-slots).
        args += ["--usepkg", "--binpkg-respect-use=y", "--binpkg-changed-deps=y"]
    action, opts, files = parse_opts(args + targets, silent=True)
    if action is not None:
        return {"ok": False, "error": f"unexpected emerge action {action!r} in targets"}
    emerge_config = load_emerge_config(action=action, args=files, opts=opts)
    settings, trees, _mtimedb = emerge_config
    if profile_check(trees, action) != os.EX_OK:
        return {"ok": False, "error": "", "context": "the portage profile is invalid"}
    sets = emerge_config.target_config.setconfig.getSets()
    unknown = [t for t in files if t.startswith("@") and t[1:] not in sets]
    if unknown:
        return {"ok": False, "error": f"unknown set {unknown[0]} (known: "
                + ", ".join("@" + s for s in sorted(sets)) + ")"}
    if usepkg:
        for root_trees in trees.values():
            root_trees["bintree"].populate(getbinpkgs=False, pretend=True)
    adjust_configs(opts, trees)
    spinner = stdout_spinner()
    spinner.mode = spinner.QUIET
    params = create_depgraph_params(opts, action)
    try:
        ok, graph, _favorites = backtrack_depgraph(settings, trees, opts, params, action, files,
                                                   spinner)
    except PackageSetNotFound as exc:
        return {"ok": False, "error": f"unknown set @{exc}"}
    if not ok:
        graph.display_problems()
        return {"ok": False, "error": ""}  # the caller reads portage's output
    order = [t for t in graph.altlist() if isinstance(t, Package) and t.operation == "merge"]
    return {"ok": True, "packages": _describe(order, graph, trees, usepkg)}


def _describe(order: list, graph: Any, trees: Any, usepkg: bool) -> list[dict[str, Any]]:
    """One record per cpv (a package may be merged to both ROOT and the build host)."""
    digraph = graph._dynamic_config.digraph
    position: dict[str, int] = {}
    for i, pkg in enumerate(order):
        position.setdefault(pkg.cpv, i)
    jobs = {pkg.cpv for pkg in order if pkg.type_name == "ebuild"}
    by_cp_slot = {(pkg.cp, pkg.slot): pkg for pkg in order}
    records: dict[str, dict[str, Any]] = {}
    for pkg in order:
        rec = records.get(pkg.cpv)
        if rec is None:
            rec = records[pkg.cpv] = {
                "cpv": str(pkg.cpv), "slot": pkg.slot, "subslot": pkg.sub_slot,
                # Declared flags only: implicit ones (arch, elibc_*, kernel_*) are the profile's.
                "use": sorted(pkg.use.enabled & frozenset(pkg.iuse.all)), "repo": pkg.repo,
                "binary": pkg.type_name != "ebuild", "deps": set(), "reason": "new",
            }
            if usepkg and not rec["binary"]:
                rec["reason"] = _reason(pkg, trees[pkg.root]["bintree"].dbapi, by_cp_slot)
        # Only earlier packages in portage's merge order count: that order already breaks
        # dependency cycles (PDEPEND, runtime loops), so the job graph stays acyclic.
        rec["deps"] |= {cpv for cpv in _build_closure(digraph, pkg)
                        if cpv in jobs and cpv != pkg.cpv and position[cpv] < position[pkg.cpv]}
    out = []
    for rec in records.values():
        rec["deps"] = sorted(rec["deps"], key=position.__getitem__)
        out.append(rec)
    return out


def _build_closure(digraph: Any, pkg: Any) -> set[str]:
    """cpvs the builder installs before building pkg.

    Mirrors builder phase 1 (`--onlydeps --onlydeps-with-rdeps=n --onlydeps-with-ideps=y
    --with-bdeps=n`): pkg's DEPEND/BDEPEND/IDEPEND, then transitively the runtime
    dependencies (RDEPEND/IDEPEND/PDEPEND) of those, which arrive as binaries.
    """
    from _emerge.Package import Package

    def children(node: Any, want: Any) -> list:
        kids = digraph.nodes[node][0] if node in digraph.nodes else {}
        return [c for c, prios in kids.items()
                if isinstance(c, Package) and any(want(p) for p in prios)]

    start = children(pkg, lambda p: p.buildtime or p.buildtime_slot_op or p.installtime)
    seen = set(start)
    stack = list(start)
    while stack:
        for child in children(stack.pop(), lambda p: p.runtime or p.runtime_post
                              or p.runtime_slot_op):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return {str(c.cpv) for c in seen}


def _reason(pkg: Any, bindb: Any, by_cp_slot: dict) -> str:
    """Why portage builds pkg instead of reusing the release's binary (for people to read)."""
    from portage.dep import Atom, use_reduce

    binaries = bindb.match(pkg.slot_atom) or bindb.match(pkg.cp)
    if not binaries:
        return "new"
    same = [b for b in binaries if b == pkg.cpv]
    if not same:
        old = ", ".join(sorted({b.version for b in binaries}))
        return f"version changed: {old} -> {pkg.version}"
    cpv = same[-1]
    use_s, iuse_s, rdepend, depend = bindb.aux_get(cpv, ["USE", "IUSE", "RDEPEND", "DEPEND"])
    old_iuse = {f.lstrip("+-") for f in iuse_s.split()}
    new_iuse = set(pkg.iuse.all)
    old_use = set(use_s.split()) & old_iuse
    new_use = set(pkg.use.enabled) & new_iuse
    if old_use != new_use:
        changes = [f"+{f}" for f in sorted(new_use - old_use)]
        changes += [f"-{f}" for f in sorted(old_use - new_use)]
        return "USE changed: " + " ".join(changes)
    if old_iuse != new_iuse:
        return "IUSE changed"
    for dep_string in (rdepend, depend):
        for atom in use_reduce(dep_string, flat=True, token_class=Atom, matchall=True):
            if not isinstance(atom, Atom) or atom.slot_operator != "=" or not atom.sub_slot:
                continue
            now = by_cp_slot.get((atom.cp, atom.slot))
            if now is not None and now.sub_slot != atom.sub_slot:
                return (f"sub-slot rebuild: {atom.cp} {atom.slot}/{atom.sub_slot} -> "
                        f"{now.slot}/{now.sub_slot}")
    return "dependencies changed"


def _relevant(output: str) -> str:
    """Portage's explanation without progress chatter and blank lines."""
    lines = []
    # "… for /tmp/…/root/." names the throw-away ROOT: meaningless to the user.
    for root in {os.environ.get("ROOT", ""), os.environ.get("PORTAGE_OVERRIDE_EPREFIX", "")}:
        if root:
            output = output.replace(f" for {root.rstrip('/')}/", "")
    for line in output.splitlines():
        text = line.rstrip()
        if not text.strip() or any(text.lstrip().startswith(n) for n in _NOISE):
            continue
        if set(text.strip()) <= set("-\\|/ ."):  # spinner remnants
            continue
        lines.append(text)
    return "\n".join(lines[:40])


def main() -> int:
    request = json.load(sys.stdin)
    result_fd = os.dup(1)
    with tempfile.TemporaryFile() as capture:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            result = _resolve(list(request["targets"]), bool(request.get("usepkg")))
        except Exception:  # portage internals: report, the parent turns it into a UserError
            result = {"ok": False, "error": "", "traceback": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        if not result["ok"] and not result["error"]:
            capture.seek(0)
            output = _relevant(capture.read().decode("utf-8", "replace"))
            context = result.pop("context", "")
            result["error"] = "\n".join(filter(None, [context, output])) or \
                "dependency resolution failed"
    with os.fdopen(result_fd, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
