"""Runs to medians per mode and group, added latency against the same group's no-sidecar run."""

from __future__ import annotations

from typing import Any

from pylon.bench.mesh_runs.summary import med, summarize


def run(group: str, mode: str, rep: int, p: float, errors: int = 0, **extra: Any) -> dict[str, Any]:
    return {"tag": group, "mode": mode, "rep": rep, "ActualQPS": 100.0, "p50_us": p, "p90_us": 2 * p, "p99_us": 3 * p,
            "p999_us": 4 * p, "requests": 100, "errors": errors, "error_percent": float(errors), "error_kinds": {},
            **extra}


def test_added_latency_is_against_the_baseline_of_the_same_group_and_rep() -> None:
    rows = [run("file", "baseline", 1, 1000), run("file", "both_sidecar", 1, 3000, server_millicores=200.0),
            run("file", "baseline", 2, 2000), run("file", "both_sidecar", 2, 3000, server_millicores=100.0)]
    s = summarize(rows, ["baseline", "both_sidecar"], ["file"], "tag")
    both = s["both_sidecar"]["file"]
    assert both["reps"] == 2 and both["p50_us"] == 3000
    assert both["added_p50_us"] == 1500  # median of +2000 and +1000
    assert both["added_p90_us"] == 3000 and both["server_millicores"] == 150
    assert both["client_millicores"] is None


def test_a_mostly_failed_run_is_named_not_averaged_and_a_missing_group_is_empty() -> None:
    rows = [run("cryptomb", "ingress_https", 1, 1000, errors=60), {"tag": "cryptomb", "mode": "ingress_https_newconn",
                                                                    "rep": 1, "failed": "not reachable"}]
    s = summarize(rows, ["ingress_https", "ingress_https_newconn"], ["cryptomb", "keyd"], "tag")
    keep = s["ingress_https"]["cryptomb"]
    assert keep["reps"] == 0 and keep["errors"] == 60 and keep["p50_us"] is None
    assert keep["failures"] == ["60% errors {}"]
    assert s["ingress_https_newconn"]["cryptomb"]["failures"] == ["not reachable"]
    assert s["ingress_https"]["keyd"]["reps"] == 0 and s["ingress_https"]["keyd"]["runs"] == 0
    assert s["ingress_https"]["cryptomb"]["added_p50_us"] is None  # no baseline in that mesh


def test_med() -> None:
    assert med([None, 3, 1, 2]) == 2 and med([None]) is None
