"""Envoy's published dynamic forward proxy example (examples/dynamic-forward-proxy.yaml) loads and serves, through
pylon and through Envoy 1.40.

To serve on loopback only, the test moves the example's listener and admin to free loopback ports and trusts its
own CA instead of the system's; everything else is the example as published: a TLS cluster whose connections
send the request's host as SNI and require it as a SAN. Only `localhost` names are requested (never the
example's www.example.org route).
"""

from __future__ import annotations

import copy
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pylon.identity.certs import issue_leaf, make_ca
from tests.conftest import REPO_ROOT, free_port
from tests.proxy.conftest import ENVOY_BIN, ProxyLauncher
from tests.proxy.upstreams import Upstream

EXAMPLE = REPO_ROOT / "examples" / "dynamic-forward-proxy.yaml"
CARES = "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig"


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def caches(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The example's two DnsCacheConfigs: the filter's and the cluster's."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    return [hcm["http_filters"][0]["typed_config"]["dns_cache_config"],
            config["static_resources"]["clusters"][0]["cluster_type"]["typed_config"]["dns_cache_config"]]


def test_the_example_validates_in_pylon_and_envoy() -> None:
    pylon = subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "--mode", "validate", "-c", str(EXAMPLE)],
                           capture_output=True, text=True, timeout=60)
    assert pylon.returncode == 0, pylon.stdout + pylon.stderr
    if ENVOY_BIN.exists():
        envoy = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(EXAMPLE), "-l", "critical"],
                               capture_output=True, text=True, timeout=60)
        assert envoy.returncode == 0, envoy.stdout + envoy.stderr


def test_the_published_resolver_block_loads(tmp_path: Path) -> None:
    """The published file also asks c-ares to use 8.8.8.8 over TCP: a resolver pylon configures c-ares with
    (tests/proxy/test_proxy_dns_resolver.py runs one against a name server on loopback)."""
    config = example()
    for cache in caches(config):
        cache["typed_dns_resolver_config"] = {"name": "envoy.network.dns_resolver.cares", "typed_config": {
            "@type": CARES, "resolvers": [{"socket_address": {"address": "8.8.8.8", "port_value": 53}}],
            "dns_resolver_options": {"use_tcp_for_dns_lookups": True, "no_default_search_domain": True}}}
    path = tmp_path / "published.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def tls_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Upstream, Path]]:
    """An HTTPS server whose certificate names localhost only, and the CA file that trusts it."""
    directory = tmp_path_factory.mktemp("dfp-example")
    ca = make_ca()
    leaf = issue_leaf(ca, common_name="localhost", dns_names=["localhost"])
    (directory / "server.pem").write_bytes(leaf.cert_pem + leaf.key_pem)
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "server.pem")
    server = Upstream(tls=context)
    yield server, directory / "ca.pem"
    server.close()


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_the_example_serves_by_the_requests_host(implementation: str, tls_upstream: tuple[Upstream, Path],
                                                 tmp_path: Path) -> None:
    upstream, ca_file = tls_upstream
    config = copy.deepcopy(example())
    resources = config["static_resources"]
    port = free_port()
    resources["listeners"][0]["address"]["socket_address"].update(address="127.0.0.1", port_value=port)
    resources["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"][
        "trusted_ca"] = {"filename": str(ca_file)}
    launcher = ProxyLauncher(tmp_path)
    try:
        launcher.start(resources["listeners"], resources["clusters"], implementation=implementation)
        url = f"http://127.0.0.1:{port}/"
        before = len(upstream.requests)
        reply = httpx.get(url, headers={"host": f"localhost:{upstream.port}"}, timeout=10)
        assert reply.status_code == 200
        seen = upstream.requests[before:]
        assert [(r["sni"], r["headers"]["host"]) for r in seen] == [("localhost", f"localhost:{upstream.port}")]
        # a name the certificate does not carry fails auto_san_validation: no request reaches the server
        assert httpx.get(url, headers={"host": f"a.localhost:{upstream.port}"}, timeout=10).status_code == 503
        assert len(upstream.requests) == before + 1
    finally:
        launcher.close()
