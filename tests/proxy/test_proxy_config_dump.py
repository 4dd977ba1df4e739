"""Integration: /config_dump never shows a private key, wherever the config put it (pylon and Envoy alike)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from pylon.identity.certs import make_test_pki
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, static_cluster, tcp_listener

DOWNSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"


def test_an_inline_private_key_of_a_static_listener_is_redacted(launcher: ProxyLauncher, implementation: str,
                                                                tmp_path: Any) -> None:
    pki = make_test_pki(tmp_path / "pki")
    key_pem = pki.server_ecdsa.key.read_text()
    listener = tcp_listener("tls", free_port(), "up")
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS, "common_tls_context": {"tls_certificates": [{
            "certificate_chain": {"inline_string": pki.server_ecdsa.cert.read_text()},
            "private_key": {"inline_string": key_pem}}]}}}
    proxy = launcher.start([listener], [static_cluster("up", [free_port()])], implementation=implementation)
    text = proxy.admin("/config_dump").text
    assert key_pem.splitlines()[1] not in text and "BEGIN PRIVATE KEY" not in text
    keys = list(_values_of("private_key", json.loads(text)))
    assert keys and all(key == {"inline_string": "[redacted]"} for key in keys)  # shown redacted, not dropped


def _values_of(field: str, value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for name, item in value.items():
            if name == field:
                yield item
            else:
                yield from _values_of(field, item)
    elif isinstance(value, list):
        for item in value:
            yield from _values_of(field, item)
