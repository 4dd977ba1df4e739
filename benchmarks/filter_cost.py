"""The per-request cost of an HTTP filter, pylon beside Envoy 1.40: the same config with and without it.

Each proxy runs `--concurrency 1` in front of a 1-worker nginx returning a
text/plain body (2,048 bytes by default), loaded by `wrk -t1 -c50` keep-alive.
Variants, each one config file run unchanged by both proxies:

  plain   examples/bench/proxy-plain.yaml (the router alone)
  gzip    the same with envoy.filters.http.compressor (gzip, Envoy's defaults) before the router;
          wrk sends `Accept-Encoding: gzip`, so every response is compressed

The metric is requests per proxy-CPU-second (utime+stime of the proxy's process
tree), as in proxy_vs_envoy.py; the filter's cost per request is the difference
of the CPU microseconds per request with and without it. All four proxies start
up front; repetitions are interleaved and the pylon/Envoy order alternates;
medians of `--reps` (3). Prints a table; `--out FILE` also writes the JSON.

Usage: python benchmarks/filter_cost.py [--reps 3] [--duration 5] [--body 2048] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from pylon.bench.scenario import render_template
from pylon.bench.targets import Running, TargetError, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "bench" / "proxy-plain.yaml"
PROXIES = ("pylon", "envoy")
CONNECTIONS = 50
GZIP_FILTER = {"name": "envoy.filters.http.compressor", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
    "response_direction_config": {},
    "compressor_library": {"name": "text", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip"}}}}
VARIANTS = {"plain": ([], []), "gzip": ([GZIP_FILTER], ["Accept-Encoding: gzip"])}  # filters, wrk headers


def config_text(variant: str, listen: int, admin: int, upstream: int) -> str:
    text = render_template(TEMPLATE.read_text(), {"listen_port": listen, "admin_port": admin,
                                                  "upstream_port": upstream})
    config = yaml.safe_load(text)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [*VARIANTS[variant][0], *hcm["http_filters"]]
    return yaml.safe_dump(config)


def start_all(stack: contextlib.ExitStack, work: Path, upstream: int) -> dict[tuple[str, str], Running]:
    running = {}
    for variant in VARIANTS:
        for proxy in PROXIES:
            listen, admin = free_port(), free_port()
            path = work / f"{variant}-{proxy}.yaml"
            path.write_text(config_text(variant, listen, admin, upstream))
            start = start_pylon_proxy if proxy == "pylon" else start_envoy
            running[variant, proxy] = stack.enter_context(
                start(path, port=listen, admin_port=admin, concurrency=1, log_path=work / f"{variant}-{proxy}.log"))
    return running


def measure(proc: Running, variant: str, duration: float) -> dict[str, Any]:
    before = proc.cpu_seconds()
    w = run_wrk(proc.url(), duration=duration, connections=CONNECTIONS, headers=VARIANTS[variant][1])
    cpu = proc.cpu_seconds() - before
    return {"requests": w.requests, "rps": w.requests_per_sec, "errors": w.errors + w.non_2xx_3xx,
            "proxy_cpu_s": cpu, "req_per_proxy_cpu_s": w.requests / cpu if cpu else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--body", type=int, default=2048, help="upstream body bytes (2048)")
    parser.add_argument("--out", type=Path, help="also write the runs and medians as JSON here")
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-filter-cost-") as tmp, contextlib.ExitStack() as stack:
            nginx = stack.enter_context(start_nginx(free_port(), body_size=args.body))
            proxies = start_all(stack, Path(tmp), nginx.port)
            for (variant, _), proc in proxies.items():
                run_wrk(proc.url(), duration=1.0, connections=CONNECTIONS, headers=VARIANTS[variant][1])
            for rep in range(1, args.reps + 1):
                for variant in VARIANTS:
                    for proxy in PROXIES if rep % 2 else PROXIES[::-1]:
                        row = {"rep": rep, "variant": variant, "proxy": proxy,
                               **measure(proxies[variant, proxy], variant, args.duration)}
                        runs.append(row)
                        print(f"  rep {rep} {variant:5s} {proxy:5s} {row['rps']:8.0f} req/s "
                              f"{row['req_per_proxy_cpu_s'] or 0:8.0f} req/proxy-CPU-s errors {row['errors']}",
                              flush=True)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    medians = {f"{variant}/{proxy}": statistics.median(r["req_per_proxy_cpu_s"] for r in runs
                                                      if r["variant"] == variant and r["proxy"] == proxy)
               for variant in VARIANTS for proxy in PROXIES}
    print(f"\nwrk -t1 -c{CONNECTIONS} keep-alive, {args.reps} x {args.duration:g} s, nginx body {args.body} B "
          f"text/plain, --concurrency 1; medians\n")
    print("| proxy | plain req/CPU-s | gzip req/CPU-s | µs CPU/req plain | µs CPU/req gzip | gzip filter µs/req |")
    print("|---|---:|---:|---:|---:|---:|")
    for proxy in PROXIES:
        plain, gz = medians[f"plain/{proxy}"], medians[f"gzip/{proxy}"]
        print(f"| {proxy} | {plain:.0f} | {gz:.0f} | {1e6 / plain:.1f} | {1e6 / gz:.1f} "
              f"| {1e6 / gz - 1e6 / plain:.1f} |")
    if args.out:
        args.out.write_text(json.dumps({"medians": medians, "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
