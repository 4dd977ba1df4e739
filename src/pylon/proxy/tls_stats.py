"""Envoy's `ssl.*` stats of a listener or a cluster: handshakes, verification failures, versions, ciphers.

Operators read these to see whether mTLS works: `ssl.handshake` counts
completed handshakes, `ssl.fail_verify_san` peers whose certificate the SAN
matchers refused (Envoy checks SANs inside the handshake, so such a
connection counts no `handshake`), `ssl.fail_verify_no_cert` and
`ssl.fail_verify_error` peers without an acceptable certificate,
`ssl.connection_error` other failed handshakes, `ssl.no_certificate` completed
handshakes whose peer sent none, `ssl.session_reused`, and one counter per
negotiated `ssl.versions.<version>` and `ssl.ciphers.<cipher>`. Names are
Envoy's, under `listener.<address>.` or `cluster.<name>.`.
"""

from __future__ import annotations

import ssl
from typing import Any

#: OpenSSL's reasons for a handshake that failed on the peer's certificate.
_NO_CERTIFICATE = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"


class TlsStats:
    """The `ssl.*` counters under one stats prefix (a listener's or a cluster's)."""

    def __init__(self, stats: Any, prefix: str) -> None:
        self.stats = stats
        self.prefix = prefix + "ssl."
        self.handshake = stats.counter(self.prefix + "handshake")
        self.session_reused = stats.counter(self.prefix + "session_reused")
        self.no_certificate = stats.counter(self.prefix + "no_certificate")
        self.fail_verify_san = stats.counter(self.prefix + "fail_verify_san")
        self.fail_verify_no_cert = stats.counter(self.prefix + "fail_verify_no_cert")
        self.fail_verify_error = stats.counter(self.prefix + "fail_verify_error")
        self.connection_error = stats.counter(self.prefix + "connection_error")
        self._negotiated: dict[tuple[str, str], list[Any]] = {}

    def handshake_done(self, ssl_object: Any) -> None:
        """A handshake completed and the peer passed every check."""
        self.handshake.inc()
        if ssl_object is None:
            return
        if ssl_object.session_reused:
            self.session_reused.inc()
        if not ssl_object.getpeercert(binary_form=True):
            self.no_certificate.inc()
        cipher = ssl_object.cipher()
        key = (ssl_object.version(), cipher[0] if cipher else "")
        counters = self._negotiated.get(key)
        if counters is None:  # once per version and cipher: no name formatting per handshake
            counters = self._negotiated[key] = [self.stats.counter(f"{self.prefix}versions.{key[0]}")]
            if key[1]:
                counters.append(self.stats.counter(f"{self.prefix}ciphers.{key[1]}"))
        for counter in counters:
            counter.inc()

    def handshake_failed(self, exc: BaseException) -> None:
        """A handshake that did not complete, counted by why."""
        reason = getattr(exc, "reason", None) if isinstance(exc, ssl.SSLError) else None
        if reason == _NO_CERTIFICATE:
            self.fail_verify_no_cert.inc()
        elif reason == _VERIFY_FAILED:
            self.fail_verify_error.inc()
        else:
            self.connection_error.inc()


def tls_accepted(transport: Any, peer_check: Any, stats: TlsStats) -> bool:
    """Count a downstream TLS connection's handshake; False when the listener's SAN matchers refuse its peer."""
    ssl_object = transport.get_extra_info("ssl_object")
    if peer_check is not None and peer_check(ssl_object) is not None:
        stats.fail_verify_san.inc()
        return False
    stats.handshake_done(ssl_object)
    return True
