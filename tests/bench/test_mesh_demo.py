"""`pylon demo` on a real mesh, in its shortest form: one key mode, tiny runs.

Needs root and network namespaces (CI runs as root; it skips with the reason elsewhere). Run it under
`flock /tmp/pylon-bench.lock` like the other mesh tests: the demo sees that its ancestor holds the lock.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pylon.bench import demo as demo_module
from pylon.bench.demo import demo
from pylon.bench.mesh_demo import STATE, mesh_unavailable_reason, plan
from pylon.bench.mesh_runs.csv_rows import CSV_COLUMNS
from pylon.bench.mesh_runs.meshctl import mesh_namespaces
from tests.bench.conftest import own_session

REASON = mesh_unavailable_reason()


@pytest.fixture
def no_mesh_up() -> None:
    """As tests/mesh: a mesh someone else runs (its `pm-` namespaces) is not ours to take down; skip instead."""
    if mesh_namespaces():
        pytest.skip("a pylon mesh is already up on this machine (pylon mesh down first)")


def test_plan_runs_the_sidecar_modes_once_and_every_key_mode() -> None:
    meshes, left_out = plan(("file", "cryptomb", "keyd", "pkcs11"))
    assert [p.key_mode.name for p in meshes] == ["file", "cryptomb", "keyd", "pkcs11"] and left_out == {}
    assert [m.name for m in meshes[0].modes] == ["baseline", "server_sidecar", "both_sidecar", "ingress_https",
                                                 "ingress_https_newconn"]
    assert all([m.name for m in p.modes] == ["ingress_https", "ingress_https_newconn"] for p in meshes[1:])
    meshes, _ = plan(("cryptomb",))
    assert [m.name for m in meshes[0].modes][:3] == ["baseline", "server_sidecar", "both_sidecar"]


def test_not_root_is_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert mesh_unavailable_reason() == "not root, so no network namespaces for a mesh"


def test_without_namespaces_it_says_why_and_runs_the_loopback_demo(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the mesh cannot run (here: told so, if this machine could), one line says why, then the loopback demo."""
    reason = REASON or "not root, so no network namespaces for a mesh"
    monkeypatch.setattr(demo_module, "mesh_unavailable_reason", lambda: reason)
    result = CliRunner().invoke(demo, ["--out", str(tmp_path), "--duration", "1s", "-c", "2"])
    assert result.exit_code == 0, result.output
    assert f"pylon demo: no mesh here ({reason}); running the loopback demo instead" in " ".join(result.output.split())
    assert (tmp_path / "report.csv").exists() and (tmp_path / "pylon-gateway-rep1.json").exists()


@pytest.mark.skipif(REASON is not None, reason=f"the mesh demo cannot run here: {REASON}")
@pytest.mark.timeout(600)  # three meshes in turn (file, keyd, pkcs11), each up, loaded and down
def test_the_mesh_demo_short_run_writes_istios_csv_and_leaves_no_mesh(tmp_path: Path, no_mesh_up: None) -> None:
    out = tmp_path / "demo"
    STATE.mkdir(parents=True, exist_ok=True)  # as a demo killed with SIGKILL leaves it: cleaned, not refused
    (STATE / "leftover").write_text("from a killed demo")
    result = CliRunner().invoke(demo, ["--out", str(out), "--key-modes", "file,keyd,pkcs11", "--duration", "1s",
                                       "--warmup", "0", "-c", "2", "--qps", "50", "--newconn-qps", "60",
                                       "--lock-timeout", "60"])  # fmt: skip
    # 60 handshakes a second: keyd's signatures take several of /proc's 10 ms CPU ticks (20 could read as 0)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "not available" not in text
    assert f"removed a previous demo's leftover state: removed: {STATE}" in text

    with (out / "istio-perf.csv").open() as f:
        lines = list(csv.reader(f))
    assert lines[0] == CSV_COLUMNS
    by_mode = {tag: {line[2].rsplit(f"_{tag}_", 1)[1]: dict(zip(CSV_COLUMNS, line, strict=True))
                     for line in lines[1:] if f"_{tag}_" in line[2]} for tag in ("file", "keyd", "pkcs11")}
    rows = by_mode["file"]
    assert sorted(rows) == sorted(["baseline", "server_sidecar", "both_sidecar", "ingress_https",
                                   "ingress_https_newconn"])
    for tag in ("keyd", "pkcs11"):  # the gateway's credential key in keyd or the token: HTTPS works, handshakes cost
        assert sorted(by_mode[tag]) == ["ingress_https", "ingress_https_newconn"]
        assert float(by_mode[tag]["ingress_https_newconn"]["cpu_mili_avg_istio_proxy_istio-ingressgateway"]) > 0
    assert rows["baseline"]["cpu_mili_avg_istio_proxy_fortioserver"] == ""  # no sidecar crossed
    assert float(rows["both_sidecar"]["cpu_mili_avg_istio_proxy_fortioclient"]) > 0
    assert float(rows["ingress_https_newconn"]["cpu_mili_avg_istio_proxy_istio-ingressgateway"]) > 0

    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert {r["mode"] for r in runs} == set(rows)
    for run in runs:
        assert run["errors"] == 0 and run["requests"] > 0, run
    for tag in ("file", "keyd", "pkcs11"):
        newconn = next(r for r in runs if r["mode"] == "ingress_https_newconn" and r["tag"] == tag)
        assert newconn["handshakes"] == newconn["requests"]  # a full TLS handshake per request
    keyd_run = next(r for r in runs if r["mode"] == "ingress_https_newconn" and r["tag"] == "keyd")
    assert keyd_run["gateway_keyd_cpu_s"] > 0  # keyd signed, and its CPU is counted as the gateway's

    report = (out / "report.md").read_text()
    assert "| both sidecars |" in report and "| pkcs11 |" in report and "not available yet" not in report
    logs = out / "work"
    assert "moved into keyd at" in (logs / "keyd" / "logs-keyd-1" / "istio-ingressgateway-sidecar.log").read_text()
    assert "moved into PKCS#11 token 'pylon-gateway'" in \
        (logs / "pkcs11" / "logs-pkcs11-1" / "istio-ingressgateway-sidecar.log").read_text()
    assert (out / "report.png").stat().st_size > 10_000 and "<img" in (out / "report.html").read_text()
    assert (out / "inputs" / "file-install.yaml").read_text().startswith("apiVersion: install.istio.io/v1alpha1")

    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "pm-" not in netns
    assert not STATE.exists()


@pytest.mark.skipif(REASON is not None, reason=f"the mesh demo cannot run here: {REASON}")
def test_sigterm_during_a_run_takes_the_mesh_down(tmp_path: Path, no_mesh_up: None) -> None:
    with own_session([sys.executable, "-u", "-m", "pylon.cli", "demo", "--out", str(tmp_path), "--key-modes", "file",
                      "--duration", "20s", "--warmup", "0", "-c", "2", "--qps", "20", "--lock-timeout", "60"]) as proc:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the mesh is coming up
            seen.append(line.decode(errors="replace"))
            if "mesh up with the gateway's key: file" in seen[-1]:
                break
        deadline = time.monotonic() + 120  # until the first load runs in the client pod
        while not (tmp_path / "work" / "file" / "load-output.txt").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        output = "".join(seen) + proc.communicate(timeout=180)[0].decode(errors="replace")
    assert proc.returncode == 130, output
    assert "interrupted; `pylon mesh down` ran for every mesh the demo brought up" in output
    assert "pm-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not STATE.exists()
    log = (tmp_path / "work" / "file" / "mesh-commands.log").read_text()
    assert "$ pylon mesh down" in log
