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
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from pylon.bench.targets import free_port, run_tool, run_wrk, start_echo, start_nginx

BODY_SIZE = 100


def wrk(port: int, duration: int) -> tuple[int, float]:
    """Requests served and wrk's own CPU seconds; any error fails the benchmark."""
    result = run_wrk(f"http://127.0.0.1:{port}/", duration=duration, connections=50)
    if result.errors:
        raise RuntimeError(f"wrk saw errors: {result}")
    return result.requests, result.cpu_seconds


def pylon_load(port: int, duration: int, procs: int, workdir: Path) -> tuple[int, float, float]:
    path = workdir / f"load-{procs}.json"
    _, cpu = run_tool([sys.executable, "-m", "pylon.bench.cli", "load", "-qps", "0", "-c", "50",
                           "-t", f"{duration}s", "-procs", str(procs), "-json", str(path),
                           f"http://127.0.0.1:{port}/"], duration + 30)
    result = json.loads(path.read_text())
    ok = result["RetCodes"].get("200", 0)
    if ok != result["DurationHistogram"]["Count"]:
        raise RuntimeError(f"pylon load saw errors: {result['RetCodes']} {result.get('ErrorKinds')}")
    return ok, cpu, float(result["ActualQPS"])


def server_side(duration: int, reps: int) -> dict:
    rates: dict[str, list[float]] = {"nginx": [], "pylon echo": []}
    with start_nginx(free_port(), body_size=BODY_SIZE) as nginx, \
            start_echo(free_port(), body_size=BODY_SIZE) as echo:
        for _ in range(reps):
            for name, server in (("nginx", nginx), ("pylon echo", echo)):
                before = server.cpu_seconds()
                requests, _ = wrk(server.port, duration)
                cpu = server.cpu_seconds() - before
                rates[name].append(requests / cpu)
                print(f"  {name:11s} {requests:8d} requests, server CPU {cpu:5.2f}s -> {requests / cpu:9.0f} req/CPU-s",
                      flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"median_req_per_server_cpu_s": med, "ratio_echo_over_nginx": med["pylon echo"] / med["nginx"]}


def client_side(duration: int, reps: int, workdir: Path) -> dict:
    eff: dict[str, list[float]] = {"wrk": [], "pylon load": [], "pylon load -procs 2": []}
    qps: dict[str, list[float]] = {k: [] for k in eff}
    with start_echo(free_port(), body_size=BODY_SIZE, concurrency=1) as echo:
        port = echo.port
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
        server = server_side(args.duration, args.reps)
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
