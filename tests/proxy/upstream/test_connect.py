"""The one upstream connect path without a proxy: what a TLS connection torn down as it opens becomes."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from pylon.identity.certs import make_test_pki
from pylon.proxy.upstream.connect import ConnectError, open_upstream
from pylon.proxy.upstream.proxy_protocol import v1_header


class TornDown:
    """A cluster TLS whose peer check finds the TLS layer gone (what a refusing TLS 1.3 server leaves behind)."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.server_hostname = "localhost"

    def verify_peer(self, ssl_object: Any) -> str | None:
        raise ValueError("handshake not done yet")


def test_a_tls_layer_gone_at_the_peer_check_is_a_connect_error(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_ecdsa.cert, pki.server_ecdsa.key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with server_context.wrap_socket(conn, server_side=True):
            pass

    threading.Thread(target=serve, daemon=True).start()
    client_context = ssl.create_default_context(cafile=str(pki.ca.cert))

    async def run() -> None:
        await open_upstream(listener.getsockname()[:2], TornDown(client_context), 5.0, asyncio.Protocol)  # type: ignore[arg-type]

    with pytest.raises(ConnectError, match="TLS error: connection closed by the server after the handshake"):
        asyncio.run(run())
    listener.close()


class Trusting:
    """A cluster TLS that accepts the test server (its CA is the context's) and checks no SAN."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.server_hostname = "localhost"

    def verify_peer(self, ssl_object: Any) -> str | None:
        return None


def test_the_preamble_goes_first_in_the_clear_then_tls(tmp_path: Path) -> None:
    """A PROXY header precedes the TLS handshake (the backend reads it before it speaks TLS)."""
    pki = make_test_pki(tmp_path / "pki")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(pki.server_ecdsa.cert, pki.server_ecdsa.key)
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()[:2]
    seen: dict[str, Any] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        seen["preamble"] = conn.recv(len(b"HELLO\r\n"), socket.MSG_WAITALL)
        with server_context.wrap_socket(conn, server_side=True) as tls:
            seen["data"] = tls.recv(100)

    threading.Thread(target=serve, daemon=True).start()
    client_context = ssl.create_default_context(cafile=str(pki.ca.cert))
    addresses: list[Any] = []

    def preamble(local: Any, remote: Any) -> bytes:
        addresses.append((local, remote))
        return b"HELLO\r\n"

    async def run() -> None:
        transport, _ = await open_upstream(listener.getsockname()[:2], Trusting(client_context),  # type: ignore[arg-type]
                                           5.0, asyncio.Protocol, preamble=preamble)
        transport.write(b"after the handshake")
        await asyncio.sleep(0.2)
        transport.close()

    asyncio.run(run())
    listener.close()
    assert seen == {"preamble": b"HELLO\r\n", "data": b"after the handshake"}
    (local, remote), = addresses
    assert remote == address and local[0] == "127.0.0.1"


def test_a_header_that_cannot_be_written_fails_the_connect() -> None:
    listener = socket.create_server(("127.0.0.1", 0))

    def preamble(local: Any, remote: Any) -> bytes:
        return v1_header("internal-listener-address", remote)

    async def run() -> None:
        await open_upstream(listener.getsockname()[:2], None, 5.0, asyncio.Protocol, preamble=preamble)

    with pytest.raises(ConnectError, match="proxy protocol: the address 'internal-listener-address' is not an IP"):
        asyncio.run(run())
    listener.close()
