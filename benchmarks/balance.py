"""Connection balancing across workers: pylon's kernel / exact / dispatcher vs Envoy 1.40 kernel / exact_balance.

The seed's DLB scenario, on this 2-core machine, for `--concurrency 2` and 4:

* skewed: a few long-lived keep-alive connections with skewed request rates
  (by default one heavy per worker, opened first, the rest light; open loop: a request that is due while the
  previous one is still out counts its latency from when it was due, so a
  stalled worker shows up in p99) plus a steady stream
  of short connections (one request each). Reported: per-worker active
  connections (sampled mid-run from each proxy's
  `listener.<addr>.worker_<i>.downstream_cx_active`), per-worker CPU seconds
  (pylon: each worker process, plus the supervisor, which is the acceptor for
  exact/dispatcher; Envoy: each `wrk:worker_<i>` thread), total req/s and
  p50/p99 latency.
* accept: a new connection per request (`wrk -H "Connection: close"`), req/s.

Goals (issue 6): exact and dispatcher keep per-worker active connections within
1 of each other; their p99 under skewed load is below kernel's; their accept
rate is >= 0.9x kernel's. The kernel's placement of a few connections is a
matter of port hashing, so each skewed run is repeated `--reps` times (new
client ports each time) and the table shows the p99 over all runs' requests
pooled, each run's own p99, and every run's per-worker spread.

On 2 cores no worker saturates for real (the client and the upstream share the
cores, so the machine saturates first) and the p99s differ only by noise;
`--worker-cpu-cap 0.3` gives every worker a fixed capacity of its own (see
`WorkerCaps`), which is where the balancers' effect on p99 shows.

Usage: python benchmarks/balance.py [--duration 5] [--reps 3] [--concurrency 2 4] [--worker-cpu-cap 0.3]
Writes benchmarks/results/balance.{json,md} (or --out DIR); the committed
capped run is balance-capped.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import uvloop
import yaml

from pylon.bench.targets import (
    CLK_TCK,
    Running,
    free_port,
    pylon_workers,
    run_wrk,
    start_envoy,
    start_nginx,
    start_pylon_proxy,
)

ROOT = Path(__file__).resolve().parent.parent
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
DISPATCHER = "type.googleapis.com/pylon.connection_balance.v1.Dispatcher"
BALANCE = {
    "kernel": None,
    "exact": {"exact_balance": {}},
    "dispatcher": {"extend_balance": {"name": "pylon.connection_balance.dispatcher",
                                      "typed_config": {"@type": DISPATCHER}}},
}
SYSTEMS = [("pylon", "kernel"), ("pylon", "exact"), ("pylon", "dispatcher"), ("envoy", "kernel"), ("envoy", "exact")]
REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
SHORT_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def bootstrap(port: int, admin_port: int, upstream: int, balance: dict | None) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "main",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": "ingress", "codec_type": "HTTP1",
            "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "route": {"cluster": "up"}}]}]},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}}]}],
    }
    if balance is not None:
        listener["connection_balance_config"] = balance
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [listener], "clusters": [{
            "name": "up", "connect_timeout": "1s", "type": "STATIC",
            "load_assignment": {"cluster_name": "up", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": upstream}}}}]}]}}]},
    }


# --------------------------------------------------------------------------- optional per-worker CPU caps

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 10_000  # short, so a capped worker is throttled in slices of a few ms, not 100 ms


class WorkerCaps:
    """Every worker in its own cgroup (v1 `cpu` controller) capped at `fraction` of a CPU.

    Why: the skewed scenario shows balancing only when one worker saturates while others have room.
    On 2 cores that cannot happen for real: the client, the upstream and the workers share them, so the
    machine saturates before any one worker does. Capping each worker at the same fraction gives every
    worker a fixed, equal capacity, as a core of its own would; the run is labelled as capped. pylon:
    the supervisor (the acceptor for exact/dispatcher) and each worker process; Envoy: each
    `wrk:worker_<i>` thread (its main thread does not serve connections).
    """

    def __init__(self, fraction: float) -> None:
        if not os.access(CGROUP_CPU / "cgroup.procs", os.W_OK):
            raise SystemExit(f"--worker-cpu-cap needs root and the cgroup v1 cpu controller at {CGROUP_CPU}")
        self.fraction = fraction
        self.groups: list[Path] = []

    def _group(self, tasks: list[int], tasks_file: str) -> None:
        group = CGROUP_CPU / f"pylon-balance-{os.getpid()}-{len(self.groups)}"
        group.mkdir()
        self.groups.append(group)
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(self.fraction * CFS_PERIOD_US)))
        for task in tasks:
            (group / tasks_file).write_text(str(task))

    def cap(self, system: str, running: Running) -> None:
        # A pylon worker is a process (all its threads move); an Envoy worker is one thread.
        tasks_file = "cgroup.procs" if system == "pylon" else "tasks"
        for task in worker_tasks(system, running).values():
            self._group([task], tasks_file)

    def enforce(self, on: bool) -> None:
        """Apply the caps, or lift them (quota -1) for the accept test, which measures the balancers as they run."""
        for group in self.groups:
            (group / "cpu.cfs_quota_us").write_text(str(int(self.fraction * CFS_PERIOD_US)) if on else "-1")

    def release(self) -> None:
        """Move any task still in a group back to the root group, then remove the groups."""
        for group in self.groups:
            for task in (group / "tasks").read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP_CPU / "tasks").write_text(task)
            group.rmdir()
        self.groups.clear()


# --------------------------------------------------------------------------- per-worker CPU and stats


def _ticks(path: str) -> float:
    with open(path, "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def worker_tasks(system: str, running: Running) -> dict[str, int]:
    """{name: pid or tid} of what serves connections: pylon's supervisor (the acceptor for exact and the
    dispatcher) and worker processes; Envoy's `wrk:worker_<i>` threads."""
    if system == "pylon":
        workers = pylon_workers(running)
        return {"supervisor": running.pid, **{f"worker_{i}": pid for i, pid in sorted(workers.items())}}
    out: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{running.pid}/task"):
        comm = Path(f"/proc/{running.pid}/task/{tid}/comm").read_text().strip()
        if comm.startswith("wrk:worker_"):
            out[comm.split(":", 1)[1]] = int(tid)
    return out


def worker_cpu(system: str, running: Running) -> dict[str, float]:
    """CPU seconds so far per entry of `worker_tasks` (a pylon worker's whole process, an Envoy worker's thread)."""
    stat = "/proc/{}/stat" if system == "pylon" else f"/proc/{running.pid}/task/{{}}/stat"
    return {name: _ticks(stat.format(task)) for name, task in worker_tasks(system, running).items()}


def _own_cpu() -> float:
    """CPU seconds of this process so far: the skewed load's client runs here."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_worker_active(running: Running, port: int, workers: int) -> list[int]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{running.admin_port}/stats", timeout=5).read().decode()
    values = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
    return [int(values.get(f"listener.127.0.0.1_{port}.worker_{i}.downstream_cx_active", 0)) for i in range(workers)]


# --------------------------------------------------------------------------- the skewed load (open loop)


async def _response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)


async def _long_lived(port: int, rate: float, start: float, end: float, latencies: list[float],
                      opened: asyncio.Event) -> int:
    """Send at `rate` from the moment the connection is open (so later connections arrive under load);
    record latencies of requests due from `start` on."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.set()
    due, interval, errors = time.perf_counter(), 1.0 / rate, 0
    while due < end:
        delay = due - time.perf_counter()
        sent = due  # behind schedule: latency counts from when the request was due (queueing counts)
        if delay > 0:
            await asyncio.sleep(delay)
            sent = time.perf_counter()  # on time: the timer's wake-up slack is not the proxy's latency
        try:
            writer.write(REQUEST)
            await _response(reader)
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
            break
        if due >= start:
            latencies.append(time.perf_counter() - sent)
        due += interval
    writer.close()
    return errors


async def _short(port: int, latencies: list[float]) -> int:
    sent = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(SHORT_REQUEST)
        await _response(reader)
        writer.close()
    except (OSError, asyncio.IncompleteReadError):
        return 1
    latencies.append(time.perf_counter() - sent)
    return 0


async def skewed_load(port: int, rates: list[float], short_rate: float, duration: float,
                      sample: Any) -> dict[str, Any]:
    """Open `rates` long-lived connections one by one, then run them and the short stream for `duration`."""
    loop = asyncio.get_running_loop()
    long_latencies: list[float] = []
    short_latencies: list[float] = []
    start = time.perf_counter() + 0.3 + 0.05 * len(rates)
    end = start + duration
    tasks = []
    for rate in rates:  # one at a time, each under the load of those before it
        opened = asyncio.Event()
        tasks.append(loop.create_task(_long_lived(port, rate, start, end, long_latencies, opened)))
        await opened.wait()
        await asyncio.sleep(0.04)
    shorts = []
    due = start
    while due < end:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        shorts.append(loop.create_task(_short(port, short_latencies)))
        due += 1.0 / short_rate
        if not sample["done"] and time.perf_counter() > start + duration / 2:
            sample["done"] = True
            sample["active"] = await loop.run_in_executor(None, sample["read"])
    errors = sum(await asyncio.gather(*tasks)) + sum(await asyncio.gather(*shorts))
    everything = sorted(long_latencies + short_latencies)
    count = len(everything)
    return {
        "requests": count, "errors": errors, "rps": count / duration,
        "p50_ms": _percentile_ms(everything, 0.50), "p99_ms": _percentile_ms(everything, 0.99),
        "long_p99_ms": _percentile_ms(sorted(long_latencies), 0.99),
        "short_p99_ms": _percentile_ms(sorted(short_latencies), 0.99),
        "latencies": (long_latencies, short_latencies),  # pooled across runs, then dropped (not in the JSON)
    }


def _percentile_ms(ordered: list[float], fraction: float) -> float | None:
    return ordered[int(len(ordered) * fraction)] * 1000 if ordered else None


# --------------------------------------------------------------------------- one system


def start(system: str, config: Path, port: int, admin_port: int, concurrency: int, logdir: Path) -> Running:
    log = logdir / f"{config.stem}.log"
    if system == "pylon":
        return start_pylon_proxy(config, port=port, admin_port=admin_port, concurrency=concurrency, log_path=log)
    return start_envoy(config, port=port, admin_port=admin_port, concurrency=concurrency, log_path=log)


def skewed_run(system: str, running: Running, port: int, concurrency: int,
               args: argparse.Namespace) -> dict[str, Any]:
    """One skewed run: 2 long-lived connections per worker, the heavy ones first, plus the short stream."""
    heavy = min(args.heavy_connections or concurrency, 2 * concurrency)
    rates = [args.heavy_rate] * heavy + [args.heavy_rate / 4] * (2 * concurrency - heavy)
    sample = {"done": False, "read": lambda: per_worker_active(running, port, concurrency)}
    cpu0, client0 = worker_cpu(system, running), _own_cpu()
    run = uvloop.run(skewed_load(port, rates, args.short_rate, args.duration, sample))
    cpu1, run["client_cpu_s"] = worker_cpu(system, running), round(_own_cpu() - client0, 2)
    run["active"] = sample.get("active")
    run["cpu_s"] = {k: round(cpu1[k] - cpu0.get(k, 0.0), 2) for k in sorted(cpu1)}
    return run


def accept_run(proc: Running, args: argparse.Namespace) -> dict[str, Any]:
    """A new connection per request (`wrk -c16 -H 'Connection: close'`): how fast the balancer takes connections."""
    accept = run_wrk(proc.url("/"), duration=args.accept_duration, connections=16, headers=["Connection: close"])
    return {"rps": accept.requests_per_sec, "errors": accept.errors}


def measure_all(concurrency: int, upstream: int, args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Every system at one concurrency; repetitions interleaved across systems so drift hits all alike."""
    results, running = [], []
    caps = WorkerCaps(args.worker_cpu_cap) if args.worker_cpu_cap else None
    try:
        for system, balancer in SYSTEMS:
            port, admin_port = free_port(), free_port()
            config = workdir / f"{system}-{balancer}-{concurrency}.yaml"
            config.write_text(yaml.safe_dump(bootstrap(port, admin_port, upstream, BALANCE[balancer])))
            running.append((start(system, config, port, admin_port, concurrency, workdir), port))
            results.append({"system": system, "balancer": balancer, "concurrency": concurrency, "runs": [],
                            "accept": []})
        time.sleep(0.5)
        if caps is not None:
            for (proc, _port), result in zip(running, results):
                caps.cap(result["system"], proc)
        for rep in range(args.reps):
            order = range(len(SYSTEMS)) if rep % 2 == 0 else reversed(range(len(SYSTEMS)))
            for index in order:
                (proc, port), result = running[index], results[index]
                print(f"  rep {rep + 1}: {result['system']} {result['balancer']}", file=sys.stderr, flush=True)
                result["runs"].append(skewed_run(result["system"], proc, port, concurrency, args))
                if caps is not None:
                    caps.enforce(False)
                result["accept"].append(accept_run(proc, args))
                if caps is not None:
                    caps.enforce(True)
        if caps is not None:
            caps.enforce(False)
        for rep in range(args.accept_reps):  # more accept samples: one 4 s wrk run swings by ±15% here
            order = range(len(SYSTEMS)) if rep % 2 == 0 else reversed(range(len(SYSTEMS)))
            for index in order:
                results[index]["accept"].append(accept_run(running[index][0], args))
    finally:
        for proc, _port in running:
            proc.stop()
        if caps is not None:
            caps.release()
    for result in results:
        runs = result["runs"]
        # Pooled over the runs, not the median of runs: the kernel places connections at random, and a
        # placement that overloads a worker in some of the runs belongs in the tail, not outvoted.
        pooled_long = sorted(x for r in runs for x in r["latencies"][0])
        pooled_short = sorted(x for r in runs for x in r["latencies"][1])
        pooled = sorted(pooled_long + pooled_short)
        for r in runs:
            del r["latencies"]
        result["p99_ms"] = _percentile_ms(pooled, 0.99)
        result["p50_ms"] = _percentile_ms(pooled, 0.50)
        result["long_p99_ms"] = _percentile_ms(pooled_long, 0.99)
        result["short_p99_ms"] = _percentile_ms(pooled_short, 0.99)
        result["client_cpu_s"] = statistics.median(r["client_cpu_s"] for r in runs)
        result["rps"] = statistics.median(r["rps"] for r in runs)
        result["errors"] = sum(r["errors"] for r in runs) + sum(a["errors"] for a in result["accept"])
        result["spreads"] = [max(r["active"]) - min(r["active"]) for r in runs if r["active"]]
        result["accept_rps"] = statistics.median(a["rps"] for a in result["accept"])
    return results


# --------------------------------------------------------------------------- report


def markdown(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    heavy = meta["heavy_connections"] or "one per worker,"
    lines = [
        "# Connection balancing: pylon kernel / exact / dispatcher vs Envoy 1.40",
        "",
        f"{meta['machine']}; {meta['when']}. Upstream: 1-worker nginx. Skewed load per run: "
        f"{meta['duration']:g}s, 2 long-lived keep-alive connections per worker ({heavy} at {meta['heavy_rate']:g} "
        f"req/s, opened first, the rest at {meta['heavy_rate'] / 4:g} req/s, open loop) plus {meta['short_rate']:g} "
        f"short connections/s "
        f"(one request each); {meta['reps']} runs each, interleaved across systems. Latency percentiles are over "
        f"all runs' requests pooled (the kernel's placement is random per run; a run where it overloads a worker "
        f"belongs in the tail), with each run's own p99 in brackets; other figures are medians of the runs. "
        f"Latency counts from each request's scheduled time when the client is behind (queueing counts). "
        f"Latencies come from one Python (uvloop) client process; its CPU seconds per run are shown, to check "
        f"it was not the bottleneck (a run lasts {meta['duration']:g}s plus about a second of set-up). "
        f"Accept: `wrk -c16 -H 'Connection: close'` for {meta['accept_duration']:g}s after each run "
        f"and {meta.get('accept_reps', 0)} more times per system, interleaved (uncapped), median. "
        f"The machine is shared with other work, so single numbers are noisy."
        + (f" **Capped workers**: every worker (pylon: each worker process and the supervisor; Envoy: each "
           f"worker thread) runs in its own cgroup capped at {meta['worker_cpu_cap']:g} of a CPU "
           f"(CFS quota per {CFS_PERIOD_US // 1000} ms), so that each worker has a fixed, equal capacity as a core "
           f"of its own would, and one worker can saturate while the 2-core machine still has room for the "
           f"client and the upstream." if meta.get("worker_cpu_cap") else ""),
        "",
        "| concurrency | system | balancer | per-worker active (each run) | max spread | per-worker CPU s (last run) "
        "| req/s | client CPU s | p50 ms | p99 ms (each run) | p99 ms long-lived / short | errors | accept req/s "
        "| accept vs kernel |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kernel = next(k for k in results if k["system"] == r["system"] and k["balancer"] == "kernel"
                      and k["concurrency"] == r["concurrency"])
        cpu = ", ".join(f"{k}={v:.2f}" for k, v in r["runs"][-1]["cpu_s"].items())
        actives = " ".join(str(run["active"]) for run in r["runs"])
        per_run = ", ".join(f"{run['p99_ms']:.1f}" for run in r["runs"])
        lines.append(
            f"| {r['concurrency']} | {r['system']} | {r['balancer']} | {actives} | {max(r['spreads'], default='-')} "
            f"| {cpu} | {r['rps']:.0f} | {r['client_cpu_s']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} ({per_run}) "
            f"| {r['long_p99_ms']:.2f} / {r['short_p99_ms']:.2f} | {r['errors']} | {r['accept_rps']:.0f} "
            f"| {r['accept_rps'] / kernel['accept_rps']:.2f}x |")
    lines += ["", "## Goals (pylon)", ""]
    for concurrency in sorted({r["concurrency"] for r in results}):
        by = {r["balancer"]: r for r in results if r["system"] == "pylon" and r["concurrency"] == concurrency}
        for name in ("exact", "dispatcher"):
            r, k = by[name], by["kernel"]
            lines.append(
                f"- concurrency {concurrency}, {name}: spread ≤ 1: {'yes' if max(r['spreads']) <= 1 else 'NO'} "
                f"(max {max(r['spreads'])}); p99 {r['p99_ms']:.2f} ms vs kernel {k['p99_ms']:.2f} ms: "
                f"{'below' if r['p99_ms'] < k['p99_ms'] else 'NOT below'}; accept {r['accept_rps'] / k['accept_rps']:.2f}x "
                f"kernel: {'ok' if r['accept_rps'] >= 0.9 * k['accept_rps'] else 'BELOW 0.9x'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per skewed run")
    parser.add_argument("--reps", type=int, default=3, help="skewed runs per system")
    parser.add_argument("--accept-duration", type=float, default=4.0)
    parser.add_argument("--accept-reps", type=int, default=0, metavar="N",
                        help="extra accept runs per system after the skewed runs (interleaved)")
    parser.add_argument("--heavy-rate", type=float, default=1500.0, help="req/s of each heavy long-lived connection")
    parser.add_argument("--heavy-connections", type=int, default=0, metavar="N",
                        help="heavy long-lived connections (default: one per worker); the rest are light")
    parser.add_argument("--short-rate", type=float, default=100.0, help="short connections per second")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--worker-cpu-cap", type=float, default=None, metavar="FRACTION",
                        help="cap every worker at this fraction of a CPU (cgroup v1 cpu; see WorkerCaps)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="pylon-balance-") as tmp, start_nginx(free_port()) as nginx:
        for concurrency in args.concurrency:
            print(f"concurrency {concurrency}", file=sys.stderr, flush=True)
            results.extend(measure_all(concurrency, nginx.port, args, Path(tmp)))
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "when": time.strftime("%Y-%m-%d %H:%M"), "duration": args.duration, "reps": args.reps,
            "heavy_rate": args.heavy_rate, "short_rate": args.short_rate, "accept_duration": args.accept_duration,
            "worker_cpu_cap": args.worker_cpu_cap, "heavy_connections": args.heavy_connections,
            "accept_reps": args.accept_reps}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "balance.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    report = markdown(results, meta)
    (args.out / "balance.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
