"""Create sockets inside a Linux network namespace (a listener's `network_namespace_filepath`).

A socket belongs to the network namespace of the thread that created it, for
its whole life: once made and bound there, any thread (or worker process it is
passed to) can listen and accept on it, and its connections are that
namespace's. Envoy enters the namespace with setns(2) on the creating thread
and returns. Python 3.11 has no `os.setns`, so this calls libc's through ctypes,
and always on a thread of its own made for that one call: setns changes only
the calling thread, so the supervisor's event-loop thread never leaves its
namespace, even if the work in between raises, and the thread ends there.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: <sched.h>: setns(fd, CLONE_NEWNET) accepts only a network namespace file.
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetworkNamespaceError(OSError):
    """The namespace file could not be opened or entered (Envoy's words, with the reason)."""


def in_network_namespace(path: str, work: Callable[[], T]) -> T:
    """`work()` run on a new thread inside the network namespace of the file at `path` (e.g.
    /var/run/netns/NAME); its result, or what it raised. NetworkNamespaceError if the namespace cannot be entered
    (no such file, not a namespace file, no CAP_SYS_ADMIN)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            _enter(path)
            outcome.append(work())
        except BaseException as exc:  # noqa: BLE001  (handed back to the caller's thread)
            failure.append(exc)

    thread = threading.Thread(target=run, name="netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def _enter(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetworkNamespaceError(exc.errno, f"failed to open netns file {path}: {exc.strerror}") from None
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetworkNamespaceError(err, f"failed to set netns to {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
