"""Envoy's admin `/clusters` text, merged across worker processes.

Every worker has its own view of each cluster (its own health checks,
outlier state and counters). Counters are summed; health flags come from
worker 0, except that a host one worker ejected by outlier detection shows
`/failed_outlier_check` (Envoy has one shared view; this is the closest
honest merge).
"""

from __future__ import annotations

from typing import Any

_SUMMED = ("cx_active", "cx_connect_fail", "rq_active", "rq_error", "rq_success", "rq_timeout", "rq_total")


def merge_cluster_views(per_worker: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    if not per_worker:
        return []
    merged: list[dict[str, Any]] = [
        {**cluster, "hosts": [dict(h) for h in cluster["hosts"]]} for cluster in per_worker[0]
    ]
    by_name = {c["name"]: c for c in merged}
    for view in per_worker[1:]:
        for cluster in view:
            target = by_name.get(cluster["name"])
            if target is None:
                continue
            hosts = {h["address"]: h for h in target["hosts"]}
            for host in cluster["hosts"]:
                mine = hosts.get(host["address"])
                if mine is None:
                    continue
                for key in _SUMMED:
                    mine[key] += host[key]
                if "/failed_outlier_check" in host["health_flags"] and "/failed_outlier_check" not in mine["health_flags"]:
                    flags = "" if mine["health_flags"] == "healthy" else mine["health_flags"]
                    mine["health_flags"] = flags + "/failed_outlier_check"
    return merged


def render_clusters(per_worker: list[list[dict[str, Any]]]) -> str:
    """`name::default_priority::max_connections::1024` and `name::ip:port::stat::value` lines, as Envoy prints
    (a host's locality and priority after its weight, in Envoy's order)."""
    lines: list[str] = []
    for cluster in merge_cluster_views(per_worker):
        name = cluster["name"]
        lines.extend(f"{name}::default_priority::{k}::{v}" for k, v in cluster["circuit_breakers"].items())
        lines.append(f"{name}::added_via_api::false")
        for host in cluster["hosts"]:
            address = host["address"]
            for key in (*_SUMMED, "hostname", "health_flags", "weight", "region", "zone", "sub_zone", "priority"):
                lines.append(f"{name}::{address}::{key}::{host[key]}")
    return "\n".join(lines) + ("\n" if lines else "")
