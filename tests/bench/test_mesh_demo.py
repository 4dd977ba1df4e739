"""`pylon demo` on a real mesh, in its shortest form: one key mode, tiny runs.

Needs root and network namespaces (CI runs as root; it skips with the reason elsewhere). Run it under
`flock /tmp/pylon-bench.lock` like the other mesh tests: the demo sees that its ancestor holds the lock.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from pylon.bench.demo import demo
from pylon.bench.mesh_demo import mesh_unavailable_reason, plan
from pylon.bench.mesh_runs.csv_rows import CSV_COLUMNS

REASON = mesh_unavailable_reason()


def test_plan_runs_the_sidecar_modes_once_and_names_what_cannot_run() -> None:
    meshes, left_out = plan(("file", "cryptomb", "keyd", "pkcs11"))
    assert [p.key_mode.name for p in meshes] == ["file", "cryptomb"]
    assert [m.name for m in meshes[0].modes] == ["baseline", "server_sidecar", "both_sidecar", "ingress_https",
                                                 "ingress_https_newconn"]
    assert [m.name for m in meshes[1].modes] == ["ingress_https", "ingress_https_newconn"]
    assert set(left_out) == {"keyd", "pkcs11"} and all("not available yet" in r for r in left_out.values())
    meshes, _ = plan(("cryptomb",))
    assert [m.name for m in meshes[0].modes][:3] == ["baseline", "server_sidecar", "both_sidecar"]


@pytest.mark.skipif(REASON is None, reason="a mesh can run here: the fallback is what this test is about")
def test_without_namespaces_it_says_why_and_runs_the_loopback_demo(tmp_path: Path) -> None:
    result = CliRunner().invoke(demo, ["--out", str(tmp_path), "--duration", "1s", "-c", "2"])
    assert result.exit_code == 0, result.output
    assert f"no mesh here ({REASON}); running the loopback demo instead" in " ".join(result.output.split())
    assert (tmp_path / "report.csv").exists()


@pytest.mark.skipif(REASON is not None, reason=f"the mesh demo cannot run here: {REASON}")
def test_the_mesh_demo_short_run_writes_istios_csv_and_leaves_no_mesh(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo, ["--out", str(out), "--key-modes", "file,pkcs11", "--duration", "1s",
                                       "--warmup", "0", "-c", "2", "--qps", "50", "--newconn-qps", "20",
                                       "--lock-timeout", "60"])  # fmt: skip
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "gateway key mode pkcs11: not available yet" in text

    with (out / "istio-perf.csv").open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == CSV_COLUMNS
    rows = {line[2].rsplit("_file_", 1)[1]: dict(zip(CSV_COLUMNS, line, strict=True)) for line in lines[1:]}
    assert sorted(rows) == sorted(["baseline", "server_sidecar", "both_sidecar", "ingress_https",
                                   "ingress_https_newconn"])
    assert rows["baseline"]["cpu_mili_avg_istio_proxy_fortioserver"] == ""  # no sidecar crossed
    assert float(rows["both_sidecar"]["cpu_mili_avg_istio_proxy_fortioclient"]) > 0
    assert float(rows["ingress_https_newconn"]["cpu_mili_avg_istio_proxy_istio-ingressgateway"]) > 0

    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert {r["mode"] for r in runs} == set(rows)
    for run in runs:
        assert run["errors"] == 0 and run["requests"] > 0, run
    newconn = next(r for r in runs if r["mode"] == "ingress_https_newconn")
    assert newconn["handshakes"] == newconn["requests"]  # a full TLS handshake per request

    report = (out / "report.md").read_text()
    assert "| both sidecars |" in report and "| pkcs11 |" in report and "not available yet" in report
    assert (out / "report.png").stat().st_size > 10_000 and "<img" in (out / "report.html").read_text()
    assert (out / "inputs" / "file-install.yaml").read_text().startswith("apiVersion: install.istio.io/v1alpha1")

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pm-" not in netns
    assert not Path("/tmp/pm-demo/s").exists()
