"""The worker's accept loop: every pending connection per wake-up, or the listener's cap (as Envoy)."""

from __future__ import annotations

import asyncio
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
import uvloop

from pylon.proxy.balance import acceptor as acceptor_module
from pylon.proxy.balance.acceptor import ListenerAcceptor
from pylon.proxy.overload import WorkerOverload

QUEUED = 20


def queued_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket with QUEUED connections waiting in its accept queue."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(QUEUED)]
    time.sleep(0.05)  # let loopback finish every handshake into the queue
    return listener, clients


@pytest.mark.parametrize(("per_event", "expected"), [(None, QUEUED), (3, 3)])
def test_one_wakeup_takes_every_pending_connection_or_the_cap(monkeypatch: pytest.MonkeyPatch, per_event: int | None,
                                                              expected: int) -> None:
    """uvloop's server took one per loop iteration: a flood queued thousands behind busy iterations."""
    adopted: list[socket.socket] = []
    monkeypatch.setattr(acceptor_module, "start_adopting", lambda loop, conn, runtime, **_: adopted.append(conn))
    listener, clients = queued_listener()

    async def one_wakeup() -> None:
        runtime = SimpleNamespace(config=SimpleNamespace(name="main"))
        acceptor = ListenerAcceptor(asyncio.get_running_loop(), listener, runtime, per_event)
        acceptor._on_acceptable()  # what the loop calls when the socket is readable
        acceptor.close()

    try:
        uvloop.run(one_wakeup())
        assert len(adopted) == expected
    finally:
        for sock in [*adopted, *clients]:
            sock.close()


def test_accepted_connections_are_served_and_close_stops_accepting() -> None:
    listener, clients = queued_listener()
    made: list[Any] = []

    class Greeter(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            made.append(transport)
            transport.write(b"hello")

    async def serve() -> None:
        chain = SimpleNamespace(protocol_factory=Greeter, ssl_context=None, tls_stats=None)
        worker = SimpleNamespace(cx_gate=None, overload=WorkerOverload())  # no limit, no overload action on
        runtime = SimpleNamespace(config=SimpleNamespace(name="main"), only_chain=chain, worker=worker)
        acceptor = ListenerAcceptor(asyncio.get_running_loop(), listener, runtime)
        for _ in range(100):
            if len(made) == QUEUED:
                break
            await asyncio.sleep(0.01)
        acceptor.close()
        for transport in made:
            transport.close()

    try:
        uvloop.run(serve())
        assert len(made) == QUEUED
        assert all(client.recv(5) == b"hello" for client in clients)
        assert listener.fileno() == -1  # closed: the drain stops new connections
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_accepted_sockets_carry_their_listeners_family_and_type(family: socket.AddressFamily, host: str) -> None:
    """Stored once per listener instead of converted to enums on each read; dup() keeps them."""
    listener = socket.socket(family)
    listener.bind((host, 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname()[:2])
    conn, address = acceptor_module.accepter(listener)()
    copy = conn.dup()
    try:
        assert isinstance(conn, socket.socket)
        assert (conn.family, conn.type) == (copy.family, copy.type) == (family, socket.SOCK_STREAM)
        assert address == conn.getpeername() == client.getsockname()
    finally:
        for sock in (copy, conn, client, listener):
            sock.close()
