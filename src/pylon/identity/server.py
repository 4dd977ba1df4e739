"""The CA as a service: `istio.v1.auth.IstioCertificateService/CreateCertificate` on grpcio (aio).

`CaServer.start` brings up the TLS front on the CA address (istiod's :15012) and the gRPC
server behind it on an ephemeral loopback port; each request is authenticated (client
certificate or token), its TTL checked, and its CSR signed for the caller's own SPIFFE id.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from pylon.identity.authn import AuthenticationError, authenticate
from pylon.identity.authority import CaError, CaMaterial, load_or_create_token_key, resolve_ttl
from pylon.identity.certs import PrivateKey
from pylon.identity.proto import SERVICE, IstioCertificateRequest, IstioCertificateResponse
from pylon.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from pylon.identity.tls_front import TlsFront, server_context
from pylon.identity.tokens import TokenAuthority

log = logging.getLogger("pylon.identity.ca")

#: Where a CA directory lives when none is given: kept across restarts, so the mesh root stays the same.
DEFAULT_CA_DIR = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "pylon" / "cacerts"


class CertificateService:
    """CreateCertificate: who is asking (from the TLS front or the token), what lifetime, sign."""

    def __init__(self, material: CaMaterial, tokens: TokenAuthority, trust_domain: str, front: TlsFront) -> None:
        self.material = material
        self.tokens = tokens
        self.trust_domain = trust_domain
        self.front = front

    def identify(self, context: grpc.aio.ServicerContext) -> SpiffeId:
        """The caller of a call that came through the TLS front: its client certificate, else its token.
        AuthenticationError saying why not (also for a call that bypassed the front)."""
        try:
            peer_der = self.front.peer_certificate(context.peer())
        except KeyError:
            raise AuthenticationError("not over TLS") from None
        return authenticate(peer_der, context.invocation_metadata() or (), self.tokens, self.trust_domain)

    async def create_certificate(self, request: IstioCertificateRequest,
                                 context: grpc.aio.ServicerContext) -> IstioCertificateResponse:  # fmt: skip
        try:
            identity = self.identify(context)
        except AuthenticationError as exc:
            log.info("CA request from %s refused: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"request authenticate failure: {exc}")
        try:
            chain = self.material.sign_csr(request.csr, identity, resolve_ttl(request.validity_duration))
        except CaError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        log.info("issued a certificate for %s (%ss requested)", identity, request.validity_duration)
        return IstioCertificateResponse(cert_chain=chain)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.create_certificate,
            request_deserializer=IstioCertificateRequest.FromString,
            response_serializer=IstioCertificateResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE, {"CreateCertificate": method})


#: Adds another service to the TLS port's gRPC server, given how to authenticate its callers (istiod serves
#: ADS there too, to proxies that prove who they are).
ExtraService = Callable[[grpc.aio.Server, Callable[[grpc.aio.ServicerContext], SpiffeId]], None]


@dataclass
class CaServer:
    front: TlsFront
    grpc_server: grpc.aio.Server
    material: CaMaterial
    tokens: TokenAuthority

    @classmethod
    async def start(cls, host: str, port: int, ca_dir: Path, trust_domain: str = DEFAULT_TRUST_DOMAIN,
                    extra_services: Sequence[ExtraService] = (),
                    signing_key: PrivateKey | None = None) -> CaServer:  # fmt: skip
        """Load (or create) the CA in `ca_dir` and serve it on host:port over TLS, with `extra_services`; the CA's
        key is `signing_key` when it lives elsewhere (a PKCS#11 token), else ca-key.pem."""
        material = CaMaterial.load_or_create(ca_dir, signing_key)
        tokens = TokenAuthority(load_or_create_token_key(ca_dir))
        chain_pem, key_pem = material.serving_certificate()
        with tempfile.TemporaryDirectory(prefix="pylon-ca-") as scratch:  # the key file lives only while loading
            files = [Path(scratch) / name for name in ("chain.pem", "key.pem", "root.pem")]
            for path, data in zip(files, (chain_pem, key_pem, material.root_pem.encode())):
                path.write_bytes(data)
            context = server_context(*(str(path) for path in files))
        front = TlsFront(context=context, backend=("127.0.0.1", 0))
        await front.start(host, port)  # the asked-for port first, then the ephemeral backend's
        grpc_server = grpc.aio.server()
        front.backend = ("127.0.0.1", grpc_server.add_insecure_port("127.0.0.1:0"))
        service = CertificateService(material, tokens, trust_domain, front)
        grpc_server.add_generic_rpc_handlers((service.handler(),))
        for add in extra_services:
            add(grpc_server, service.identify)
        await grpc_server.start()
        log.info("CA serving on %s:%d (trust domain %s, CA dir %s)", host, port, trust_domain, ca_dir)
        return cls(front=front, grpc_server=grpc_server, material=material, tokens=tokens)

    async def stop(self) -> None:
        await self.front.close()
        await self.grpc_server.stop(grace=1)
