"""TLS contexts from Envoy config, proven with real handshakes.

Most handshakes run between an `ssl.SSLObject` pair over memory BIOs (fast and
deterministic, and the same OpenSSL code as sockets); one runs over asyncio on
127.0.0.1, and one against `openssl s_client` to show a non-Python peer works.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from typing import Any

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pylon.config import envoy
from pylon.identity.certs import Issued, KeyType, PemFiles, TestPki, Usage, issue_leaf, make_ca, make_test_pki
from pylon.openssl.context import SSL_SESS_CACHE_OFF, SSL_SESS_CACHE_SERVER, OpenSslContext
from pylon.proxy.tls import (
    PeerVerifier,
    ServerTls,
    TlsConfigError,
    client_context,
    dns_name_match,
    server_context,
)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def file(path) -> dict[str, str]:
    return {"filename": str(path)}


def inline(pem: bytes) -> dict[str, str]:
    return {"inline_string": pem.decode()}


def cert(files: PemFiles) -> dict[str, Any]:
    return {"certificate_chain": file(files.cert), "private_key": file(files.key)}


def inline_cert(issued: Issued) -> dict[str, Any]:
    return {"certificate_chain": inline(issued.cert_pem), "private_key": inline(issued.key_pem)}


def downstream(certs: list[dict[str, Any]], **fields: Any) -> ServerTls:
    """A server context from proto-JSON-shaped config, decoded by the real config model."""
    common = {"tls_certificates": certs, **fields.pop("common", {})}
    cfg = msgspec.convert({"common_tls_context": common, **fields}, envoy.DownstreamTlsContext, dec_hook=envoy.dec_hook)
    return server_context(cfg)


def upstream(**fields: Any):
    common = fields.pop("common", {})
    cfg = msgspec.convert({"common_tls_context": common, **fields}, envoy.UpstreamTlsContext, dec_hook=envoy.dec_hook)
    return client_context(cfg)


def verifying_client(pki: TestPki, **params: Any):
    """An upstream context that trusts the test CA, with optional tls_params."""
    return upstream(common={"validation_context": {"trusted_ca": file(pki.ca.cert)}, "tls_params": params})


def handshake(
    server: ssl.SSLContext,
    client: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    session: ssl.SSLSession | None = None,
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Handshake a server/client pair over memory BIOs, then exchange one message each way.

    The message exchange delivers what follows the handshake (TLS 1.3 session
    tickets, a server's alert for a refused client certificate). The first
    `ssl.SSLError` of either side propagates.
    """
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname=server_hostname, session=session)
    pending = [cli, srv]
    for _ in range(20):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if not pending:
            break
    else:
        raise AssertionError("handshake stalled")
    srv.write(b"ping")
    c_in.write(s_out.read())
    assert cli.read(4) == b"ping"
    cli.write(b"pong")
    s_in.write(c_out.read())
    assert srv.read(4) == b"pong"
    return srv, cli


def peer_key(obj: ssl.SSLObject):
    return x509.load_der_x509_certificate(obj.getpeercert(binary_form=True)).public_key()


# ----------------------------------------------------------------------------- versions, keys, ciphers


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
@pytest.mark.parametrize("key", ["server_rsa", "server_ecdsa"])
def test_handshake_versions_and_key_types(pki, version, key):
    server = downstream([cert(getattr(pki, key))])
    client = verifying_client(pki, tls_minimum_protocol_version=version, tls_maximum_protocol_version=version)
    srv, cli = handshake(server.context, client.context)
    assert cli.version() == srv.version() == version.replace("_", ".")
    expected = rsa.RSAPublicKey if key == "server_rsa" else ec.EllipticCurvePublicKey
    assert isinstance(peer_key(cli), expected)


def test_envoy_default_versions(pki):
    server = downstream([cert(pki.server_rsa)])
    assert (server.context.minimum_version, server.context.maximum_version) == (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_3,
    )
    client = upstream()
    assert (client.context.minimum_version, client.context.maximum_version) == (
        ssl.TLSVersion.TLSv1_2,
        ssl.TLSVersion.TLSv1_2,
    )
    # So a default upstream talks TLS 1.2, as Envoy's does.
    srv, cli = handshake(server.context, client.context)
    assert cli.version() == "TLSv1.2"


def test_minimum_version_enforced(pki):
    server = downstream([cert(pki.server_rsa)], common={"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}})
    tls12_only = verifying_client(pki)  # upstream default max is TLS 1.2
    with pytest.raises(ssl.SSLError, match="(?i)unsupported protocol|protocol version"):
        handshake(server.context, tls12_only.context)
    srv, cli = handshake(server.context, verifying_client(pki, tls_maximum_protocol_version="TLSv1_3").context)
    assert cli.version() == "TLSv1.3"


def test_maximum_version_enforced(pki):
    server = downstream([cert(pki.server_rsa)], common={"tls_params": {"tls_maximum_protocol_version": "TLSv1_2"}})
    client = verifying_client(pki, tls_maximum_protocol_version="TLSv1_3")
    srv, cli = handshake(server.context, client.context)
    assert cli.version() == "TLSv1.2"
    tls13_only = verifying_client(pki, tls_minimum_protocol_version="TLSv1_3", tls_maximum_protocol_version="TLSv1_3")
    with pytest.raises(ssl.SSLError):
        handshake(server.context, tls13_only.context)


def test_rsa_and_ecdsa_certificates_on_one_server(pki):
    server = downstream([cert(pki.server_rsa), cert(pki.server_ecdsa)])
    for suite, expected in (
        ("ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
        ("ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
    ):
        client = verifying_client(pki, cipher_suites=[suite])
        srv, cli = handshake(server.context, client.context)
        assert cli.cipher()[0] == suite
        assert isinstance(peer_key(cli), expected)


def test_cipher_suites_and_equal_preference_groups(pki):
    server = downstream(
        [cert(pki.server_rsa)],
        common={"tls_params": {"cipher_suites": ["[ECDHE-RSA-CHACHA20-POLY1305|ECDHE-RSA-AES128-GCM-SHA256]"]}},
    )
    both = verifying_client(pki, cipher_suites=["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-CHACHA20-POLY1305"])
    # The group is flattened in order and the server's preference wins.
    assert handshake(server.context, both.context)[1].cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305"
    aes_only = verifying_client(pki, cipher_suites=["ECDHE-RSA-AES128-GCM-SHA256"])
    assert handshake(server.context, aes_only.context)[1].cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"
    other = verifying_client(pki, cipher_suites=["ECDHE-RSA-AES256-GCM-SHA384"])
    with pytest.raises(ssl.SSLError, match="(?i)no shared cipher|handshake failure"):
        handshake(server.context, other.context)


def test_default_ciphers_are_envoys(pki):
    names = {c["name"] for c in downstream([cert(pki.server_rsa)]).context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert names == {
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    }


def test_ecdh_curves(pki):
    server = downstream([cert(pki.server_rsa)], common={"tls_params": {"ecdh_curves": ["X25519"]}})
    p256_client = verifying_client(pki, ecdh_curves=["P-256"])
    with pytest.raises(ssl.SSLError):
        handshake(server.context, p256_client.context)
    server = downstream([cert(pki.server_rsa)], common={"tls_params": {"ecdh_curves": ["X25519", "P-256"]}})
    handshake(server.context, p256_client.context)


def test_renegotiation_refused_unless_allowed(pki):
    assert downstream([cert(pki.server_rsa)]).context.options & ssl.OP_NO_RENEGOTIATION
    assert upstream().context.options & ssl.OP_NO_RENEGOTIATION
    assert not upstream(allow_renegotiation=True).context.options & ssl.OP_NO_RENEGOTIATION


# ----------------------------------------------------------------------------- ALPN


@pytest.mark.parametrize(
    ("client_protocols", "expected"),
    [(["http/1.1"], "http/1.1"), (["http/1.1", "h2"], "h2"), (["spdy/3"], None)],
)
def test_alpn(pki, client_protocols, expected):
    server = downstream([cert(pki.server_rsa)], common={"alpn_protocols": ["h2", "http/1.1"]})
    client = upstream(common={"alpn_protocols": client_protocols})
    srv, cli = handshake(server.context, client.context)
    assert cli.selected_alpn_protocol() == srv.selected_alpn_protocol() == expected


# ----------------------------------------------------------------------------- client certificates


def test_mtls_required(pki):
    server = downstream(
        [cert(pki.server_ecdsa)],
        require_client_certificate=True,
        common={"validation_context": {"trusted_ca": file(pki.ca.cert)}},
    )
    assert server.context.verify_mode == ssl.CERT_REQUIRED
    anonymous = verifying_client(pki, tls_maximum_protocol_version="TLSv1_3")
    with pytest.raises(ssl.SSLError, match="(?i)peer did not return a certificate|certificate required"):
        handshake(server.context, anonymous.context)
    with_cert = upstream(
        common={"tls_certificates": [cert(pki.client)], "validation_context": {"trusted_ca": file(pki.ca.cert)}}
    )
    srv, cli = handshake(server.context, with_cert.context)
    assert server.verify_peer(srv) is None
    assert x509.load_der_x509_certificate(srv.getpeercert(binary_form=True)).serial_number == (
        x509.load_pem_x509_certificate(pki.client.cert.read_bytes()).serial_number
    )


def test_client_certificate_optional_but_verified(pki):
    server = downstream([cert(pki.server_rsa)], common={"validation_context": {"trusted_ca": file(pki.ca.cert)}})
    assert server.context.verify_mode == ssl.CERT_OPTIONAL
    srv, _ = handshake(server.context, upstream().context)
    assert srv.getpeercert(binary_form=True) is None
    foreign = make_ca("foreign", key_type=KeyType.ECDSA_P256)
    stranger = issue_leaf(foreign, uris=["spiffe://evil/sa/x"], usage=Usage.CLIENT, key_type=KeyType.ECDSA_P256)
    client = upstream(
        common={"tls_certificates": [inline_cert(stranger)]}
    )
    with pytest.raises(ssl.SSLError, match="(?i)certificate verify failed|unknown ca"):
        handshake(server.context, client.context)


# ----------------------------------------------------------------------------- SAN matching


def spiffe_server(pki, *matchers: dict[str, Any], untyped: list[dict[str, Any]] | None = None) -> ServerTls:
    validation: dict[str, Any] = {"trusted_ca": file(pki.ca.cert)}
    if matchers:
        validation["match_typed_subject_alt_names"] = list(matchers)
    if untyped:
        validation["match_subject_alt_names"] = untyped
    return downstream([cert(pki.server_rsa)], common={"validation_context": validation})


def mtls_client(pki):
    return upstream(common={"tls_certificates": [cert(pki.client)]})


@pytest.mark.parametrize(
    "matcher",
    [
        {"exact": "spiffe://cluster.local/ns/default/sa/client"},
        {"prefix": "spiffe://cluster.local/ns/default/"},
        {"suffix": "/sa/client"},
        {"contains": "/ns/default/"},
        {"safe_regex": {"regex": "spiffe://cluster\\.local/ns/[^/]+/sa/client"}},
        {"exact": "SPIFFE://CLUSTER.LOCAL/ns/default/sa/CLIENT", "ignore_case": True},
    ],
)
def test_uri_san_accepted(pki, matcher):
    server = spiffe_server(pki, {"san_type": "URI", "matcher": matcher})
    srv, _ = handshake(server.context, mtls_client(pki).context)
    assert server.verify_peer(srv) is None


@pytest.mark.parametrize(
    "matcher",
    [
        {"exact": "spiffe://cluster.local/ns/default/sa/other"},
        {"exact": "SPIFFE://CLUSTER.LOCAL/ns/default/sa/CLIENT"},  # case matters without ignore_case
        {"safe_regex": {"regex": "spiffe://cluster\\.local/ns/default"}},  # full match, not search
        {"prefix": "spiffe://other.domain/"},
    ],
)
def test_uri_san_rejected(pki, matcher):
    server = spiffe_server(pki, {"san_type": "URI", "matcher": matcher})
    srv, _ = handshake(server.context, mtls_client(pki).context)
    reason = server.verify_peer(srv)
    assert reason is not None
    assert "URI:spiffe://cluster.local/ns/default/sa/client" in reason


def test_san_type_must_match(pki):
    # The client's only SAN is a URI: a DNS matcher with the same text does not accept it.
    server = spiffe_server(pki, {"san_type": "DNS", "matcher": {"prefix": "spiffe://"}})
    srv, _ = handshake(server.context, mtls_client(pki).context)
    assert server.verify_peer(srv) is not None


def test_san_matchers_require_a_client_certificate(pki):
    server = spiffe_server(pki, {"san_type": "URI", "matcher": {"prefix": "spiffe://"}})
    assert server.context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(ssl.SSLError):
        handshake(server.context, upstream(common={"tls_params": {"tls_maximum_protocol_version": "TLSv1_3"}}).context)


def test_deprecated_untyped_matchers(pki):
    server = spiffe_server(pki, untyped=[{"exact": "spiffe://cluster.local/ns/default/sa/client"}])
    srv, _ = handshake(server.context, mtls_client(pki).context)
    assert server.verify_peer(srv) is None
    # When typed matchers are present the untyped ones are ignored, as in Envoy.
    server = spiffe_server(
        pki,
        {"san_type": "URI", "matcher": {"exact": "spiffe://nobody"}},
        untyped=[{"exact": "spiffe://cluster.local/ns/default/sa/client"}],
    )
    srv, _ = handshake(server.context, mtls_client(pki).context)
    assert server.verify_peer(srv) is not None


def test_upstream_dns_and_ip_san_matching(pki):
    wildcard = issue_leaf(pki.authority, dns_names=["*.svc.example"], ip_addresses=["::1"], key_type=KeyType.ECDSA_P256)
    server = downstream([inline_cert(wildcard)])

    def client(matcher: dict[str, Any], san_type: str = "DNS"):
        return upstream(
            common={
                "validation_context": {
                    "trusted_ca": file(pki.ca.cert),
                    "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": matcher}],
                }
            }
        )

    accepted = [
        client({"exact": "api.svc.example"}),
        client({"exact": "API.SVC.EXAMPLE"}),
        client({"exact": "::1"}, "IP_ADDRESS"),
    ]
    rejected = [client({"exact": "a.b.svc.example"}), client({"exact": "svc.example"}), client({"prefix": "api."})]
    for tls in accepted:
        _, cli = handshake(server.context, tls.context)
        assert tls.verify_peer(cli) is None
    for tls in rejected:
        _, cli = handshake(server.context, tls.context)
        assert "DNS:*.svc.example" in (tls.verify_peer(cli) or "")


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("a.example.com", "a.example.com", True),
        ("A.Example.COM", "a.example.com", True),
        ("a.example.com", "*.example.com", True),
        ("a.b.example.com", "*.example.com", False),
        ("example.com", "*.example.com", False),
        ("www.example.com", "w*.example.com", True),
        ("www.example.com", "*w.example.com", True),
        ("web.example.com", "w*b.example.com", True),
        ("wb.example.com", "w*b.example.com", True),
        ("w.example.com", "w*b.example.com", False),
        ("a.example.com", "*.*.com", False),
        ("xn--a.example.com", "xn--*.example.com", False),
        ("localhost", "*", False),
    ],
)
def test_dns_name_match(name, pattern, expected):
    assert dns_name_match(name, pattern) is expected


def test_verifier_without_matchers_accepts_anything():
    assert PeerVerifier(()).verify_der(None) is None


# ----------------------------------------------------------------------------- upstream validation


def test_upstream_without_validation_accepts_any_server(pki):
    self_signed = make_ca("self-signed server", key_type=KeyType.ECDSA_P256)  # not issued for any name
    server = downstream([inline_cert(self_signed)])
    client = upstream(sni="whatever.example")
    assert client.context.verify_mode == ssl.CERT_NONE and not client.context.check_hostname
    _, cli = handshake(server.context, client.context, server_hostname=client.server_hostname)
    assert client.verify_peer(cli) is None


def test_upstream_trusted_ca_rejects_foreign_server(pki):
    foreign = make_ca("foreign", key_type=KeyType.ECDSA_P256)
    leaf = issue_leaf(foreign, dns_names=["localhost"], key_type=KeyType.ECDSA_P256)
    server = downstream([inline_cert(leaf)])
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        handshake(server.context, verifying_client(pki).context)


def test_upstream_sends_sni_without_implicit_hostname_check(pki):
    server = downstream([cert(pki.server_rsa)])
    seen: list[str | None] = []
    server.context.sni_callback = lambda obj, name, ctx: seen.append(name)
    client = upstream(sni="not-in-the-cert.example", common={"validation_context": {"trusted_ca": file(pki.ca.cert)}})
    assert client.server_hostname == "not-in-the-cert.example"
    handshake(server.context, client.context, server_hostname=client.server_hostname)
    assert seen == ["not-in-the-cert.example"]
    assert upstream().server_hostname is None


# ----------------------------------------------------------------------------- session resumption


def resumed(server: ServerTls, client: ssl.SSLContext) -> bool:
    _, first = handshake(server.context, client)
    _, second = handshake(server.context, client, session=first.session)
    return second.session_reused


def test_session_flags_visible_through_ssl_ctx(pki):
    default = downstream([cert(pki.server_rsa)])
    handle = OpenSslContext(default.context)
    assert not default.context.options & ssl.OP_NO_TICKET
    assert handle.session_cache_mode == SSL_SESS_CACHE_SERVER
    assert default.context.num_tickets == 2

    stateless_off = downstream([cert(pki.server_rsa)], disable_stateless_session_resumption=True)
    handle = OpenSslContext(stateless_off.context)
    assert stateless_off.context.options & ssl.OP_NO_TICKET
    assert handle.options & ssl.OP_NO_TICKET  # read from OpenSSL, not Python's view
    assert stateless_off.context.num_tickets == 0
    assert handle.session_cache_mode == SSL_SESS_CACHE_SERVER

    stateful_off = downstream(
        [cert(pki.server_rsa)], disable_stateful_session_resumption=True, session_timeout="300.5s"
    )
    handle = OpenSslContext(stateful_off.context)
    assert handle.session_cache_mode == SSL_SESS_CACHE_OFF
    assert not handle.options & ssl.OP_NO_TICKET
    assert handle.timeout == 300
    assert OpenSslContext(default.context).timeout == 7200  # OpenSSL's default when unset


def test_session_resumption_semantics(pki):
    tls12 = verifying_client(pki).context
    tls13 = verifying_client(
        pki, tls_minimum_protocol_version="TLSv1_3", tls_maximum_protocol_version="TLSv1_3"
    ).context
    no_ticket_tls12 = verifying_client(pki).context
    no_ticket_tls12.options |= ssl.OP_NO_TICKET  # the client offers no ticket: session ids only

    default = downstream([cert(pki.server_rsa)])
    assert resumed(default, tls12) and resumed(default, tls13) and resumed(default, no_ticket_tls12)

    # No tickets: TLS 1.2 still resumes through the session cache, TLS 1.3 (tickets only
    # in Envoy/BoringSSL) does not resume at all.
    stateless_off = downstream([cert(pki.server_rsa)], disable_stateless_session_resumption=True)
    assert resumed(stateless_off, tls12)
    assert not resumed(stateless_off, tls13)

    # No cache: TLS 1.2 resumes only with a ticket; TLS 1.3 is unaffected.
    stateful_off = downstream([cert(pki.server_rsa)], disable_stateful_session_resumption=True)
    assert resumed(stateful_off, tls12)
    assert not resumed(stateful_off, no_ticket_tls12)
    assert resumed(stateful_off, tls13)

    both_off = downstream(
        [cert(pki.server_rsa)], disable_stateless_session_resumption=True, disable_stateful_session_resumption=True
    )
    assert not resumed(both_off, tls12) and not resumed(both_off, tls13)


# ----------------------------------------------------------------------------- inline PEM, errors


def test_inline_pem(pki):
    ca_pem = pki.ca.cert.read_bytes()
    server = downstream(
        [
            {
                "certificate_chain": {"inline_bytes": pki.server_ecdsa.cert.read_bytes()},
                "private_key": inline(pki.server_ecdsa.key.read_bytes()),
            }
        ],
        require_client_certificate=True,
        common={"validation_context": {"trusted_ca": inline(ca_pem)}},
    )
    client = upstream(
        common={
            "tls_certificates": [
                {
                    "certificate_chain": inline(pki.client.cert.read_bytes()),
                    "private_key": inline(pki.client.key.read_bytes()),
                }
            ],
            "validation_context": {"trusted_ca": {"inline_bytes": ca_pem}},
        }
    )
    handshake(server.context, client.context)


def bad_config_cases(pki) -> list[tuple[dict[str, Any], str, str]]:
    rsa_pair = cert(pki.server_rsa)
    broken_key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    return [
        (
            {"certificate_chain": inline(b"not a pem"), "private_key": rsa_pair["private_key"]},
            "common_tls_context.tls_certificates[0].certificate_chain",
            "no valid PEM certificate",
        ),
        (
            {"certificate_chain": rsa_pair["certificate_chain"], "private_key": inline(broken_key)},
            "common_tls_context.tls_certificates[0].private_key",
            "not a usable PEM private key",
        ),
        (
            {"certificate_chain": rsa_pair["certificate_chain"], "private_key": file(pki.server_ecdsa.key)},
            "common_tls_context.tls_certificates[0]",
            "does not match",
        ),
        (
            {"certificate_chain": file(pki.directory / "missing.pem"), "private_key": rsa_pair["private_key"]},
            "common_tls_context.tls_certificates[0].certificate_chain",
            "cannot read",
        ),
    ]


def test_bad_certificates_raise(pki):
    for entry, path, message in bad_config_cases(pki):
        with pytest.raises(TlsConfigError) as info:
            downstream([entry])
        assert info.value.path == path
        assert message in info.value.message


@pytest.mark.parametrize(
    ("params", "path", "message"),
    [
        ({"cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256", "FOO-BAR"]}, "cipher_suites[1]", "unknown cipher 'FOO-BAR'"),
        ({"cipher_suites": ["[ECDHE-RSA-AES128-GCM-SHA256|NOPE]"]}, "cipher_suites[0]", "'NOPE'"),
        ({"cipher_suites": ["[ECDHE-RSA-AES128-GCM-SHA256"]}, "cipher_suites[0]", "malformed"),
        ({"cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256:RC4"]}, "cipher_suites[0]", "unknown cipher"),
        ({"ecdh_curves": ["X25519", "P-999"]}, "ecdh_curves", "'P-999'"),
    ],
)
def test_bad_tls_params_raise(pki, params, path, message):
    with pytest.raises(TlsConfigError) as info:
        downstream([cert(pki.server_rsa)], common={"tls_params": params})
    assert info.value.path == f"common_tls_context.tls_params.{path}"
    assert message in info.value.message


def test_other_bad_inputs_raise(pki, tmp_path):
    with pytest.raises(TlsConfigError, match=r"tls_certificates\[1\]: a second RSA certificate"):
        downstream([cert(pki.server_rsa), cert(pki.server_rsa)])
    with pytest.raises(TlsConfigError, match="at most one certificate"):
        upstream(common={"tls_certificates": [cert(pki.client), cert(pki.server_rsa)]})
    with pytest.raises(TlsConfigError, match=r"validation_context\.trusted_ca: no valid PEM certificate"):
        upstream(common={"validation_context": {"trusted_ca": inline(b"junk")}})
    with pytest.raises(TlsConfigError, match="tls_minimum_protocol_version: TLSv1_3 is above"):
        upstream(common={"tls_params": {"tls_minimum_protocol_version": "TLSv1_3"}})
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.server_rsa.key), "-aes256", "-passout", "pass:x", "-out", str(encrypted)],
        check=True,
        timeout=10,
    )
    with pytest.raises(TlsConfigError, match="encrypted"):
        downstream([{"certificate_chain": file(pki.server_rsa.cert), "private_key": file(encrypted)}])


# ----------------------------------------------------------------------------- real sockets


def test_asyncio_mtls_over_loopback(pki):
    server = downstream(
        [cert(pki.server_ecdsa)],
        require_client_certificate=True,
        common={
            "alpn_protocols": ["h2", "http/1.1"],
            "validation_context": {
                "trusted_ca": file(pki.ca.cert),
                "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": pki.client_spiffe_id}}],
            },
        },
    )
    client = upstream(
        sni="localhost",
        common={
            "alpn_protocols": ["http/1.1"],
            "tls_certificates": [cert(pki.client)],
            "validation_context": {
                "trusted_ca": file(pki.ca.cert),
                "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "localhost"}}],
            },
        },
    )

    async def main() -> tuple[str | None, str | None, str | None, bytes]:
        verdicts: list[str | None] = []

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            verdicts.append(server.verify_peer(writer.get_extra_info("ssl_object")))
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        listener = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server.context)
        port = listener.sockets[0].getsockname()[1]
        async with listener:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client.context, server_hostname=client.server_hostname
            )
            ssl_object = writer.get_extra_info("ssl_object")
            writer.write(b"hello")
            echoed = await reader.readexactly(5)
            writer.close()
            await writer.wait_closed()
        return verdicts[0], client.verify_peer(ssl_object), ssl_object.selected_alpn_protocol(), echoed

    server_verdict, client_verdict, alpn, echoed = asyncio.run(asyncio.wait_for(main(), 10))
    assert (server_verdict, client_verdict, alpn, echoed) == (None, None, "http/1.1", b"hello")


def test_openssl_s_client(pki):
    server = downstream(
        [cert(pki.server_rsa)],
        require_client_certificate=True,
        common={"alpn_protocols": ["h2"], "validation_context": {"trusted_ca": file(pki.ca.cert)}},
    )
    outcome: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                with server.context.wrap_socket(conn, server_side=True) as tls:
                    outcome["peer"] = server.verify_peer(tls)
                    outcome["version"] = tls.version()
                    tls.sendall(b"hello from pylon\n")
            except Exception as exc:  # reported by the assertions below
                outcome["error"] = exc

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        result = subprocess.run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                "-CAfile", str(pki.ca.cert), "-verify_return_error", "-alpn", "h2",
                "-cert", str(pki.client.cert), "-key", str(pki.client.key), "-ign_eof",
            ],
            input=b"",
            capture_output=True,
            timeout=15,
        )
        thread.join(10)
    out = result.stdout.decode(errors="replace")
    assert "error" not in outcome, outcome
    assert outcome == {"peer": None, "version": "TLSv1.3"}
    assert "Verify return code: 0 (ok)" in out
    assert "ALPN protocol: h2" in out
    assert "hello from pylon" in out


def test_a_crl_that_is_no_pem_crl_is_an_error_at_its_field(pki):
    from pylon.config.envoy import UpstreamTlsContext, convert
    from pylon.proxy.tls import TlsConfigError, client_context

    config = convert({"common_tls_context": {"validation_context": {
        "trusted_ca": {"filename": str(pki.ca.cert)}, "crl": {"inline_string": "not a CRL"}}}}, UpstreamTlsContext)
    with pytest.raises(TlsConfigError) as info:
        client_context(config)
    assert (info.value.path, info.value.message) == ("common_tls_context.validation_context.crl", "no valid PEM CRL found")
