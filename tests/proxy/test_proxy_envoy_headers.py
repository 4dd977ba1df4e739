"""Integration: a client's x-envoy-* request headers, as Envoy 1.40 treats them, through pylon and Envoy alike.

Envoy's request controls (retry policy, timeouts, x-envoy-internal, ...) are consumed, never forwarded, so a
client cannot steer the next proxy with them. At the edge (use_remote_address) the headers one mesh proxy
tells the next — the decorator, the downstream cluster and node, the original path, the external address —
are cleaned too, and x-envoy-external-address is set to the client's address. Behind the edge they pass.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from pylon.proxy.local_address import envoy_local_address
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

CONTROLS = {
    "x-envoy-retry-on": "5xx", "x-envoy-retry-grpc-on": "cancelled", "x-envoy-max-retries": "3",
    "x-envoy-retriable-status-codes": "500", "x-envoy-retriable-header-names": "x",
    "x-envoy-upstream-rq-timeout-ms": "100", "x-envoy-upstream-rq-per-try-timeout-ms": "50",
    "x-envoy-hedge-on-per-try-timeout": "true", "x-envoy-upstream-alt-stat-name": "n",
    "x-envoy-upstream-stream-duration-ms": "9", "x-envoy-internal": "true", "x-envoy-force-trace": "1",
    "x-envoy-ip-tags": "t",
}
MESH = {"x-envoy-decorator-operation": "op", "x-envoy-downstream-service-cluster": "c",
        "x-envoy-downstream-service-node": "n", "x-envoy-original-path": "/orig", "x-envoy-external-address": "1.2.3.4"}
OTHERS = {"x-envoy-attempt-count": "7", "x-envoy-foo": "bar"}  # neither consumed nor cleaned


def test_x_envoy_headers_at_and_behind_the_edge(implementation: str, tmp_path: Path) -> None:
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    try:
        edge, inner = free_port(), free_port()
        launcher.start([http_listener("edge", edge, [route("/", "a")], use_remote_address=True),
                        http_listener("inner", inner, [route("/", "a")])],
                       [static_cluster("a", [up.port])], implementation=implementation)
        seen, forwarded_for = {}, {}
        for name, port in (("edge", edge), ("inner", inner)):
            httpx.get(f"http://127.0.0.1:{port}/", headers={**CONTROLS, **MESH, **OTHERS}, timeout=5)
            headers = up.requests[-1]["headers"]
            seen[name] = {k: v for k, v in headers.items() if k in CONTROLS or k in MESH or k in OTHERS}
            forwarded_for[name] = headers.get("x-forwarded-for")
        assert seen["edge"] == {**OTHERS, "x-envoy-external-address": "127.0.0.1"}
        assert seen["inner"] == {**OTHERS, **MESH}
        # At the edge a loopback client is named in x-forwarded-for by this host's own address, not 127.0.0.1.
        assert forwarded_for == {"edge": envoy_local_address(), "inner": None}
    finally:
        launcher.close()
        up.close()
