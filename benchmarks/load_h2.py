"""Is `pylon load -h2` fast enough not to be what we measure? Against h2load, on the same `pylon echo`.

`pylon load -h2 -qps 0 -c 10` (Fortio's -h2: 10 connections, one stream in
flight on each) vs `h2load -c 10 -m 1` (the same shape: 10 clients, one
concurrent stream each), interleaved repetitions against one `pylon echo`
(h2c, prior knowledge). Metrics: requests per second, and requests per
client-CPU-second (rusage of the finished client process, its children
included); both tools' counts are checked against the echo's own
`downstream_rq_total` (`/stats` is not counted), and the echo's CPU is shown
beside each run (near the run's length: the server, not the client, was the limit): pylon's exactly, h2load's
up to the calls it had in flight when `-D` ran out, which it does not count. For scale, `h2load -c 10 -m 10` (ten streams each,
which Fortio's -h2 never does) is shown too.

Usage: python benchmarks/load_h2.py [--duration 5] [--reps 3]
Every process here is started by this script and stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

from pylon.bench.targets import free_port, run_h2load, run_tool, start_echo

CONNECTIONS = 10


def served(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as reply:
        stats = dict(line.split(": ") for line in reply.read().decode().splitlines())
    return int(stats["downstream_rq_total"])


def pylon_load(port: int, duration: int, workdir: Path) -> tuple[int, float, float]:
    path = workdir / "load.json"
    _, cpu = run_tool([sys.executable, "-m", "pylon.bench.cli", "load", "-h2", "-qps", "0", "-c", str(CONNECTIONS),
                       "-t", f"{duration}s", "-json", str(path), f"http://127.0.0.1:{port}/"], duration + 30)
    result = json.loads(path.read_text())
    ok = result["RetCodes"].get("200", 0)
    if ok != result["DurationHistogram"]["Count"]:
        raise RuntimeError(f"pylon load saw errors: {result['RetCodes']} {result.get('ErrorKinds')}")
    return ok, cpu, float(result["ActualQPS"])


def h2load(port: int, duration: int, streams: int) -> tuple[int, float, float]:
    result = run_h2load(f"http://127.0.0.1:{port}/", duration=duration, clients=CONNECTIONS, http1=False,
                        extra_args=["-m", str(streams)])
    if result.failed or result.errored or result.status_other:
        raise RuntimeError(f"h2load saw errors: {result}")
    return result.succeeded, result.cpu_seconds, result.requests_per_sec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per run (5)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (3)")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load is not installed (apt-get install nghttp2-client); this benchmark needs it", file=sys.stderr)
        return 1
    names = ("h2load -m 1", "pylon load -h2", "h2load -m 10")
    eff: dict[str, list[float]] = {name: [] for name in names}
    qps: dict[str, list[float]] = {name: [] for name in names}
    print(f"pylon load -h2 -qps 0 -c {CONNECTIONS} vs h2load -c {CONNECTIONS} against pylon echo (h2c), "
          f"{args.reps} reps x {args.duration}s", flush=True)
    with tempfile.TemporaryDirectory(prefix="pylon-load-h2-") as tmp, \
            start_echo(free_port(), body_size=100) as echo:
        for _ in range(args.reps):
            for name in names:
                before, server_before = served(echo.port), echo.cpu_seconds()
                if name == "pylon load -h2":
                    ok, cpu, rate = pylon_load(echo.port, args.duration, Path(tmp))
                    in_flight = 0  # it ends each connection's call before it stops
                else:
                    streams = int(name.rsplit(" ", 1)[1])
                    ok, cpu, rate = h2load(echo.port, args.duration, streams)
                    in_flight = CONNECTIONS * streams  # h2load -D drops the calls in flight when time is up
                server_cpu = echo.cpu_seconds() - server_before
                counted = served(echo.port) - before
                if not 0 <= counted - ok <= in_flight:
                    raise RuntimeError(f"{name}: {ok} requests, the echo counted {counted}")
                eff[name].append(ok / cpu)
                qps[name].append(rate)
                print(f"  {name:15s} {rate:9.0f} req/s, client CPU {cpu:5.2f}s -> {ok / cpu:9.0f} req/client-CPU-s"
                      f" (echo CPU {server_cpu:5.2f}s)", flush=True)
    med_eff = {k: statistics.median(v) for k, v in eff.items()}
    med_qps = {k: statistics.median(v) for k, v in qps.items()}
    summary = {
        "median_req_per_client_cpu_s": med_eff,
        "median_qps": med_qps,
        "ratio_load_over_h2load_qps": med_qps["pylon load -h2"] / med_qps["h2load -m 1"],
        "ratio_load_over_h2load_cpu_efficiency": med_eff["pylon load -h2"] / med_eff["h2load -m 1"],
    }
    print(json.dumps(summary, indent=2))
    print(f"pylon load -h2 / h2load -m 1: {summary['ratio_load_over_h2load_qps']:.2f} of the req/s, "
          f"{summary['ratio_load_over_h2load_cpu_efficiency']:.2f} of the requests per client-CPU-second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
