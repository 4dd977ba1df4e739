"""x-forwarded-client-cert: what Envoy's `forward_client_cert_details` does with the header (sans-IO).

Envoy's default, SANITIZE, removes the header: a client must not be able to
tell the upstream which certificate it presented. The other modes, for mTLS
connections (a plaintext one is always sanitized, except ALWAYS_FORWARD_ONLY):
FORWARD_ONLY passes the client's header on; APPEND_FORWARD appends this hop's
element to it (","); SANITIZE_SET replaces it with this hop's element. The
element, as Envoy 1.40 writes it: `By=<URI SAN>` for each URI SAN of the
proxy's own certificate, `Hash=<hex SHA-256 of the client certificate>`, then
as `set_current_client_cert_details` asks, `Cert="<URL-encoded PEM>"`,
`Subject="<RFC 2253 subject>"`, `URI=<URI SAN>` for each (`URI=` when it has
none), `DNS=<DNS SAN>` for each; joined by ";".
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from cryptography.hazmat.primitives.serialization import Encoding

from pylon.proxy.connection_info import PeerCertificate

HEADER = b"x-forwarded-client-cert"


def client_cert_element(peer: PeerCertificate, local_uris: list[str], details: Any) -> bytes:
    """This hop's XFCC element for a client certificate, as Envoy writes it."""
    parts = [f"By={uri}" for uri in local_uris]
    parts.append(f"Hash={peer.sha256}")
    if details.cert:
        parts.append('Cert="%s"' % quote(peer.certificate.public_bytes(Encoding.PEM).decode(), safe=""))
    if details.subject:
        parts.append(f'Subject="{peer.subject}"')
    if details.uri:
        parts += [f"URI={uri}" for uri in peer.uri_sans] or ["URI="]
    if details.dns:
        parts += [f"DNS={name}" for name in peer.dns_sans]
    return ";".join(parts).encode()


def forwarded_value(mode: str, received: bytes | None, element: bytes | None) -> bytes | None:
    """The header to send upstream (None: none); `element` is None on a connection without a client certificate."""
    if mode == "ALWAYS_FORWARD_ONLY":
        return received
    if element is None or mode == "SANITIZE":
        return None
    if mode == "FORWARD_ONLY":
        return received
    if mode == "APPEND_FORWARD":
        return received + b"," + element if received else element
    return element  # SANITIZE_SET
