"""HTTP/2 keepalive timers (sans-IO), on a loop whose clock the test moves: when PINGs go out, when the
connection is given up, and what postpones that."""

from __future__ import annotations

import random

from pylon.config.envoy import KeepaliveSettings, convert
from pylon.proxy.http.h2_keepalive import H2Keepalive
from tests.proxy.test_stream_states import FakeLoop


def keepalive(**settings: object) -> tuple[H2Keepalive, FakeLoop, list[str]]:
    loop, events = FakeLoop(), []
    config = convert(settings, KeepaliveSettings)
    ka = H2Keepalive(loop, config, lambda: events.append("ping"), lambda: events.append("expired"),  # type: ignore[arg-type]
                     rng=random.Random(1))
    return ka, loop, events


def advance(loop: FakeLoop, seconds: float) -> None:
    end = loop.now + seconds
    while True:
        due = [t.when for t in loop.timers if not t.cancelled and t.when <= end]
        if not due:
            break
        loop.now = min(due)
        loop.fire_due_timers()
    loop.now = end


def test_a_ping_every_interval_while_acked() -> None:
    ka, loop, events = keepalive(interval="10s", timeout="2s", interval_jitter={"value": 0})
    advance(loop, 9.9)
    assert events == []
    advance(loop, 0.2)
    assert events == ["ping"]
    ka.acked()
    advance(loop, 9.9)
    assert events == ["ping"]
    advance(loop, 0.2)
    assert events == ["ping", "ping"]


def test_jitter_adds_up_to_its_share_of_the_interval() -> None:
    ka, loop, events = keepalive(interval="10s", timeout="2s")  # 15% by default: 10 to 11.5 s
    advance(loop, 9.99)
    assert events == []
    advance(loop, 1.52)
    assert events == ["ping"]


def test_no_ack_within_the_timeout_expires_the_connection_once() -> None:
    ka, loop, events = keepalive(interval="1s", timeout="2s", interval_jitter={"value": 0})
    advance(loop, 1.0)
    advance(loop, 1.99)
    assert events == ["ping"]
    advance(loop, 0.02)
    assert events == ["ping", "expired"]
    advance(loop, 10)
    assert events == ["ping", "expired"]  # nothing after: the timers stopped


def test_frames_received_extend_the_wait_and_no_second_ping_goes_out() -> None:
    ka, loop, events = keepalive(interval="1s", timeout="2s", interval_jitter={"value": 0})
    advance(loop, 1.0)
    for _ in range(5):
        advance(loop, 1.5)
        ka.received()
    assert events == ["ping"]
    advance(loop, 2.01)
    assert events == ["ping", "expired"]


def test_idle_interval_pings_before_a_new_stream() -> None:
    ka, loop, events = keepalive(timeout="2s", connection_idle_interval="5s")
    advance(loop, 4)
    ka.before_stream()
    assert events == []
    advance(loop, 1.5)
    ka.before_stream()
    assert events == ["ping"]
    ka.before_stream()  # still unanswered: no second PING
    ka.acked()
    ka.received()
    ka.before_stream()
    assert events == ["ping"]
    advance(loop, 100)
    assert events == ["ping"]  # no interval: no PINGs of its own
