"""A CreateCertificate client, as Istio's agent calls the CA (TLS, verified by the mesh root)."""

from __future__ import annotations

import grpc

from pylon.identity.authority import SERVING_DNS_NAMES
from pylon.identity.proto import CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse


class CaClientError(Exception):
    """The CA refused or could not be reached; the message carries its status and reason."""


async def create_certificate(
    address: str,
    root_pem: bytes,
    csr_pem: str,
    *,
    ttl_seconds: int = 0,
    token: str | None = None,
    client_cert: tuple[bytes, bytes] | None = None,
    server_name: str = SERVING_DNS_NAMES[0],
    timeout: float = 10.0,
) -> list[str]:
    """Send a CSR; the CA's `cert_chain` (leaf first, root last).

    Authenticates with `token` (`authorization: Bearer`) and/or `client_cert` (chain PEM, key PEM).
    The CA's certificate is verified against `root_pem` for `server_name`, whatever `address` is.
    """
    key, chain = (client_cert[1], client_cert[0]) if client_cert else (None, None)
    credentials = grpc.ssl_channel_credentials(root_certificates=root_pem, private_key=key, certificate_chain=chain)
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    request = IstioCertificateRequest(csr=csr_pem, validity_duration=ttl_seconds)
    async with grpc.aio.secure_channel(address, credentials,
                                       options=[("grpc.ssl_target_name_override", server_name)]) as channel:  # fmt: skip
        call = channel.unary_unary(CREATE_CERTIFICATE, request_serializer=IstioCertificateRequest.SerializeToString,
                                   response_deserializer=IstioCertificateResponse.FromString)  # fmt: skip
        try:
            response = await call(request, metadata=metadata, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise CaClientError(f"CA {address}: {exc.code().name}: {exc.details()}") from None
    chain_pems = list(response.cert_chain)
    if len(chain_pems) < 2:
        raise CaClientError(f"CA {address}: expected a chain of at least 2 certificates, got {len(chain_pems)}")
    return chain_pems
