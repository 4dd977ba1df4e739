"""The fault filter's decisions (sans-IO): percentages, per-route replacement, the cap, refused fields."""

from __future__ import annotations

from typing import Any, Callable

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.extensions.filters.http.fault import FaultFilter, HTTPFault
from pylon.config.envoy import convert
from pylon.stats.store import StatsStore
from tests.proxy.conftest import http_listener, route


class FakeStream:
    """What the filter uses of a stream: its route, flags, and how it answers or holds a request."""

    def __init__(self, route_config: HTTPFault | None = None) -> None:
        self.route = type("Route", (), {"filter_config": lambda _self, name: route_config})()
        self.flags = "-"
        self.answered: Any = None
        self.held: tuple[float, Callable[[], None]] | None = None
        self.finish: list[Callable[[], None]] = []
        self.continued = False

    def local(self, reply: Any) -> None:
        self.answered = reply

    def hold(self, seconds: float, then: Callable[[], None]) -> None:
        self.held = (seconds, then)

    def on_finish(self, callback: Callable[[], None]) -> None:
        self.finish.append(callback)

    def continue_decoding(self) -> None:
        self.continued = True


def make(config: dict[str, Any], chance: float = 0.5) -> tuple[FaultFilter, StatsStore]:
    stats = StatsStore()
    return FaultFilter("envoy.filters.http.fault", convert(config, HTTPFault), "main", stats, None,
                       chance=lambda: chance), stats


@pytest.mark.parametrize(("percentage", "chance", "fires"), [
    ({"numerator": 50}, 0.49, True), ({"numerator": 50}, 0.5, False),
    ({"numerator": 1, "denominator": "TEN_THOUSAND"}, 0.00009, True),
    ({"numerator": 1, "denominator": "MILLION"}, 0.000001, False),
    ({"numerator": 500}, 0.999, True),  # above the denominator: every request
    ({}, 0.0, False),  # no numerator: 0%, never
])  # fmt: skip
def test_percentages(percentage: dict[str, Any], chance: float, fires: bool) -> None:
    fault, _ = make({"abort": {"http_status": 503, "percentage": percentage}}, chance)
    stream = FakeStream()
    assert fault.decode_headers(stream) is not fires
    assert (stream.answered is not None) is fires


def test_delay_then_abort_and_the_active_gauge() -> None:
    fault, stats = make({"delay": {"fixed_delay": "2s", "percentage": {"numerator": 100}},
                         "abort": {"http_status": 429, "percentage": {"numerator": 100}}})
    stream = FakeStream()
    assert fault.decode_headers(stream) is False and stream.answered is None
    assert stream.held is not None and stream.held[0] == 2.0 and stream.flags == "DI"
    assert stats.gauge("http.main.fault.active_faults").value == 1
    stream.held[1]()  # the delay is over
    assert stream.answered.status == 429 and stream.answered.flag == "DI,FI" and not stream.continued
    for callback in stream.finish:
        callback()
    assert stats.gauge("http.main.fault.active_faults").value == 0


def test_a_route_config_replaces_the_filter_config() -> None:
    fault, _ = make({"abort": {"http_status": 503, "percentage": {"numerator": 100}}})
    quiet = FakeStream(convert({}, HTTPFault))
    assert fault.decode_headers(quiet) is True and quiet.answered is None


@pytest.mark.parametrize(("field", "value"), [
    ("abort", {"grpc_status": 14, "percentage": {"numerator": 100}}),
    ("abort", {"header_abort": {}}),
    ("delay", {"header_delay": {}}),
    ("headers", [{"name": "x", "present_match": True}]),
    ("response_rate_limit", {"fixed_limit": {"limit_kbps": 1}}),
    ("abort_percent_runtime", "x"),
])  # fmt: skip
def test_what_is_not_implemented_is_refused_by_name(field: str, value: Any) -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.fault",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault", field: value}})
    with pytest.raises(ConfigError) as error:
        parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": []}}, "fault.yaml")
    assert f"http_filters[0].typed_config.{field}" in str(error.value)
