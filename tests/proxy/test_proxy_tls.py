"""Integration: TLS termination (httpx, curl, openssl s_client), client-certificate validation
with SAN matching, and TLS origination to upstreams with SNI, server validation and mTLS.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from typing import Any

import httpx
import pytest

from pylon.identity.certs import TestPki, make_test_pki
from tests.conftest import free_port, wait_for_port
from tests.proxy.conftest import (
    DOWNSTREAM_TLS_TYPE, UPSTREAM_TLS_TYPE, ProxyLauncher, RunningProxy, http_listener, route, static_cluster,
)


def _file(path: Any) -> dict[str, str]:
    return {"filename": str(path)}


def _tls_listener(name: str, pki: TestPki, **context: Any) -> dict[str, Any]:
    listener = http_listener(name, free_port(), [route("/", "plain")])
    common = {"tls_certificates": [{"certificate_chain": _file(pki.server_rsa.cert),
                                    "private_key": _file(pki.server_rsa.key)}],
              "alpn_protocols": ["http/1.1"], **context.pop("common", {})}
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": common, **context}}
    return listener


def _tls_cluster(name: str, port: int, pki: TestPki, *, client_cert: bool = True, san: str = "localhost",
                 sni: str = "backend.example") -> dict[str, Any]:
    common: dict[str, Any] = {"validation_context": {
        "trusted_ca": _file(pki.ca.cert),
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": san}}]}}
    if client_cert:
        common["tls_certificates"] = [{"certificate_chain": _file(pki.client.cert), "private_key": _file(pki.client.key)}]
    return static_cluster(name, [port], transport_socket={
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS_TYPE, "sni": sni, "common_tls_context": common}})


def _server_context(pki: TestPki, require_client_cert: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.server_ecdsa.cert, pki.server_ecdsa.key)
    if require_client_cert:
        ctx.load_verify_locations(pki.ca.cert)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture(scope="module")
def env(run_proxy_module, upstreams_module, tmp_path_factory) -> Any:
    pki = make_test_pki(tmp_path_factory.mktemp("pki"))
    (plain,) = upstreams_module(1)
    (secure,) = upstreams_module(1, tls=_server_context(pki, require_client_cert=True))
    echo_port = free_port()
    launcher = ProxyLauncher(tmp_path_factory.mktemp("echo"))
    try:
        echo = launcher.spawn([sys.executable, "-m", "pylon.cli", "echo", "--host", "127.0.0.1", "--port",
                               str(echo_port), "--tls-cert", str(pki.server_rsa.cert), "--tls-key",
                               str(pki.server_rsa.key), "--tls-ca", str(pki.ca.cert)])
        wait_for_port(echo_port, proc=echo)
        spiffe = pki.client_spiffe_id
        validation = {"trusted_ca": _file(pki.ca.cert)}
        listeners = [
            _tls_listener("tls", pki),
            _tls_listener("mtls", pki, require_client_certificate=True, common={"validation_context": validation}),
            _tls_listener("san_ok", pki, common={"validation_context": {
                **validation, "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"exact": spiffe}}]}}),
            _tls_listener("san_bad", pki, common={"validation_context": {
                **validation, "match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/other/sa/x"}}]}}),
            http_listener("orig", free_port(), [
                route("/mtls/", "secure", prefix_rewrite="/"),
                route("/nocert/", "secure_nocert", prefix_rewrite="/"),
                route("/badsan/", "secure_badsan", prefix_rewrite="/"),
                route("/echo/", "echo", prefix_rewrite="/"),
            ]),
        ]
        clusters = [
            static_cluster("plain", [plain.port]),
            _tls_cluster("secure", secure.port, pki),
            _tls_cluster("secure_nocert", secure.port, pki, client_cert=False),
            _tls_cluster("secure_badsan", secure.port, pki, san="wrong.example"),
            _tls_cluster("echo", echo_port, pki),
        ]
        proxy = run_proxy_module(listeners, clusters)
        yield {"proxy": proxy, "pki": pki, "plain": plain, "secure": secure}
    finally:
        launcher.close()


def _client_context(pki: TestPki, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    if with_cert:
        ctx.load_cert_chain(pki.client.cert, pki.client.key)
    return ctx


def _https(env: Any, listener: str, path: str, with_cert: bool = False) -> httpx.Response:
    port = env["proxy"].ports[listener]
    return httpx.get(f"https://localhost:{port}{path}", verify=_client_context(env["pki"], with_cert), timeout=5)


def test_tls_termination_with_httpx(env):
    response = _https(env, "tls", "/term")
    assert response.status_code == 200
    seen = [r for r in env["plain"].requests if r["path"] == "/term"][-1]
    assert seen["headers"]["x-forwarded-proto"] == "https"


def test_tls_termination_with_openssl_s_client(env):
    port = env["proxy"].ports["tls"]
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-CAfile", str(env["pki"].ca.cert), "-verify_return_error", "-alpn", "http/1.1", "-ign_eof"],
        input=b"GET /sclient HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, timeout=10)
    out = result.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    assert "ALPN protocol: http/1.1" in out
    assert "TLSv1.3" in out
    assert "HTTP/1.1 200 OK" in out


def test_tls_termination_with_curl(env):
    port = env["proxy"].ports["tls"]
    result = subprocess.run(
        ["curl", "-sS", "--cacert", str(env["pki"].ca.cert), "--resolve", f"localhost:{port}:127.0.0.1",
         "-o", "-", "-w", "\n%{http_code}", f"https://localhost:{port}/curl"],
        capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().splitlines()[-1] == "200"


def test_plain_http_to_tls_listener_is_refused(env):
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{env['proxy'].ports['tls']}/", timeout=3)


def test_require_client_certificate(env):
    assert _https(env, "mtls", "/with-cert", with_cert=True).status_code == 200
    with pytest.raises(httpx.HTTPError):
        _https(env, "mtls", "/without-cert", with_cert=False)
    assert "/without-cert" not in env["plain"].paths()


def test_client_certificate_san_match(env):
    assert _https(env, "san_ok", "/san-ok", with_cert=True).status_code == 200
    with pytest.raises(httpx.HTTPError):
        _https(env, "san_bad", "/san-bad", with_cert=True)
    with pytest.raises(httpx.HTTPError):
        _https(env, "san_ok", "/san-no-cert", with_cert=False)
    paths = env["plain"].paths()
    assert "/san-ok" in paths and "/san-bad" not in paths and "/san-no-cert" not in paths


def test_tls_origination_with_sni_validation_and_client_certificate(env):
    response = httpx.get(env["proxy"].url("orig", "/mtls/orig"), timeout=5)
    assert response.status_code == 200
    seen = [r for r in env["secure"].requests if r["path"] == "/orig"][-1]
    assert seen["sni"] == "backend.example"
    assert seen["client_cert"] is True


def test_tls_origination_without_client_certificate_fails(env):
    response = httpx.get(env["proxy"].url("orig", "/nocert/x"), timeout=5)
    assert response.status_code == 503
    assert "/x" not in env["secure"].paths()


def test_tls_origination_refuses_server_with_wrong_san(env):
    response = httpx.get(env["proxy"].url("orig", "/badsan/y"), timeout=5)
    assert response.status_code == 503
    assert "/y" not in env["secure"].paths()


def test_tls_origination_to_pylon_echo_with_mtls(env):
    proxy: RunningProxy = env["proxy"]
    with httpx.Client(timeout=5) as client:
        for _ in range(3):
            response = client.get(proxy.url("orig", "/echo/"))
            assert response.status_code == 200
    assert proxy.stats()["cluster.echo.upstream_cx_total"] == 1  # TLS connections are pooled too
