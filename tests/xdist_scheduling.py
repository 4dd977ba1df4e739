"""How pytest-xdist shares the suite between its workers (`scripts/test.sh -n 4 --dist loadfile`).

Each test file is one unit of work, run whole by one worker: its module-scoped proxies and upstreams start once, not
once per worker, and its tests keep their order. One unit spans files: the tests that bring up a `pylon mesh` (or the
mesh demo). The machine has one mesh — its `pm-` namespaces, hub and bridge have fixed names — so those files run one
after another on one worker; spread over two, the second would find the first's mesh up and skip.

(xdist's own `--dist loadgroup` would do this with marks, but it renames node ids through an attribute pytest 9 no
longer reads, so its groups are silently ignored.)
"""

from __future__ import annotations

from xdist.scheduler import LoadFileScheduling

#: The files whose tests bring up the machine's one mesh.
MESH_FILES = frozenset({
    "tests/mesh/test_mesh.py",
    "tests/mesh/test_mesh_proxyconfig.py",
    "tests/bench/test_mesh_demo.py",
})


class FileOrMeshScheduling(LoadFileScheduling):
    """`--dist loadfile`, with every file of MESH_FILES in one unit."""

    def _split_scope(self, nodeid: str) -> str:
        path = super()._split_scope(nodeid)
        return "the machine's mesh" if path in MESH_FILES else path
