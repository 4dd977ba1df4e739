"""A UDP listener's sockets: one SO_REUSEPORT socket per worker, so one peer's datagrams always reach one worker.

A UDP proxy's session lives in the worker that made it (its upstream socket and idle deadline), so every datagram
of one 4-tuple must reach that worker. Envoy does it with the kernel: each worker reads its own SO_REUSEPORT
socket, and the kernel hashes a datagram's 4-tuple onto one socket of the group, the same one for as long as the
group does not change (Envoy's raw UDP listener delivers each datagram to the worker that read it). pylon does the
same; the supervisor keeps every socket, so a restarted worker reads the same one and the hash never moves.
Without `enable_reuse_port` there is one socket, which takes one worker: the supervisor refuses to start such a
listener with more (Envoy's words: workers taking turns at one socket would split sessions).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, Protocol

from pylon.proxy.balance.kernel import NoSupervisorHooks
from pylon.proxy.balance.listen_socket import new_listen_socket


class DatagramServing(Protocol):
    """A UDP listener's runtime in a worker, as its balancer hands it back: the endpoint's protocol, closed at drain."""

    def close(self, keep_socket: bool = False) -> None: ...


class UdpBalancer(NoSupervisorHooks):
    name = "kernel (UDP)"
    handoff = False
    uses_inflight = False

    def __init__(self, reuse_port: bool = True, freebind: bool = False) -> None:
        self.reuse_port = reuse_port
        self.freebind = freebind
        self.sockets: list[socket.socket] = []

    def bind(self, host: str, port: int, workers: int, listen: bool = True) -> None:
        """The workers' datagram sockets, bound now so a taken port fails start-up with nothing running."""
        sockets: list[socket.socket] = []
        try:
            for _ in range(workers if self.reuse_port else 1):
                sock = new_listen_socket(host, self.freebind, socket.SOCK_DGRAM)
                sockets.append(sock)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
                if port == 0:
                    port = sock.getsockname()[1]  # the others must share the port the first one got
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        self.sockets = sockets

    def worker_socket(self, worker_id: int) -> socket.socket:
        """The socket a (re)starting worker reads: its own, the same every time."""
        return self.sockets[worker_id]

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    async def serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any) -> DatagramServing:
        """In the worker: read this worker's socket through a uvloop datagram endpoint, `runtime` its protocol."""
        await loop.create_datagram_endpoint(lambda: runtime, sock=sock)
        return runtime  # closed at drain: stops reading, ends the sessions

