"""/tmp/pylon-bench.lock: only one mesh (or machine-wide benchmark) at a time on this machine.

Namespace names (`pm-`) are global, and two meshes would also measure each other's CPU, so every user of
`pylon mesh` for measurements takes this flock first. A caller may already hold it for us: tests run
under `flock /tmp/pylon-bench.lock pytest ...`, and a second flock of the same file from inside would wait
for ever. So when an ancestor of this process holds it (read from /proc/locks), it counts as ours.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK = Path("/tmp/pylon-bench.lock")


class LockBusy(Exception):
    """Another process holds the lock (another benchmark or mesh is running)."""


def flock_holders(locks_text: str, device: tuple[int, int], inode: int) -> set[int]:
    """PIDs holding a FLOCK on the file (device major:minor, inode), from /proc/locks' text."""
    holders = set()
    for line in locks_text.splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":  # "->": a waiter, not a holder
            continue
        try:
            major, minor, ino = fields[5].split(":")
            if (int(major, 16), int(minor, 16)) == device and int(ino) == inode:
                holders.add(int(fields[4]))
        except ValueError:
            continue
    return holders


def ancestors(pid: int) -> list[int]:
    """The parent chain of `pid` up to init (excluded)."""
    out = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid > 1:
            out.append(pid)
    return out


def held_by_ancestor(path: Path = LOCK) -> bool:
    """Whether a process we descend from holds the flock on `path` (it locked for us)."""
    try:
        st = path.stat()
        text = Path("/proc/locks").read_text()
    except OSError:
        return False
    holders = flock_holders(text, (os.major(st.st_dev), os.minor(st.st_dev)), st.st_ino)
    return bool(holders & set(ancestors(os.getpid())))


@contextlib.contextmanager
def bench_lock(timeout: float, path: Path = LOCK, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the lock for the block (or rely on an ancestor's); LockBusy after `timeout` seconds of waiting.
    `on_wait` is called once if we have to wait, so the user knows why nothing happens."""
    if held_by_ancestor(path):
        yield
        return
    path.touch()
    with path.open("r") as handle:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LockBusy(f"{path} is held by another benchmark or mesh run; gave up after {timeout:g} s")
                if on_wait is not None and not told:
                    on_wait()
                    told = True
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

