"""Fortio's JSON schema (names and types), recorder merging, and the text summary."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from pylon.bench.fortio_args import LoadOptions
from pylon.bench.results import Recorder, RunTiming, build_result, error_percent, summary_text

HISTOGRAM_FIELDS = {"Count": int, "Min": float, "Max": float, "Sum": float, "Avg": float, "StdDev": float}


def sample_result(**options) -> dict:
    rec = Recorder(0.001, 2)
    rec.connected(0, 0.0003, "127.0.0.1:8080", tls=True)
    rec.connected(1, 0.0005, "127.0.0.1:8080", tls=True)
    for latency in (0.0011, 0.0012, 0.0025):
        rec.response(latency, 200, 223, 123)
    rec.response(0.004, 503, 150, 120)
    rec.failure(0.2, "timeout")
    opts = LoadOptions(url="https://127.0.0.1:8080/", qps=0, connections=2, exactly=5, labels="demo", **options)
    start = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    return json.loads(json.dumps(build_result(opts, rec, RunTiming(start, 0.5))))


def check_histogram(h: dict, with_percentiles: bool) -> None:
    for name, kind in HISTOGRAM_FIELDS.items():
        assert isinstance(h[name], (int, float) if kind is float else int), name
    for bucket in h["Data"]:
        assert set(bucket) == {"Start", "End", "Percent", "Count"}
    assert h["Data"][-1]["Percent"] == 100
    assert ("Percentiles" in h) == with_percentiles


def test_fortio_field_names_and_types() -> None:
    r = sample_result()
    assert r["RunType"] == "HTTP" and r["Labels"] == "demo"
    assert r["StartTime"].startswith("2024-01-02T03:04:05")
    assert r["RequestedQPS"] == "max" and r["RequestedDuration"] == "exactly 5 calls"
    assert r["ActualQPS"] == 10.0 and r["ActualDuration"] == 500_000_000
    assert isinstance(r["ActualDuration"], int) and r["NumThreads"] == 2 and isinstance(r["Version"], str)
    check_histogram(r["DurationHistogram"], with_percentiles=True)
    check_histogram(r["ErrorsDurationHistogram"], with_percentiles=True)
    check_histogram(r["Sizes"], with_percentiles=False)
    check_histogram(r["HeaderSizes"], with_percentiles=False)
    assert r["DurationHistogram"]["Count"] == 5 and r["ErrorsDurationHistogram"]["Count"] == 2
    assert r["RetCodes"] == {"-1": 1, "200": 3, "503": 1}
    assert r["ErrorKinds"] == {"timeout": 1}
    assert r["Sockets"] == [1, 1] and r["SocketCount"] == 2 and r["IPCountMap"] == {"127.0.0.1:8080": 2}
    assert r["URL"] == "https://127.0.0.1:8080/" and r["HTTPReqTimeOut"] == 3_000_000_000
    assert [p["Percentile"] for p in r["DurationHistogram"]["Percentiles"]] == [50, 75, 90, 99, 99.9]
    for key in ("Exactly", "Jitter", "Uniform", "NoCatchUp", "RunID", "ID", "NumConnections", "Insecure",
                "DisableKeepAlive", "Payload", "ConnectionStats", "AbortOn", "CACert", "Cert", "Key"):
        assert key in r, key
    assert "Handshakes" not in r
    assert error_percent(r) == 40.0


def test_new_connection_runs_report_handshakes() -> None:
    r = sample_result(new_connection=True)
    assert r["Handshakes"] == 2 and r["HandshakesPerSec"] == 4.0 and r["DisableKeepAlive"] is True
    assert r["HandshakeHistogram"]["Count"] == 2 and r["HandshakeHistogram"]["Percentiles"]


def test_rate_and_duration_strings() -> None:
    rec = Recorder(0.001, 1)
    rec.response(0.001, 200, 10, 5)
    opts = LoadOptions(url="http://h/", qps=12.5, duration=90)
    r = build_result(opts, rec, RunTiming(datetime.now(timezone.utc), 1.0))
    assert (r["RequestedQPS"], r["RequestedDuration"]) == ("12.5", "1m30s")
    assert r["Labels"].startswith("http://h/ , ")


def test_recorders_merge_through_their_state() -> None:
    a, b = Recorder(0.001, 1), Recorder(0.001, 2)
    a.response(0.001, 200, 10, 5)
    b.response(0.002, 200, 10, 5)
    b.failure(0.003, "refused")
    merged = Recorder.from_state(a.to_state())
    merged.merge(Recorder.from_state(b.to_state()))
    assert merged.durations.count == 3 and merged.ret_codes == {200: 2, -1: 1}
    assert merged.error_kinds == {"refused": 1} and len(merged.sockets) == 3


def test_summary_text_has_fortio_lines() -> None:
    text = summary_text(sample_result())
    for line in ("Aggregated Function Time : count 5", "# range, mid point, percentile, count",
                 "# target 50% ", "Error cases : count 2", "Sockets used: 2 (for perfect keepalive, would be 2)",
                 "Code 200 : 3 (60.0 %)", "Code  -1 : 1 (20.0 %)", "Socket errors timeout : 1", "All done 5 calls"):
        assert line in text, line
