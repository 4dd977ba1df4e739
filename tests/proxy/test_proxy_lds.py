"""Integration: listeners (LDS) from a watched file, through pylon and Envoy alike.

The bootstrap has no static listeners: `dynamic_resources.lds_config` names a
file holding a DiscoveryResponse of Listeners, replaced by an atomic rename
(`replace_file`). A listener added serves within EFFECT_S; a modified one
answers new connections with its new configuration; a removed one refuses new
connections at once (Envoy closes its sockets, then drains the connections it
has, which still get answers). An invalid update is rejected (update_rejected)
and the last good listeners keep serving. A listener's HTTP connection manager
may take its routes by RDS from another watched file. Stats use Envoy's
`listener_manager.*` names.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, refuses_connections
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.test_proxy_filesystem_xds import EFFECT_S, replace_file, routes_file
from tests.proxy.test_proxy_worker_restart import direct
from tests.proxy.upstreams import Upstream

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def listeners_file(*listeners: dict[str, Any], version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": LISTENER_TYPE, **l} for l in listeners]}


class Setup:
    """A proxy whose listeners come from lds.yaml, in front of upstream `a` (a static cluster).

    Listener `one` (port `ports["one"]`) is in lds.yaml from the start; `two` is free for a test to add.
    rds.yaml holds route configuration `main_routes` (version 1: everything to `a`) for listeners that use RDS.
    """

    def __init__(self, directory: Path, up: Upstream) -> None:
        self.lds, self.rds, self.up = directory / "lds.yaml", directory / "rds.yaml", up
        self.ports = {"one": free_port(), "two": free_port()}
        self.proxy: RunningProxy

    def listener(self, name: str, *routes: dict[str, Any], port: int | None = None) -> dict[str, Any]:
        """An HTTP listener with inline routes (default: everything to `a`) on `name`'s port (or `port`)."""
        return http_listener(name, self.ports[name] if port is None else port, list(routes) or [route("/", "a")])

    def rds_listener(self, name: str) -> dict[str, Any]:
        """An HTTP listener that takes route configuration `main_routes` by RDS from rds.yaml."""
        listener = http_listener(name, self.ports[name], [])
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        del hcm["route_config"]
        hcm["rds"] = {"route_config_name": "main_routes",
                      "config_source": {"path_config_source": {"path": str(self.rds)}, "resource_api_version": "V3"}}
        return listener

    def update(self, *listeners: dict[str, Any], version: str) -> None:
        replace_file(self.lds, listeners_file(*listeners, version=version))

    def answer(self, name: str) -> str | None:
        """What `name`'s port answers to GET / on a new connection: "upstream a" when `a` served it, else
        "<status> <body>"; None when the connection or the exchange fails."""
        try:
            reply = httpx.get(f"http://127.0.0.1:{self.ports[name]}/", timeout=5)
        except httpx.TransportError:
            return None
        if reply.headers.get("x-served-by") == str(self.up.port):
            return "upstream a"
        return f"{reply.status_code} {reply.text}"

    def refuses(self, name: str) -> bool:
        return refuses_connections(self.ports[name])

    def manager_stats(self, *names: str) -> dict[str, int | None]:
        """These `listener_manager.<name>` stats (None: not shown)."""
        stats = self.proxy.stats()
        return {name: stats.get(f"listener_manager.{name}") for name in names}


@pytest.fixture
def setup(implementation: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Setup]:
    """Listener `one` from lds.yaml with inline routes, or (indirect param "rds") with its routes by RDS."""
    up = Upstream()
    launcher = ProxyLauncher(tmp_path)
    try:
        setup = Setup(tmp_path, up)
        replace_file(setup.rds, routes_file([route("/", "a")], version="1"))
        first = setup.rds_listener("one") if getattr(request, "param", "inline") == "rds" else setup.listener("one")
        setup.update(first, version="1")
        extra = {"node": {"id": "test", "cluster": "test"},
                 "dynamic_resources": {"lds_config": {"path_config_source": {"path": str(setup.lds)},
                                                      "resource_api_version": "V3"}}}
        setup.proxy = launcher.start([], [static_cluster("a", [up.port])], implementation=implementation,
                                     bootstrap_extra=extra)
        yield setup
    finally:
        launcher.close()
        up.close()


def test_listener_from_the_file_serves(setup: Setup) -> None:
    assert setup.answer("one") == "upstream a"
    assert setup.refuses("two")
    expected = {"lds.update_success": 1, "listener_added": 1, "total_listeners_active": 1}
    assert setup.manager_stats(*expected) == expected
    dump = {c["@type"].rsplit(".", 1)[-1]: c for c in setup.proxy.admin("/config_dump").json()["configs"]}
    listeners = dump["ListenersConfigDump"]
    assert listeners["version_info"] == "1"
    (one,) = listeners["dynamic_listeners"]
    assert (one["name"], one["active_state"]["version_info"]) == ("one", "1")
    assert one["active_state"]["listener"]["address"]["socket_address"]["port_value"] == setup.ports["one"]


def test_added_listener_serves_and_the_first_keeps_serving(setup: Setup) -> None:
    setup.update(setup.listener("one"), setup.listener("two", direct("two here")), version="2")
    assert wait_until(lambda: setup.answer("two") == "200 two here", timeout=EFFECT_S)
    assert setup.answer("one") == "upstream a"


def test_modified_listener_answers_new_connections_with_its_new_routes(setup: Setup) -> None:
    setup.update(setup.listener("one", direct("one, modified")), version="2")
    assert wait_until(lambda: setup.answer("one") == "200 one, modified", timeout=EFFECT_S)
    setup.update(setup.listener("one"), version="3")  # and back to the upstream
    assert wait_until(lambda: setup.answer("one") == "upstream a", timeout=EFFECT_S)


def test_removed_listener_refuses_new_connections_and_drains_open_ones(setup: Setup) -> None:
    setup.update(setup.listener("one"), setup.listener("two", direct("two here")), version="2")
    assert wait_until(lambda: setup.answer("two") == "200 two here", timeout=EFFECT_S)
    conn = http.client.HTTPConnection("127.0.0.1", setup.ports["two"], timeout=5)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert (first.status, first.read(), first.will_close) == (200, b"two here", False)
        setup.update(setup.listener("one"), version="3")
        assert wait_until(lambda: setup.refuses("two"), timeout=EFFECT_S)
        assert setup.answer("one") == "upstream a"
        # The connection opened before the removal is drained, not cut: it still gets an answer.
        conn.request("GET", "/")
        second = conn.getresponse()
        assert (second.status, second.read()) == (200, b"two here")
    finally:
        conn.close()


def test_invalid_updates_are_rejected_and_the_last_good_listeners_serve(setup: Setup) -> None:
    setup.update(setup.listener("one"), setup.listener("two", direct("two here")), version="2")
    assert wait_until(lambda: setup.answer("two") == "200 two here", timeout=EFFECT_S)
    bad = setup.listener("one", direct("never served"))
    bad["address"]["socket_address"]["port_value"] = 70000  # a port is at most 65535
    setup.update(bad, setup.listener("two", direct("two here")), version="bad port")
    assert wait_until(lambda: setup.proxy.stats().get("listener_manager.lds.update_rejected") == 1,
                      timeout=EFFECT_S)
    assert (setup.answer("one"), setup.answer("two")) == ("upstream a", "200 two here")
    # Two listeners on one address: Envoy rejects the second ("duplicate address").
    clash = setup.listener("three", direct("never served"), port=setup.ports["one"])
    setup.update(setup.listener("one"), setup.listener("two", direct("two here")), clash, version="clash")
    assert wait_until(lambda: setup.proxy.stats().get("listener_manager.lds.update_rejected") == 2,
                      timeout=EFFECT_S)
    assert (setup.answer("one"), setup.answer("two")) == ("upstream a", "200 two here")
    expected = {"lds.update_success": 2, "listener_added": 2, "listener_modified": 0, "total_listeners_active": 2}
    assert setup.manager_stats(*expected) == expected


def test_listener_manager_stats_count_adds_modifications_and_removals(setup: Setup) -> None:
    setup.update(setup.listener("one"), setup.listener("two", direct("two here")), version="2")
    assert wait_until(lambda: setup.answer("two") == "200 two here", timeout=EFFECT_S)
    expected = {"lds.update_success": 2, "listener_added": 2, "listener_modified": 0, "listener_removed": 0,
                "total_listeners_active": 2}
    assert setup.manager_stats(*expected) == expected

    setup.update(setup.listener("one", direct("one, modified")), setup.listener("two", direct("two here")),
                 version="3")
    assert wait_until(lambda: setup.answer("one") == "200 one, modified", timeout=EFFECT_S)
    expected = {"lds.update_success": 3, "listener_added": 2, "listener_modified": 1, "listener_removed": 0,
                "total_listeners_active": 2}
    assert setup.manager_stats(*expected) == expected

    setup.update(setup.listener("one", direct("one, modified")), version="4")
    assert wait_until(lambda: setup.refuses("two"), timeout=EFFECT_S)
    expected = {"lds.update_success": 4, "listener_added": 2, "listener_modified": 1, "listener_removed": 1,
                "total_listeners_active": 1}
    assert setup.manager_stats(*expected) == expected


@pytest.mark.parametrize("setup", ["rds"], indirect=True)
def test_listener_from_the_file_takes_its_routes_from_an_rds_file(setup: Setup) -> None:
    assert setup.answer("one") == "upstream a"
    replace_file(setup.rds, routes_file([direct("routes v2")], version="2"))
    assert wait_until(lambda: setup.answer("one") == "200 routes v2", timeout=EFFECT_S)
    assert setup.proxy.stats()["http.one.rds.main_routes.update_success"] == 2


def test_added_listener_takes_its_routes_from_an_rds_file(setup: Setup) -> None:
    setup.update(setup.listener("one", direct("one here")), setup.rds_listener("two"), version="2")
    assert wait_until(lambda: setup.answer("two") == "upstream a", timeout=EFFECT_S)
    replace_file(setup.rds, routes_file([direct("routes v2")], version="2"))
    assert wait_until(lambda: setup.answer("two") == "200 routes v2", timeout=EFFECT_S)
    assert setup.answer("one") == "200 one here"
    assert setup.proxy.stats()["http.two.rds.main_routes.update_success"] == 2
