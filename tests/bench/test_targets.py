"""targets: output parsers on known text; real nginx / envoy / pylon processes started, measured, stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pylon.bench import targets as t
from pylon.bench.scenario import render_template

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "bench"

WRK_OUTPUT = """\
Running 1s test @ http://127.0.0.1:40000/
  1 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   122.09us  222.11us   5.25ms   98.73%
    Req/Sec    79.38k     3.21k   82.10k    90.91%
  Latency Distribution
     50%  103.00us
     75%  120.00us
     90%  137.00us
     99%    1.57ms
  86859 requests in 1.10s, 20.63MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  78952.32
Transfer/sec:     18.75MB
"""

SUMMARY_LINE = ('pylon-wrk-summary {"requests":86859,"duration_us":1100123,"bytes":21627891,"min_us":28,'
                '"max_us":5248,"mean_us":122.091,"stdev_us":222.112,"p999_us":4201,"status_errors":7}\n')

H2LOAD_OUTPUT = """\
finished in 1.00s, 81114.00 req/s, 9.05MB/s
requests: 81114 total, 81164 started, 81114 done, 81100 succeeded, 14 failed, 0 errored, 0 timeout
status codes: 81100 2xx, 0 3xx, 10 4xx, 4 5xx
traffic: 9.05MB (9491338) total, 6.96MB (7300260) headers (space savings 0.00%), 7.74MB (8111400) data
                     min         max         mean         sd        +/- sd
time for request:       54us      2.92ms       123us        56us    98.01%
time for connect:       57us       163us       109us        38us    60.00%
"""


def test_parse_wrk_latency_distribution_and_errors() -> None:
    result = t.parse_wrk(WRK_OUTPUT, cpu_seconds=0.5)
    assert result.requests == 86859
    assert result.duration_s == pytest.approx(1.10)
    assert result.requests_per_sec == pytest.approx(78952.32)
    assert result.latency_ms == pytest.approx({50.0: 0.103, 75.0: 0.12, 90.0: 0.137, 99.0: 1.57})
    assert result.socket_errors == {"connect": 1, "read": 2, "write": 0, "timeout": 3}
    assert result.non_2xx_3xx == 7
    assert result.errors == 13
    assert result.cpu_seconds == 0.5
    assert result.min_ms is None


def test_parse_wrk_summary_script_line_adds_exact_numbers() -> None:
    result = t.parse_wrk(WRK_OUTPUT + SUMMARY_LINE)
    assert result.duration_s == pytest.approx(1.100123)
    assert result.latency_ms[99.9] == pytest.approx(4.201)
    assert (result.min_ms, result.max_ms) == pytest.approx((0.028, 5.248))
    assert result.mean_ms == pytest.approx(0.122091)
    assert result.bytes_read == 21627891


def test_parse_wrk_rejects_other_text() -> None:
    with pytest.raises(t.TargetError, match="cannot read wrk output"):
        t.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_parse_h2load() -> None:
    result = t.parse_h2load(H2LOAD_OUTPUT, cpu_seconds=0.9)
    assert (result.requests, result.succeeded, result.failed) == (81114, 81100, 14)
    assert result.requests_per_sec == pytest.approx(81114.0)
    assert (result.status_2xx, result.status_other) == (81100, 14)
    assert (result.min_ms, result.max_ms, result.mean_ms, result.stdev_ms) == pytest.approx((0.054, 2.92, 0.123, 0.056))
    assert result.cpu_seconds == 0.9


def test_unique_base_ids() -> None:
    ids = {t.unique_base_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i >> 8 == os.getpid() for i in ids)


def test_tree_cpu_counts_live_descendants() -> None:
    # The parent sleeps; a child burns CPU. Only the tree sum sees the child's time.
    code = ("import os,time,subprocess,sys\n"
            "subprocess.Popen([sys.executable,'-c','import time\\nend=time.time()+5\\nwhile time.time()<end: pass'])\n"
            "time.sleep(10)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(1.5)
        own = sum(int(v) for v in open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[11:13]) / t.CLK_TCK
        tree = t.tree_cpu_seconds(proc.pid)
        assert tree >= own + 0.5
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
    assert t.tree_cpu_seconds(proc.pid) == 0.0  # gone


def test_start_process_that_dies_is_an_error_and_cleaned_up(tmp_path: Path) -> None:
    with pytest.raises(t.TargetError, match="exited with 3"):
        t.start_process("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                        port=t.free_port(), log_path=tmp_path / "out.log", ready_timeout=5)
    assert "bye" in (tmp_path / "out.log").read_text()


def test_nginx_wrk_and_h2load() -> None:
    with t.start_nginx(t.free_port(), body_size=100) as nginx:
        workdir = Path(nginx.workdir.name)  # type: ignore[union-attr]
        with urllib.request.urlopen(nginx.url()) as reply:
            assert len(reply.read()) == 100
        before = nginx.cpu_seconds()
        wrk = t.run_wrk(nginx.url(), duration=1, connections=10)
        assert wrk.requests > 1000 and wrk.errors == 0
        assert set(wrk.latency_ms) == {50.0, 75.0, 90.0, 99.0, 99.9}
        assert 0 < wrk.min_ms <= wrk.latency_ms[50.0] <= wrk.latency_ms[99.0] <= wrk.max_ms  # type: ignore[operator]
        assert wrk.bytes_read >= 100 * wrk.requests  # type: ignore[operator]
        assert 0.1 < wrk.cpu_seconds < 3
        assert nginx.cpu_seconds() - before > 0.1
        h2 = t.run_h2load(nginx.url(), requests=2000, clients=4)
        assert h2.succeeded == 2000 and h2.status_2xx == 2000
        assert h2.cpu_seconds > 0
    assert nginx.proc.poll() is not None
    assert not workdir.exists()


def test_envoy_and_pylon_run_the_same_config(tmp_path: Path) -> None:
    """Both proxies start from one rendered template, become ready, proxy to nginx and stop."""
    template = (EXAMPLES / "proxy-plain.yaml").read_text()
    with t.start_nginx(t.free_port()) as nginx:
        for start in (t.start_envoy, t.start_pylon_proxy):
            listen, admin = t.free_port(), t.free_port()
            config = tmp_path / f"{start.__name__}.yaml"
            config.write_text(render_template(template, {"listen_port": listen, "admin_port": admin,
                                                         "upstream_port": nginx.port, "workdir": tmp_path}))
            with start(config, port=listen, admin_port=admin, log_path=tmp_path / "log") as proxy:
                with urllib.request.urlopen(proxy.url("/x")) as reply:
                    assert reply.status == 200 and len(reply.read()) == 100
                assert proxy.cpu_seconds() > 0
            assert proxy.proc.poll() is not None


def test_background_tool_runs_to_completion_and_reports_failure() -> None:
    from pylon.bench.targets import BackgroundTool, TargetError

    tool = BackgroundTool([sys.executable, "-c", "print('done')"], timeout=30)
    text, cpu = tool.result()
    assert text.strip() == "done" and cpu >= 0 and not tool.running
    failing = BackgroundTool([sys.executable, "-c", "raise SystemExit(3)"], timeout=30)
    with pytest.raises(TargetError):
        failing.result()
