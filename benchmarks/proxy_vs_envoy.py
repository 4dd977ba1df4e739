"""pylon proxy vs Envoy 1.40: the same Envoy config, the same upstream, the same load, side by side.

Both proxies run `--concurrency 1` in front of a 1-worker nginx returning a
100-byte body, loaded by `wrk -t1 -c50 -d<T>s` (keep-alive). Four variants,
all in one run, each with one config file run unchanged by both proxies
(templates in examples/bench/):

  plain        stats on, no access log               goal: pylon >= 1.25x Envoy
  json-log     JSON access log to a file (10 fields)   goal: pylon >= 1.0x
  tls13        TLS 1.3 on the downstream listener      goal: pylon >= 1.0x
               (keep-alive: many requests per connection, as between sidecars)
  plain-close  plain, each request sending `Connection: close`: a new TCP
               connection per request (accept, set-up, teardown); no goal

The metric that is stable on this 2-core machine is **requests per
proxy-CPU-second** (utime+stime of the proxy's process tree, from /proc),
since the proxy, nginx and wrk share the cores; req/s and latency are shown
too. wrk's own CPU per run is recorded to show it was not the limit. All six
proxies start up front; repetitions are interleaved across variants and the
pylon/Envoy order alternates, so drifts hit everyone alike. Nothing is pinned.

Usage: python benchmarks/proxy_vs_envoy.py [--reps 5] [--duration 10] [--quick]
Writes benchmarks/results/proxy_vs_envoy.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pylon import __version__
from pylon.bench.host import describe, host_facts
from pylon.bench.paired import goal_text, paired_spread, spread_text
from pylon.bench.scenario import render_template
from pylon.bench.targets import (
    Running, TargetError, find_envoy, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy,
)
from pylon.identity.certs import make_test_pki

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "examples" / "bench"
VARIANTS = {  # name: (config template, scheme, goal for pylon/Envoy requests per proxy-CPU-second, if any)
    "plain": ("proxy-plain.yaml", "http", 1.25),
    "json-log": ("proxy-json-log.yaml", "http", 1.0),
    "tls13": ("proxy-tls.yaml", "https", 1.0),
    "plain-close": ("proxy-plain.yaml", "http", None),
}
#: what the load sends besides wrk's request, per variant
HEADERS_OF = {"plain-close": ("Connection: close",)}
PROXIES = ("pylon", "envoy")
BODY_SIZE = 100
CONNECTIONS = 50


def envoy_version() -> str:
    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return match.group(1) if match else out.strip()


def start_proxies(stack: contextlib.ExitStack, work: Path, upstream_port: int,
                  variants: list[str]) -> dict[tuple[str, str], Running]:
    pki = make_test_pki(work / "pki")
    running: dict[tuple[str, str], Running] = {}
    for variant in variants:
        template = (TEMPLATES / VARIANTS[variant][0]).read_text()
        for proxy in PROXIES:
            listen, admin = free_port(), free_port()
            config = work / f"{variant}-{proxy}.yaml"
            config.write_text(render_template(template, {
                "listen_port": listen, "admin_port": admin, "upstream_port": upstream_port, "workdir": work,
                "server_cert": pki.server_ecdsa.cert, "server_key": pki.server_ecdsa.key, "ca_cert": pki.ca.cert,
            }))
            start = start_pylon_proxy if proxy == "pylon" else start_envoy
            running[variant, proxy] = stack.enter_context(
                start(config, port=listen, admin_port=admin, concurrency=1, log_path=work / f"{variant}-{proxy}.log"))
    return running


def measure(proc: Running, nginx: Running, url: str, duration: float, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    proxy_before, nginx_before = proc.cpu_seconds(), nginx.cpu_seconds()
    w = run_wrk(url, duration=duration, connections=CONNECTIONS, threads=1, headers=headers)
    proxy_cpu, nginx_cpu = proc.cpu_seconds() - proxy_before, nginx.cpu_seconds() - nginx_before
    return {
        "requests": w.requests, "duration_s": w.duration_s, "rps": w.requests_per_sec,
        "p50_ms": w.latency_ms.get(50.0), "p99_ms": w.latency_ms.get(99.0), "p999_ms": w.latency_ms.get(99.9),
        "max_ms": w.max_ms, "errors": w.errors, "socket_errors": w.socket_errors, "non_2xx_3xx": w.non_2xx_3xx,
        "proxy_cpu_s": proxy_cpu, "req_per_proxy_cpu_s": w.requests / proxy_cpu if proxy_cpu else None,
        "nginx_cpu_s": nginx_cpu, "wrk_cpu_s": w.cpu_seconds,
    }


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    def med(rows: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None

    summary: dict[str, Any] = {}
    for variant in variants:
        entry: dict[str, Any] = {}
        for proxy in PROXIES:
            rows = [r for r in runs if r["variant"] == variant and r["proxy"] == proxy]
            eff = med(rows, "req_per_proxy_cpu_s")
            entry[proxy] = {
                "reps": len(rows), "rps": med(rows, "rps"), "p50_ms": med(rows, "p50_ms"), "p99_ms": med(rows, "p99_ms"),
                "req_per_proxy_cpu_s": eff, "cpu_us_per_request": 1e6 / eff if eff else None,
                "wrk_cpu_s": med(rows, "wrk_cpu_s"), "nginx_cpu_s": med(rows, "nginx_cpu_s"),
                "errors": sum(r["errors"] for r in rows),
            }
        p, e = entry["pylon"]["req_per_proxy_cpu_s"], entry["envoy"]["req_per_proxy_cpu_s"]
        entry["ratio_pylon_over_envoy"] = p / e if p and e else None
        entry["paired"] = paired_spread(runs, variant, "req_per_proxy_cpu_s")
        entry["ratio_rps_pylon_over_envoy"] = (entry["pylon"]["rps"] / entry["envoy"]["rps"]
                                               if entry["envoy"]["rps"] else None)
        entry["goal"] = VARIANTS[variant][2]
        summary[variant] = entry
    return summary


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    def f(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        f"# pylon proxy vs Envoy {meta['envoy_version']}",
        "",
        f"{meta['reps']} interleaved repetitions x {meta['duration_s']:g} s, `wrk -t1 -c{CONNECTIONS}` keep-alive "
        "(plain-close: `Connection: close`, a new connection per request), "
        f"both proxies `--concurrency 1`, 1-worker nginx upstream with a {BODY_SIZE}-byte body; medians. "
        f"{meta['cpus']} CPUs, nothing pinned. Run at {meta['started']}.",
        "",
        f"Host: {describe(meta['host'])}.",
        "",
        "| variant | proxy | req/s | p50 ms | p99 ms | req per proxy-CPU-s | µs CPU/req | wrk CPU s/run "
        "| errors | pylon/Envoy (req/CPU-s) | per-rep ratios: median (range) | goal |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for variant, entry in summary.items():
        for proxy in PROXIES:
            s = entry[proxy]
            ratio = paired = goal = ""
            if proxy == "pylon":
                ratio = f"**{f(entry['ratio_pylon_over_envoy'], '.3f')}**"
                paired = spread_text(entry["paired"])
                goal = goal_text(entry) if entry["goal"] is not None else "(no goal)"
            lines.append(f"| {variant} | {proxy} | {f(s['rps'], '.0f')} | {f(s['p50_ms'], '.2f')} | "
                         f"{f(s['p99_ms'], '.2f')} | {f(s['req_per_proxy_cpu_s'], '.0f')} | "
                         f"{f(s['cpu_us_per_request'], '.1f')} | {f(s['wrk_cpu_s'], '.2f')} | {s['errors']} | "
                         f"{ratio} | {paired} | {goal} |")
    lines += ["", "req/s and latency depend on how the 2 cores are shared by proxy, nginx and wrk; "
              "requests per proxy-CPU-second is the comparable number. A goal is met when both the ratio of the "
              "medians and the median of the per-rep ratios reach it (pylon.bench.paired).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions (5)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured wrk seconds per proxy first (2)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps x 3 s, 1 s warm-up")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {list(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.warmup = 2, 3.0, 1.0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or args.reps < 1 or args.duration <= 0:
        parser.error(f"unknown variant(s) {unknown}" if unknown else "--reps and --duration must be positive")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": args.reps, "duration_s": args.duration,
            "connections": CONNECTIONS, "body_size": BODY_SIZE, "cpus": os.cpu_count(),
            "python": platform.python_version(), "pylon": __version__, "envoy_version": envoy_version(),
            "host": host_facts()}
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-vs-envoy-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            nginx = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
            proxies = start_proxies(stack, work, nginx.port, variants)
            scheme = {v: VARIANTS[v][1] for v in variants}
            for (variant, proxy), proc in proxies.items():
                run_wrk(proc.url(scheme=scheme[variant]), duration=args.warmup, connections=CONNECTIONS,
                        headers=HEADERS_OF.get(variant, ()))
            print(f"{len(proxies)} proxies warm; {args.reps} reps x {args.duration:g}s, wrk -t1 -c{CONNECTIONS}",
                  flush=True)
            for rep in range(1, args.reps + 1):
                for variant in variants:
                    order = PROXIES if rep % 2 else PROXIES[::-1]
                    for proxy in order:
                        proc = proxies[variant, proxy]
                        row = {"rep": rep, "variant": variant, "proxy": proxy,
                               **measure(proc, nginx, proc.url(scheme=scheme[variant]), args.duration,
                                         HEADERS_OF.get(variant, ()))}
                        runs.append(row)
                        print(f"  rep {rep} {variant:8s} {proxy:5s} {row['rps']:8.0f} req/s  "
                              f"{row['req_per_proxy_cpu_s'] or 0:8.0f} req/proxy-CPU-s  p99 {row['p99_ms']:.2f} ms  "
                              f"wrk CPU {row['wrk_cpu_s']:.2f}s  errors {row['errors']}", flush=True)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(runs, variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_vs_envoy.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                                             indent=2) + "\n")
    table = markdown(summary, meta)
    (args.out / "proxy_vs_envoy.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
