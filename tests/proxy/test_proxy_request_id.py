"""Integration: a client's x-request-id at the edge, as Envoy 1.40 treats it, through pylon and Envoy alike.

With use_remote_address (the proxy is the edge) a client's x-request-id is replaced by a fresh one — Envoy
1.40 counts no address as internal by default, loopback included — unless preserve_external_request_id
keeps it. Behind the edge it is always kept.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream


def test_edge_replaces_a_client_request_id_unless_preserved(implementation: str, tmp_path: Path) -> None:
    up, launcher = Upstream(), ProxyLauncher(tmp_path)
    try:
        options = {"edge": {"use_remote_address": True},
                   "edge_preserving": {"use_remote_address": True, "preserve_external_request_id": True},
                   "inner": {}}
        ports = {name: free_port() for name in options}
        launcher.start([http_listener(name, ports[name], [route("/", "a")], **fields) for name, fields in options.items()],
                       [static_cluster("a", [up.port])], implementation=implementation)
        seen = {}
        for name, port in ports.items():
            httpx.get(f"http://127.0.0.1:{port}/", headers={"x-request-id": "client-chosen"}, timeout=5)
            seen[name] = up.requests[-1]["headers"]["x-request-id"]
        assert seen["edge"] != "client-chosen" and len(seen["edge"]) == 36  # a fresh UUID
        assert (seen["edge_preserving"], seen["inner"]) == ("client-chosen", "client-chosen")
    finally:
        launcher.close()
        up.close()
