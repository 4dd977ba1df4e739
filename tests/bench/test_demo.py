"""pylon demo --loopback (what runs where no mesh can): a short real run — requests explained from the gateway's
access log, load, report files."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from pylon.bench.demo import REQUESTS, demo
from pylon.keys import cryptomb
from tests.bench.conftest import own_session


def test_demo_short_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo, ["--loopback", "--out", str(out), "--duration", "1s", "-c", "4"])
    assert result.exit_code == 0, result.output
    text = result.output

    # Per-request lines: each route the config names, and the no-route flag, as the access log reported them.
    for route in ("healthz", "api", "echo-body"):
        assert f" {route} " in text
    assert " NR " in text and "hello pylon" in text
    log = [json.loads(line) for line in (out / "work" / "gateway-access.log").read_text().splitlines()[:len(REQUESTS)]]
    assert [(e["path"], e["response_code"], e["route_name"]) for e in log] == [
        ("/healthz", 200, "healthz"), ("/api/hello", 200, "api"), ("/echo", 200, "echo-body"),
        ("/api/debug", 200, "api"), ("/api/?delay=20ms", 200, "api"), ("/api/?status=503", 503, "api"),
        ("/nowhere", 404, None)]
    assert "?" not in [line.split("│")[5].strip() for line in text.splitlines() if line.startswith("│ GET /")]

    names = {p.name for p in out.iterdir()}
    assert {"echo-direct-rep1.json", "pylon-gateway-rep1.json", "tls-file-rep1.json",
            "report.csv", "report.png", "report.html", "summary.json"} <= names
    mb_runs = cryptomb.unavailable_reason() is None
    if not mb_runs:  # said, not simulated
        assert "tls-cryptomb-rep1.json" not in names
        assert "tls-cryptomb left out: cryptomb needs" in " ".join(text.split())
    assert (out / "report.png").stat().st_size > 10_000
    direct = json.loads((out / "echo-direct-rep1.json").read_text())
    gateway = json.loads((out / "pylon-gateway-rep1.json").read_text())
    for run in (direct, gateway):
        assert run["DurationHistogram"]["Count"] > 100
        assert run["RetCodes"] == {"200": run["DurationHistogram"]["Count"]}
    assert gateway["URL"].endswith("/api/") and gateway["RequestsPerTargetCPUSecond"] > 0
    assert "pylon-gateway" in (out / "report.html").read_text()

    # The TLS gateways: every request a new connection, verified against the RSA test CA, served with no error.
    for label in ("tls-file", "tls-cryptomb") if mb_runs else ("tls-file",):
        run = json.loads((out / f"{label}-rep1.json").read_text())
        count = run["DurationHistogram"]["Count"]
        assert count > 20 and run["RetCodes"] == {"200": count}, run["RetCodes"]
        assert run["URL"].startswith("https://") and run["RequestsPerTargetCPUSecond"] > 0
    if mb_runs:
        config = (out / "work" / "tls-cryptomb.yaml").read_text()
        assert "private_key_provider" in config and "server-rsa-key.pem" in config


def test_demo_stopped_by_sigterm_leaves_nothing_running(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    with own_session([sys.executable, "-u", "-c", "from pylon.bench.demo import demo; demo()", "--loopback",
                      "--out", str(out), "--duration", "30s"]) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait for the load phase: the gateway is up and loaded
            if line.startswith(b"load:"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    configs = [str(out / "work" / f"{label}.yaml") for label in ("pylon-gateway", "tls-file", "tls-cryptomb")]
    leftovers = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if any(config in cmdline for config in configs):
            leftovers.append(cmdline)
    assert leftovers == []
