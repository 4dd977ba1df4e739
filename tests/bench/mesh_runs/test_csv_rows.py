"""Istio's CSV columns and one run's cells."""

from __future__ import annotations

import csv
from pathlib import Path

from pylon.bench.mesh_runs.csv_rows import CSV_COLUMNS, csv_cells, fmt, write_csv

ROW = {"StartTime": "2026-12-05T14:46:22+00:00", "ActualDuration": 2992650325,
       "label": "ab12_qps_1000_c_16_1024_pylon_both_sidecar", "NumThreads": 16, "ActualQPS": 998.766,
       "p50_us": 8680.04, "p90_us": 18040.0, "p99_us": 29011.0, "p999_us": None,
       "client_millicores": 243.26, "server_millicores": 240.0, "client_rss_mib": 235.61, "server_rss_mib": 236.0}


def test_the_columns_are_istios_in_its_order() -> None:
    assert CSV_COLUMNS == [
        "StartTime", "ActualDuration", "Labels", "NumThreads", "ActualQPS", "p50", "p90", "p99", "p999",
        "cpu_mili_avg_istio_proxy_fortioclient", "cpu_mili_avg_istio_proxy_fortioserver",
        "cpu_mili_avg_istio_proxy_istio-ingressgateway", "mem_Mi_avg_istio_proxy_fortioclient",
        "mem_Mi_avg_istio_proxy_fortioserver", "mem_Mi_avg_istio_proxy_istio-ingressgateway"]


def test_a_run_without_a_gateway_leaves_the_gateway_cells_empty() -> None:
    cells = dict(zip(CSV_COLUMNS, csv_cells(ROW), strict=True))
    assert cells["ActualQPS"] == "998.77" and cells["p50"] == "8680.0" and cells["p999"] == "-"
    assert cells["cpu_mili_avg_istio_proxy_fortioclient"] == "243.3"
    assert cells["cpu_mili_avg_istio_proxy_istio-ingressgateway"] == ""
    assert cells["mem_Mi_avg_istio_proxy_fortioserver"] == "236.0"


def test_write_csv_skips_runs_that_failed_before_a_result(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [ROW, {"mode": "ingress_https", "failed": "not reachable"}])
    lines = list(csv.reader(path.open()))
    assert lines[0] == CSV_COLUMNS and len(lines) == 2 and lines[1][2] == ROW["label"]


def test_fmt() -> None:
    assert fmt(None) == "-" and fmt(1.26, ".1f") == "1.3"
