"""The host pool without sockets: connections expire on the worker's deadline wheel as Envoy's do, a busy one is
never closed for idleness, limits are counted under Envoy's stat names, and an emptied pool says so.

Connections get a fake transport and are handed to the pool as `_connect` would (`HostPool.connected`); time
is a number the test moves, and the wheel is the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from pylon.config.envoy import Cluster as ClusterConfig, convert
from pylon.proxy.deadlines import DeadlineWheel, Watched
from pylon.stats.store import StatsStore
from pylon.proxy.upstream.cluster import Cluster
from pylon.proxy.upstream import pool as pool_module
from pylon.proxy.upstream import pool_base
from pylon.proxy.upstream.pool import HostPool, UpstreamConnection

KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
START = 1000.0  # a loop clock never reads 0 (0 means "not idle" to a connection)


class Clock:
    """The loop as the pool uses it without connecting: its clock."""

    def __init__(self) -> None:
        self.now = START

    def time(self) -> float:
        return self.now

    def create_task(self, coro: Any) -> Any:
        coro.close()  # a connect the test does not want: it hands connections over itself
        raise AssertionError("the pool tried to open a connection")


class Owner:
    """The worker's side of a pool: the real deadline wheel, and the pools that said they are empty."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.wheel = DeadlineWheel(0.02)
        self.emptied: list[HostPool] = []

    def arm(self, target: Watched, when: float) -> None:
        self.wheel.arm(target, when)

    def disarm(self, target: Watched) -> None:
        self.wheel.disarm(target)

    def maybe_empty(self, pool: HostPool) -> None:
        self.emptied.append(pool)

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Let time pass, with the worker's ticks."""
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(end, self.clock.now + step)
            self.wheel.expire(self.clock.now)


class Transport:
    def __init__(self) -> None:
        self.closed = False
        self.written = b""

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name == "sockname" else None

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True


class Exchange:
    """A request in flight as the router is to the pool: it records what it was told."""

    is_head = False
    upgrade_accepted = False

    def __init__(self) -> None:
        self.conn: UpstreamConnection | None = None
        self.events: list[Any] = []

    def on_upstream_ready(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def on_upstream_connect_failure(self, reason: str) -> None:
        self.events.append(("connect_failure", reason))

    def on_upstream_overflow(self) -> None:
        self.events.append("overflow")

    def on_upstream_headers(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> None:
        self.events.append(("headers", status))

    def on_upstream_body(self, data: bytes) -> None:
        pass

    def on_upstream_complete(self) -> None:
        self.events.append("complete")

    def on_upstream_reset(self, reason: str, stale: bool = False) -> None:
        self.events.append(("reset", reason))

    def on_upstream_flush(self) -> None:
        pass

    def on_upstream_pause(self, paused: bool) -> None:
        pass

    def on_upstream_upgraded(self, conn: UpstreamConnection, headers: list[tuple[bytes, bytes]], rest: bytes) -> None:
        pass


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Rig:
    """One pool of a cluster with these common_http_protocol_options, its clock, owner and stats."""

    def __init__(self, **common: Any) -> None:
        data = {"name": "up", "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]},
            "typed_extension_protocol_options": {KEY: {
                "@type": f"type.googleapis.com/{KEY}", "common_http_protocol_options": common,
                "explicit_http_config": {"http_protocol_options": {}}}}}
        self.stats = StatsStore()
        self.cluster = Cluster(convert(msgspec.json.decode(msgspec.json.encode(data)), ClusterConfig), self.stats)
        self.clock = Clock()
        self.owner = Owner(self.clock)
        self.pool = HostPool(self.cluster, self.cluster.hosts[0], self.clock, self.owner)  # type: ignore[arg-type]

    def open(self) -> UpstreamConnection:
        """A connection comes up (as `_connect` hands it over): idle, or given to the first request waiting."""
        conn = UpstreamConnection(self.pool)
        conn.connection_made(Transport())  # type: ignore[arg-type]
        assert self.cluster.circuit_breakers.connections.try_acquire()
        self.pool.connected(conn)
        return conn

    def request(self) -> Exchange:
        """A request takes an idle connection (it must find one)."""
        exchange = Exchange()
        self.pool.acquire(exchange)
        assert exchange.conn is not None
        return exchange

    def answer(self, exchange: Exchange, response: bytes = OK) -> None:
        assert exchange.conn is not None
        exchange.conn.data_received(response)

    def stat(self, name: str) -> int:
        return self.stats.counters[f"cluster.up.{name}"].value


def test_an_idle_connection_closes_at_the_idle_timeout_and_the_pool_says_it_is_empty() -> None:
    rig = Rig(idle_timeout="0.5s")
    conn = rig.open()
    rig.answer(rig.request())
    rig.owner.advance(0.45)
    assert not conn.closed
    rig.owner.advance(0.1)
    assert conn.closed and conn.transport.closed  # type: ignore[union-attr]
    assert rig.stat("upstream_cx_idle_timeout") == 1 and rig.stat("upstream_cx_destroy") == 1
    assert rig.pool.empty and rig.owner.emptied == [rig.pool]
    assert not rig.owner.wheel  # nothing left armed


def test_each_request_starts_the_idle_clock_again() -> None:
    rig = Rig(idle_timeout="0.5s")
    conn = rig.open()
    for _ in range(4):
        rig.owner.advance(0.3)
        rig.answer(rig.request())
    rig.owner.advance(0.45)
    assert not conn.closed and rig.stat("upstream_cx_idle_timeout") == 0
    rig.owner.advance(0.1)
    assert conn.closed


def test_a_busy_connection_is_never_closed_for_idleness() -> None:
    rig = Rig(idle_timeout="0.5s")
    conn = rig.open()
    rig.owner.advance(0.49)
    exchange = rig.request()  # taken from idle right before its deadline: busy from this moment
    rig.owner.advance(2.0)
    assert not conn.closed and rig.stat("upstream_cx_idle_timeout") == 0
    rig.answer(exchange)
    assert exchange.events[-1] == "complete"
    rig.owner.advance(0.55)
    assert conn.closed and rig.stat("upstream_cx_idle_timeout") == 1


def test_idle_timeout_0_keeps_connections() -> None:
    rig = Rig(idle_timeout="0s")
    conn = rig.open()
    rig.answer(rig.request())
    assert not rig.owner.wheel  # not even looked at
    rig.clock.now += 86400
    rig.owner.advance(0.05)
    assert not conn.closed


def test_the_default_idle_timeout_is_an_hour() -> None:
    rig = Rig()
    conn = rig.open()
    assert conn.wake_at == START + 3600


def test_max_duration_closes_an_idle_connection_at_its_age() -> None:
    rig = Rig(max_connection_duration="1s", idle_timeout="0s")
    conn = rig.open()
    rig.owner.advance(0.5)
    rig.answer(rig.request())
    rig.owner.advance(0.45)
    assert not conn.closed
    rig.owner.advance(0.1)
    assert conn.closed and rig.stat("upstream_cx_max_duration_reached") == 1
    assert rig.stat("upstream_cx_idle_timeout") == 0


def test_max_duration_drains_a_busy_connection_after_its_response() -> None:
    rig = Rig(max_connection_duration="1s")
    conn = rig.open()
    exchange = rig.request()
    rig.owner.advance(1.5)
    assert not conn.closed and conn.draining and rig.stat("upstream_cx_max_duration_reached") == 1
    rig.answer(exchange)
    assert exchange.events[-1] == "complete"  # the response it was serving is whole
    assert conn.closed and conn not in rig.pool.idle
    rig.owner.advance(2.0)
    assert rig.stat("upstream_cx_max_duration_reached") == 1  # counted once


def test_max_requests_counts_the_connection_at_its_last_request_and_closes_it_after() -> None:
    rig = Rig(max_requests_per_connection=2)
    conn = rig.open()
    rig.answer(rig.request())
    assert rig.stat("upstream_cx_max_requests") == 0
    last = rig.request()
    assert rig.stat("upstream_cx_max_requests") == 1  # as Envoy: when the last allowed request gets it
    assert not conn.closed
    rig.answer(last)
    assert conn.closed and rig.pool.empty


def test_a_response_head_over_max_headers_count_is_a_protocol_error() -> None:
    rig = Rig(max_headers_count=3)
    rig.open()
    exchange = rig.request()
    rig.answer(exchange, b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\ncontent-length: 2\r\n\r\nok")  # 3: fine
    assert exchange.events[-1] == "complete"
    exchange = rig.request()
    conn = exchange.conn
    rig.answer(exchange, b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc: 3\r\ncontent-length: 2\r\n\r\nok")
    assert exchange.events == [("reset", "protocol error")]  # the router answers 502 UPE, as Envoy
    assert conn is not None and conn.closed and rig.stat("upstream_cx_protocol_error") == 1


def test_a_connection_closed_by_the_server_leaves_the_wheel() -> None:
    rig = Rig(idle_timeout="3600s")
    conn = rig.open()
    assert rig.owner.wheel
    conn.connection_lost(None)
    assert not rig.owner.wheel and conn.wake_at == 0.0
    assert rig.pool.empty and rig.owner.emptied == [rig.pool]


class _Task:
    def add_done_callback(self, callback: Any) -> None:
        pass


def test_a_connection_lost_before_the_pool_could_use_it_fails_its_request_at_once(monkeypatch: Any) -> None:
    """Over TLS 1.3 the server's refusal (an alert, then the close) can arrive before the connect returns: the
    request waiting for that connection is failed (not given a dead connection to wait on for ever), and the
    connection's circuit-breaker slot comes back."""
    rig = Rig()

    async def lost_during_connect(address: Any, tls: Any, timeout: float, factory: Any, *rest: Any) -> Any:
        conn = factory()
        transport = Transport()
        conn.connection_made(transport)
        conn.connection_lost(None)
        return transport, conn

    monkeypatch.setattr(pool_base, "open_upstream", lost_during_connect)
    connects: list[Any] = []
    rig.clock.create_task = lambda coro: connects.append(coro) or _Task()  # type: ignore[method-assign]
    exchange = Exchange()
    rig.pool.acquire(exchange)
    assert len(connects) == 1
    asyncio.run(connects[0])
    assert exchange.events == [("connect_failure", "connection termination")]
    assert rig.stat("upstream_cx_connect_fail") == 1
    assert rig.stats.gauges["cluster.up.upstream_cx_active"].value == 0
    assert rig.pool.empty
    assert rig.cluster.circuit_breakers.connections.try_acquire()  # the slot was given back


def test_an_unexpected_error_while_connecting_fails_its_request_instead_of_leaving_it(monkeypatch: Any) -> None:
    """Whatever goes wrong opening a connection, the request waiting for it gets its answer (a connect failure)."""
    rig = Rig()

    async def broken(address: Any, tls: Any, timeout: float, factory: Any, *rest: Any) -> Any:
        raise ValueError("handshake not done yet")

    monkeypatch.setattr(pool_base, "open_upstream", broken)
    connects: list[Any] = []
    rig.clock.create_task = lambda coro: connects.append(coro) or _Task()  # type: ignore[method-assign]
    exchange = Exchange()
    rig.pool.acquire(exchange)
    asyncio.run(connects[0])
    assert exchange.events == [("connect_failure", "internal error: ValueError")]
    assert rig.cluster.circuit_breakers.connections.try_acquire()
