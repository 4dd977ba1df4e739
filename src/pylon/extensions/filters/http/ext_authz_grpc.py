"""ext_authz's check over gRPC: one Authorization/Check call per request on the worker's gRPC client to the
service's cluster (proxy/upstream/grpc_channel.py); what it sends and what the answer means is
filters/common/ext_authz_grpc.py. Imported by the filter only for a config with `grpc_service`, so grpcio and
the auth protos load only then.

The call's deadline is `grpc_service.timeout`, 200 ms when unset (Envoy's ext_authz default). A failed call
(any gRPC error, the deadline, no host) is an error, as the HTTP variant's 5xx or timeout; a call still running
when its stream ends is cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError

from pylon.extensions.filters.common import ext_authz_grpc as wire
from pylon.proxy.upstream.grpc_channel import GrpcClusterClient

if TYPE_CHECKING:
    from pylon.config.services import GrpcClientService

#: Envoy's ext_authz timeout when grpc_service.timeout is unset.
DEFAULT_TIMEOUT = 0.2


class GrpcChecker:
    """The gRPC checks of one ext_authz filter in one worker (the client is made on the first check: the filter
    is built before the worker's clusters are)."""

    def __init__(self, service: "GrpcClientService", include_peer_certificate: bool, pack_as_bytes: bool) -> None:
        self.service = service
        self.include_peer_certificate = include_peer_certificate
        self.pack_as_bytes = pack_as_bytes
        self.client: GrpcClusterClient | None = None

    def _client(self, worker: Any) -> GrpcClusterClient:
        if self.client is None:
            self.client = GrpcClusterClient(worker, self.service)
            if self.service.timeout is None:
                self.client.timeout = DEFAULT_TIMEOUT
        return self.client

    def facts(self, stream: Any, context_extensions: dict[str, str]) -> wire.Facts:
        conn = stream.conn
        info = conn.connection_info()
        peer = info.peer_certificate
        source = wire.Peer(info.remote_address,
                           wire.peer_principal(peer.uri_sans, peer.dns_sans, peer.subject) if peer else "",
                           self._pem(peer) if peer is not None and self.include_peer_certificate else "",
                           next((v.decode("latin-1") for n, v in stream.headers
                                 if n == b"x-envoy-downstream-service-cluster"), ""))
        local_sans = stream.hcm.local_uri_sans if info.tls else []
        destination = wire.Peer(info.local_address, local_sans[0] if local_sans else "")
        headers = stream.headers
        if not any(name == b"x-forwarded-proto" for name, _ in headers):
            headers = [*headers, (b"x-forwarded-proto", conn.scheme)]
        return wire.Facts(source, destination, stream.method, stream.path, stream.authority, conn.scheme,
                          "HTTP/1.0" if stream.http10 else "HTTP/1.1", headers, context_extensions)

    @staticmethod
    def _pem(peer: Any) -> str:
        from cryptography.hazmat.primitives.serialization import Encoding

        return wire.url_encoded_pem(peer.certificate.public_bytes(Encoding.PEM).decode())

    def check(self, stream: Any, facts: wire.Facts, body: bytes | None, partial: bool,
              answered: Callable[[wire.GrpcVerdict | None], None]) -> None:
        """Start the call; `answered(verdict)` hears its meaning, or None when the call failed."""
        request = wire.check_request(facts, body=body, partial=partial, pack_as_bytes=self.pack_as_bytes)
        worker = stream.hcm.worker
        task = worker.loop.create_task(self._client(worker).unary(wire.METHOD, request))

        def finished(task: asyncio.Task[bytes]) -> None:
            if task.cancelled():
                return
            if task.exception() is not None:
                answered(None)
                return
            try:
                meaning = wire.verdict(task.result())
            except DecodeError:  # an answer that does not parse is an error, as a failed call
                answered(None)
                return
            answered(meaning)

        task.add_done_callback(finished)
        stream.on_finish(task.cancel)
