"""The worker's accept loop for a kernel-balanced listener: every pending connection per wake-up.

Why not uvloop's `create_server`: uvloop takes one connection each time the
listening socket is reported readable, i.e. one per event-loop iteration. Under
a flood of thousands of busy connections an iteration lasts hundreds of
milliseconds, so that became a few accepts a second per worker while thousands
waited in the kernel's queue for the whole run (issue 10, item 11). Envoy takes
every pending connection per socket event unless the listener's
`max_connections_to_accept_per_socket_event` says otherwise; so does this.

Each accepted socket is adopted as the hand-off balancers adopt theirs
(`adopt.py`: uvloop's transport, TLS included), so a connection is served the
same way whichever balancer accepted it. The other half of the fix is the read
budget (`fairness.py`): it keeps the iteration that follows short enough for
these connections' `connection_made` to run soon.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pylon.proxy.balance.adopt import start_adopting

log = logging.getLogger("pylon.main")

T = TypeVar("T")

#: accept(2) errors about one connection (it left, or a firewall refused it), not about the socket.
TRANSIENT_ACCEPT_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)


def accept_pending(accept: Callable[[], tuple[T, Any]], limit: int, listener: str) -> Iterator[T]:
    """What `accept` gives for each pending connection, at most `limit`; stops when none is left."""
    for _ in range(limit):
        try:
            conn, _addr = accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in TRANSIENT_ACCEPT_ERRORS:
                continue
            # EMFILE and the like: what is queued waits in the backlog for the next wake-up.
            log.error("listener %s: accept failed: %s", listener, exc)
            return
        yield conn


class AcceptedSocket(socket.socket):
    """A socket this worker took in, whose family and type are plain attributes.

    `socket.socket` makes an enum of its family and type on every read (about
    0.2 µs each); `socket.accept()` reads both, and uvloop's
    `connect_accepted_socket` three times more, per connection. An accepted
    socket's family is its listener's and its type a stream, known before the
    accept, so they are stored once.
    """

    __slots__ = ("family", "type")

    def __init__(self, family: socket.AddressFamily, type: socket.SocketKind = socket.SOCK_STREAM,  # noqa: A002
                 proto: int = 0, fileno: int | None = None) -> None:  # socket.socket's signature (dup() calls it)
        super().__init__(family, type, proto, fileno)
        self.family = family  # type: ignore[misc]
        self.type = type  # type: ignore[misc]


def accepter(listening: socket.socket) -> Callable[[], tuple[AcceptedSocket, Any]]:
    """`listening.accept`, making `AcceptedSocket`s."""
    family = listening.family
    raw_accept = listening._accept  # type: ignore[attr-defined]  # accept(2) itself: (fd, address)

    def accept() -> tuple[AcceptedSocket, Any]:
        fd, address = raw_accept()
        return AcceptedSocket(family, socket.SOCK_STREAM, 0, fd), address
    return accept


class ListenerAcceptor:
    """Accepts on one listening socket in a worker's loop; `close()` stops accepting (drain)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                 accepts_per_event: int | None = None, network_namespace: str = "") -> None:
        self.loop = loop
        self.sock = sock
        self.runtime = runtime
        self.network_namespace = network_namespace  # what its connections' NetworkNamespaceInput reads
        self.accepts_per_event = accepts_per_event or sys.maxsize
        self.accept = accepter(sock)
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_acceptable)
        self.open = True

    def _on_acceptable(self) -> None:
        for conn in accept_pending(self.accept, self.accepts_per_event, repr(self.runtime.config.name)):
            start_adopting(self.loop, conn, self.runtime, network_namespace=self.network_namespace)

    def pause(self) -> None:
        """Stop taking connections for now (the overload manager's stop_accepting_connections): they wait in the
        listen backlog."""
        if self.open:
            self.loop.remove_reader(self.sock.fileno())

    def resume(self) -> None:
        if self.open:
            self.loop.add_reader(self.sock.fileno(), self._on_acceptable)

    def close(self, keep_socket: bool = False) -> None:
        """Stop accepting; the socket closes too unless a new version of the listener takes it over."""
        if self.open:
            self.open = False
            self.loop.remove_reader(self.sock.fileno())
            if not keep_socket:
                self.sock.close()
