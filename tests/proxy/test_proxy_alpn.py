"""Integration: an HTTP chain whose TLS context offers `h2` negotiates HTTP/2 when its HCM can serve it.

With codec_type AUTO (the default) or HTTP2 the chain's ALPN is the TLS context's, as in Envoy (Istio's
gateways offer `h2,http/1.1`). With codec_type HTTP1 the HCM reads HTTP/1 only, so pylon leaves `h2`
out of the chain's ALPN and says so once in its log: such clients (curl, browsers) use HTTP/1.1 instead
of failing. A tcp_proxy chain keeps `h2`: it only carries the bytes.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from pylon.identity.certs import issue_leaf, make_ca, write_pem_files
from tests.conftest import free_port
from tests.proxy.conftest import DOWNSTREAM_TLS_TYPE, ProxyLauncher, http_listener


@pytest.mark.parametrize(("codec", "selected"), [("HTTP1", "http/1.1"), ("AUTO", "h2")])
def test_h2_is_offered_on_an_http_chain_unless_its_codec_is_http1(tmp_path: Path, codec: str, selected: str) -> None:
    ca = make_ca()
    pem = write_pem_files(tmp_path, "server", issue_leaf(ca, common_name="server", dns_names=["localhost"]), ca)
    port = free_port()
    listener = http_listener("tls", port, [{"match": {"prefix": "/"}, "direct_response": {"status": 200,
                                                                                          "body": {"inline_string": "ok"}}}],
                             codec_type=codec)
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(pem.cert)},
                                  "private_key": {"filename": str(pem.key)}}]}}}
    launcher = ProxyLauncher(tmp_path)
    try:
        proxy = launcher.start([listener], [])
        context = ssl.create_default_context(cafile=str(pem.ca))
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == selected
            if selected == "h2":
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                assert tls.recv(9)[3] == 4  # the server's SETTINGS: it speaks HTTP/2 on this connection
                return
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert tls.recv(65536).startswith(b"HTTP/1.1 200")
        launcher.close()
        assert "do not offer 'h2' in ALPN" in proxy.proc.stdout.read().decode()
    finally:
        launcher.close()
