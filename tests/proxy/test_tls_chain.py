"""The certificate chain a listener sends: exactly its certificate_chain file, as Envoy (BoringSSL) sends it.

OpenSSL, left to itself, completes a chain file that lacks intermediates from the
trust store on every handshake and sends what it finds there; for an mTLS
listener that is the trusted CA. Envoy never does: pylon sets
SSL_MODE_NO_AUTO_CHAIN (tls.py) and must send the same certificates as Envoy.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import DOWNSTREAM_TLS_TYPE, ENVOY_BIN, http_listener, route, static_cluster


def _listener(pki: Any) -> dict[str, Any]:
    """An mTLS-capable listener (client certificate optional) whose chain file holds the leaf only."""
    listener = http_listener("tls", free_port(), [route("/", "plain")])
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(pki.server_rsa.cert)},
                                  "private_key": {"filename": str(pki.server_rsa.key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca.cert)}}}}}
    return listener


def test_the_listener_sends_its_chain_file_and_nothing_more(implementation, launcher, upstreams,
                                                            tmp_path) -> None:  # type: ignore[no-untyped-def]
    if implementation == "envoy" and not ENVOY_BIN.exists():
        pytest.skip("Envoy is not installed")
    pki = make_test_pki(tmp_path / "pki")
    assert pki.server_rsa.cert.read_text().count("BEGIN CERTIFICATE") == 1  # the leaf, no intermediate
    (upstream,) = upstreams(1)
    proxy = launcher.start([_listener(pki)], [static_cluster("plain", [upstream.port])], implementation=implementation)
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.ports['tls']}", "-servername", "localhost",
         "-CAfile", str(pki.ca.cert), "-verify_return_error", "-showcerts"],
        input=b"", capture_output=True, timeout=20, check=False).stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out
    sent = out.count("-----BEGIN CERTIFICATE-----")
    assert sent == 1, f"{implementation} sent {sent} certificates:\n{out}"
