"""Integration: envoy.filters.http.bandwidth_limit through pylon and Envoy 1.40 side by side.

Two listeners. `main` has the filter as Envoy's docs configure it (DISABLED, no limit) and routes with their own
configs: responses limited to 100 KiB/s, requests limited to 100 KiB/s, and both directions at 1 KiB/s with the
delay trailers; its catch-all route is not limited. `global` limits both directions of every route to 100 KiB/s
in the filter's own config, and one route's config turns it off. A bucket fills from when the config loads (as
observed with Envoy 1.40: a route first used seconds later finds a second's worth), so each limited transfer is
300 KiB at 100 KiB/s: 100 KiB at once at most, then 200 KiB paced, 2 s or more. Only lower bounds on the time are
asserted (the direction that matters: a limit must hold); the machine may be slow, never too fast.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster
from tests.proxy.upstreams import Upstream

BW_TYPE = "type.googleapis.com/envoy.extensions.filters.http.bandwidth_limit.v3.BandwidthLimit"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
NAME = "envoy.filters.http.bandwidth_limit"
SIZE = 300 * 1024
PACED = 1.5  # seconds: 300 KiB at 100 KiB/s takes 2 s or more, whatever the bucket held


def limit(stat_prefix: str, mode: str, kbps: int | None = None, **fields: Any) -> dict[str, Any]:
    config = {"@type": BW_TYPE, "stat_prefix": stat_prefix, "enable_mode": mode, **fields}
    if kbps is not None:
        config["limit_kbps"] = kbps
    return config


def limited(prefix: str, config: dict[str, Any], rewrite: str = "/") -> dict[str, Any]:
    return {**route(prefix, "up", prefix_rewrite=rewrite), "typed_per_filter_config": {NAME: config}}


def listener(name: str, port: int, routes: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    result = http_listener(name, port, routes, http_protocol_options={"enable_trailers": True})
    hcm = result["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [{"name": NAME, "typed_config": config},
                           {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]
    return result


MAIN_ROUTES = [
    limited("/response/", limit("bw_response", "RESPONSE", 100)),
    limited("/request/", limit("bw_request", "REQUEST", 100)),
    limited("/trailers/", limit("bw_trailers", "RESPONSE", 1, fill_interval="0.1s",
                                enable_response_trailers=True, response_trailer_prefix="x-bw")),
    limited("/plain-trailers/", limit("bw_plain_trailers", "RESPONSE", 1, enable_response_trailers=True)),
    route("/", "up"),
]
GLOBAL_ROUTES = [
    limited("/off/", limit("bw_off", "DISABLED", 1)),
    route("/", "up"),
]


class Setup:
    def __init__(self, proxy: RunningProxy, ports: dict[str, int], upstream: Upstream) -> None:
        self.proxy, self.ports, self.upstream = proxy, ports, upstream

    def url(self, listener: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[listener]}{path}"

    def timed(self, method: str, listener: str, path: str, body: bytes | None = None) -> tuple[float, httpx.Response]:
        start = time.monotonic()
        reply = httpx.request(method, self.url(listener, path), content=body, timeout=30)
        return time.monotonic() - start, reply

    def stat_lines(self, prefix: str) -> dict[str, str]:
        """The admin /stats lines under `prefix` (counters, gauges and histograms alike), name -> value text."""
        out = {}
        for line in self.proxy.admin("/stats").text.splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix):
                out[name[len(prefix):]] = value
        return out


@contextlib.contextmanager
def launched(implementation: str, directory: Path, listeners: Callable[[dict[str, int]], list[dict[str, Any]]],
             names: tuple[str, ...], concurrency: int = 1) -> Iterator[Setup]:
    """One proxy with the listeners `listeners(ports)` makes, and an upstream of its own; cleaned up however it ends."""
    upstream = Upstream()
    launcher = ProxyLauncher(directory)
    try:
        ports = {name: free_port() for name in names}
        proxy = launcher.start(listeners(ports), [static_cluster("up", [upstream.port])], implementation=implementation,
                               concurrency=concurrency)
        yield Setup(proxy, ports, upstream)
    finally:
        launcher.close()
        upstream.close()


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    def listeners(ports: dict[str, int]) -> list[dict[str, Any]]:
        return [listener("main", ports["main"], MAIN_ROUTES, limit("bw_default", "DISABLED")),
                listener("global", ports["global"], GLOBAL_ROUTES, limit("bw_global", "REQUEST_AND_RESPONSE", 100))]

    with launched(request.param, tmp_path_factory.mktemp(f"bandwidth-{request.param}"), listeners,
                  ("main", "global")) as running:
        yield running


def trailered_get(port: int, path: str) -> tuple[bytes, dict[str, str]]:
    """GET over a raw socket, reading a chunked response through its trailers: (body, trailers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET %s HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n" % path.encode())
        reader = sock.makefile("rb")
        head = []
        while (line := reader.readline()) not in (b"\r\n", b""):
            head.append(line.lower())
        assert b"transfer-encoding: chunked\r\n" in head, head
        body = []
        while size := int(reader.readline().split(b";")[0], 16):
            body.append(reader.read(size))
            reader.readline()
        trailers = {}
        while (line := reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            trailers[name.strip().lower()] = value.strip()
        return b"".join(body), trailers


def test_a_limited_route_paces_its_responses(setup: Setup) -> None:
    elapsed, reply = setup.timed("GET", "main", f"/response/bytes/{SIZE}")
    assert reply.status_code == 200 and len(reply.content) == SIZE
    assert elapsed >= PACED


def test_an_unlimited_route_is_not_paced(setup: Setup) -> None:
    elapsed, reply = setup.timed("GET", "main", f"/bytes/{SIZE}")
    assert reply.status_code == 200 and len(reply.content) == SIZE
    assert elapsed < 1.0


def test_a_limited_route_paces_request_bodies(setup: Setup) -> None:
    elapsed, reply = setup.timed("POST", "main", "/request/sink", b"r" * SIZE)
    assert reply.status_code == 200 and reply.content == str(SIZE).encode()  # the upstream got all of it
    assert elapsed >= PACED


def test_the_filter_config_limits_every_route_but_one_that_turns_it_off(setup: Setup) -> None:
    elapsed, reply = setup.timed("GET", "global", f"/off/bytes/{SIZE}")
    assert reply.status_code == 200 and len(reply.content) == SIZE
    assert elapsed < 1.0  # the route's config replaces the filter's whole: DISABLED there
    elapsed, reply = setup.timed("POST", "global", "/sink", b"g" * SIZE)
    assert reply.status_code == 200 and reply.content == str(SIZE).encode()
    assert elapsed >= PACED


def test_http2_clients_are_paced_too(setup: Setup, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(b"h" * SIZE)
    for path, extra, expected in [(f"/response/bytes/{SIZE}", [], f"2 {SIZE}"),
                                  ("/request/sink", ["--data-binary", f"@{body}"], "2 6")]:
        start = time.monotonic()
        done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w",
                               "%{http_version} %{size_download}", *extra, setup.url("main", path)],
                              capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout == expected  # HTTP/2, and the whole body (the upstream's answer: 6 digits of size)
        assert time.monotonic() - start >= PACED


def test_delay_trailers_when_enabled(setup: Setup) -> None:
    # 1 KiB/s, 100 ms fill: at most 1 KiB at once, the rest of the 2890 byte body over 1.8 s or more
    body, trailers = trailered_get(setup.ports["main"], "/trailers/chunked/300")
    assert body == b"".join(b"chunk-%d\n" % i for i in range(300))
    # no request body: no request trailers; the response took time, most of it the filter's
    assert set(trailers) == {"x-bw-bandwidth-response-delay-ms", "x-bw-bandwidth-response-filter-delay-ms"}
    assert int(trailers["x-bw-bandwidth-response-delay-ms"]) >= 1500
    assert int(trailers["x-bw-bandwidth-response-filter-delay-ms"]) % 100 == 0  # whole fill intervals
    assert int(trailers["x-bw-bandwidth-response-filter-delay-ms"]) >= 1500


def test_delay_trailers_without_a_prefix(setup: Setup) -> None:
    _, trailers = trailered_get(setup.ports["main"], "/plain-trailers/chunked/300")
    assert set(trailers) == {"bandwidth-response-delay-ms", "bandwidth-response-filter-delay-ms"}


def test_stats(setup: Setup) -> None:
    prefix = "bw_response.http_bandwidth_limit."
    before = setup.stat_lines(prefix)
    setup.timed("GET", "main", f"/response/bytes/{SIZE}")
    stats = setup.stat_lines(prefix)
    assert set(stats) == {f"{side}_{name}" for side in ("request", "response") for name in (
        "enabled", "enforced", "pending", "incoming_size", "allowed_size", "incoming_total_size",
        "allowed_total_size", "transfer_duration")}

    def added(name: str) -> int:
        return int(stats[name]) - int(before.get(name, "0"))

    assert added("response_enabled") == 1 and stats["request_enabled"] == "0"
    assert added("response_incoming_total_size") == added("response_allowed_total_size") == SIZE
    assert stats["response_pending"] == "0" and stats["response_incoming_size"] == "0"  # the end's empty piece
    assert added("response_enforced") >= 30  # 200 KiB or more held, 5 KiB a look
    assert setup.stat_lines("bw_default.http_bandwidth_limit.")["response_enabled"] == "0"


BIG = 32 * 1024 * 1024  # far more than the kernel's loopback socket buffers hold


@pytest.fixture(scope="module", params=["pylon", "envoy"])
def capped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A listener limiting both directions to 100 KiB/s, its connection buffer limit 64 KiB, its own upstream."""
    def listeners(ports: dict[str, int]) -> list[dict[str, Any]]:
        capped_listener = listener("capped", ports["capped"], [route("/", "up")],
                                   limit("bw_capped", "REQUEST_AND_RESPONSE", 100))
        capped_listener["per_connection_buffer_limit_bytes"] = 65536
        return [capped_listener]

    with launched(request.param, tmp_path_factory.mktemp(f"bandwidth-capped-{request.param}"), listeners,
                  ("capped",)) as running:
        yield running


def test_a_held_response_pauses_its_upstream(capped: Setup) -> None:
    # Were the held body not bounded, the proxy would read the 32 MiB from the upstream at once.
    with socket.create_connection(("127.0.0.1", capped.ports["capped"]), timeout=10) as sock:
        sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nhost: x\r\n\r\n" % BIG)
        got = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got += len(sock.recv(65536))
        assert 0 < got < 2 * 1024 * 1024  # paced to the client
        assert not capped.upstream.bytes_done.is_set()  # and the upstream held back


def test_a_held_request_body_pauses_the_client(capped: Setup) -> None:
    with socket.create_connection(("127.0.0.1", capped.ports["capped"]), timeout=10) as sock:
        sock.sendall(b"POST /sink HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % BIG)
        sock.setblocking(False)
        sent = 0
        block = b"b" * 65536
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < BIG:
            try:
                sent += sock.send(block[:BIG - sent])
            except BlockingIOError:
                time.sleep(0.01)
        assert sent < BIG // 2  # the proxy stopped reading the client
        assert capped.upstream.sink_bytes < 2 * 1024 * 1024  # and paced what it read


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_two_workers_share_one_bucket(implementation: str, tmp_path: Path) -> None:
    # Four transfers at once over two workers (the kernel spreads the connections): 600 KiB from one 150 KiB/s
    # bucket take 3 s or more; a bucket per worker would let them through in about 1 s (2 s if three share one;
    # only when the kernel puts all four on one worker would a bucket per worker go unnoticed).
    def listeners(ports: dict[str, int]) -> list[dict[str, Any]]:
        return [listener("main", ports["main"], [route("/", "up")], limit("bw_shared", "RESPONSE", 150))]

    with launched(implementation, tmp_path, listeners, ("main",), concurrency=2) as running:
        sizes: list[int] = []

        def fetch() -> None:
            sizes.append(len(httpx.get(running.url("main", f"/bytes/{150 * 1024}"), timeout=30).content))

        start = time.monotonic()
        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sizes == [150 * 1024] * 4
        assert time.monotonic() - start >= 2.5
        if implementation == "pylon":
            assert len(running.proxy.worker_pids()) == 2
