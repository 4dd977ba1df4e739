"""When a pooled connection must go (sans-IO): idle timeout, max duration, which one when both are due."""

from __future__ import annotations

import msgspec
import pytest

from pylon.config.envoy import Cluster as ClusterConfig, convert
from pylon.proxy.upstream.expiry import ConnectionLimits, Expiry, verdict

KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def limits(idle: float = 0.0, duration: float = 0.0) -> ConnectionLimits:
    return ConnectionLimits(idle_timeout=idle, max_duration=duration)


def test_an_idle_connection_goes_at_its_idle_timeout_never_before() -> None:
    assert verdict(limits(idle=10), now=109.9, opened_at=50, idle_since=100, draining=False) == (None, 110)
    assert verdict(limits(idle=10), now=110, opened_at=50, idle_since=100, draining=False) == (Expiry.IDLE_TIMEOUT, 0)


def test_a_busy_connection_has_no_idle_deadline() -> None:
    assert verdict(limits(idle=10), now=500, opened_at=50, idle_since=0.0, draining=False) == (None, 0.0)


def test_no_limits_no_look() -> None:
    assert verdict(limits(), now=500, opened_at=50, idle_since=100, draining=False) == (None, 0.0)


def test_max_duration_counts_from_the_connect_busy_or_idle() -> None:
    for idle_since in (0.0, 100.0):
        assert verdict(limits(duration=60), now=109, opened_at=50, idle_since=idle_since, draining=False) == (None, 110)
        assert verdict(limits(duration=60), now=110, opened_at=50, idle_since=idle_since, draining=False) == (
            Expiry.MAX_DURATION, 0)


def test_a_draining_connection_is_past_its_age() -> None:
    """Once drained by its max duration it is counted once, and only the idle timeout can still matter."""
    assert verdict(limits(duration=60), now=200, opened_at=50, idle_since=0.0, draining=True) == (None, 0.0)
    assert verdict(limits(idle=10, duration=60), now=200, opened_at=50, idle_since=195, draining=True) == (None, 205)


@pytest.mark.parametrize(("idle_since", "reason"), [(100, Expiry.IDLE_TIMEOUT), (104, Expiry.MAX_DURATION)])
def test_when_both_have_passed_the_earlier_is_the_reason(idle_since: float, reason: Expiry) -> None:
    # idle deadline idle_since + 10, age deadline 113; looked at late, at 120
    assert verdict(limits(idle=10, duration=60), now=120, opened_at=53, idle_since=idle_since, draining=False) == (
        reason, 0)


def test_the_next_look_is_the_earlier_deadline() -> None:
    assert verdict(limits(idle=10, duration=60), now=101, opened_at=53, idle_since=100, draining=False) == (None, 110)
    assert verdict(limits(idle=100, duration=60), now=101, opened_at=53, idle_since=100, draining=False) == (None, 113)


def _cluster(**fields: object) -> ClusterConfig:
    data = {"name": "c", "load_assignment": {"cluster_name": "c", "endpoints": []}, **fields}
    return convert(msgspec.json.decode(msgspec.json.encode(data)), ClusterConfig)


def test_limits_from_a_cluster_config() -> None:
    assert ConnectionLimits.of(_cluster()) == ConnectionLimits(3600.0, 0.0, 0, 100)
    typed = {KEY: {"@type": f"type.googleapis.com/{KEY}", "explicit_http_config": {"http_protocol_options": {}},
                   "common_http_protocol_options": {"idle_timeout": "0.5s", "max_connection_duration": "2s",
                                                    "max_requests_per_connection": 3, "max_headers_count": 7}}}
    assert ConnectionLimits.of(_cluster(typed_extension_protocol_options=typed)) == ConnectionLimits(0.5, 2.0, 3, 7)
    deprecated = _cluster(common_http_protocol_options={"idle_timeout": "0s"}, max_requests_per_connection=4)
    assert ConnectionLimits.of(deprecated) == ConnectionLimits(0.0, 0.0, 4, 100)
