"""TLS in front of the CA's gRPC server, so a client certificate is optional but verified.

grpcio's Python server credentials either require a client certificate or never ask for one;
istiod's :15012 asks for one and accepts a token instead. So pilot terminates TLS itself
(stdlib ssl, CERT_OPTIONAL against the mesh root, ALPN h2) and relays the bytes to a loopback
gRPC server. The relay connects from a loopback port it records with the peer certificate it
verified; the gRPC handler finds the caller's certificate by the peer port it sees, and refuses
connections that did not come through the relay (a direct plaintext caller is no one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

log = logging.getLogger("pylon.identity.tls")

_CHUNK = 65536


@dataclass
class TlsFront:
    """A TLS listener relaying to `backend`; `peers` maps relay source ports to client certs (DER)."""

    context: ssl.SSLContext
    backend: tuple[str, int]
    peers: dict[int, bytes | None] = field(default_factory=dict)
    server: asyncio.Server | None = None

    def peer_certificate(self, grpc_peer: str) -> bytes | None:
        """The verified client certificate of a gRPC peer (`ipv4:127.0.0.1:PORT`); KeyError if not relayed."""
        host, _, port = grpc_peer.rpartition(":")
        if host not in ("ipv4:127.0.0.1", "ipv6:[::1]") or not port.isdigit():
            raise KeyError(grpc_peer)
        return self.peers[int(port)]

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._relay, host, port, ssl=self.context,
                                                 ssl_handshake_timeout=10)  # fmt: skip

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            backend_reader, backend_writer = await asyncio.open_connection(*self.backend)
        except OSError as exc:
            log.error("CA backend unreachable: %s", exc)
            writer.close()
            return
        local_port = backend_writer.get_extra_info("sockname")[1]
        self.peers[local_port] = peer_der  # recorded before any byte of the request reaches gRPC
        try:
            await asyncio.gather(_pipe(reader, backend_writer), _pipe(backend_reader, writer))
        finally:
            self.peers.pop(local_port, None)
            for w in (writer, backend_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError, OSError):
        writer.close()


def server_context(chain_pem_file: str, key_pem_file: str, root_pem_file: str) -> ssl.SSLContext:
    """TLS 1.2+ server context: asks for a client certificate, verifies it when given, offers h2."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=root_pem_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain_pem_file, key_pem_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.set_alpn_protocols(["h2"])
    return context
