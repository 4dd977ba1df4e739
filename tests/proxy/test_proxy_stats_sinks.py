"""Integration: the statsd and DogStatsD stats sinks through pylon and Envoy 1.40 alike, read from a UDP socket the test binds.

Both proxies flush every 0.5 s; after three requests the lines must be Envoy's statsd format, one per datagram,
under the sink's prefix: counters as increases that add up to the requests, gauges with their value, the request
time as timer samples that add up to the requests.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener

ROUTES = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
LINE = re.compile(rb"^(?P<name>[a-z0-9_.]+):(?P<value>-?[0-9.]+)\|(?P<kind>c|g|ms)(\|@(?P<rate>[0-9.e-]+))?"
                  rb"(\|#(?P<tags>[a-z0-9_.:,]+))?$")
#: each sink's @type, and how its lines name the HTTP connection manager's stats: (name, tags)
SINKS = {
    "statsd": ("StatsdSink", b"edge.http.main.", None),
    "dog_statsd": ("DogStatsdSink", b"edge.http.", b"envoy.http_conn_manager_prefix:main"),
}


@pytest.fixture
def udp() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def collect(sock: socket.socket, until: float) -> list[bytes]:
    datagrams = []
    while time.monotonic() < until:
        try:
            datagrams.append(sock.recv(65536))
        except TimeoutError:
            continue
    return datagrams


@pytest.mark.parametrize("kind", SINKS)
@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_statsd_lines_as_envoy(implementation: str, kind: str, udp: socket.socket, tmp_path: Path) -> None:
    message, http, tags = SINKS[kind]
    launcher = ProxyLauncher(tmp_path)
    try:
        sink = {"name": f"envoy.stat_sinks.{kind}", "typed_config": {
            "@type": f"type.googleapis.com/envoy.config.metrics.v3.{message}", "prefix": "edge",
            # no protocol (TCP, the default): a statsd sink's address gets UDP datagrams all the same
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": udp.getsockname()[1]}}}}
        proxy = launcher.start([http_listener("main", free_port(), ROUTES)], [], implementation=implementation,
                               bootstrap_extra={"stats_flush_interval": "0.5s", "stats_sinks": [sink]})
        with httpx.Client() as client:
            for _ in range(3):
                assert client.get(proxy.url("main", "/")).status_code == 200
        datagrams = collect(udp, time.monotonic() + 3.0)
    finally:
        launcher.close()
    lines = [LINE.match(datagram) for datagram in datagrams]
    assert all(lines), [d for d, m in zip(datagrams, lines) if not m][:5]  # one line per datagram, statsd format
    by_name: dict[tuple[bytes, bytes, bytes | None], list[re.Match[bytes]]] = {}
    for line in lines:
        assert line is not None
        assert line["name"].startswith(b"edge.")
        by_name.setdefault((line["name"], line["kind"], line["tags"]), []).append(line)
    requests = by_name[(http + b"downstream_rq_total", b"c", tags)]
    assert sum(int(line["value"]) for line in requests) == 3 and len(requests) >= 2  # deltas, zeros included
    assert {line["value"] for line in by_name[(b"edge.server.live", b"g", None)]} == {b"1"}
    timers = by_name[(http + b"downstream_rq_time", b"ms", tags)]
    assert sum(1 / float(line["rate"]) if line["rate"] else 1 for line in timers) == pytest.approx(3, rel=1e-3)
