"""Istio's perf CSV (istio/tools `perf/benchmark/runner/fortio.py --csv`): the columns its README passes.

Latencies in µs; proxy CPU in millicores and memory in MiB per container role (Istio reads cAdvisor for the
`istio-proxy` container of fortioclient, fortioserver and the ingress gateway; here the sidecar's process
tree). A cell is empty where the run crossed no such proxy, as Istio's is when a pod has no sidecar.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pylon.bench.mesh_runs.modes import ROLES

CSV_ROLE = {"client": "fortioclient", "server": "fortioserver", "gateway": "istio-ingressgateway"}
CSV_COLUMNS = ["StartTime", "ActualDuration", "Labels", "NumThreads", "ActualQPS", "p50", "p90", "p99", "p999",
               *(f"cpu_mili_avg_istio_proxy_{CSV_ROLE[r]}" for r in ROLES),
               *(f"mem_Mi_avg_istio_proxy_{CSV_ROLE[r]}" for r in ROLES)]  # fmt: skip


def fmt(value: float | None, spec: str = ".0f") -> str:
    """A number for a table or CSV cell; '-' for none."""
    return "-" if value is None else format(value, spec)


def csv_cells(row: dict[str, Any]) -> list[str]:
    """One measured run as Istio's CSV cells, in CSV_COLUMNS order."""
    cells = [str(row["StartTime"]), str(row["ActualDuration"]), row["label"], str(row["NumThreads"]),
             f"{row['ActualQPS']:.2f}", *(fmt(row[f"p{p}_us"], ".1f") for p in ("50", "90", "99", "999"))]
    cells += [fmt(row.get(f"{role}_millicores"), ".1f") if f"{role}_millicores" in row else "" for role in ROLES]
    cells += [fmt(row.get(f"{role}_rss_mib"), ".1f") if f"{role}_rss_mib" in row else "" for role in ROLES]
    return cells


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Every measured run (rows that failed before a result have no line)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            if "ActualQPS" in row:
                writer.writerow(csv_cells(row))
    return path
