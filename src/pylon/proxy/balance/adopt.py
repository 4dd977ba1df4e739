"""How a worker takes an accepted socket into its event loop, and its own accept loop for kernel balancing.

libuv (under uvloop's `create_server`) accepts one connection per listening
socket per event-loop iteration, which keeps several processes fair on one
socket but starves a busy worker: with a few thousand active connections an
iteration takes tens of milliseconds, accepting falls to tens per second,
connections wait in the kernel's queue for seconds, and their clients time
out (measured: benchmarks/hardening.py, the 5,000-connection flood). Envoy
accepts until the queue is empty. `Acceptor` does the same: it drains the
queue on every wake-up, up to `MAX_ACCEPTS_PER_WAKE`.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from typing import Any, Callable

#: Most connections one wake-up accepts before the loop serves everything else again.
MAX_ACCEPTS_PER_WAKE = 64
_TRANSIENT_ACCEPT_ERRORS = (errno.ECONNABORTED, errno.EPROTO, errno.EPERM)


#: The adoptions in progress. The event loop keeps only weak references to tasks: an adoption parked on
#: its transport's waiter and referenced nowhere else could be garbage collected half-done, leaving the
#: client's request unanswered (seen under a 5,000-connection flood as batches of timeouts).
_ADOPTING: set[asyncio.Task[None]] = set()


def start_adopting(loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                   done: Callable[[], None] | None = None) -> None:
    """Serve an accepted socket with the listener's protocol (and TLS); `done` runs however it ends."""
    task = loop.create_task(_adopt(loop, sock, runtime, done))
    _ADOPTING.add(task)
    task.add_done_callback(_ADOPTING.discard)


async def _adopt(loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                 done: Callable[[], None] | None) -> None:
    ssl_context = runtime.ssl_context
    try:
        await loop.connect_accepted_socket(runtime.protocol_factory, sock, ssl=ssl_context,
                                           ssl_handshake_timeout=10.0 if ssl_context is not None else None)
    except (OSError, ssl.SSLError, asyncio.TimeoutError):
        sock.close()  # a failed TLS handshake or a peer that already left: Envoy counts neither
    finally:
        if done is not None:
            done()


class Acceptor:
    """Accepts on a worker's own listening socket; `close()` stops accepting and closes it (drain)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any) -> None:
        self.loop = loop
        self.sock = sock
        self.runtime = runtime
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._on_readable)
        self.open = True

    def _on_readable(self) -> None:
        accept = self.sock.accept
        for _ in range(MAX_ACCEPTS_PER_WAKE):
            try:
                conn, _ = accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _TRANSIENT_ACCEPT_ERRORS:
                    continue
                return  # EMFILE and friends: try again on the next wake-up
            conn.setblocking(False)
            start_adopting(self.loop, conn, self.runtime)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
