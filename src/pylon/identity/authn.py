"""Who is asking the CA: Istio's two authenticators, as plain functions (sans-IO).

The caller's identity comes from (1) a verified mesh client certificate (Istio's
ClientCertAuthenticator, for workloads renewing with the certificate they hold) or else (2) a
bearer token in the `authorization` metadata (Istio's service-account JWT authenticator).
Nothing in the request body (CSR SANs, metadata) can change it.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509

from pylon.identity.spiffe import SpiffeError, SpiffeId
from pylon.identity.tokens import TokenAuthority, TokenError


class AuthenticationError(Exception):
    """The caller could not be authenticated; sent as gRPC UNAUTHENTICATED."""


def identity_from_certificate(der: bytes, trust_domain: str) -> SpiffeId:
    """The workload id in a client certificate whose chain TLS already verified against the root."""
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise AuthenticationError("client certificate has no SAN") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise AuthenticationError(f"client certificate must carry exactly one URI SAN, it has {len(uris)}")
    try:
        identity = SpiffeId.parse(uris[0])
    except SpiffeError as exc:
        raise AuthenticationError(f"client certificate: {exc}") from None
    if identity.trust_domain != trust_domain:
        raise AuthenticationError(f"client certificate is for trust domain {identity.trust_domain!r}, "
                                  f"this CA serves {trust_domain!r}")  # fmt: skip
    return identity


def identity_from_metadata(metadata: Iterable[tuple[str, str | bytes]], tokens: TokenAuthority,
                           trust_domain: str) -> SpiffeId:  # fmt: skip
    """The workload id of the `authorization: Bearer <token>` metadata."""
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if len(values) != 1:
        raise AuthenticationError("no client certificate and no (single) authorization: Bearer token")
    value = values[0].decode() if isinstance(values[0], bytes) else values[0]
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("authorization metadata must be 'Bearer <token>'")
    try:
        account = tokens.verify(token.strip())
        return SpiffeId(trust_domain, account.namespace, account.name)
    except (TokenError, SpiffeError) as exc:
        raise AuthenticationError(str(exc)) from None


def authenticate(peer_der: bytes | None, metadata: Iterable[tuple[str, str | bytes]], tokens: TokenAuthority,
                 trust_domain: str) -> SpiffeId:  # fmt: skip
    """Client certificate first, then token, as istiod tries its authenticators."""
    if peer_der is not None:
        return identity_from_certificate(peer_der, trust_domain)
    return identity_from_metadata(metadata, tokens, trust_domain)
