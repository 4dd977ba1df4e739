"""The suite's xdist units: a file each, the mesh files one unit together (see tests/xdist_scheduling.py)."""

from __future__ import annotations

from tests.xdist_scheduling import MESH_FILES, FileOrMeshScheduling


def test_a_files_tests_are_one_unit_and_the_mesh_files_share_one() -> None:
    # Built without __init__, which wants the workers (--tx) of a running xdist session; _split_scope needs none.
    scheduling = FileOrMeshScheduling.__new__(FileOrMeshScheduling)
    units = {scheduling._split_scope(nodeid) for nodeid in (
        "tests/proxy/test_router.py::test_a[pylon]", "tests/proxy/test_router.py::Test::test_b")}
    assert units == {"tests/proxy/test_router.py"}
    assert scheduling._split_scope("tests/proxy/test_tls.py::test_c") == "tests/proxy/test_tls.py"
    mesh = {scheduling._split_scope(f"{path}::test_d") for path in MESH_FILES}
    assert len(mesh) == 1 and mesh.isdisjoint(MESH_FILES)


def test_the_mesh_files_exist() -> None:
    """A mesh file renamed but not renamed here would be spread over the workers again."""
    from tests.conftest import REPO_ROOT

    assert all((REPO_ROOT / path).is_file() for path in MESH_FILES)
