"""Runs to medians, per mode and group (the proxy kind in mesh_perf, the gateway's key mode in the demo), sans-IO.

A run with half or more of its requests failed is not used for the medians (its failure is named instead).
Added latency is a run's percentile minus the `baseline` run (no sidecar) of the same group and repetition:
the same mesh, so the difference is what the proxies on the path cost.
"""

from __future__ import annotations

import statistics
from typing import Any

from pylon.bench.mesh_runs.modes import ROLES

MEDIAN_KEYS = ("ActualQPS", "p50_us", "p90_us", "p99_us", "p999_us", "load_millicores", "echo_millicores",
               "handshakes_per_gateway_cpu_s")
ROLE_KEYS = ("millicores", "cpu_ms_per_1k", "rss_mib", "proxy_rss_mib")


def med(values: list[Any]) -> float | None:
    """The median of the values that are there; None if none is."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(rows: list[dict[str, Any]], modes: list[str], groups: list[str], key: str) -> dict[str, Any]:
    """summary[mode][group]: reps used, errors/requests, medians, each role's costs, added p50/p90/p99."""
    ok_rows = [r for r in rows if "ActualQPS" in r]
    base = {(r[key], r["rep"]): r for r in ok_rows if r["mode"] == "baseline"}
    summary: dict[str, Any] = {}
    for mode in modes:
        entry: dict[str, Any] = {}
        for group in groups:
            mine = [r for r in ok_rows if r["mode"] == mode and r[key] == group]
            failed = [r for r in rows if r["mode"] == mode and r[key] == group and "ActualQPS" not in r]
            usable = [r for r in mine if r["error_percent"] < 50]
            s: dict[str, Any] = {"reps": len(usable), "runs": len(mine) + len(failed),
                                 "errors": sum(r["errors"] for r in mine), "requests": sum(r["requests"] for r in mine)}
            if failed or len(usable) < len(mine):
                s["failures"] = sorted({r.get("failed") or f"{r['error_percent']:.0f}% errors {r['error_kinds']}"
                                        for r in failed + [r for r in mine if r not in usable]})[:3]  # fmt: skip
            for name in MEDIAN_KEYS:
                s[name] = med([r.get(name) for r in usable])
            for role in ROLES:
                for name in ROLE_KEYS:
                    s[f"{role}_{name}"] = med([r.get(f"{role}_{name}") for r in usable])
            for p in ("50", "90", "99"):
                s[f"added_p{p}_us"] = med([r[f"p{p}_us"] - base[group, r["rep"]][f"p{p}_us"] for r in usable
                                           if (group, r["rep"]) in base and r[f"p{p}_us"] is not None
                                           and base[group, r["rep"]][f"p{p}_us"] is not None])  # fmt: skip
            entry[group] = s
        summary[mode] = entry
    return summary
