"""Integration: filesystem-xDS changes under continuous load lose no request, through pylon and Envoy alike.

Each test keeps `pylon load` (max speed, keep-alive connections, LOAD_S seconds, bounded by its own
`-t`) running through the proxy and changes one watched file every 0.6 s (an atomic rename, as
Envoy documents for `path_config_source`). Whatever changes, every request must get a 200: no other
status and no socket error (refused, reset, closed, timeout). Each test also checks that its changes
took effect (traffic moved, the update counters counted every change), so a proxy that ignored the
files could not pass.

- routes: the RDS file alternates the route between clusters `a` and `b`;
- clusters: the CDS file adds and removes a cluster the route does not use, then modifies the one it
  uses (its endpoint between upstreams `a` and `b`, and its connect_timeout);
- listeners: the LDS file modifies the listener (its stat_prefix and a response header naming the
  version). A keep-alive connection opened before a change is still answered by the version that
  accepted it; new connections get the new version.

Both proxies drain replaced listeners for DRAIN_S (`--drain-time-s` on both; Envoy's default is 600 s),
so the drains end while the load runs, and both close what is still open on a replaced listener when
its drain time ends (a request in flight then is lost, in Envoy as in pylon). A keep-alive client gets
through only if the proxy tells it to leave before that: Envoy (the default `--drain-strategy gradual`)
answers requests on a draining connection with `connection: close` with a probability that grows to 1
over the drain time, so clients reconnect to the new version well before the end.
`test_keep_alive_connection_of_a_replaced_listener_is_told_to_close` checks that on one connection.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    ENVOY_BIN, HCM_TYPE, ROUTER_TYPE, ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until,
)
from tests.proxy.test_proxy_filesystem_xds import EFFECT_S, clusters_file, replace_file, routes_file, to
from tests.proxy.test_proxy_lds import listeners_file
from tests.proxy.upstreams import Upstream

LOAD_S = 5.0  # seconds of load per test
CHANGES = 7  # one change every CHANGE_EVERY_S, at 0.6 s .. 4.2 s into the load
CHANGE_EVERY_S = 0.6
CONNECTIONS = 4  # keep-alive connections of the load client, each always busy (-qps 0)
MIN_REQUESTS = 400  # the load must have been continuous: far fewer means it stalled
DRAIN_S = 2.0  # --drain-time-s of both proxies


class Launcher(ProxyLauncher):
    """Starts Envoy with `--drain-time-s DRAIN_S`, as pylon gets it (envoy_args leaves Envoy's 600 s)."""

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen:
        if args and args[0] == str(ENVOY_BIN):
            args = [*args, "--drain-time-s", f"{DRAIN_S:g}"]
        return super().spawn(args, **kwargs)


@dataclass
class Live:
    """A proxy started from watched files, its upstreams, and the means to load it."""

    implementation: str
    directory: Path
    launcher: Launcher
    ups: dict[str, Upstream]
    port: int
    proxy: RunningProxy | None = None

    def start(self, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]],
              dynamic: dict[str, Any]) -> RunningProxy:
        extra = {"node": {"id": "test", "cluster": "test"}, "dynamic_resources": {
            kind: {"path_config_source": {"path": str(path), "watched_directory": {"path": str(self.directory)}},
                   "resource_api_version": "V3"} for kind, path in dynamic.items()}}
        self.proxy = self.launcher.start(listeners, clusters, implementation=self.implementation,
                                         drain_time=DRAIN_S, bootstrap_extra=extra)
        return self.proxy

    def cluster(self, name: str, upstream: str | None = None, **extra: Any) -> dict[str, Any]:
        return static_cluster(name, [self.ups[upstream or name].port], **extra)

    def served(self, upstream: str) -> int:
        """Requests of the load (path /load) that `upstream` served."""
        return sum(1 for r in self.ups[upstream].requests if r["path"] == "/load")

    def stats(self) -> dict[str, int]:
        assert self.proxy is not None
        return self.proxy.stats()

    def assert_counters(self, expected: dict[str, int]) -> None:
        """These stats reach these values (within EFFECT_S: the last change may still be on its way)."""
        def current() -> dict[str, int | None]:
            stats = self.stats()
            return {name: stats.get(name) for name in expected}

        wait_until(lambda: current() == expected, timeout=EFFECT_S)
        assert current() == expected

    def under_load(self, change: Callable[[int], None]) -> dict[str, Any]:
        """Run the load; call `change(step)` every CHANGE_EVERY_S, CHANGES times; return its Fortio JSON."""
        out = self.directory / "load.json"
        with open(self.directory / "load.log", "wb") as log:
            proc = self.launcher.spawn([
                sys.executable, "-m", "pylon.cli", "load", "-qps", "0", "-c", str(CONNECTIONS), "-t", f"{LOAD_S:g}s",
                "-timeout", "5s", "-json", str(out), f"http://127.0.0.1:{self.port}/load"], stdout=log)
        assert wait_until(lambda: sum(self.served(u) for u in self.ups) > 0 or proc.poll() is not None, timeout=10)
        start = time.monotonic()
        for step in range(1, CHANGES + 1):
            time.sleep(max(0.0, start + step * CHANGE_EVERY_S - time.monotonic()))
            change(step)
        try:
            proc.wait(timeout=LOAD_S + 15)
        except subprocess.TimeoutExpired:
            pytest.fail("pylon load did not finish")
        assert proc.returncode == 0 and out.exists(), (self.directory / "load.log").read_text()
        return json.loads(out.read_text())


def assert_nothing_lost(result: dict[str, Any]) -> None:
    count = result["DurationHistogram"]["Count"]
    codes, kinds = result["RetCodes"], result.get("ErrorKinds", {})
    assert count >= MIN_REQUESTS and codes == {"200": count}, (
        f"{count} requests: status counts {codes} (-1: no response), socket errors {kinds}")


@pytest.fixture
def live(implementation: str, tmp_path: Path) -> Iterator[Live]:
    ups = {name: Upstream() for name in ("a", "b", "c")}
    launcher = Launcher(tmp_path)
    try:
        yield Live(implementation, tmp_path, launcher, ups, free_port())
    finally:
        launcher.close()
        for up in ups.values():
            up.close()


def rds_listener(name: str, port: int, rds: Path) -> dict[str, Any]:
    """An HTTP listener taking route configuration `main_routes` from the RDS file `rds`."""
    hcm = {"@type": HCM_TYPE, "stat_prefix": name,
           "rds": {"route_config_name": "main_routes",
                   "config_source": {"path_config_source": {"path": str(rds)}, "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    return {"name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def test_route_swaps_under_load_lose_no_request(live: Live) -> None:
    rds = live.directory / "rds.yaml"
    replace_file(rds, routes_file([to("/", "a")], version="0"))
    live.start([rds_listener("main", live.port, rds)], [live.cluster("a"), live.cluster("b")], {})

    def swap(step: int) -> None:
        replace_file(rds, routes_file([to("/", "ab"[step % 2])], version=str(step)))

    result = live.under_load(swap)
    assert_nothing_lost(result)
    # The swaps took effect: each cluster served a share of the load.
    assert live.served("a") > 50 and live.served("b") > 50, (live.served("a"), live.served("b"))
    live.assert_counters({"http.main.rds.main_routes.update_success": 1 + CHANGES})


def test_cluster_adds_removes_and_modifications_under_load_lose_no_request(live: Live) -> None:
    cds, rds = live.directory / "cds.yaml", live.directory / "rds.yaml"
    replace_file(rds, routes_file([to("/", "a")], version="0"))
    replace_file(cds, clusters_file(live.cluster("a"), version="0"))
    live.start([rds_listener("main", live.port, rds)], [], {"cds_config": cds})
    served_before_modifying: dict[str, int] = {}

    def change(step: int) -> None:
        if step <= 4:  # cluster `extra` (upstream c) comes and goes; `a`, which the route uses, stays as it is
            clusters = [live.cluster("a"), live.cluster("extra", "c")] if step % 2 else [live.cluster("a")]
        else:  # then `a` itself changes: its endpoint between upstreams b and a, and its connect_timeout
            if step == 5:
                served_before_modifying.update(a=live.served("a"), b=live.served("b"))
            upstream = "b" if step % 2 else "a"
            clusters = [live.cluster("a", upstream, connect_timeout=f"{1 + step % 2}s")]
        replace_file(cds, clusters_file(*clusters, version=str(step)))

    result = live.under_load(change)
    assert_nothing_lost(result)
    assert live.served("c") == 0  # nothing routes to `extra`
    assert served_before_modifying["b"] == 0 and live.served("b") > 50, (served_before_modifying, live.served("b"))
    assert live.served("a") > served_before_modifying["a"]  # and back to a after the last change
    live.assert_counters({"cluster_manager.cds.update_success": 1 + CHANGES, "cluster_manager.cluster_added": 3,
                          "cluster_manager.cluster_removed": 2, "cluster_manager.cluster_modified": 3})


def version_of(reply: http.client.HTTPResponse) -> str | None:
    return reply.getheader("x-listener-version")


def new_connection_version(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/probe")
        reply = conn.getresponse()
        reply.read()
        return version_of(reply) if reply.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def test_listener_modifications_under_load_lose_no_request(live: Live) -> None:
    lds = live.directory / "lds.yaml"

    def listener(version: int) -> dict[str, Any]:
        """Listener `main` at `version`: its stat_prefix alternates, a response header names the version."""
        lst = http_listener("main", live.port, [route("/", "a")])
        hcm = lst["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["stat_prefix"] = f"main_{'ab'[version % 2]}"
        hcm["route_config"]["response_headers_to_add"] = [
            {"header": {"key": "x-listener-version", "value": str(version)}}]
        return lst

    replace_file(lds, listeners_file(listener(0), version="0"))
    live.start([], [live.cluster("a")], {"lds_config": lds})
    assert new_connection_version(live.port) == "0"
    old_connection_answers: list[tuple[int, int, str | None]] = []  # (step, status, version) on a connection of step-1
    new_connection_lag: list[float] = []

    def modify(step: int) -> None:
        old = http.client.HTTPConnection("127.0.0.1", live.port, timeout=5)
        try:
            old.request("GET", "/probe")
            first = old.getresponse()
            first.read()
            assert (first.status, version_of(first)) == (200, str(step - 1))
            changed = time.monotonic()
            replace_file(lds, listeners_file(listener(step), version=str(step)))
            assert wait_until(lambda: new_connection_version(live.port) == str(step), timeout=EFFECT_S), step
            new_connection_lag.append(time.monotonic() - changed)
            old.request("GET", "/probe")
            second = old.getresponse()
            second.read()
            old_connection_answers.append((step, second.status, version_of(second)))
        finally:
            old.close()

    result = live.under_load(modify)
    assert_nothing_lost(result)
    # The connection opened before each change was answered by the version that accepted it.
    assert old_connection_answers == [(step, 200, str(step - 1)) for step in range(1, CHANGES + 1)]
    live.assert_counters({"listener_manager.lds.update_success": 1 + CHANGES,
                          "listener_manager.listener_modified": CHANGES, "listener_manager.total_listeners_active": 1})


def test_keep_alive_connection_of_a_replaced_listener_is_told_to_close(live: Live) -> None:
    """A client that keeps using a connection of a replaced listener is asked to leave (`connection: close`)
    before the drain time ends: no request on it fails. Until then it is served by the old version."""
    lds = live.directory / "lds.yaml"

    def listener(version: int) -> dict[str, Any]:
        lst = http_listener("main", live.port, [route("/", "a")])
        lst["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["response_headers_to_add"] = [
            {"header": {"key": "x-listener-version", "value": str(version)}}]
        return lst

    replace_file(lds, listeners_file(listener(1), version="1"))
    live.start([], [live.cluster("a")], {"lds_config": lds})
    conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=5)
    answers: list[tuple[float, int, str | None, str | None]] = []  # (s after the change, status, version, connection)
    try:
        conn.request("GET", "/probe")
        first = conn.getresponse()
        first.read()
        assert (first.status, version_of(first), first.will_close) == (200, "1", False)
        replace_file(lds, listeners_file(listener(2), version="2"))
        changed = time.monotonic()
        assert wait_until(lambda: new_connection_version(live.port) == "2", timeout=EFFECT_S)
        while time.monotonic() - changed < DRAIN_S + 1:
            try:
                conn.request("GET", "/probe")
                reply = conn.getresponse()
                reply.read()
            except (OSError, http.client.HTTPException) as exc:
                pytest.fail(f"request {len(answers) + 1} on the old connection, {time.monotonic() - changed:.2f} s "
                            f"after the change, failed ({exc!r}); the {len(answers)} answers before it: "
                            f"{sorted(set((a[1], a[2], a[3]) for a in answers))} (status, version, connection)")
            answers.append((round(time.monotonic() - changed, 2), reply.status, version_of(reply),
                            reply.getheader("connection")))
            if reply.will_close:
                break
            time.sleep(0.05)
    finally:
        conn.close()
    assert answers and answers[-1][3] == "close", answers
    assert all(status == 200 and version == "1" for _, status, version, _ in answers), answers
