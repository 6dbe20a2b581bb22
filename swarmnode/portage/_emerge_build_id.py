"""Run emerge so that the binpkg it builds carries the BUILD_ID the swarm allocated.

portage gives a new binpkg BUILD_ID = (highest BUILD_ID of that cpv in PKGDIR) + 1, which on a
clean build root is always 1, and it writes that id into the signed package's metadata. The
swarm allocates BUILD_IDs centrally (in the state machine, at claim time) so builders never
collide and the id a client records in /var/db/pkg equals the one in the binhost's index. portage
has no setting for this, so this wrapper raises `binarytree._max_build_id` for the one cpv being
built to (allocated id - 1) and then runs portage's own emerge script unchanged.

Usage (environment from PortageEnv): SWARMNODE_BUILD_CPV=cat/pf SWARMNODE_BUILD_ID=N
    python -m swarmnode.portage._emerge_build_id <emerge arguments>
"""

from __future__ import annotations

import os
import runpy
import sys


def main() -> None:
    from portage.const import PORTAGE_BIN_PATH
    from portage.dbapi.bintree import binarytree

    cpv = os.environ["SWARMNODE_BUILD_CPV"]
    want = int(os.environ["SWARMNODE_BUILD_ID"])
    original = binarytree._max_build_id

    def _max_build_id(self: binarytree, pkg: object) -> int:
        found = original(self, pkg)
        return max(found, want - 1) if pkg == cpv else found

    binarytree._max_build_id = _max_build_id
    script = os.path.join(PORTAGE_BIN_PATH, "emerge")
    sys.argv = [script, *sys.argv[1:]]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
