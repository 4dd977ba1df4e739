"""The bench lock: taken, refused while another process holds it, and ours when an ancestor holds it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pylon.bench.mesh_runs.lock import LockBusy, ancestors, bench_lock, flock_holders, held_by_ancestor

LOCKS = """1: FLOCK  ADVISORY  WRITE 4242 00:1a:1234 0 EOF
1: -> FLOCK  ADVISORY  WRITE 5151 00:1a:1234 0 EOF
2: POSIX  ADVISORY  WRITE 777 00:1a:1234 0 EOF
3: FLOCK  ADVISORY  WRITE 999 fd:01:1234 0 EOF
"""


def test_flock_holders_reads_proc_locks() -> None:
    assert flock_holders(LOCKS, (0, 0x1A), 1234) == {4242}  # not the waiter, not the POSIX lock
    assert flock_holders(LOCKS, (0xFD, 1), 1234) == {999}
    assert flock_holders(LOCKS, (0, 0x1A), 99) == set()


def test_ancestors_end_before_init() -> None:
    chain = ancestors(os.getpid())
    assert chain and chain[0] == os.getppid() and 1 not in chain


def test_a_lock_held_by_another_process_is_waited_for_then_refused(tmp_path: Path) -> None:
    path = tmp_path / "bench.lock"
    path.touch()
    holder = subprocess.Popen(["flock", str(path), "sleep", "30"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not flock_holders(Path("/proc/locks").read_text(), (os.major(path.stat().st_dev),
                                                                   os.minor(path.stat().st_dev)), path.stat().st_ino):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waited = []
        with pytest.raises(LockBusy, match="held by another"):
            with bench_lock(1.0, path, on_wait=lambda: waited.append(1)):
                pass
        assert waited == [1]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which inherited the locked descriptor
        holder.wait()
    with bench_lock(1.0, path):  # free again
        assert not held_by_ancestor(path)


def test_a_lock_our_parent_holds_is_ours(tmp_path: Path) -> None:
    """As `flock /tmp/pylon-bench.lock pytest ...` runs the mesh tests: the demo inside must not wait for it."""
    path = tmp_path / "bench.lock"
    code = ("import sys; from pathlib import Path\n"
            "from pylon.bench.mesh_runs.lock import bench_lock, held_by_ancestor\n"
            "p = Path(sys.argv[1]); assert held_by_ancestor(p)\n"
            "with bench_lock(0.5, p): print('inside')\n")  # fmt: skip
    done = subprocess.run(["flock", str(path), sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "inside", done.stderr
