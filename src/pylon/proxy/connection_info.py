"""What a filter may know about its downstream connection, as Envoy's filters see it.

Authorization (RBAC), XFCC and Python filters decide on the connection, not
only the request: the peer certificate's URI and DNS SANs and subject, the SNI
the client asked for, the ALPN protocol, the local (destination) and remote
(source) addresses and the connection id. The certificate is parsed once per
connection, and only when something asks. The SNI comes from the listener's
tls_inspector when it ran, else from the TLS handshake itself (recorded by the
server context's SNI callback, `remember_server_name`).
"""

from __future__ import annotations

import hashlib
import ssl
from functools import cached_property
from typing import Any

from cryptography import x509

#: The attribute the SNI callback leaves on a server-side SSLObject (a plain Python object).
SNI_ATTRIBUTE = "pylon_server_name"


def remember_server_name(ssl_object: Any, server_name: str | None, context: ssl.SSLContext) -> None:
    """SSLContext.sni_callback: keep the client's SNI where ConnectionInfo can read it (None: go on)."""
    if server_name:
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)


def certificate_sans(certificate: x509.Certificate, kind: Any) -> list[str]:
    """The SANs of one kind (x509.UniformResourceIdentifier, x509.DNSName, ...) of a certificate, as text."""
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [str(value) for value in extension.value.get_values_for_type(kind)]


class PeerCertificate:
    """The client certificate of an mTLS connection, parsed."""

    def __init__(self, der: bytes) -> None:
        self.der = der
        self.certificate = x509.load_der_x509_certificate(der)

    @cached_property
    def uri_sans(self) -> list[str]:
        return certificate_sans(self.certificate, x509.UniformResourceIdentifier)

    @cached_property
    def dns_sans(self) -> list[str]:
        return certificate_sans(self.certificate, x509.DNSName)

    @cached_property
    def subject(self) -> str:
        """RFC 2253 form, as Envoy prints it."""
        return self.certificate.subject.rfc4514_string()

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.der).hexdigest()



def transport_address(raw: Any) -> Any:
    """A transport's peername or sockname as pylon keeps it: (ip, port) of a socket, the `envoy://` text of an
    internal connection's side (internal_listener.py), None if unknown."""
    if not raw:
        return None
    return raw if isinstance(raw, str) else raw[:2]


def address_host(address: Any) -> str:
    """An address without its port (an internal one is all host)."""
    return address if isinstance(address, str) else address[0]


def spell_address(address: Any) -> str:
    """`ip:port`, or an internal address's text."""
    return address if isinstance(address, str) else "%s:%d" % address


class ConnectionInfo:
    """One downstream connection's facts (built on first use, then kept with the connection)."""

    def __init__(self, connection_id: int, local: tuple[str, int] | None, remote: tuple[str, int] | None,
                 ssl_object: Any = None, server_name: str = "", direct_remote: tuple[str, int] | None = None) -> None:
        self.connection_id = connection_id
        self.local_address = local  # (ip, port) the client connected to
        #: (ip, port) of the socket's peer: the client, or the balancer that sent a PROXY protocol header
        self.direct_remote_address = direct_remote or remote
        #: the original destination a listener filter (original_dst) restored, else None: an ORIGINAL_DST cluster
        #: connects there, and has no host without it (Envoy's localAddressRestored)
        self.restored_local: tuple[str, int] | None = None
        self.remote_address = remote  # (ip, port) of the client: a PROXY header's source, else the socket's peer
        self.ssl_object = ssl_object
        self.requested_server_name = server_name or (getattr(ssl_object, SNI_ATTRIBUTE, "") if ssl_object else "")
        # The SNI as Envoy's filters see it (its requestedServerName): only a listener filter (tls_inspector)
        # sets it. Observed with Envoy 1.40: without tls_inspector, RBAC's requested_server_name sees "" on a
        # TLS connection whose client sent an SNI.
        self.inspected_server_name = server_name
        # The upstream port a network filter chose (Envoy's filter state `envoy.upstream.dynamic_port`, which the
        # SNI dynamic forward proxy filter sets and a dynamic forward proxy cluster reads; 0: none).
        self.dynamic_port = 0
        # Why a network filter closed the connection (Envoy's %CONNECTION_TERMINATION_DETAILS%), None if none did.
        self.termination_details: str | None = None

    @property
    def tls(self) -> bool:
        return self.ssl_object is not None

    @cached_property
    def peer_certificate(self) -> PeerCertificate | None:
        if self.ssl_object is None:
            return None
        der = self.ssl_object.getpeercert(binary_form=True)
        return PeerCertificate(der) if der else None

    @cached_property
    def negotiated_protocol(self) -> str:
        """The ALPN protocol the handshake chose ("" without TLS or ALPN)."""
        return (self.ssl_object.selected_alpn_protocol() or "") if self.ssl_object is not None else ""
