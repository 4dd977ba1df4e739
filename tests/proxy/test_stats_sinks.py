"""The statsd sink's lines from merged snapshots (stats_sinks.py, sans-IO)."""

from __future__ import annotations

from pylon.proxy.stats_sinks import StatsdLines


def snapshot(counters: dict, gauges: dict, histograms: dict | None = None) -> dict:
    return {"counters": counters, "gauges": gauges, "histograms": histograms or {}}


def test_counters_as_increases_gauges_as_values_once_used() -> None:
    lines = StatsdLines("")
    assert lines.flush(snapshot({"a": 0, "b": 2}, {"g": 0, "h": 5})) == [b"envoy.b:2|c", b"envoy.h:5|g"]
    assert lines.flush(snapshot({"a": 1, "b": 2}, {"g": 0, "h": 0})) == [
        b"envoy.a:1|c", b"envoy.b:0|c", b"envoy.h:0|g"]


def test_histograms_as_the_mean_of_new_samples_with_their_rate() -> None:
    lines = StatsdLines("edge")
    one = {"t": {"count": 1, "sum": 7.0}}
    assert lines.flush(snapshot({}, {}, one)) == [b"edge.t:7|ms"]
    assert lines.flush(snapshot({}, {}, one)) == []
    assert lines.flush(snapshot({}, {}, {"t": {"count": 5, "sum": 17.0}})) == [b"edge.t:2.5|ms|@0.25"]


def test_dog_statsd_lines_carry_the_tags() -> None:
    lines = StatsdLines("", tagged=True)
    assert lines.flush(snapshot({"http.main.downstream_rq_total": 3, "server.live": 0}, {"server.live": 1})) == [
        b"envoy.http.downstream_rq_total:3|c|#envoy.http_conn_manager_prefix:main", b"envoy.server.live:1|g"]
