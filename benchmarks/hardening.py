"""Hardening under faults (issue 10, items 1 and 11): pylon beside Envoy 1.40, same config, same run.

Both proxies run the one-listener, one-static-cluster config of
examples/bench/proxy-plain.yaml (no retry policy), rendered once per proxy.
Repetitions are interleaved and the pylon/Envoy order alternates, so drifts
hit both alike; the table shows medians and pylon/Envoy ratios.

stale - stale upstream connections (item 1)
    The upstream (a small uvloop server in this file, `--serve-upstream`)
    answers every request with a complete keep-alive 200 (no
    `Connection: close`) and then closes the connection, as a server does when
    its keep-alive limit or idle timeout ends one. Variants:
      close-every-response   closes after each response
      close-after-2-5        closes after N responses, N drawn from 2..5 per connection
      idle-close-20ms        closes a connection idle for 20 ms; the client is paced at
                             100 req/s (10 calls together every 100 ms), so every pooled
                             connection has been closed for ~80 ms when it is next wanted:
                             no race with the close, only whether the proxy noticed it
    Each proxy runs `--concurrency 1`; `pylon load -c 10` drives it. Reported:
    error share (calls that got no 2xx: proxy 503s plus client socket errors)
    and p99 latency. A proxy that hands a request to a pooled connection the
    upstream has already closed answers 503 (issue 10 saw pylon ~39%, Envoy 2-3%).

flood - 5,000-connection flood (item 11)
    `wrk -c 5000 --timeout 2s` against each proxy at `--concurrency 2`, circuit
    breakers raised in both configs so they never trip, in front of
    `pylon echo`. Reported: wrk's timeouts (requests unanswered after 2 s),
    other errors (connect/read/write errors and non-2xx), p99, req/s. Each
    proxy first takes one unmeasured `--warmup` flood, so its first measured
    run does not pay for growing its upstream pool from nothing, and every run
    starts once the proxy has closed the previous run's connections (its
    admin `downstream_cx_active` is 0, waiting up to 30 s). A wrk that does not
    finish (its connections never served) is recorded as a failed run.

The load tool must not be what is measured: each run records the client's
CPU seconds (rusage of the finished tool) as a share of its capacity
(duration x threads); the table shows the largest share and a note flags any
run above 85%. The open-file limit is raised to its hard limit for every
process started here. Every process is started on a free loopback port and
stopped by its PID (process group) even when a run fails.

Usage: python benchmarks/hardening.py [--reps 3] [--duration 10] [--flood-duration 10] [--warmup 3]
                                      [--wrk-threads 1] [--scenarios stale,flood] [--quick] [--out DIR]
Writes DIR/hardening.json (default benchmarks/results/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httptools
import uvloop
import yaml

from pylon import __version__
from pylon.bench.scenario import render_template
from pylon.bench.targets import (
    Running, TargetError, free_port, run_tool, run_wrk, start_echo, start_envoy, start_process, start_pylon_proxy,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "bench" / "proxy-plain.yaml"
PROXIES = ("pylon", "envoy")
BODY = b"x" * 99 + b"\n"
STALE_CLIENTS = 10
FLOOD_CONNECTIONS = 5000
FLOOD_TIMEOUT_S = 2.0
RAISED_BREAKERS = {"thresholds": [{"max_connections": 1_000_000, "max_pending_requests": 1_000_000,
                                   "max_requests": 1_000_000}]}
CLIENT_BUSY_WARNING = 0.85
SETTLE_LIMIT_S = 30.0


@dataclass(frozen=True)
class ClosePolicy:
    """When the stale-scenario upstream closes a connection: after N responses and/or after idling."""

    min_responses: int = 0  # 0: no response limit
    max_responses: int = 0
    idle_s: float = 0.0  # 0: no idle timeout

    def as_args(self) -> list[str]:
        return ["--close-after", f"{self.min_responses}-{self.max_responses}", "--idle-close-s", f"{self.idle_s:g}"]


STALE_VARIANTS: dict[str, tuple[ClosePolicy, float]] = {  # name: (upstream policy, client req/s; 0 = max)
    "close-every-response": (ClosePolicy(1, 1), 0.0),
    "close-after-2-5": (ClosePolicy(2, 5), 0.0),
    "idle-close-20ms": (ClosePolicy(idle_s=0.020), 100.0),
}


# --------------------------------------------------------------------------- the closing upstream


RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY


class ClosingUpstream(asyncio.Protocol):
    """One upstream connection: a keep-alive 200 per request, then a close the client is not told about."""

    def __init__(self, policy: ClosePolicy) -> None:
        self.policy = policy
        self.parser = httptools.HttpRequestParser(self)
        self.limit = random.randint(policy.min_responses, policy.max_responses) if policy.max_responses else 0
        self.served = 0
        self.idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.abort()

    def on_message_begin(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None

    def on_message_complete(self) -> None:
        if self.transport.is_closing():
            return
        self.transport.write(RESPONSE)
        self.served += 1
        if self.limit and self.served >= self.limit:
            self.transport.close()
        else:
            self._arm_idle()

    def _arm_idle(self) -> None:
        if self.policy.idle_s:
            self.idle = asyncio.get_running_loop().call_later(self.policy.idle_s, self.transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()


async def serve_closing_upstream(port: int, policy: ClosePolicy) -> None:
    """Serve until killed (the benchmark stops this process by its PID)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: ClosingUpstream(policy), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def start_closing_upstream(policy: ClosePolicy, log_path: Path) -> Running:
    port = free_port()
    args = [sys.executable, __file__, "--serve-upstream", "--port", str(port), *policy.as_args()]
    return start_process("closing upstream", args, port=port, log_path=log_path)


# --------------------------------------------------------------------------- proxies


def write_config(work: Path, name: str, upstream_port: int, breakers: bool) -> tuple[Path, int, int]:
    """The shared template rendered for one proxy (circuit breakers raised for the flood); (path, listen, admin)."""
    listen, admin = free_port(), free_port()
    text = render_template(TEMPLATE.read_text(), {"listen_port": listen, "admin_port": admin,
                                                  "upstream_port": upstream_port})
    if breakers:
        config = yaml.safe_load(text)
        for cluster in config["static_resources"]["clusters"]:
            cluster["circuit_breakers"] = RAISED_BREAKERS
        text = yaml.safe_dump(config, sort_keys=False)
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path, listen, admin


def start_proxy(stack: contextlib.ExitStack, proxy: str, work: Path, name: str, upstream_port: int,
                concurrency: int, breakers: bool = False) -> Running:
    config, listen, admin = write_config(work, name, upstream_port, breakers)
    start = start_pylon_proxy if proxy == "pylon" else start_envoy
    return stack.enter_context(start(config, port=listen, admin_port=admin, concurrency=concurrency,
                                     log_path=work / f"{name}.log"))


def interleaved(reps: int) -> list[tuple[int, tuple[str, ...]]]:
    """(rep, proxy order) with the order alternating, so neither proxy always runs first."""
    return [(rep, PROXIES if rep % 2 else PROXIES[::-1]) for rep in range(1, reps + 1)]


# --------------------------------------------------------------------------- stale upstream connections


def pylon_load(url: str, duration: float, qps: float, work: Path) -> dict[str, Any]:
    """`pylon load -c 10` for `duration` seconds: error share, p99 and the client's CPU share."""
    path = work / "load.json"
    _, cpu = run_tool([sys.executable, "-m", "pylon.bench.cli", "load", "-qps", f"{qps:g}", "-c", str(STALE_CLIENTS),
                       "-t", f"{duration:g}s", "-p", "50,99", "-json", str(path), url], duration + 60)
    result = json.loads(path.read_text())
    calls = result["DurationHistogram"]["Count"]
    ok = sum(n for code, n in result["RetCodes"].items() if code.startswith("2"))
    p99 = next(p["Value"] for p in result["DurationHistogram"]["Percentiles"] if p["Percentile"] == 99)
    return {"calls": calls, "error_share": (calls - ok) / calls if calls else None, "p99_ms": p99 * 1000,
            "rps": float(result["ActualQPS"]), "codes": result["RetCodes"], "error_kinds": result.get("ErrorKinds", {}),
            "client_busy": cpu / duration}


def stale_scenario(work: Path, reps: int, duration: float) -> list[dict[str, Any]]:
    runs = []
    with contextlib.ExitStack() as stack:
        targets: dict[tuple[str, str], Running] = {}
        for variant, (policy, _) in STALE_VARIANTS.items():
            upstream = stack.enter_context(start_closing_upstream(policy, work / f"upstream-{variant}.log"))
            for proxy in PROXIES:
                targets[variant, proxy] = start_proxy(stack, proxy, work, f"stale-{variant}-{proxy}", upstream.port, 1)
        for rep, order in interleaved(reps):
            for variant, (_, qps) in STALE_VARIANTS.items():
                for proxy in order:
                    row = {"rep": rep, "variant": variant, "proxy": proxy,
                           **pylon_load(targets[variant, proxy].url(), duration, qps, work)}
                    runs.append(row)
                    print(f"  stale rep {rep} {variant:21s} {proxy:5s} errors {row['error_share']:6.1%}  "
                          f"p99 {row['p99_ms']:7.2f} ms  {row['rps']:6.0f} req/s  codes {row['codes']}  "
                          f"client busy {row['client_busy']:.0%}", flush=True)
    return runs


# --------------------------------------------------------------------------- 5,000-connection flood


def downstream_active(target: Running) -> int:
    """The listener's open downstream connections, from the admin stats (same name in pylon and Envoy)."""
    name = f"listener.{target.host}_{target.port}.downstream_cx_active"
    url = f"http://{target.host}:{target.admin_port}/stats?filter=^{name}$"
    with urllib.request.urlopen(url, timeout=5) as reply:
        lines = reply.read().decode().splitlines()
    return sum(int(line.split(": ")[1]) for line in lines if line.startswith(name + ":"))


def settle(target: Running, limit: float = SETTLE_LIMIT_S) -> float:
    """Wait until the last flood's connections are closed, so a run does not inherit them; seconds waited."""
    started = time.monotonic()
    while downstream_active(target) and time.monotonic() - started < limit:
        time.sleep(0.2)
    return time.monotonic() - started


def flood_run(target: Running, duration: float, threads: int) -> dict[str, Any]:
    """One wrk flood; a wrk that never finishes (connections never served) is a failed run, not the end."""
    settled = settle(target)
    before = target.cpu_seconds()
    try:
        w = run_wrk(target.url(), duration=duration, connections=FLOOD_CONNECTIONS, threads=threads,
                    timeout_s=FLOOD_TIMEOUT_S)
    except TargetError as exc:
        return {"failed": str(exc).splitlines()[0], "settle_s": settled, "client_busy": 0.0}
    socket_errors = dict(w.socket_errors)
    timeouts = socket_errors.pop("timeout")
    return {"requests": w.requests, "rps": w.requests_per_sec, "timeouts": timeouts,
            "errors": sum(socket_errors.values()) + w.non_2xx_3xx, "socket_errors": w.socket_errors,
            "non_2xx_3xx": w.non_2xx_3xx, "p99_ms": w.latency_ms.get(99.0), "max_ms": w.max_ms,
            "proxy_cpu_s": target.cpu_seconds() - before, "client_busy": w.cpu_seconds / (duration * threads),
            "settle_s": settled}


def flood_scenario(work: Path, reps: int, duration: float, threads: int, warmup: float) -> list[dict[str, Any]]:
    runs = []
    with contextlib.ExitStack() as stack:
        echo = stack.enter_context(start_echo(free_port(), log_path=work / "echo.log"))
        targets = {proxy: start_proxy(stack, proxy, work, f"flood-{proxy}", echo.port, 2, breakers=True)
                   for proxy in PROXIES}
        for proxy in PROXIES:
            if warmup > 0:
                flood_run(targets[proxy], warmup, threads)
        for rep, order in interleaved(reps):
            for proxy in order:
                row = {"rep": rep, "variant": f"{FLOOD_CONNECTIONS}-connections", "proxy": proxy,
                       **flood_run(targets[proxy], duration, threads)}
                runs.append(row)
                if "failed" in row:
                    print(f"  flood rep {rep} {proxy:5s} FAILED: {row['failed']}", flush=True)
                    continue
                print(f"  flood rep {rep} {proxy:5s} timeouts {row['timeouts']:5d}  errors {row['errors']:5d}  "
                      f"p99 {row['p99_ms']:8.2f} ms  {row['rps']:7.0f} req/s  client busy {row['client_busy']:.0%}  "
                      f"settled in {row['settle_s']:.1f}s", flush=True)
    return runs


# --------------------------------------------------------------------------- summary


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def _ratio(pylon: float | None, envoy: float | None) -> float | None:
    """pylon/Envoy; None when Envoy's figure is 0 or missing (the table then shows both numbers only)."""
    return pylon / envoy if pylon is not None and envoy else None


def summarize(scenario: str, runs: list[dict[str, Any]], metrics: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per variant: each proxy's medians of `metrics`, the pylon/Envoy ratios and the busiest client run."""
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        entry: dict[str, Any] = {"scenario": scenario, "variant": variant, "reps": len(mine) // len(PROXIES),
                                 "client_busy_max": max(r["client_busy"] for r in mine),
                                 "failed_runs": {proxy: sum("failed" in r for r in mine if r["proxy"] == proxy)
                                                 for proxy in PROXIES}}
        for proxy in PROXIES:
            entry[proxy] = {m: _median([r for r in mine if r["proxy"] == proxy], m) for m in (*metrics, "rps")}
        entry["ratio"] = {m: _ratio(entry["pylon"][m], entry["envoy"][m]) for m in metrics}
        rows.append(entry)
    return rows


def _cell(value: float | None, fmt: Callable[[float], str]) -> str:
    return "-" if value is None else fmt(value)


def _times(value: float) -> str:
    return f"{value:.2f}x"


def table(summary: list[dict[str, Any]]) -> str:
    """One line per scenario variant: pylon | Envoy | pylon/Envoy for each metric (medians over reps)."""
    formats: dict[str, Callable[[float], str]] = {
        "error_share": lambda v: f"{v:.1%}", "p99_ms": lambda v: f"{v:.1f}", "timeouts": lambda v: f"{v:.0f}",
        "errors": lambda v: f"{v:.0f}", "rps": lambda v: f"{v:.0f}"}
    lines = ["| scenario | variant | metric | pylon | Envoy | pylon/Envoy | max client busy |",
             "|---|---|---|---:|---:|---:|---:|"]
    for entry in summary:
        for metric in (*entry["ratio"], "rps"):
            fmt = formats[metric]
            lines.append(f"| {entry['scenario']} | {entry['variant']} | {metric} | "
                         f"{_cell(entry['pylon'][metric], fmt)} | {_cell(entry['envoy'][metric], fmt)} | "
                         f"{_cell(entry['ratio'].get(metric), _times)} | {entry['client_busy_max']:.0%} |")
    for entry in summary:
        if any(entry["failed_runs"].values()):
            lines.append(f"note: {entry['scenario']}/{entry['variant']}: runs where the load tool never finished "
                         f"(not in the medians): {entry['failed_runs']}")
    busy = [e for e in summary if e["client_busy_max"] > CLIENT_BUSY_WARNING]
    for entry in busy:
        lines.append(f"note: the load tool was near its limit in {entry['scenario']}/{entry['variant']} "
                     f"({entry['client_busy_max']:.0%} of its CPU capacity): treat throughput and p99 with care")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def raise_open_file_limit() -> int:
    """Soft limit up to the hard one, inherited by every process started here (5,000 sockets each side)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (3)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per stale-scenario run (10)")
    parser.add_argument("--flood-duration", type=float, default=10.0, help="seconds per flood run (10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured flood seconds per proxy first (3)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads for the flood (1)")
    parser.add_argument("--scenarios", default="stale,flood", help="comma-separated subset of stale,flood")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps x 3 s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    serve = parser.add_argument_group("the stale-scenario upstream (started by the benchmark itself)")
    serve.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    serve.add_argument("--port", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--close-after", default="0-0", help=argparse.SUPPRESS)
    serve.add_argument("--idle-close-s", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.flood_duration = 2, 3.0, 3.0
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if set(args.scenarios) - {"stale", "flood"} or args.reps < 1:
        parser.error("--scenarios takes stale and/or flood; --reps must be >= 1")
    return args


def main() -> int:
    args = parse_args()
    if args.serve_upstream:
        low, high = (int(n) for n in args.close_after.split("-"))
        uvloop.run(serve_closing_upstream(args.port, ClosePolicy(low, high, args.idle_close_s)))
        return 0
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": args.reps, "duration_s": args.duration,
            "flood_duration_s": args.flood_duration, "warmup_s": args.warmup, "wrk_threads": args.wrk_threads,
            "cpus": os.cpu_count(), "python": platform.python_version(), "pylon": __version__,
            "nofile": raise_open_file_limit()}
    result: dict[str, Any] = {"meta": meta}
    summary: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-hardening-") as tmp:
            work = Path(tmp)
            if "stale" in args.scenarios:
                print(f"stale upstream connections: pylon load -c {STALE_CLIENTS}, {args.reps} reps x "
                      f"{args.duration:g}s", flush=True)
                result["stale_runs"] = stale_scenario(work, args.reps, args.duration)
                summary += summarize("stale", result["stale_runs"], ("error_share", "p99_ms"))
            if "flood" in args.scenarios:
                print(f"flood: wrk -t{args.wrk_threads} -c{FLOOD_CONNECTIONS} --timeout {FLOOD_TIMEOUT_S:g}s, "
                      f"--concurrency 2, {args.reps} reps x {args.flood_duration:g}s", flush=True)
                result["flood_runs"] = flood_scenario(work, args.reps, args.flood_duration, args.wrk_threads,
                                                      args.warmup)
                summary += summarize("flood", result["flood_runs"], ("timeouts", "errors", "p99_ms"))
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    result["summary"] = summary
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hardening.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(summary))
    print(f"wrote {args.out / 'hardening.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
