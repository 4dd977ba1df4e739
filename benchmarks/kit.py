"""Is the bench kit fast enough not to be what we measure? Side by side, in one run.

1. Server: `pylon echo` vs nginx (1 worker, `return 200` with a 100-byte body),
   both loaded by `wrk -t1 -c50`, interleaved repetitions. Metric: requests per
   server-CPU-second (utime+stime of the server's process tree from /proc).
   Target: echo/nginx >= 0.8.
2. Client: `pylon load -qps 0 -c 50` vs `wrk -t1 -c50` against `pylon echo`.
   Metric: requests per client-CPU-second (rusage of the finished client
   process, its children included); plus `-procs 2` throughput scaling.

Usage: python benchmarks/kit.py [--duration 5] [--reps 3]
Every process here is started by this script and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
BODY = b"x" * 99 + b"\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def tree_cpu_seconds(root: int) -> float:
    """utime+stime of a process and all its live descendants, from /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_nginx(workdir: Path, port: int) -> subprocess.Popen:
    conf = workdir / "nginx.conf"
    temp = workdir / "tmp"
    temp.mkdir(exist_ok=True)
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {temp};
    proxy_temp_path {temp};
    fastcgi_temp_path {temp};
    uwsgi_temp_path {temp};
    scgi_temp_path {temp};
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "{BODY.decode().strip()}\\n"; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-e", str(workdir / "error.log"), "-p", str(workdir), "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc)
    return proc


def start_echo(port: int, concurrency: int = 1) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "pylon.bench.cli", "echo", "--host", "127.0.0.1",
                             "--port", str(port), "--body-size", str(len(BODY)), "--concurrency", str(concurrency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc)
    return proc


def run_client(args: list[str], timeout: float) -> tuple[str, float]:
    """Run a client to completion; its output and CPU seconds (children included)."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise TimeoutError(f"{args[0]} did not finish in {timeout}s")
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{out}")
    return out, usage.ru_utime + usage.ru_stime


def wrk_requests(out: str) -> int:
    match = re.search(r"(\d+) requests in", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    return int(match.group(1))


def wrk(port: int, duration: int) -> tuple[int, float]:
    out, cpu = run_client(["wrk", "-t1", "-c50", f"-d{duration}s", f"http://127.0.0.1:{port}/"], duration + 30)
    return wrk_requests(out), cpu


def pylon_load(port: int, duration: int, procs: int, workdir: Path) -> tuple[int, float, float]:
    path = workdir / f"load-{procs}.json"
    out, cpu = run_client([sys.executable, "-m", "pylon.bench.cli", "load", "-qps", "0", "-c", "50",
                           "-t", f"{duration}s", "-procs", str(procs), "-json", str(path),
                           f"http://127.0.0.1:{port}/"], duration + 30)
    result = json.loads(path.read_text())
    ok = result["RetCodes"].get("200", 0)
    if ok != result["DurationHistogram"]["Count"]:
        raise RuntimeError(f"pylon load saw errors: {result['RetCodes']} {result.get('ErrorKinds')}")
    return ok, cpu, float(result["ActualQPS"])


def server_side(duration: int, reps: int, workdir: Path) -> dict:
    nginx_port, echo_port = free_port(), free_port()
    nginx = start_nginx(workdir, nginx_port)
    echo = start_echo(echo_port)
    rates: dict[str, list[float]] = {"nginx": [], "pylon echo": []}
    try:
        for _ in range(reps):
            for name, proc, port in (("nginx", nginx, nginx_port), ("pylon echo", echo, echo_port)):
                before = tree_cpu_seconds(proc.pid)
                requests, _ = wrk(port, duration)
                cpu = tree_cpu_seconds(proc.pid) - before
                rates[name].append(requests / cpu)
                print(f"  {name:11s} {requests:8d} requests, server CPU {cpu:5.2f}s -> {requests / cpu:9.0f} req/CPU-s",
                      flush=True)
    finally:
        stop(echo)
        stop(nginx)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"median_req_per_server_cpu_s": med, "ratio_echo_over_nginx": med["pylon echo"] / med["nginx"]}


def client_side(duration: int, reps: int, workdir: Path) -> dict:
    port = free_port()
    echo = start_echo(port, concurrency=1)
    eff: dict[str, list[float]] = {"wrk": [], "pylon load": [], "pylon load -procs 2": []}
    qps: dict[str, list[float]] = {k: [] for k in eff}
    try:
        for _ in range(reps):
            requests, cpu = wrk(port, duration)
            eff["wrk"].append(requests / cpu)
            qps["wrk"].append(requests / duration)
            for procs in (1, 2):
                name = "pylon load" if procs == 1 else "pylon load -procs 2"
                ok, cpu, actual = pylon_load(port, duration, procs, workdir)
                eff[name].append(ok / cpu)
                qps[name].append(actual)
            for name in eff:
                print(f"  {name:20s} {qps[name][-1]:9.0f} req/s, {eff[name][-1]:9.0f} req/client-CPU-s", flush=True)
    finally:
        stop(echo)
    med_eff = {k: statistics.median(v) for k, v in eff.items()}
    med_qps = {k: statistics.median(v) for k, v in qps.items()}
    return {
        "median_req_per_client_cpu_s": med_eff,
        "median_qps": med_qps,
        "ratio_load_over_wrk_cpu_efficiency": med_eff["pylon load"] / med_eff["wrk"],
        "procs2_over_procs1_qps": med_qps["pylon load -procs 2"] / med_qps["pylon load"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (5)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (3)")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed; this benchmark needs it", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="pylon-kit-") as tmp:
        workdir = Path(tmp)
        print(f"1. server: pylon echo vs nginx under wrk -t1 -c50 -d{args.duration}s, {args.reps} reps", flush=True)
        server = server_side(args.duration, args.reps, workdir)
        print(f"2. client: pylon load -qps 0 -c 50 vs wrk -t1 -c50 against pylon echo, {args.reps} reps", flush=True)
        client = client_side(args.duration, args.reps, workdir)
    summary = {"server": server, "client": client}
    print(json.dumps(summary, indent=2))
    print(f"echo/nginx requests per server-CPU-second: {server['ratio_echo_over_nginx']:.2f} (target >= 0.8)")
    print(f"pylon load/wrk requests per client-CPU-second: {client['ratio_load_over_wrk_cpu_efficiency']:.2f}")
    print(f"pylon load -procs 2 / -procs 1 throughput: {client['procs2_over_procs1_qps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
