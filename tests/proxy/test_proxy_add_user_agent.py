"""Integration: the HCM's `add_user_agent`, through pylon and Envoy alike (as Envoy's grpc-bridge example uses it).

Envoy's rule (conn_manager_utility.cc, observed with Envoy 1.40): with the option on and a service cluster (the
bootstrap node's `cluster`), x-envoy-downstream-service-cluster becomes that cluster whatever the client sent,
user-agent becomes it when the request has none or an empty one, and x-envoy-downstream-service-node becomes
the node's id. Without a node cluster the cluster is empty: Envoy sets the headers empty all the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, raw_exchange, route, static_cluster
from tests.proxy.upstreams import Upstream

CLUSTER = "x-envoy-downstream-service-cluster"
NODE = "x-envoy-downstream-service-node"


def seen(implementation: str, directory: Path, node: dict[str, Any], requests: list[bytes],
         **hcm: Any) -> list[dict[str, str | None]]:
    """The user-agent and service headers the upstream saw for each raw request."""
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        port = free_port()
        launcher.start([http_listener("main", port, [route("/", "up")], **hcm)],
                       [static_cluster("up", [upstream.port])], implementation=implementation,
                       bootstrap_extra={"node": node})
        for request in requests:
            assert raw_exchange(port, request).status == 200
        return [{name: r["headers"].get(name) for name in ("user-agent", CLUSTER, NODE)} for r in upstream.requests]
    finally:
        launcher.close()
        upstream.close()


REQUESTS = [
    b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nuser-agent: curl/8\r\nconnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nuser-agent:\r\nconnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: a\r\nuser-agent: app\r\n" + CLUSTER.encode() + b": spoofed\r\n" + NODE.encode() +
    b": spoofed\r\nconnection: close\r\n\r\n",
]


def test_add_user_agent_sets_the_service_headers(implementation: str, tmp_path: Path) -> None:
    assert seen(implementation, tmp_path, {"id": "node-1", "cluster": "frontend"}, REQUESTS, add_user_agent=True) == [
        {"user-agent": "frontend", CLUSTER: "frontend", NODE: "node-1"},
        {"user-agent": "curl/8", CLUSTER: "frontend", NODE: "node-1"},
        {"user-agent": "frontend", CLUSTER: "frontend", NODE: "node-1"},
        {"user-agent": "app", CLUSTER: "frontend", NODE: "node-1"},
    ]


def test_a_node_without_a_cluster_gives_empty_headers(implementation: str, tmp_path: Path) -> None:
    assert seen(implementation, tmp_path, {"id": "node-1"}, REQUESTS[:2], add_user_agent=True) == [
        {"user-agent": "", CLUSTER: "", NODE: "node-1"},
        {"user-agent": "curl/8", CLUSTER: "", NODE: "node-1"},
    ]


def test_nothing_without_the_option(implementation: str, tmp_path: Path) -> None:
    assert seen(implementation, tmp_path, {"id": "node-1", "cluster": "frontend"}, REQUESTS[:2]) == [
        {"user-agent": None, CLUSTER: None, NODE: None},
        {"user-agent": "curl/8", CLUSTER: None, NODE: None},
    ]
