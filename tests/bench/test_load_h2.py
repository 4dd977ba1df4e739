"""`pylon load -h2` and `-grpc`: counts that match the server's (pylon echo, and stock Envoy), Fortio's JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pylon.bench.fortio_args import LoadOptions
from pylon.bench.load import run_load
from tests.bench.conftest import ca_file, tls_args
from tests.conftest import free_port, wait_for_port
from tests.proxy.conftest import ProxyLauncher, http_listener


def load(url: str, **kw) -> dict:
    kw.setdefault("timeout", 5.0)
    return run_load(LoadOptions(url=url, **kw))


def grpc_echo(start_echo):
    port = free_port()
    echo = start_echo("-grpc-port", str(port))
    wait_for_port(port, proc=echo.proc)
    return echo, f"127.0.0.1:{port}"


def test_h2_counts_match_pylon_echo(start_echo) -> None:
    echo = start_echo()
    before = echo.stats()["downstream_cx_total"]
    result = load(f"{echo.url}/", h2=True, qps=0, connections=4, exactly=1500)
    assert result.count == 1500 and result["RetCodes"] == {"200": 1500} and result["H2"] is True
    assert result["SocketCount"] == 4 and result["Sizes"]["Avg"] == 100  # Fortio's std client: body bytes
    stats = echo.stats()
    assert stats["downstream_rq_total"] == 1500 and stats["downstream_cx_total"] - before == 4 + 1  # and /stats
    result = load(f"{echo.url}/?status=503", h2=True, qps=200, connections=2, duration=0.5)
    assert result["RetCodes"] == {"503": 100} and result["ErrorsDurationHistogram"]["Count"] == 100


def test_h2_against_envoy_direct_response(tmp_path: Path) -> None:
    """A server nobody here wrote: Envoy's own HTTP/2 codec counts the streams it served."""
    launcher = ProxyLauncher(tmp_path)
    try:
        port = free_port()
        route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "x" * 64}}}
        envoy = launcher.start([http_listener("direct", port, [route])], [], implementation="envoy")
        result = load(f"http://127.0.0.1:{port}/", h2=True, qps=0, connections=3, exactly=900)
        assert result["RetCodes"] == {"200": 900} and result["Sizes"]["Avg"] == 64
        stats = envoy.stats()
        assert stats["http.direct.downstream_rq_http2_total"] == 900 and stats["http.direct.downstream_rq_2xx"] == 900
        assert stats["http.direct.downstream_cx_http2_total"] == 3
    finally:
        launcher.close()


def test_h2_over_tls_by_alpn(start_echo, pki) -> None:
    echo = start_echo(*tls_args(pki), tls=True)
    result = load(f"https://localhost:{echo.port}/", h2=True, qps=0, connections=2, exactly=200,
                  cacert=str(ca_file(pki)))
    assert result["RetCodes"] == {"200": 200} and result["SocketCount"] == 2


def test_h2_to_an_http1_server_fails_each_call_by_kind(tmp_path: Path) -> None:
    """A server that answers HTTP/1.1 to the preface: each call is a counted protocol error, not a crash."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        result = load(f"http://127.0.0.1:{server.getsockname()[1]}/", h2=True, qps=0, connections=1, exactly=3)
    finally:
        server.close()
    assert result["RetCodes"] == {"-1": 3} and set(result["ErrorKinds"]) <= {"protocol", "closed", "reset"}


def test_grpc_ping_counts_streams_and_json(start_echo, tmp_path: Path) -> None:
    echo, destination = grpc_echo(start_echo)
    out = tmp_path / "ping.json"
    run = subprocess.run([sys.executable, "-m", "pylon.bench.cli", "load", "-grpc", "-ping", "-qps", "0", "-c", "2",
                          "-s", "3", "-n", "600", "-payload", "hello", "-json", str(out), destination],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "Ping SERVING : 600" in run.stdout
    result = json.loads(out.read_text())
    assert result["RunType"] == "GRPC Ping PayloadLength=5" and result["RetCodes"] == {"SERVING": 600}
    assert result["NumThreads"] == 6 and result["Streams"] == 3 and result["Ping"] is True
    assert result["Destination"] == destination and result["SocketCount"] == 2
    assert "URL" not in result  # GRPCRunnerResults, not HTTPRunnerResults
    assert echo.stats()["grpc_rq_total"] == 600
    report = subprocess.run([sys.executable, "-m", "pylon.bench.cli", "report", str(out)], capture_output=True,
                            text=True, timeout=60, check=True)
    row = next(line for line in report.stdout.splitlines() if destination in line)
    assert row.split("│")[-2].strip() == "0.00"  # error %: every call SERVING
    # Fortio's own gRPC JSON has none of pylon's additions (no Sizes): the report reads it too.
    for name in ("Sizes", "Sockets", "SocketCount", "ConnectionStats", "ErrorKinds", "Procs"):
        del result[name]
    result["RetCodes"] = {"SERVING": 590, "ERROR": 10}
    out.write_text(json.dumps(result))
    report = subprocess.run([sys.executable, "-m", "pylon.bench.cli", "report", str(out)], capture_output=True,
                            text=True, timeout=60, check=True)
    row = next(line for line in report.stdout.splitlines() if destination in line)
    assert row.split("│")[-2].strip() == "1.67"


def test_grpc_ping_delay_and_rate(start_echo) -> None:
    echo, destination = grpc_echo(start_echo)
    result = load(destination, grpc=True, ping=True, grpc_ping_delay=0.05, qps=40, connections=1, streams=2,
                  duration=0.5)
    assert result["RetCodes"] == {"SERVING": 20} and result["RunType"] == "GRPC Ping Delay=50ms"
    assert result["DurationHistogram"]["Min"] >= 0.05
    assert echo.stats()["grpc_rq_total"] == 20


def test_grpc_health_status_names(start_echo) -> None:
    echo, destination = grpc_echo(start_echo)
    result = load(destination, grpc=True, health_service="ping_down", qps=0, connections=1, exactly=50)
    assert result["RetCodes"] == {"NOT_SERVING": 50} and result["RunType"] == "GRPC Health for 'ping_down'"
    assert result["ErrorsDurationHistogram"]["Count"] == 50
    result = load(destination, grpc=True, qps=0, connections=1, exactly=50)
    assert result["RetCodes"] == {"SERVING": 50}
    result = load(destination, grpc=True, health_service="unknown", qps=0, connections=1, exactly=5)
    assert result["RetCodes"] == {"ERROR": 5}  # NOT_FOUND: a failed call, as Fortio counts it


def test_grpc_to_nothing_is_counted_not_raised() -> None:
    result = load(f"127.0.0.1:{free_port()}", grpc=True, ping=True, qps=0, connections=1, streams=2, exactly=4,
                  timeout=2.0)
    assert result["RetCodes"] == {"ERROR": 4} and result["ErrorKinds"] == {"refused": 4}


def test_h2_pylon_echo_over_procs(start_echo) -> None:
    echo = start_echo()
    out = subprocess.run([sys.executable, "-m", "pylon.bench.cli", "load", "-h2", "-qps", "0", "-c", "4", "-n", "800",
                          "-procs", "2", "-json", "-", f"{echo.url}/"], capture_output=True, timeout=120, check=True)
    result = json.loads(out.stdout)
    assert result["RetCodes"] == {"200": 800} and result["Procs"] == 2
    assert httpx.get(f"{echo.url}/stats").text.count("downstream_rq_total: 800") == 1


@pytest.mark.parametrize("argv, message", [
    (["-ping", "127.0.0.1:1"], "-ping needs -grpc"),
    (["-s", "2", "http://x/"], "-s needs -grpc"),
    (["-grpc", "-grpc-ping-delay", "1ms", "x:1"], "need -ping"),
    (["-h2", "-new-connection", "http://x/"], "not supported with -h2"),
    (["-grpc", "-ping", "-H", "a: b", "x:1"], "not supported with -grpc"),
])
def test_cli_refuses_flags_that_would_change_nothing(argv: list[str], message: str) -> None:
    run = subprocess.run([sys.executable, "-m", "pylon.bench.cli", "load", *argv], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and message in run.stderr
