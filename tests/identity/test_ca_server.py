"""The CA over the wire: grpc clients asking with a token, with a client certificate, and without."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pylon.agent.keys import AgentKeySource
from pylon.identity.certs import Usage, issue_leaf, make_ca
from pylon.identity.client import CaClientError, create_certificate
from pylon.identity.proto import CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse
from pylon.identity.server import CaServer
from pylon.identity.spiffe import SpiffeId
from tests.conftest import free_port

EVIL = SpiffeId("cluster.local", "kube-system", "admin")


def _uri(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)


def test_ca_over_grpc(tmp_path: Path) -> None:
    asyncio.run(_scenario(tmp_path))


async def _scenario(tmp_path: Path) -> None:
    port = free_port()
    server = await CaServer.start("127.0.0.1", port, tmp_path / "ca")
    address, root = f"127.0.0.1:{port}", server.material.root_pem.encode()
    try:
        key = AgentKeySource().new_key(EVIL)  # the CSR asks for kube-system/admin; the caller is default/web
        chain = await create_certificate(address, root, key.csr_pem, token=server.tokens.issue("default", "web"))
        assert _uri(chain[0]) == ["spiffe://cluster.local/ns/default/sa/web"]
        assert chain[-1].encode() == root

        # Renewal with the certificate just issued: the identity comes from it, no token needed.
        own_key = key.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())  # fmt: skip
        renewed = await create_certificate(address, root, key.csr_pem, client_cert=("".join(chain).encode(), own_key))
        assert _uri(renewed[0]) == ["spiffe://cluster.local/ns/default/sa/web"]

        with pytest.raises(CaClientError, match="UNAUTHENTICATED"):
            await create_certificate(address, root, key.csr_pem)
        foreign = issue_leaf(make_ca(), uris=["spiffe://cluster.local/ns/default/sa/web"], usage=Usage.CLIENT)
        with pytest.raises(CaClientError, match="UNAVAILABLE"):  # TLS refuses a certificate not from the root
            await create_certificate(address, root, key.csr_pem, client_cert=(foreign.cert_pem, foreign.key_pem))
        with pytest.raises(CaClientError, match="INVALID_ARGUMENT: requested TTL .* max allowed TTL"):
            await create_certificate(address, root, key.csr_pem, token=server.tokens.issue("default", "web"),
                                     ttl_seconds=91 * 86400)  # fmt: skip

        # The plaintext gRPC server behind the TLS front answers no one who bypasses the front.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.front.backend[1]}") as channel:
            call = channel.unary_unary(CREATE_CERTIFICATE, request_serializer=IstioCertificateRequest.SerializeToString,
                                       response_deserializer=IstioCertificateResponse.FromString)  # fmt: skip
            token = server.tokens.issue("default", "web")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(IstioCertificateRequest(csr=key.csr_pem), metadata=(("authorization", f"Bearer {token}"),))
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop()
