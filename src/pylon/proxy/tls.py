"""TLS contexts built from Envoy's `DownstreamTlsContext` / `UpstreamTlsContext`.

The data path terminates and originates TLS with the stdlib `ssl` module (the
system OpenSSL 3). This module is the one place where an `ssl.SSLContext` is
built from config, so that the private-key hook (a later step) has a single
context to attach to; the `SSLContext` is never hidden.

What follows Envoy's semantics, and where OpenSSL forces a difference:

* Versions: `TLS_AUTO` means min TLS 1.2 for both sides, max TLS 1.3 for servers
  and TLS 1.2 for clients (Envoy's documented defaults in `TlsParameters`).
* `cipher_suites` only affect TLS <= 1.2, as in Envoy. BoringSSL's
  equal-preference groups `[A|B]` do not exist in OpenSSL: the group is
  flattened to `A:B` (so under server preference `A` wins whenever the client
  offers both). Each name must be known to OpenSSL on its own; unlike
  OpenSSL's lenient list parser, one unknown name is an error (as in Envoy).
* `ecdh_curves` are set with `SSL_CTX_set1_groups_list` (all of them, in
  order), not with `SSLContext.set_ecdh_curve`, which takes a single curve.
* Session resumption. BoringSSL, under Envoy, resumes TLS 1.3 only through
  tickets, and `SSL_OP_NO_TICKET` stops TLS 1.3 tickets altogether;
  OpenSSL would instead issue *stateful* TLS 1.3 tickets backed by the session
  cache. So `disable_stateless_session_resumption` sets `OP_NO_TICKET` and
  `num_tickets = 0`, and `disable_stateful_session_resumption` switches the
  server session cache off, which (as Envoy documents) only matters for TLS
  <= 1.2. `session_timeout` sets the session lifetime (`SSL_CTX_set_timeout`),
  which is also the TLS 1.2 ticket lifetime hint.
* Peer validation: `trusted_ca` verifies the chain during the handshake (with
  `X509_V_FLAG_PARTIAL_CHAIN`, as Envoy sets it). SAN matchers run after the
  handshake in `verify_peer`, with Envoy's rules: any matcher on any SAN of its
  type; an `exact` matcher on a DNS SAN follows DNS wildcard rules; the
  deprecated untyped `match_subject_alt_names` apply to DNS, URI, email and IP
  SANs and are ignored when typed matchers are present. Upstream, without a
  validation context the server certificate is not verified at all (Envoy's
  default), and there is no implicit hostname check.
* Revocation: `crl` loads the CRLs into the context's store (a PEM file OpenSSL reads, so
  certificates and CRLs alike) with `VERIFY_CRL_CHECK_CHAIN` (Envoy's CRL_CHECK |
  CRL_CHECK_ALL), or `VERIFY_CRL_CHECK_LEAF` with `only_verify_leaf_cert_crl`: a revoked
  peer certificate fails the handshake.

Knobs that `ssl.SSLContext` lacks are reached through the `SSL_CTX*` inside it
(`pylon.openssl.context.OpenSslContext`), resolved in the same libssl that `_ssl` uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pylon.config.datasource import DataSourceError, read_bytes
from pylon.config.errors import FieldError
from pylon.config.secrets import resolve
from pylon.openssl.context import SSL_MODE_NO_AUTO_CHAIN, SSL_SESS_CACHE_OFF, OpenSslContext
from pylon.proxy.connection_info import certificate_sans, remember_server_name
from pylon.proxy.tls_transport import native_tls_available, tls_protocol_factory
from pylon.regex import get_engine

if TYPE_CHECKING:
    from pylon.config.datasource import DataSource
    from pylon.config.envoy import (
        CertificateValidationContext,
        CommonTlsContext,
        DownstreamTlsContext,
        Secret,
        StringMatcher,
        TlsCertificate,
        TlsParameters,
        UpstreamTlsContext,
    )

__all__ = [
    "ClientTls",
    "DEFAULT_CIPHER_SUITES",
    "DEFAULT_ECDH_CURVES",
    "HostSanVerifier",
    "PeerVerifier",
    "SanMatcher",
    "ServerTls",
    "TlsConfigError",
    "UnavailableTls",
    "check_secret",
    "client_context",
    "dns_name_match",
    "peer_sans",
    "server_context",
]

#: Envoy's default TLS <= 1.2 cipher list (non-FIPS), the same for servers and clients,
#: with its equal-preference groups flattened. It contains no RSA key-transport suite,
#: which the private-key hook relies on (it only signs).
DEFAULT_CIPHER_SUITES = (
    "[ECDHE-ECDSA-AES128-GCM-SHA256|ECDHE-ECDSA-CHACHA20-POLY1305]",
    "[ECDHE-RSA-AES128-GCM-SHA256|ECDHE-RSA-CHACHA20-POLY1305]",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)

#: No secrets: a context that names none needs none.
_NO_SECRETS: Mapping[str, Secret] = {}

#: Envoy's default key-exchange groups (non-FIPS).
DEFAULT_ECDH_CURVES = ("X25519", "P-256")

_VERSIONS = {
    "TLSv1_0": ssl.TLSVersion.TLSv1,
    "TLSv1_1": ssl.TLSVersion.TLSv1_1,
    "TLSv1_2": ssl.TLSVersion.TLSv1_2,
    "TLSv1_3": ssl.TLSVersion.TLSv1_3,
}

class TlsConfigError(Exception):
    """A TLS context cannot be built from its config.

    `path` is relative to the `DownstreamTlsContext`/`UpstreamTlsContext` given
    (e.g. `common_tls_context.tls_certificates[0].private_key`); the caller
    prefixes the path of that context in the whole config.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------------------
# Peer certificate checks (sans-IO: DER bytes in, verdict out)
# --------------------------------------------------------------------------------------

_SAN_TYPES = ("DNS", "URI", "EMAIL", "IP_ADDRESS")
_SAN_CLASSES: dict[str, type[x509.GeneralName]] = {
    "DNS": x509.DNSName,
    "URI": x509.UniformResourceIdentifier,
    "EMAIL": x509.RFC822Name,
    "IP_ADDRESS": x509.IPAddress,
}


def dns_name_match(name: str, pattern: str) -> bool:
    """Does DNS name `name` match certificate SAN `pattern` (which may be a wildcard)?

    Envoy's rules: case-insensitive; a `*` may appear once, in the left-most
    label only, never in an A-label (`xn--`); it matches within that one label
    (`*.example.com` matches `a.example.com`, not `a.b.example.com`; `w*.x.com`
    matches `www.x.com`).
    """
    name, pattern = name.lower(), pattern.lower()
    if name == pattern:
        return True
    name_label, _, name_rest = name.partition(".")
    pattern_label, _, pattern_rest = pattern.partition(".")
    if not name_rest or not pattern_rest:
        return False
    if "*" not in pattern_label or "*" in pattern_rest or pattern_label.startswith("xn--"):
        return False
    if name_rest != pattern_rest:
        return False
    if pattern_label == "*":
        return True
    if pattern_label.count("*") != 1:
        return False
    head, _, tail = pattern_label.partition("*")
    return len(pattern_label) <= len(name_label) + 1 and name_label.startswith(head) and name_label.endswith(tail)


def _string_predicate(matcher: StringMatcher, path: str) -> Callable[[str], bool]:
    """Envoy's StringMatcher as a predicate; `ignore_case` applies to all but `safe_regex`."""
    fold = matcher.ignore_case
    if matcher.exact is not None:
        want = matcher.exact.lower() if fold else matcher.exact
        return (lambda s: s.lower() == want) if fold else (lambda s: s == want)
    if matcher.prefix is not None:
        want = matcher.prefix.lower() if fold else matcher.prefix
        return (lambda s: s.lower().startswith(want)) if fold else (lambda s: s.startswith(want))
    if matcher.suffix is not None:
        want = matcher.suffix.lower() if fold else matcher.suffix
        return (lambda s: s.lower().endswith(want)) if fold else (lambda s: s.endswith(want))
    if matcher.contains is not None:
        want = matcher.contains.lower() if fold else matcher.contains
        return (lambda s: want in s.lower()) if fold else (lambda s: want in s)
    assert matcher.safe_regex is not None  # the model guarantees exactly one match kind
    try:
        return get_engine().compile(matcher.safe_regex.regex).fullmatch
    except ValueError as exc:  # e.g. above Envoy's RE2 program size limit
        raise TlsConfigError(f"{path}.safe_regex.regex", str(exc)) from None


@dataclass(frozen=True)
class SanMatcher:
    """One `SubjectAltNameMatcher`: a SAN type and a predicate on that SAN's text."""

    san_type: str
    description: str
    predicate: Callable[[str], bool]

    def matches(self, sans: dict[str, list[str]]) -> bool:
        return any(self.predicate(value) for value in sans.get(self.san_type, ()))


_MATCH_KINDS = ("exact", "prefix", "suffix", "contains", "safe_regex")


def _san_matcher(san_type: str, matcher: StringMatcher, path: str) -> SanMatcher:
    if san_type == "DNS" and matcher.exact is not None:
        exact = matcher.exact
        return SanMatcher(san_type, f"DNS exact {exact!r}", lambda san: dns_name_match(exact, san))
    kind, value = next((k, v) for k in _MATCH_KINDS if (v := getattr(matcher, k)) is not None)
    text = value.regex if kind == "safe_regex" else value
    return SanMatcher(san_type, f"{san_type} {kind} {text!r}", _string_predicate(matcher, path))


def peer_sans(der: bytes) -> dict[str, list[str]]:
    """SANs of a DER certificate by Envoy SAN type, in Envoy's text forms (IPs compressed: `::1`)."""
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return {}
    return {
        san_type: [str(value) for value in names.get_values_for_type(cls)]  # type: ignore[arg-type]
        for san_type, cls in _SAN_CLASSES.items()
    }


class PeerVerifier:
    """The post-handshake part of peer validation: SAN matching.

    The chain itself is verified by OpenSSL during the handshake; this checks
    what OpenSSL cannot express. Sans-IO: `verify_der` takes the peer's DER
    certificate (or None) and returns None when acceptable, else a reason.
    """

    def __init__(self, matchers: Sequence[SanMatcher]) -> None:
        self.matchers = tuple(matchers)

    def verify_der(self, der: bytes | None) -> str | None:
        if not self.matchers:
            return None
        if der is None:
            return "peer presented no certificate, but SAN matchers are configured"
        try:
            sans = peer_sans(der)
        except ValueError as exc:  # OpenSSL accepted it, but its extensions do not parse
            return f"cannot read the peer certificate's SANs: {exc}"
        if any(matcher.matches(sans) for matcher in self.matchers):
            return None
        present = ", ".join(f"{t}:{v}" for t in _SAN_TYPES for v in sans.get(t, ())) or "none"
        wanted = "; ".join(m.description for m in self.matchers)
        return f"peer certificate SANs ({present}) match none of: {wanted}"

    def verify(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """Check a completed handshake (`transport.get_extra_info("ssl_object")`)."""
        if not self.matchers:
            return None
        return self.verify_der(ssl_object.getpeercert(binary_form=True))


class HostSanVerifier(PeerVerifier):
    """auto_san_validation: the configured SAN matchers, then a SAN for the request's host.

    As Envoy's check of a SAN list given per connection: a DNS SAN matches the host by the DNS wildcard rules,
    any other SAN (URI, email, IP) by its text. The chain must have been verified against a trusted CA: without
    one Envoy fails every such connection, and so does pylon.
    """

    def __init__(self, matchers: Sequence[SanMatcher], host: str, chain_verified: bool) -> None:
        super().__init__(matchers)
        self.host = host
        self.chain_verified = chain_verified

    def verify_der(self, der: bytes | None) -> str | None:
        if not self.chain_verified:
            return f"cannot verify the upstream certificate for {self.host!r} (auto_san_validation): no trusted CA"
        problem = super().verify_der(der)
        if problem is not None:
            return problem
        if der is None:
            return "peer presented no certificate, but auto_san_validation needs one"
        try:
            sans = peer_sans(der)
        except ValueError as exc:
            return f"cannot read the peer certificate's SANs: {exc}"
        host = self.host
        if any(dns_name_match(host, pattern) for pattern in sans.get("DNS", ())) or any(
                host == value for san_type in ("URI", "EMAIL", "IP_ADDRESS") for value in sans.get(san_type, ())):
            return None
        present = ", ".join(f"{t}:{v}" for t in _SAN_TYPES for v in sans.get(t, ())) or "none"
        return f"peer certificate SANs ({present}) do not include the request's host {host!r} (auto_san_validation)"

    def verify(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        return self.verify_der(ssl_object.getpeercert(binary_form=True))


def _peer_verifier(validation: CertificateValidationContext, path: str) -> PeerVerifier:
    matchers: list[SanMatcher] = []
    if validation.match_typed_subject_alt_names:
        for i, typed in enumerate(validation.match_typed_subject_alt_names):
            where = f"{path}.match_typed_subject_alt_names[{i}]"
            matchers.append(_san_matcher(typed.san_type, typed.matcher, f"{where}.matcher"))
    else:
        # Deprecated untyped matchers: Envoy tries each against every supported SAN type.
        for i, matcher in enumerate(validation.match_subject_alt_names):
            where = f"{path}.match_subject_alt_names[{i}]"
            matchers += [_san_matcher(san_type, matcher, where) for san_type in _SAN_TYPES]
    return PeerVerifier(matchers)


# --------------------------------------------------------------------------------------
# Building contexts
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerTls:
    """A downstream (listener) TLS context and its post-handshake peer check.

    Listeners serve with `loop_ssl_context` (None) and `wrap_protocol_factory(factory)`,
    which terminates TLS in `pylon.proxy.tls_transport`, driven by the native module: it
    costs less per record than uvloop's SSL layer, and handshakes can wait for a private
    key provider's operation, which uvloop's cannot. Only where the native module is not
    built do key-file listeners fall back to uvloop's SSL (`ssl=` the plain context).
    """

    context: ssl.SSLContext
    verifier: PeerVerifier
    key_ops: tuple[Any, ...] = ()
    certificate_chain: bytes = b""  # the first certificate's chain (PEM), for XFCC's By=

    def verify_peer(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """None when the client is acceptable, else why not (Envoy's `ssl.fail_verify_san`)."""
        return self.verifier.verify(ssl_object)

    def uri_sans(self) -> list[str]:
        """The URI SANs of the listener's (first) certificate: XFCC's `By=` elements."""
        if not self.certificate_chain:
            return []
        leaf = x509.load_pem_x509_certificate(self.certificate_chain)
        return certificate_sans(leaf, x509.UniformResourceIdentifier)

    @property
    def loop_ssl_context(self) -> ssl.SSLContext | None:
        """The `ssl=` argument for `loop.create_server` (None when pylon terminates TLS itself)."""
        return None if self.key_ops or native_tls_available() else self.context

    def wrap_protocol_factory(self, factory: Callable[[], Any], stats: Any = None) -> Callable[[], Any]:
        """The protocol factory to serve with: wrapped in pylon's TLS transport (counting failed handshakes in
        `stats`), or `factory` itself when uvloop's SSL serves the listener."""
        if self.loop_ssl_context is not None:
            return factory
        return tls_protocol_factory(self.context, factory, stats)

    def bind_stats(self, stats: Any) -> None:
        """Record provider stats (e.g. `cryptomb.rsa_queue_sizes`) in this worker's StatsStore."""
        for ops in self.key_ops:
            bind = getattr(ops, "bind_stats", None)
            if bind is not None:
                bind(stats)


@dataclass(frozen=True)
class ClientTls:
    """An upstream (cluster) TLS context, the SNI to send, and the post-handshake peer check."""

    context: ssl.SSLContext
    server_hostname: str | None
    verifier: PeerVerifier

    def verify_peer(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> str | None:
        """None when the server is acceptable, else why not (Envoy's `ssl.fail_verify_san`)."""
        return self.verifier.verify(ssl_object)

    def for_host(self, server_name: str | None, san: str | None) -> ClientTls:
        """This TLS for connections made for one request host (auto_sni / auto_san_validation): `server_name` as
        SNI (None: the context's own `sni`), and `san` required of the server certificate (None: no more than the
        configured matchers). The SSLContext is shared: only the per-connection settings differ."""
        verifier = self.verifier if san is None else HostSanVerifier(
            self.verifier.matchers, san, self.context.verify_mode == ssl.CERT_REQUIRED)
        return ClientTls(self.context, server_name if server_name is not None else self.server_hostname, verifier)


@dataclass(frozen=True)
class UnavailableTls:
    """The TLS of a listener chain or cluster whose SDS secret `missing` has not come (initial_fetch_timeout
    passed, or it was never served): its connections are refused, never carried in cleartext."""

    missing: str

    @property
    def reason(self) -> str:
        return f"the TLS secret {self.missing!r} has not been received"


def server_context(cfg: DownstreamTlsContext, secrets: Mapping[str, Secret] = _NO_SECRETS, *,
                   skip_missing: bool = False) -> ServerTls:
    """An `ssl.SSLContext` for a listener, from Envoy's `DownstreamTlsContext`.

    The config model already guarantees what needs no OpenSSL to check (a
    certificate is present, `require_client_certificate` and SAN matchers come
    with a `trusted_ca`, min <= max version); everything else that can be wrong
    raises `TlsConfigError`. Secrets the context names come from `secrets`
    (`config/secrets.py`): one not there raises SecretMissing, or with
    `skip_missing` (checking a config whose secrets have not come) is left out.
    """
    common = _resolve(cfg.common_tls_context, secrets, skip_missing)
    if cfg.require_client_certificate and not skip_missing and not (
            common.validation_context is not None and common.validation_context.trusted_ca is not None):
        raise TlsConfigError("require_client_certificate", "the validation context from SDS has no trusted_ca")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.sni_callback = remember_server_name  # the SNI, for filters (connection_info.py)
    handle = OpenSslContext(context)
    _apply_common(handle, common, server=True)
    key_ops = _load_certificates(context, common.tls_certificates, server=True)

    verifier, has_ca = _apply_validation(context, common)
    if has_ca:
        # Envoy requests a client certificate whenever a CA is configured, and requires
        # one when asked to or when SAN matchers need a certificate to look at.
        required = cfg.require_client_certificate or verifier.matchers
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL

    if cfg.disable_stateless_session_resumption:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    if cfg.disable_stateful_session_resumption:
        handle.session_cache_mode = SSL_SESS_CACHE_OFF
    if cfg.session_timeout is not None:
        handle.timeout = int(cfg.session_timeout)  # whole seconds, as in Envoy
    chain = _read(common.tls_certificates[0].certificate_chain, "") if common.tls_certificates else b""
    return ServerTls(context=context, verifier=verifier, key_ops=key_ops, certificate_chain=chain)


def _apply_validation(context: ssl.SSLContext, common: CommonTlsContext) -> tuple[PeerVerifier, bool]:
    """The peer verifier of `common.validation_context`, its trusted CA loaded into `context`;
    and whether there was a CA (each side then sets its own verify mode)."""
    validation = common.validation_context
    if validation is None:
        return PeerVerifier(()), False
    path = "common_tls_context.validation_context"
    verifier = _peer_verifier(validation, path)
    if validation.trusted_ca is None:
        return verifier, False
    _load_trusted_ca(context, validation.trusted_ca, f"{path}.trusted_ca")
    if validation.crl is not None:
        _load_crl(context, validation.crl, f"{path}.crl", validation.only_verify_leaf_cert_crl)
    return verifier, True


def client_context(cfg: UpstreamTlsContext, secrets: Mapping[str, Secret] = _NO_SECRETS, *,
                   skip_missing: bool = False) -> ClientTls:
    """An `ssl.SSLContext` for a cluster, from Envoy's `UpstreamTlsContext` (secrets as in `server_context`)."""
    common = _resolve(cfg.common_tls_context, secrets, skip_missing)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # Envoy checks only the SANs configured, never implicitly
    context.verify_mode = ssl.CERT_NONE
    _apply_common(OpenSslContext(context), common, server=False)
    if cfg.allow_renegotiation:
        context.options &= ~ssl.OP_NO_RENEGOTIATION
    if len(common.tls_certificates) > 1:
        raise TlsConfigError(
            "common_tls_context.tls_certificates", "a client TLS context takes at most one certificate"
        )
    _load_certificates(context, common.tls_certificates, server=False)

    verifier, has_ca = _apply_validation(context, common)
    if has_ca:
        context.verify_mode = ssl.CERT_REQUIRED
    return ClientTls(context=context, server_hostname=cfg.sni or None, verifier=verifier)


def _resolve(common: CommonTlsContext, secrets: Mapping[str, Secret], skip_missing: bool) -> CommonTlsContext:
    try:
        return resolve(common, secrets, skip_missing=skip_missing)
    except FieldError as exc:
        raise TlsConfigError(f"common_tls_context.{exc.rel_path}", exc.message) from None


def check_secret(secret: Secret) -> None:
    """TlsConfigError (its path below the secret) unless the secret's certificate and key, or its CA and SAN
    matchers, load: an SDS update is checked before anything uses it."""
    if secret.tls_certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            _load_certificates(context, [secret.tls_certificate], server=True)
        except TlsConfigError as exc:
            raise TlsConfigError(exc.path.replace("common_tls_context.tls_certificates[0]", "tls_certificate", 1),
                                 exc.message) from None
    if secret.validation_context is not None:
        _peer_verifier(secret.validation_context, "validation_context")
        if secret.validation_context.trusted_ca is not None:
            _load_trusted_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), secret.validation_context.trusted_ca,
                             "validation_context.trusted_ca")
        if secret.validation_context.crl is not None:
            _load_crl(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), secret.validation_context.crl,
                      "validation_context.crl", False)


def _apply_common(handle: OpenSslContext, common: CommonTlsContext, *, server: bool) -> None:
    """Settings shared by both sides: versions, ciphers, groups, ALPN, chain verification flags."""
    context = handle.context
    params: TlsParameters = common.tls_params
    path = "common_tls_context.tls_params"
    # TLS_AUTO: Envoy's documented defaults.
    context.minimum_version = _VERSIONS.get(params.tls_minimum_protocol_version, ssl.TLSVersion.TLSv1_2)
    default_max = ssl.TLSVersion.TLSv1_3 if server else ssl.TLSVersion.TLSv1_2
    context.maximum_version = _VERSIONS.get(params.tls_maximum_protocol_version, default_max)
    if context.minimum_version > context.maximum_version:
        # Only reachable through TLS_AUTO: e.g. an upstream min of TLSv1_3 with the default max.
        raise TlsConfigError(
            f"{path}.tls_minimum_protocol_version",
            f"{params.tls_minimum_protocol_version} is above the maximum version "
            f"({context.maximum_version.name}); set tls_maximum_protocol_version too",
        )
    _apply_ciphers(context, params.cipher_suites or DEFAULT_CIPHER_SUITES, f"{path}.cipher_suites")
    try:
        handle.set_groups(params.ecdh_curves or DEFAULT_ECDH_CURVES)
    except ValueError as exc:
        raise TlsConfigError(f"{path}.ecdh_curves", str(exc)) from None
    if common.alpn_protocols:
        context.set_alpn_protocols(list(common.alpn_protocols))
    # Envoy sets X509_V_FLAG_PARTIAL_CHAIN: an intermediate in trusted_ca is a trust anchor.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    # BoringSSL servers never renegotiate, and Envoy clients refuse it unless allowed.
    context.options |= ssl.OP_NO_RENEGOTIATION
    # Envoy (BoringSSL) sends exactly the configured certificate_chain. OpenSSL would instead build a chain for a
    # certificate file without intermediates from the trust store on every handshake (X509_verify_cert each time)
    # and send whatever it found there, the trusted CA of an mTLS listener included.
    handle.add_mode(SSL_MODE_NO_AUTO_CHAIN)


def _apply_ciphers(context: ssl.SSLContext, suites: Sequence[str], path: str) -> None:
    """Set the TLS <= 1.2 cipher list, strictly: every name must be a cipher OpenSSL knows."""
    names: list[str] = []
    for i, entry in enumerate(suites):
        where = f"{path}[{i}]"
        if entry.startswith("["):
            if not entry.endswith("]") or len(entry) < 3:
                raise TlsConfigError(where, f"malformed equal-preference group {entry!r}")
            group = entry[1:-1].split("|")
        else:
            group = [entry]
        for name in group:
            if not name or any(c in name for c in ":[]|,! +@") or not _cipher_known(context, name):
                raise TlsConfigError(where, f"unknown cipher {name!r}")
            names.append(name)
    context.set_ciphers(":".join(names))


def _cipher_known(context: ssl.SSLContext, name: str) -> bool:
    """Whether OpenSSL selects anything for `name` alone (the list is set again afterwards)."""
    try:
        context.set_ciphers(name)
    except ssl.SSLError:
        return False
    return True


def _read(source: DataSource, path: str) -> bytes:
    try:
        return read_bytes(source)
    except DataSourceError as exc:
        raise TlsConfigError(path, str(exc)) from None


def _load_certificates(
    context: ssl.SSLContext, certificates: Sequence[TlsCertificate], *, server: bool
) -> tuple[Any, ...]:
    """Load each certificate chain and key, after checking them with clear errors.

    OpenSSL keeps one certificate per key type in an `SSL_CTX`, so a server may
    hold an RSA and an ECDSA certificate (chosen per client, as in Envoy), but
    two of the same type would silently replace each other: that is an error.
    Returns the private key providers serving the certificates (see
    `_load_provider_certificate`).
    """
    seen: dict[str, int] = {}
    key_ops: list[Any] = []
    for i, certificate in enumerate(certificates):
        path = f"common_tls_context.tls_certificates[{i}]"
        chain = _read(certificate.certificate_chain, f"{path}.certificate_chain")
        if certificate.private_key is None:
            leaf, ops = _load_provider_certificate(context, certificate, chain, path, server=server)
            _one_per_key_type(leaf, seen, i, path)
            if ops is not None:
                key_ops.append(ops)
            continue
        key = _read(certificate.private_key, f"{path}.private_key")
        leaf = _check_pair(chain, key, path)
        _one_per_key_type(leaf, seen, i, path)
        _load_pair(context, chain, key, path)
    return tuple(dict.fromkeys(key_ops))  # shared providers once


def _one_per_key_type(leaf: x509.Certificate, seen: dict[str, int], i: int, path: str) -> None:
    key_type = "RSA" if isinstance(leaf.public_key(), rsa.RSAPublicKey) else "ECDSA"
    if key_type in seen:
        raise TlsConfigError(
            path,
            f"a second {key_type} certificate (the first is tls_certificates[{seen[key_type]}]); "
            "one certificate per key type is supported (no SNI-based selection)",
        )
    seen[key_type] = i


def _load_pair(context: ssl.SSLContext, chain: bytes, key: bytes, path: str) -> None:
    with _memory_file(chain) as chain_path, _memory_file(key) as key_path:
        try:
            context.load_cert_chain(chain_path, key_path)
        except ssl.SSLError as exc:
            raise TlsConfigError(path, f"OpenSSL rejected the certificate or key: {exc}") from None


def _load_provider_certificate(
    context: ssl.SSLContext, certificate: TlsCertificate, chain: bytes, path: str, *, server: bool
) -> tuple[x509.Certificate, Any]:
    """Install a certificate whose private operations go to its `private_key_provider`.

    The context gets a hooked key built from the certificate's public key
    (`pylon.keys`); server contexts run in SSL_MODE_ASYNC so a handshake can
    wait for the provider. Client contexts stay synchronous: uvloop drives
    upstream handshakes, so the operation runs on the calling thread. Returns
    the leaf and the provider's ops, or None when the provider fell back to
    the key file (`fallback: true`).
    """
    from pylon.keys.hook import HookedKey, HookError, install_hooked_key
    from pylon.keys.providers import ProviderError, plan_provider

    where = f"{path}.private_key_provider"
    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise TlsConfigError(f"{path}.certificate_chain", "no valid PEM certificate found") from None
    try:
        plan = plan_provider(certificate.private_key_provider, leaf.public_key())  # type: ignore[arg-type]
    except ProviderError as exc:
        raise TlsConfigError(f"{where}.{exc.path}" if exc.path else where, exc.message) from None
    if plan.private_pem is not None:
        _check_pair(chain, plan.private_pem, path)
    if plan.ops is None:
        assert plan.private_pem is not None
        _load_pair(context, chain, plan.private_pem, path)
        return leaf, None
    try:
        hooked = HookedKey(leaf.public_key(), plan.ops, plan.private_pem)  # type: ignore[arg-type]
        install_hooked_key(context, chain, hooked, async_mode=server)
    except HookError as exc:
        raise TlsConfigError(where, str(exc)) from None
    return leaf, plan.ops


def _check_pair(chain: bytes, key: bytes, path: str) -> x509.Certificate:
    """The leaf of `chain`, after checking that chain and key parse and belong together."""
    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise TlsConfigError(f"{path}.certificate_chain", "no valid PEM certificate found") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise TlsConfigError(
            f"{path}.private_key", "the key is encrypted (password-protected keys are not supported)"
        ) from None
    except ValueError as exc:
        raise TlsConfigError(f"{path}.private_key", f"not a usable PEM private key: {exc}") from None
    if not isinstance(private, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise TlsConfigError(
            f"{path}.private_key", f"unsupported key type {type(private).__name__} (RSA or ECDSA only)"
        )
    if private.public_key() != certs[0].public_key():
        raise TlsConfigError(path, "private_key does not match the first certificate of certificate_chain")
    return certs[0]


def _load_trusted_ca(context: ssl.SSLContext, source: DataSource, path: str) -> None:
    data = _read(source, path)
    try:
        cas = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TlsConfigError(path, "no valid PEM certificate found") from None
    pem = "".join(ca.public_bytes(serialization.Encoding.PEM).decode() for ca in cas)
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise TlsConfigError(path, f"OpenSSL rejected the CA certificates: {exc}") from None


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _load_crl(context: ssl.SSLContext, source: DataSource, path: str, leaf_only: bool) -> None:
    """Load every PEM CRL of `source` into the context's trust store and turn revocation checks on.

    `load_verify_locations(cadata=...)` takes certificates only; a file (in memory) is read by OpenSSL's
    X509_load_cert_crl_file, which takes CRLs too.
    """
    data = _read(source, path)
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        raise TlsConfigError(path, "no valid PEM CRL found")
    for i, block in enumerate(blocks):
        try:
            x509.load_pem_x509_crl(block)
        except ValueError as exc:
            raise TlsConfigError(path, f"CRL {i} does not parse: {exc}") from None
    with _memory_file(b"\n".join(blocks) + b"\n") as crl_path:
        try:
            context.load_verify_locations(cafile=crl_path)
        except ssl.SSLError as exc:
            raise TlsConfigError(path, f"OpenSSL rejected the CRL: {exc}") from None
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF if leaf_only else ssl.VERIFY_CRL_CHECK_CHAIN


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can open whose bytes live only in memory (memfd), closed on exit.

    `load_cert_chain` accepts only paths; an anonymous memory file keeps key
    material off the disk entirely, so nothing is left behind even on a crash.
    """
    fd = os.memfd_create("pylon-tls", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as out:
            out.write(data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)
