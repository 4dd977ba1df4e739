"""The agent's SDS server (envoy.service.secret.v3): `default`, `ROOTCA` and file secrets on a Unix socket.

Istio's resource names: `default` is the workload's TlsCertificate (chain + key), `ROOTCA` the
validation context with the mesh root, `file-cert:<cert>~<key>` and `file-root:<ca>` key pairs and
CA bundles in files on the host (file_secrets.py). State of the world: each stream gets the secrets it
names when its subscription changes, and again whenever the certificate rotates or a served file
changes, so the proxy switches new handshakes over without a restart.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from pylon.agent.file_secrets import FileSecret, FileSecretError, is_file_secret

import grpc
from google.protobuf.any_pb2 import Any

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import CertificateValidationContext, TlsCertificate
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from envoy.service.secret.v3 import sds_pb2_grpc

log = logging.getLogger("pylon.agent.sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
WORKLOAD_SECRET = "default"
ROOT_SECRET = "ROOTCA"

_nonces = itertools.count(1)


@dataclass
class SecretStore:
    """The current secrets and a version that changes with them; streams wait on `changed`."""

    secrets: dict[str, Secret] = field(default_factory=dict)
    version: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    #: The file secrets asked for, with their files' stamps when last read (watch_files compares).
    files: dict[str, tuple[FileSecret, tuple[tuple[int, int], ...]]] = field(default_factory=dict)

    async def update(self, tls_certificate: TlsCertificate, root_pem: str) -> None:
        """Install a new workload certificate (and root) and wake every stream to push it."""
        self.secrets = {
            WORKLOAD_SECRET: Secret(name=WORKLOAD_SECRET, tls_certificate=tls_certificate),
            ROOT_SECRET: Secret(name=ROOT_SECRET, validation_context=CertificateValidationContext(
                trusted_ca=DataSource(inline_bytes=root_pem.encode()))),
        }  # fmt: skip
        await self.bump()

    async def bump(self) -> None:
        async with self.changed:
            self.version += 1
            self.changed.notify_all()

    def response(self, names: set[str]) -> DiscoveryResponse:
        """The named secrets at the current version (a name the agent does not serve is a ValueError; a file
        secret that cannot be read now is left out, and logged)."""
        unknown = {name for name in names - self.secrets.keys() if not is_file_secret(name)}
        if unknown:
            raise ValueError(f"unknown secret {', '.join(sorted(unknown))}: the agent serves "
                             f"{WORKLOAD_SECRET!r}, {ROOT_SECRET!r}, file-cert:<cert>~<key> and file-root:<ca>")  # fmt: skip
        resources = []
        for name in sorted(names):
            secret = self.secrets.get(name) or self._read_file_secret(name)
            if secret is None:
                continue
            packed = Any()
            packed.Pack(secret)
            resources.append(packed)
        return DiscoveryResponse(version_info=str(self.version), resources=resources, type_url=SECRET_TYPE_URL,
                                 nonce=str(next(_nonces)))  # fmt: skip


    def _read_file_secret(self, name: str) -> Secret | None:
        known = self.files.get(name)
        try:
            source = known[0] if known else FileSecret.parse(name)
        except FileSecretError as exc:
            log.error("%s; not served", exc)
            return None
        stamp = source.stamp()  # before reading: a change during the read is seen by the next look
        self.files[name] = (source, stamp)
        try:
            return source.read()
        except FileSecretError as exc:
            log.error("%s; not served until the file changes", exc)
            return None

    async def watch_files(self, interval: float = 1.0) -> None:
        """Look at the served files every `interval` seconds; a change pushes every stream again."""
        while True:
            await asyncio.sleep(interval)
            if any(source.stamp() != stamp for source, stamp in list(self.files.values())):
                log.info("a secret file changed; pushing secrets again")
                await self.bump()


class SdsServer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, store: SecretStore) -> None:
        self.store = store

    async def StreamSecrets(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        names: set[str] = set()
        wanted = asyncio.Event()

        async def read() -> None:
            async for request in request_iterator:
                if request.error_detail.message:
                    log.warning("proxy rejected secrets version %s: %s", request.version_info,
                                request.error_detail.message)  # fmt: skip
                requested = set(request.resource_names)
                if requested != names:
                    names.clear()
                    names.update(requested)
                    wanted.set()

        reader = asyncio.create_task(read())
        sent_version = -1
        try:
            while True:
                version_changed = asyncio.create_task(self._wait_past(sent_version))
                subscription_changed = asyncio.create_task(wanted.wait())
                done, pending = await asyncio.wait({version_changed, subscription_changed, reader},
                                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for task in pending - {reader}:
                    task.cancel()
                if reader in done:
                    return
                wanted.clear()
                if not names:
                    sent_version = self.store.version
                    continue
                try:
                    response = self.store.response(names)
                except ValueError as exc:
                    await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
                sent_version = self.store.version
                yield response
        finally:
            reader.cancel()

    async def _wait_past(self, version: int) -> None:
        async with self.store.changed:
            await self.store.changed.wait_for(lambda: self.store.version > version)

    async def FetchSecrets(self, request: DiscoveryRequest,  # noqa: N802 - gRPC method name
                           context: grpc.aio.ServicerContext) -> DiscoveryResponse:  # fmt: skip
        try:
            return self.store.response(set(request.resource_names))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))


async def serve_sds(store: SecretStore, socket_path: str) -> grpc.aio.Server:
    """Start SDS on the Unix socket (its directory is created; a stale socket file is replaced)."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    server = grpc.aio.server()
    sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SdsServer(store), server)
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    return server
