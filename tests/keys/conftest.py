"""Shared fixtures: a test PKI, TLS servers built the way the listener builds them, clients."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

import pylon.keys.config  # noqa: F401  (registers the provider @types)
from pylon.config.envoy import DownstreamTlsContext, convert
from pylon.identity.certs import make_test_pki
from pylon.keys import cryptomb
from pylon.proxy.tls import ServerTls, server_context


#: Tests that run crypto_mb for real: skipped, saying what is missing, on a CPU without AVX-512 IFMA.
needs_mb = pytest.mark.skipif(cryptomb.unavailable_reason() is not None, reason=str(cryptomb.unavailable_reason()))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def provider_tls(files: Any, provider: dict[str, Any] | None, **params: Any) -> ServerTls:
    """server_context() for one certificate, with `provider` as its private_key_provider (or the key file)."""
    cert: dict[str, Any] = {"certificate_chain": {"filename": str(files.cert)}}
    if provider is None:
        cert["private_key"] = {"filename": str(files.key)}
    else:
        cert["private_key_provider"] = provider
    cfg = {"common_tls_context": {"tls_certificates": [cert], "tls_params": params}}
    return server_context(convert(cfg, DownstreamTlsContext))


class Reply(asyncio.Protocol):
    """A tiny application protocol: answers each read with `ok:` + the data, then closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(b"ok:" + data)  # type: ignore[attr-defined]
        self.transport.close()


async def serve(tls: ServerTls) -> tuple[asyncio.AbstractServer, int]:
    """Serve the way listener.py will: wrapped factory, loop_ssl_context."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(tls.wrap_protocol_factory(Reply), "127.0.0.1", 0, ssl=tls.loop_ssl_context)
    return server, server.sockets[0].getsockname()[1]


def client_context(pki: Any, maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))  # verification and hostname check on
    ctx.maximum_version = maximum
    return ctx


async def fetch(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> tuple[bytes, ssl.SSLObject]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), timeout
    )
    writer.write(b"hi")
    data = await asyncio.wait_for(reader.read(), timeout)
    sslobj = writer.get_extra_info("ssl_object")
    writer.close()
    return data, sslobj


async def s_client(port: int, pki: Any, *extra: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca.cert),
        "-verify_return_error", "-verify_hostname", "localhost", "-brief", *extra,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(b"x\n"), 10)
    assert proc.returncode == 0, out.decode()
    return out.decode()
