"""Kernel balancing (Envoy's default): every worker accepts on its own SO_REUSEPORT socket.

The kernel hashes each new connection's 4-tuple onto one of the sockets.
No coordination and no extra hop, but with few long-lived connections some
workers may get none. Without `enable_reuse_port` all workers share one
socket and whoever wakes first accepts.

A worker that dies keeps its socket in the group (the supervisor holds a copy,
so the replacement inherits it): connections the kernel hashes there wait in
that socket's backlog for the replacement, delayed by the restart but not lost.
The kernel offers no way to take one socket out of the hash without dropping
its backlog, short of a reuseport BPF program.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pylon.proxy.balance.acceptor import ListenerAcceptor
from pylon.proxy.balance.listen_socket import new_listen_socket


class NoSupervisorHooks:
    """The supervisor-side hooks a hand-off balancer needs (start, worker_ready, worker_gone), as no-ops: the
    balancers whose workers accept for themselves (or accept nothing) need none of them."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        pass

    def worker_ready(self, worker_id: int) -> None:
        pass

    def worker_gone(self, worker_id: int) -> None:
        pass


class KernelBalancer(NoSupervisorHooks):
    name = "kernel"
    handoff = False
    uses_inflight = False

    def __init__(self, backlog: int, reuse_port: bool = True, accepts_per_event: int | None = None,
                 freebind: bool = False) -> None:
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.freebind = freebind
        self.accepts_per_event = accepts_per_event  # None: all pending, as Envoy
        self.sockets: list[socket.socket] = []

    def bind(self, host: str, port: int, workers: int, listen: bool = True) -> None:
        """One listening socket per worker (or one shared), bound now so errors surface before start.

        `listen=False` only binds: an LDS listener's port is taken while it warms, and refuses
        connections (as in Envoy) until the workers listen on it once it is warm.
        """
        count = workers if self.reuse_port else 1
        sockets: list[socket.socket] = []
        try:
            for _ in range(count):
                sock = new_listen_socket(host, self.freebind)
                sockets.append(sock)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((host, port))
                if port == 0 and self.reuse_port:
                    port = sock.getsockname()[1]  # the others must share the port the first one got
                if listen:
                    sock.listen(self.backlog)
                sock.setblocking(False)
        except OSError:
            for sock in sockets:
                sock.close()
            raise
        if not self.reuse_port:
            sockets = sockets * workers
        self.sockets = sockets

    def worker_socket(self, worker_id: int) -> socket.socket:
        """The socket a (re)starting worker accepts on: the same one every time, so its backlog survives a crash."""
        return self.sockets[worker_id]

    def close(self) -> None:
        for sock in set(self.sockets):
            sock.close()

    async def serve(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, runtime: Any,
                    network_namespace: str = "") -> ListenerAcceptor:
        """In the worker: accept on this worker's own socket, every pending connection per wake-up."""
        return ListenerAcceptor(loop, sock, runtime, self.accepts_per_event, network_namespace)
