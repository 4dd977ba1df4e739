"""Active health checking: the per-host state machine, and the prober against a real local server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pylon.proxy.upstream.connect import open_stream
from pylon.proxy.upstream.health import (
    HealthChecker, HealthState, Outcome, build_http_request, classify_status, http_probe, tcp_probe,
)
from pylon.proxy.upstream.host import ACTIVE_HC_TIMEOUT, FAILED_ACTIVE_HC, PENDING_ACTIVE_HC, Host
from pylon.stats.store import StatsStore
from tests.conftest import free_port


def plain(address: tuple[str, int]) -> Any:
    """How a plaintext cluster opens its health-check connections."""
    return open_stream(address, None, 1.0)

def new_state(healthy_threshold: int = 2, unhealthy_threshold: int = 3) -> HealthState:
    return HealthState(
        Host(("127.0.0.1", 80)), healthy_threshold=healthy_threshold, unhealthy_threshold=unhealthy_threshold,
    )


# -- state machine -------------------------------------------------------------------------


def test_new_host_is_unhealthy_pending_and_first_success_makes_it_healthy():
    state = new_state(healthy_threshold=3)
    host = state.host
    assert not host.healthy
    assert host.health_flags_str() == "/failed_active_hc/pending_active_hc"
    assert state.on_success() is True
    assert host.healthy and host.health_flags_str() == "healthy"


def test_first_failure_keeps_host_unhealthy_and_clears_pending():
    state = new_state()
    assert state.on_failure() is False
    assert state.host.has_flag(FAILED_ACTIVE_HC) and not state.host.has_flag(PENDING_ACTIVE_HC)
    assert state.on_success() is False  # no longer the first check: healthy_threshold applies
    assert state.on_success() is True
    assert state.host.healthy


def test_healthy_host_needs_unhealthy_threshold_consecutive_network_failures():
    state = new_state(unhealthy_threshold=3)
    state.on_success()
    assert state.on_failure() is False
    assert state.on_failure() is False
    assert state.on_success() is False  # a success resets the failure count
    assert state.on_failure() is False
    assert state.on_failure() is False
    assert state.host.healthy
    assert state.on_failure() is True
    assert not state.host.healthy


def test_active_failure_is_immediate():
    state = new_state(unhealthy_threshold=5)
    state.on_success()
    assert state.on_result(Outcome.ACTIVE_FAILURE) is True
    assert not state.host.healthy


def test_unhealthy_host_needs_healthy_threshold_consecutive_successes():
    state = new_state(healthy_threshold=3, unhealthy_threshold=1)
    state.on_success()
    state.on_failure()
    assert not state.host.healthy
    assert state.on_success() is False
    assert state.on_success() is False
    assert state.on_failure() is False  # resets the success count
    assert state.on_success() is False
    assert state.on_success() is False
    assert state.on_success() is True
    assert state.host.healthy


def test_timeout_counts_as_failure_and_is_flagged():
    state = new_state(unhealthy_threshold=2)
    state.on_success()
    state.on_result(Outcome.TIMEOUT)
    assert state.host.has_flag(ACTIVE_HC_TIMEOUT) and state.host.healthy
    assert state.on_result(Outcome.TIMEOUT) is True
    assert state.host.health_flags_str() == "/failed_active_hc/active_hc_timeout"
    state.on_success()
    assert not state.host.has_flag(ACTIVE_HC_TIMEOUT)


def test_classify_status_uses_half_open_ranges():
    expected = ((200, 201),)
    assert classify_status(200, expected) is Outcome.SUCCESS
    assert classify_status(201, expected) is Outcome.ACTIVE_FAILURE
    assert classify_status(503, expected) is Outcome.ACTIVE_FAILURE
    assert classify_status(204, ((200, 300),)) is Outcome.SUCCESS


def test_request_is_envoy_shaped():
    raw = build_http_request("/healthz", "backend")
    assert raw.startswith(b"GET /healthz HTTP/1.1\r\n")
    assert b"\r\nHost: backend\r\n" in raw and b"\r\nUser-Agent: Envoy/HC\r\n" in raw
    assert raw.endswith(b"\r\n\r\n")


# -- against a real server -----------------------------------------------------------------


class TinyServer:
    """An HTTP/1.1 server on 127.0.0.1 answering every request with `self.status`."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[bytes] = []
        self.hang = False
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if self.hang:
            await asyncio.sleep(5)
        writer.write(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_http_probe_outcomes_against_real_server():
    async def main() -> None:
        server = TinyServer()
        await server.start()
        try:
            probe = http_probe(plain, "/ready", "svc")
            address = ("127.0.0.1", server.port)
            assert await probe(address) is Outcome.SUCCESS
            assert server.requests[0].startswith(b"GET /ready HTTP/1.1\r\n")
            assert b"Host: svc\r\n" in server.requests[0] and b"User-Agent: Envoy/HC\r\n" in server.requests[0]
            server.status = 503
            assert await probe(address) is Outcome.ACTIVE_FAILURE
            assert await probe(("127.0.0.1", free_port())) is Outcome.NETWORK_FAILURE
            assert await tcp_probe(plain)(address) is Outcome.SUCCESS
            assert await tcp_probe(plain)(("127.0.0.1", free_port())) is Outcome.NETWORK_FAILURE
        finally:
            await server.stop()

    asyncio.run(main())


def test_checker_follows_host_from_healthy_to_failing_and_back():
    async def main() -> None:
        server = TinyServer()
        await server.start()
        stats = StatsStore()
        checker = HealthChecker(
            stats, "cluster.c.", http_probe(plain, "/h", "c"), timeout=1.0, interval=0.02,
            healthy_threshold=2, unhealthy_threshold=2,
        )
        host = Host(("127.0.0.1", server.port))
        checker.add_host(host)
        transitions: list[bool] = []
        host.on_health_change = lambda h: transitions.append(h.healthy)
        checker.start(asyncio.get_running_loop())
        try:
            await wait_until(lambda: host.healthy)
            assert stats.gauges["cluster.c.health_check.healthy"].value == 1
            server.status = 500
            await wait_until(lambda: not host.healthy)
            assert stats.gauges["cluster.c.health_check.healthy"].value == 0
            server.status = 200
            await wait_until(lambda: host.healthy)
        finally:
            await checker.stop()
            await server.stop()
        assert transitions == [True, False, True]
        c = stats.counters
        assert c["cluster.c.health_check.attempt"].value >= 4
        assert c["cluster.c.health_check.success"].value >= 3
        assert c["cluster.c.health_check.failure"].value >= 1

    asyncio.run(main())


def test_checker_times_out_and_counts_network_failure():
    async def main() -> None:
        server = TinyServer()
        server.hang = True
        await server.start()
        stats = StatsStore()
        checker = HealthChecker(
            stats, "cluster.c.", http_probe(plain, "/h", "c"), timeout=0.05, interval=10,
            healthy_threshold=1, unhealthy_threshold=1,
        )
        host = Host(("127.0.0.1", server.port))
        checker.add_host(host)
        try:
            assert await checker.check_once(host) is Outcome.TIMEOUT
        finally:
            await server.stop()
        assert host.health_flags_str() == "/failed_active_hc/active_hc_timeout"
        assert stats.counters["cluster.c.health_check.network_failure"].value == 1

    asyncio.run(main())


def test_checker_uses_no_traffic_interval_until_traffic():
    traffic = False
    checker = HealthChecker(
        StatsStore(), "cluster.c.", tcp_probe(plain), timeout=1, interval=2, interval_jitter=0.5,
        no_traffic_interval=60, healthy_threshold=1, unhealthy_threshold=1, had_traffic=lambda: traffic,
    )
    assert 60 <= checker.next_interval() <= 60.5
    traffic = True
    assert 2 <= checker.next_interval() <= 2.5


def test_no_traffic_healthy_interval_is_for_healthy_hosts():
    traffic = False
    checker = HealthChecker(
        StatsStore(), "cluster.c.", tcp_probe(plain), timeout=1, interval=2, no_traffic_interval=60,
        no_traffic_healthy_interval=4, healthy_threshold=1, unhealthy_threshold=1, had_traffic=lambda: traffic,
    )
    healthy, failed = Host(("127.0.0.1", 1)), Host(("127.0.0.1", 2))
    failed.set_flag(FAILED_ACTIVE_HC)
    assert (checker.next_interval(healthy), checker.next_interval(failed)) == (4, 60)
    traffic = True
    assert (checker.next_interval(healthy), checker.next_interval(failed)) == (2, 2)
    unset = HealthChecker(StatsStore(), "cluster.c.", tcp_probe(plain), timeout=1, interval=2, no_traffic_interval=60,
                          healthy_threshold=1, unhealthy_threshold=1, had_traffic=lambda: False)
    assert unset.next_interval(healthy) == 60  # unset: no_traffic_interval, as Envoy defaults it


def test_removed_host_stops_being_checked():
    async def main() -> None:
        server = TinyServer()
        await server.start()
        checker = HealthChecker(
            StatsStore(), "cluster.c.", http_probe(plain, "/h", "c"), timeout=1.0, interval=0.01,
            healthy_threshold=1, unhealthy_threshold=1,
        )
        host = Host(("127.0.0.1", server.port))
        checker.add_host(host)
        checker.start(asyncio.get_running_loop())
        await wait_until(lambda: len(server.requests) >= 2)
        checker.remove_host(host)
        await asyncio.sleep(0.05)
        seen = len(server.requests)
        await asyncio.sleep(0.1)
        assert len(server.requests) == seen
        await checker.stop()
        await server.stop()

    asyncio.run(main())


@pytest.mark.parametrize("outcome", [Outcome.NETWORK_FAILURE, Outcome.TIMEOUT])
def test_network_failures_never_skip_the_threshold(outcome):
    state = new_state(unhealthy_threshold=2)
    state.on_success()
    assert state.on_result(outcome) is False
    assert state.host.healthy
