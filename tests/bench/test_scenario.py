"""pylon bench: scenario checking (errors name the field), templates, medians, and a tiny real run."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner

from pylon.bench.report import table_rows
from pylon.bench.scenario import (
    BenchRun, ScenarioError, bench, median_runs, parse_scenario, render_template, run_scenario, summarize,
    wrk_to_fortio,
)
from pylon.bench.targets import WrkResult

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bench"
PLAIN = str(EXAMPLES / "proxy-plain.yaml")


def scenario(**overrides) -> dict:
    data = {
        "name": "tiny",
        "upstream": {"kind": "echo"},
        "load": {"args": "-qps 0 -c 4 -t 1s"},
        "repetitions": 2,
        "targets": [
            {"label": "direct", "kind": "url", "url": "http://127.0.0.1:{upstream_port}/"},
            {"label": "gateway", "kind": "pylon", "config": PLAIN},
        ],
    }
    data.update(overrides)
    return data


@pytest.mark.parametrize("change, message", [
    ({"extra": 1}, r"scenario\.extra: unknown field"),
    ({"targets": []}, r"scenario\.targets: expected a non-empty list"),
    ({"targets": [{"kind": "nope"}]}, r"scenario\.targets\[0\]\.kind: expected one of pylon, envoy, url"),
    ({"targets": [{"kind": "pylon"}]}, r"scenario\.targets\[0\]\.config: required"),
    ({"targets": [{"kind": "envoy", "config": "missing.yaml"}]}, r"targets\[0\]\.config: no such file"),
    ({"targets": [{"kind": "url"}]}, r"targets\[0\]\.url: required"),
    ({"targets": [{"kind": "url", "url": "http://x/", "label": "a"}, {"kind": "url", "url": "http://y/", "label": "a"}]},
     r"targets\[1\]\.label: duplicate label 'a'"),
    ({"load": {"args": "-qps 0 -bogus 3"}}, r"scenario\.load\.args"),
    ({"load": {"args": "-qps 100 -t 1s", "tool": "wrk"}}, r"wrk runs at max rate"),
    ({"upstream": {"kind": "apache"}}, r"scenario\.upstream\.kind"),
    ({"repetitions": 0}, r"scenario\.repetitions: expected an integer >= 1"),
    ({"warmup": "soon"}, r"scenario\.warmup"),
])
def test_bad_scenarios_name_the_field(change: dict, message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(scenario(**change), EXAMPLES)


def test_scenario_defaults_and_relative_config() -> None:
    s = parse_scenario(scenario(targets=[{"kind": "envoy", "config": "proxy-plain.yaml", "concurrency": 2,
                                          "load_args": ["-H", "Host: x"]}]), EXAMPLES)
    target = s.targets[0]
    assert target.label == "envoy" and target.config == EXAMPLES / "proxy-plain.yaml"
    assert target.url == "http://127.0.0.1:{listen_port}/" and target.concurrency == 2
    assert target.load_args == ("-H", "Host: x")
    assert s.load.args == ("-qps", "0", "-c", "4", "-t", "1s") and s.load.tool == "pylon"


def test_render_template_fills_only_known_placeholders() -> None:
    text = "socket_address: { address: 127.0.0.1, port_value: {listen_port} }\nkeep: {other}\n"
    assert render_template(text, {"listen_port": 8000}) == \
        "socket_address: { address: 127.0.0.1, port_value: 8000 }\nkeep: {other}\n"
    with pytest.raises(ScenarioError, match=r"\{upstream_port\}"):
        render_template("port: {upstream_port}", {"listen_port": 1})


def _run(target: str, rep: int, qps: float, cpu: float | None, count: int = 1000, ok: int = 1000) -> dict:
    return {"Target": target, "Repetition": rep, "ActualQPS": qps, "TargetCPUSeconds": cpu,
            "RequestsPerTargetCPUSecond": count / cpu if cpu else None, "LoadCPUSeconds": 0.5,
            "RetCodes": {"200": ok}, "DurationHistogram": {"Count": count, "Percentiles": [
                {"Percentile": 50, "Value": qps / 1e6}, {"Percentile": 99, "Value": qps / 1e5}]}}


def test_summarize_medians_and_ratios() -> None:
    runs = [_run("a", 1, 100, None), _run("b", 1, 50, 0.1), _run("c", 1, 25, 0.2),
            _run("a", 2, 300, None), _run("b", 2, 60, 0.05), _run("c", 2, 30, 0.4, ok=990),
            _run("a", 3, 200, None), _run("b", 3, 40, 0.2), _run("c", 3, 20, 0.1)]
    a, b, c = summarize(runs)
    assert (a.label, a.runs, a.qps, a.requests_per_target_cpu_s, a.efficiency_ratio) == ("a", 3, 200, None, None)
    assert a.p50_ms == pytest.approx(0.2) and a.p99_ms == pytest.approx(2.0)
    assert b.qps == 50 and b.qps_ratio == pytest.approx(0.25)
    assert b.requests_per_target_cpu_s == pytest.approx(10000) and b.efficiency_ratio == 1.0  # first with CPU
    assert c.requests_per_target_cpu_s == pytest.approx(5000) and c.efficiency_ratio == pytest.approx(0.5)
    assert c.errors == 10
    assert [(r["Target"], r["Repetition"]) for r in median_runs(runs)] == [("a", 3), ("b", 1), ("c", 1)]


def test_wrk_result_reads_as_a_fortio_result() -> None:
    w = WrkResult(requests=1000, duration_s=2.0, requests_per_sec=500.0, latency_ms={50.0: 1.0, 99.0: 4.0},
                  socket_errors={"connect": 0, "read": 2, "write": 0, "timeout": 0}, non_2xx_3xx=5,
                  min_ms=0.5, max_ms=9.0, mean_ms=1.2, stdev_ms=0.3, bytes_read=150000, cpu_seconds=0.4)
    result = wrk_to_fortio(w, label="x", url="http://h/", connections=8, start=datetime.now().astimezone())
    assert result["ActualQPS"] == 500 and result["RetCodes"] == {"200": 995, "-1": 2}
    header, rows = table_rows([result])
    assert rows[0][:4] == ["x", "500.0", "1.000", "-"]  # p90 was not measured: not invented
    assert rows[0][header.index("error %")] == "0.50"


def test_tiny_scenario_runs_and_reports(tmp_path: Path) -> None:
    """echo direct (url) and a pylon proxy in front of echo; 1 s runs, 2 interleaved reps."""
    s = parse_scenario(scenario(), EXAMPLES)
    out = tmp_path / "out"
    with BenchRun(s, out) as run:
        runs = run.run()
        served = httpx.get(f"http://127.0.0.1:{run.upstream_port}/stats").text
        processes = [t.process for t in run.targets if t.process] + [run.upstream]
    assert all(p.proc.poll() is not None for p in processes)  # everything stopped
    files = run.write_report(runs)

    assert [(r["Target"], r["Repetition"]) for r in runs] == [("direct", 1), ("gateway", 1), ("direct", 2),
                                                             ("gateway", 2)]
    total = 0
    for r in runs:
        count = r["DurationHistogram"]["Count"]
        assert count > 100 and r["RetCodes"] == {"200": count}
        total += count
        assert r["LoadCPUSeconds"] > 0.1
        if r["Target"] == "gateway":
            assert 0.05 < r["TargetCPUSeconds"] < 2.5
            assert r["RequestsPerTargetCPUSecond"] == pytest.approx(count / r["TargetCPUSeconds"])
        else:
            assert r["TargetCPUSeconds"] is None and r["RequestsPerTargetCPUSecond"] is None
    # Every request the load counted reached the echo workload, directly or through the proxy.
    assert f"downstream_rq_total: {total}" in served

    names = sorted(p.name for p in out.iterdir())
    assert names == ["direct-rep1.json", "direct-rep2.json", "gateway-rep1.json", "gateway-rep2.json",
                     "report.csv", "report.html", "report.png", "summary.json", "work"]
    saved = json.loads((out / "gateway-rep2.json").read_text())
    assert saved["Target"] == "gateway" and saved["Repetition"] == 2 and saved["Labels"] == "gateway"
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[1].startswith("direct rep1,")
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(files.summary.read_text())
    assert [t["label"] for t in summary["targets"]] == ["direct", "gateway"]
    assert (out / "work" / "gateway.yaml").read_text().count(str(run.upstream_port)) == 1


def test_wrk_scenario_against_nginx(tmp_path: Path) -> None:
    s = parse_scenario(scenario(upstream={"kind": "nginx"}, load={"tool": "wrk", "args": "-qps 0 -c 4 -t 1s"},
                                repetitions=1, targets=[scenario()["targets"][0]]), EXAMPLES)
    files = run_scenario(s, tmp_path)
    result = json.loads((tmp_path / "direct-rep1.json").read_text())
    assert result["LoadTool"] == "wrk" and result["DurationHistogram"]["Count"] > 100
    assert result["RetCodes"] == {"200": result["DurationHistogram"]["Count"]}
    assert 0 < result["LoadCPUSeconds"] < 2 and result["UpstreamCPUSeconds"] > 0
    assert files.csv is not None and files.csv.exists()


def test_cli_bad_scenario_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(scenario(targets=[{"kind": "pylon"}])))
    result = CliRunner().invoke(bench, [str(path)])
    assert result.exit_code == 2
    assert "targets[0].config: required" in result.output
