"""The native TLS transport (`proxy/tls_transport.py` over `keys/tlsconn.c`) with a key-file listener.

The proxy-level TLS tests (test_proxy_tls*.py, tests/keys/) run every listener through it; these cover what
they do not reach: payloads larger than the transport's one-call buffers both ways, close_notify in both
directions, session tickets (held for the connection's first write) and resumption, the handshake timeout,
and the check that keeps the C side from trusting a pointer that is not the SSL of the `SSLObject` it was given.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
from typing import Any

import pytest

from pylon.config.envoy import DownstreamTlsContext, convert
from pylon.identity.certs import make_test_pki
from pylon.keys.hook import ffi, lib
from pylon.proxy import tls_transport
from pylon.proxy.tls import ServerTls, server_context

BIG = bytes(range(256)) * 4096 * 3  # 3 MiB: several times the transport's 256 KiB buffers


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _listener_tls(pki: Any) -> ServerTls:
    cfg = {"common_tls_context": {"tls_certificates": [{
        "certificate_chain": {"filename": str(pki.server_ecdsa.cert)},
        "private_key": {"filename": str(pki.server_ecdsa.key)}}]}}
    return server_context(convert(cfg, DownstreamTlsContext))


def _client(pki: Any) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca.cert))


class Echo(asyncio.Protocol):
    """Echoes everything; records what happened to it."""

    def __init__(self) -> None:
        self.eof = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data == b"close":
            self.transport.close()
        elif data.startswith(b"twice:"):  # two writes and a close in one callback: they leave together
            self.transport.write(data[6:])
            self.transport.write(data[6:])
            self.transport.close()
        else:
            self.transport.write(data)

    def eof_received(self) -> bool:
        self.eof.set_result(True)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def _serve(tls: ServerTls) -> tuple[asyncio.AbstractServer, int, list[Echo]]:
    apps: list[Echo] = []

    def app() -> Echo:
        apps.append(Echo())
        return apps[-1]

    assert tls.loop_ssl_context is None  # the native transport serves key-file listeners
    server = await asyncio.get_running_loop().create_server(tls.wrap_protocol_factory(app), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], apps


def test_large_payloads_both_ways(pki: Any) -> None:
    async def run() -> None:
        server, port, _ = await _serve(_listener_tls(pki))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client(pki),
                                                      server_hostname="localhost")
        writer.write(BIG)
        echoed = await asyncio.wait_for(reader.readexactly(len(BIG)), 60)
        assert echoed == BIG
        writer.close()
        server.close()

    asyncio.run(run())


def test_close_notify_both_ways(pki: Any) -> None:
    async def run() -> None:
        server, port, apps = await _serve(_listener_tls(pki))
        # The server closes: the client reads a clean end of stream (close_notify), not an abrupt EOF.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=_client(pki),
                                                      server_hostname="localhost")
        writer.write(b"close")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        # The client sends close_notify: the application is told the stream ended.
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = _client(pki).wrap_bio(incoming, outgoing, server_hostname="localhost")
        raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", port)
        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                raw_writer.write(outgoing.read())
                data = await asyncio.wait_for(raw_reader.read(65536), 30)
                assert data, "the server closed during the handshake"
                incoming.write(data)
        with pytest.raises(ssl.SSLWantReadError):
            client.unwrap()  # sends close_notify, would wait for the server's
        raw_writer.write(outgoing.read())
        assert await asyncio.wait_for(apps[-1].eof, 30) is True
        raw_writer.close()
        server.close()

    asyncio.run(run())


class BioClient:
    """A TLS client over memory BIOs on a plain connection: it can offer a session and see every byte it gets."""

    def __init__(self, pki: Any, port: int, session: ssl.SSLSession | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.context = context or _client(pki)
        self.tls = self.context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost", session=session)

    async def handshake(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.writer.write(self.outgoing.read())
                await self._more()
        self.writer.write(self.outgoing.read())  # the client's Finished

    async def _more(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), 30)
        self.incoming.write(data)
        return bool(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.writer.write(self.outgoing.read())

    async def read_until_closed(self) -> bytes:
        """Everything the server sends until its close_notify (which must come)."""
        got = b""
        while True:
            try:
                chunk = self.tls.read(65536)
            except ssl.SSLWantReadError:
                assert await self._more(), "the connection ended without close_notify"
                continue
            if not chunk:  # close_notify (CPython reads it as the end, b"")
                return got
            got += chunk


def test_tickets_go_with_the_first_write_and_resume(pki: Any) -> None:
    async def run() -> None:
        server, port, _ = await _serve(_listener_tls(pki))
        first = BioClient(pki, port)
        await first.handshake()
        first.send(b"twice:ping")
        assert await first.read_until_closed() == b"pingping"
        assert first.tls.session is not None and first.tls.session.has_ticket  # it came with the response
        assert not first.tls.session_reused
        second = BioClient(pki, port, session=first.tls.session, context=first.context)
        await second.handshake()
        assert second.tls.session_reused
        second.send(b"twice:pong")
        assert await second.read_until_closed() == b"pongpong"
        assert second.tls.session.has_ticket and second.tls.session is not first.tls.session  # a new one
        for client in (first, second):
            client.writer.close()
        server.close()

    asyncio.run(run())


def test_held_tickets_go_with_the_close_when_nothing_is_written(pki: Any) -> None:
    """A connection that never writes still hands its tickets out: with its close_notify."""
    closers: list[asyncio.Protocol] = []

    class CloseAtOnce(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            closers.append(self)
            transport.close()

    async def run() -> None:
        tls = _listener_tls(pki)
        server = await asyncio.get_running_loop().create_server(tls.wrap_protocol_factory(CloseAtOnce),
                                                                "127.0.0.1", 0)
        client = BioClient(pki, server.sockets[0].getsockname()[1])
        await client.handshake()
        assert await client.read_until_closed() == b""
        assert closers and client.tls.session.has_ticket
        client.writer.close()
        server.close()

    asyncio.run(run())


def test_silent_client_is_dropped_after_the_handshake_timeout(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_transport, "HANDSHAKE_TIMEOUT", 0.5)

    async def run() -> None:
        server, port, apps = await _serve(_listener_tls(pki))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed by the server, never answered
        assert apps == [] or not hasattr(apps[0], "transport")  # the application never saw the connection
        writer.close()
        server.close()

    asyncio.run(run())


def test_attach_refuses_an_object_whose_ssl_is_not_its_own(pki: Any) -> None:
    """The SSL* read at CPython's offset is trusted only if it points back at the object it came from."""
    context = _listener_tls(pki).context
    real = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_side=True)._sslobj
    conn = ffi.new("tn_conn *")
    assert lib.tn_attach(conn, ffi.cast("void *", id(real)), ffi.NULL) == 1
    # A look-alike: the same header words and a real SSL* at the same offset, at another address.
    words = 4
    header = ctypes.string_at(id(real), words * ctypes.sizeof(ctypes.c_void_p))
    look_alike = (ctypes.c_void_p * words).from_buffer_copy(header)
    assert look_alike[3] is not None
    assert lib.tn_attach(conn, ffi.cast("void *", ctypes.addressof(look_alike)), ffi.NULL) == 0


def test_handshake_failure_has_cpythons_reason_name() -> None:
    """`ssl.*` stats tell failures apart by CPython's reason names; the transport builds the same ones."""
    certificate_verify_failed = (20 << 23) | 134  # ERR_PACK(ERR_LIB_SSL, 0, SSL_R_CERTIFICATE_VERIFY_FAILED)
    no_certificate = (20 << 23) | 199  # SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
    assert tls_transport.handshake_error(certificate_verify_failed).reason == "CERTIFICATE_VERIFY_FAILED"
    failure = tls_transport.handshake_error(no_certificate)
    assert isinstance(failure, ssl.SSLError) and failure.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_a_stale_native_build_is_refused_and_key_files_fall_back(pki: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module built before tlsconn.c existed: providers get a clear HookError, key files uvloop's SSL."""
    from pylon.keys import hook

    class Stale:  # the old module's functions, without the TLS driving
        def __getattr__(self, name: str) -> Any:
            if name.startswith("tn_"):
                raise AttributeError(name)
            return getattr(lib, name)

    monkeypatch.setattr(hook, "lib", Stale())
    with pytest.raises(hook.HookError, match="older sources"):
        hook.check_runtime()
    tls = _listener_tls(pki)
    assert tls.loop_ssl_context is tls.context
    assert tls.wrap_protocol_factory(Echo) is Echo



def test_adopted_sockets_have_nodelay_from_the_loop(pki: Any) -> None:
    """hcm.py sets no TCP_NODELAY per connection: the worker's loop (uvloop) sets it on every socket adopted as
    `balance/adopt.py` adopts them, plain or under this TLS transport. This pins that."""
    import socket

    import uvloop

    async def run() -> None:
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        for factory in (asyncio.Protocol, _listener_tls(pki).wrap_protocol_factory(asyncio.Protocol)):
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
            transport, _ = await loop.connect_accepted_socket(factory, accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            transport.close()
            client.close()
        listener.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
