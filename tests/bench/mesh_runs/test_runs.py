"""One run's command line and what its row says (the parts that need no mesh)."""

from __future__ import annotations

from pathlib import Path

from pylon.bench.mesh_runs.modes import MODES
from pylon.bench.mesh_runs.runs import (LoadProfile, cost_fields, label_of, load_command, result_fields,
                                        steady_millicores)  # fmt: skip

PROFILE = LoadProfile(qps=1000, conn=16, duration=5.0, size=1024, newconn_qps=200)


def test_label_is_istios_shape() -> None:
    assert label_of("ab12", MODES["both_sidecar"], PROFILE, "file") == "ab12_qps_1000_c_16_1024_file_both_sidecar"
    assert label_of("ab12", MODES["ingress_https_newconn"], PROFILE, "cryptomb").startswith("ab12_qps_200_")


def test_load_command_keepalive_and_a_handshake_per_request() -> None:
    keep = load_command(MODES["ingress_https"], PROFILE, 5.0, Path("/o.json"), "L", Path("/ca.pem"))
    assert keep[keep.index("-qps") + 1] == "1000" and keep[keep.index("-t") + 1] == "5s"
    assert "-keepalive" in keep and keep[keep.index("-cacert") + 1] == "/ca.pem"
    assert keep[-1] == "https://istio-ingressgateway.istio-system.svc.cluster.local:8443/echo?size=1024"
    new = load_command(MODES["ingress_https_newconn"], PROFILE, 5.0, Path("/o.json"), "L", Path("/ca.pem"))
    assert "-new-connection" in new and new[new.index("-qps") + 1] == "200"
    plain = load_command(MODES["baseline"], PROFILE, 0, Path("/o.json"), "L", Path("/ca.pem"), qps=0, exactly=1)
    assert "-cacert" not in plain and plain[plain.index("-n") + 1] == "1" and "-t" not in plain


def test_result_fields_count_anything_but_200_as_an_error() -> None:
    result = {"StartTime": "t", "ActualDuration": 2_000_000_000, "NumThreads": 4, "ActualQPS": 49.5,
              "RetCodes": {"200": 97, "503": 2, "-1": 1}, "ErrorKinds": {"reset": 1},
              "DurationHistogram": {"Count": 100, "Percentiles": [{"Percentile": 50, "Value": 0.0012},
                                                                  {"Percentile": 99.9, "Value": 0.01}]}}
    row = result_fields(result)
    assert row["ok"] == 97 and row["errors"] == 3 and row["error_percent"] == 3.0
    assert abs(row["p50_us"] - 1200) < 1e-6 and row["p90_us"] is None and abs(row["p999_us"] - 10000) < 1e-6


def test_cost_fields_per_role() -> None:
    row = cost_fields(["server", "echo"], {"server": 0.5, "echo": 0.1}, {"server": (200.0, 60.0)}, 2.0, 1000)
    assert row["server_millicores"] == 250 and row["server_cpu_ms_per_1k"] == 500
    assert row["server_rss_mib"] == 200 and row["server_proxy_rss_mib"] == 140
    assert "echo_rss_mib" not in row and row["echo_millicores"] == 50


def test_steady_millicores_skips_start_up() -> None:
    samples = [(0.2, 0.5), (1.0, 0.9), (2.0, 1.0), (3.0, 1.25), (4.0, 1.5)]
    assert steady_millicores(samples, 0.0) == 250
    assert steady_millicores(samples[:3], 0.0) is None
