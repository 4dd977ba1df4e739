"""Shared fixtures: free loopback ports and real child processes that are always cleaned up."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: Ports handed to tests come from below the kernel's ephemeral range: a port picked there could be taken,
#: before the test binds it, by any process's outgoing connection or port-0 bind (seen in CI).
_EPHEMERAL_LOW, _ = _ephemeral_range()
_PORTS = range(max(1024, _EPHEMERAL_LOW - 12000), _EPHEMERAL_LOW)


def refuses_connections(port: int) -> bool:
    """Whether a new connection to 127.0.0.1:port is refused (nothing listens there).

    A reset is not yet a refusal: the connection was queued on a listening socket that closed under it (a listener
    being removed, seen with Envoy in CI); asked again, the port refuses."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except ConnectionResetError:
        return False
    return False


#: Ports are handed out from blocks of _BLOCK ports, one block at a time per pytest process, each claimed with an
#: flock on its file in _PORT_LOCKS held for the process's life. A test binds its port some time after free_port
#: returns it; in that gap another pytest run on the machine (a helper's, a developer's) could pick the same port
#: (seen: "address already in use" on a proxy's admin port). With blocks, no two processes ever hand out the same
#: port and one process never hands out a port twice until it has gone through a whole block; the kernel drops the
#: locks when the process exits, so nothing is left to clean up.
_PORT_LOCKS = Path("/tmp/pylon-test-ports")
_BLOCK = 100
_block: list[int] = []  # the ports of this process's current block not handed out yet
_block_locks: list[int] = []  # fds holding this process's blocks (kept open: closing one drops its lock)


def _next_block() -> list[int]:
    """The ports of a block no other process holds, now locked by this one."""
    _PORT_LOCKS.mkdir(exist_ok=True)
    starts = list(range(_PORTS.start, _PORTS.stop - _BLOCK + 1, _BLOCK))
    random.shuffle(starts)
    for start in starts:
        fd = os.open(_PORT_LOCKS / f"{start}-{start + _BLOCK - 1}", os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        for old in _block_locks:  # this process has used that block up: another process may take it now
            os.close(old)
        _block_locks[:] = [fd]
        return list(range(start, start + _BLOCK))
    raise RuntimeError(f"every block of ports in {_PORTS.start}-{_PORTS.stop - 1} is held by another process")


def free_port() -> int:
    """A TCP port on 127.0.0.1, outside the ephemeral range, that nothing is bound to right now and that no other
    pytest process on this machine hands out (see _PORT_LOCKS)."""
    for _ in range(4 * _BLOCK):
        if not _block:
            _block[:] = _next_block()
        port = _block.pop(0)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1}")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    """Block until something accepts on host:port, failing fast if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}:\n{out}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def pytest_xdist_make_scheduler(config: pytest.Config, log):  # type: ignore[no-untyped-def]
    """`--dist loadfile` keeps the mesh tests on one worker: see tests/xdist_scheduling.py."""
    if config.getoption("dist") != "loadfile":
        return None  # another --dist asked for explicitly: xdist's own
    from tests.xdist_scheduling import FileOrMeshScheduling

    return FileOrMeshScheduling(config, log)


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start child processes (in their own process group) and kill them at teardown, even on failure."""
    procs: list[subprocess.Popen] = []

    def _spawn(args: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.STDOUT)
        proc = subprocess.Popen(args, start_new_session=True, **kwargs)
        procs.append(proc)
        return proc

    yield _spawn
    for proc in procs:
        stop_process_group(proc)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process's group, SIGKILL it after 5 s, then kill whatever of the group outlived it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # Children (e.g. proxy workers) share the group; make sure none outlives its parent.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def pylon_cmd(*args: str) -> list[str]:
    """Command line running the installed pylon CLI with this interpreter."""
    return [sys.executable, "-m", "pylon.cli", *args]


#: The SoftHSM2 tokens every in-process PKCS#11 test uses (a process initialises the library once, with the
#: SOFTHSM2_CONF it has then): made once per session in a temp dir.
SOFTHSM_TOKENS = ("pylon-unit", "pylon-sgx", "pylon-ca", "pylon-cred")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.softhsm import make_tokens, use_in_process

    tokens = make_tokens(tmp_path_factory.mktemp("softhsm"), *SOFTHSM_TOKENS)
    use_in_process(tokens)
    return tokens
