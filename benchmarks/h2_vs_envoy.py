"""HTTP/2 and gRPC through pylon and Envoy 1.40, side by side: issue 16's figures.

Three variants, both proxies `--concurrency 1`, the same rendered config for each:
- `h2c-get`: `h2load -c10 -m10` GETs over h2c (prior knowledge) to the proxy, which forwards them over HTTP/1.1 to
  a 1-worker nginx (100-byte body). Metric: requests per proxy-CPU-second.
- `grpc-unary`: `h2load -c10 -m10` gRPC unary calls (POST, `application/grpc`, one length-prefixed message) over
  h2c to the proxy, which forwards them over h2c (the cluster's HttpProtocolOptions explicit HTTP/2) to a grpcio
  server echoing each message. h2load counts HTTP statuses only, so each run also checks that every call reached
  the upstream (the proxy's `cluster.grpc.upstream_rq_total` grew by h2load's count: no local reply is counted
  as a call). Metric: calls per proxy-CPU-second.
- `idle-memory`: N idle HTTP/2 connections (preface and SETTINGS exchanged, then nothing) held open to a proxy
  started for that measurement alone (a process that held connections before keeps their memory); the proxy
  process tree's RSS before and after, per connection, median over the repetitions.
Interleaved repetitions, alternating which proxy goes first; medians. h2load's own CPU is recorded to show it was
not the limit.

Usage: python benchmarks/h2_vs_envoy.py [--reps 5] [--duration 10] [--variants h2c-get,grpc-unary,idle-memory]
       [--idle 1000] [--quick]
Writes benchmarks/results/h2_vs_envoy.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from pylon import __version__
from pylon.bench.host import describe, host_facts
from pylon.bench.paired import goal_text, paired_spread, spread_text
from pylon.bench.procfs import tree_rss
from pylon.bench.targets import (
    Running, TargetError, find_envoy, free_port, run_h2load, start_envoy, start_nginx, start_process,
    start_pylon_proxy,
)

ROOT = Path(__file__).resolve().parent.parent
PROXIES = ("pylon", "envoy")
VARIANTS = {"h2c-get": 1.0, "grpc-unary": 1.0, "idle-memory": None}  # name: goal for pylon/Envoy per CPU-s
BODY_SIZE = 100
CLIENTS, STREAMS = 10, 10
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: One gRPC unary request body: a length-prefixed message (fgrpc.PingMessage-shaped: seq 1, payload "ping").
GRPC_MESSAGE = b"\x08\x01\x1a\x04ping"
GRPC_BODY = b"\x00" + len(GRPC_MESSAGE).to_bytes(4, "big") + GRPC_MESSAGE
GRPC_PATH = "/fgrpc.PingServer/Ping"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

# The upstream for grpc-unary: grpcio, a generic handler answering every unary call with the request's bytes.
GRPC_SERVER = textwrap.dedent("""
    import sys, threading
    from concurrent import futures
    import grpc
    handler = grpc.method_handlers_generic_handler("fgrpc.PingServer", {
        "Ping": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
""")


def bootstrap(listen: int, admin: int, cluster: dict[str, Any]) -> dict[str, Any]:
    hcm = {"@type": HCM, "stat_prefix": "ingress", "codec_type": "AUTO",
           "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
               {"match": {"prefix": "/"}, "route": {"cluster": cluster["name"], "timeout": "10s"}}]}]},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
            "static_resources": {
                "listeners": [{"name": "ingress", "address": {"socket_address": {"address": "127.0.0.1",
                                                                                 "port_value": listen}},
                               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                               "typed_config": hcm}]}]}],
                "clusters": [cluster]}}


def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": name, "connect_timeout": "1s", "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}
    if http2:
        config["typed_extension_protocol_options"] = {OPTIONS: {"@type": f"type.googleapis.com/{OPTIONS}",
                                                                "explicit_http_config": {"http2_protocol_options": {}}}}
    return config


def start_proxy(stack: contextlib.ExitStack, work: Path, proxy: str, variant: str, upstream: dict[str, Any]) -> Running:
    listen, admin = free_port(), free_port()
    path = work / f"{variant}-{proxy}.yaml"
    path.write_text(yaml.safe_dump(bootstrap(listen, admin, upstream)))
    start = start_pylon_proxy if proxy == "pylon" else start_envoy
    return stack.enter_context(start(path, port=listen, admin_port=admin, concurrency=1,
                                      log_path=work / f"{variant}-{proxy}.log"))


def start_grpc_server(work: Path) -> Running:
    port = free_port()
    script = work / "grpc_echo.py"
    script.write_text(GRPC_SERVER)
    return start_process("grpc echo", [sys.executable, str(script), str(port)], port=port,
                         log_path=work / "grpc_echo.log")


def stat(proc: Running, name: str) -> int:
    text = httpx.get(f"http://127.0.0.1:{proc.admin_port}/stats?filter=^{name}$", timeout=10).text
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    return 0


def load(proc: Running, variant: str, duration: float) -> dict[str, Any]:
    if variant == "grpc-unary":
        body = Path(tempfile.mkstemp(prefix="grpc-body-")[1])
        body.write_bytes(GRPC_BODY)
        extra = ["-m", str(STREAMS), "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = proc.url(GRPC_PATH)
    else:
        body, extra, url = None, ["-m", str(STREAMS)], proc.url("/")
    upstream_before = stat(proc, "cluster.grpc.upstream_rq_total") if variant == "grpc-unary" else 0
    cpu_before = proc.cpu_seconds()
    try:
        result = run_h2load(url, duration=duration, clients=CLIENTS, http1=False, extra_args=extra)
    finally:
        if body is not None:
            body.unlink()
    cpu = proc.cpu_seconds() - cpu_before
    row = {"requests": result.requests, "ok": result.status_2xx, "failed": result.failed + result.errored,
           "rps": result.requests_per_sec, "mean_ms": result.mean_ms, "proxy_cpu_s": cpu,
           "req_per_proxy_cpu_s": result.requests / cpu if cpu else None, "h2load_cpu_s": result.cpu_seconds}
    if variant == "grpc-unary":
        reached = stat(proc, "cluster.grpc.upstream_rq_total") - upstream_before
        row["upstream_calls"] = reached
        if reached < result.status_2xx:
            raise TargetError(f"{proc.name}: h2load saw {result.status_2xx} 200s but only {reached} calls reached the "
                              "gRPC upstream (local replies counted as calls)")
    return row


def idle_memory(proc: Running, count: int) -> dict[str, Any]:
    """RSS of the proxy tree with `count` idle HTTP/2 connections open, against none."""
    before = tree_rss({"p": proc.pid})["p"][0]
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            sock.sendall(H2_PREFACE + EMPTY_SETTINGS)
            socks.append(sock)
        for sock in socks:  # each connection answered with its SETTINGS: the proxy holds its session
            if not sock.recv(9):
                raise TargetError(f"{proc.name}: an idle HTTP/2 connection was closed")
        time.sleep(1.0)  # let allocations settle (Envoy's per-connection buffers, Python's arenas)
        after = tree_rss({"p": proc.pid})["p"][0]
    finally:
        for sock in socks:
            sock.close()
    return {"connections": count, "rss_before_mib": before, "rss_after_mib": after,
            "kib_per_connection": (after - before) * 1024 / count}


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for variant in variants:
        entry: dict[str, Any] = {}
        key = "kib_per_connection" if variant == "idle-memory" else "req_per_proxy_cpu_s"
        for proxy in PROXIES:
            rows = [r for r in runs if r["variant"] == variant and r["proxy"] == proxy]
            values = [r[key] for r in rows if r.get(key) is not None]
            entry[proxy] = {"reps": len(rows), key: statistics.median(values) if values else None}
            if variant != "idle-memory":
                entry[proxy]["rps"] = statistics.median(r["rps"] for r in rows)
                entry[proxy]["h2load_cpu_s"] = statistics.median(r["h2load_cpu_s"] for r in rows)
                entry[proxy]["failed"] = sum(r["failed"] for r in rows)
        p, e = entry["pylon"][key], entry["envoy"][key]
        entry["ratio_pylon_over_envoy"] = p / e if p and e else None
        entry["paired"] = paired_spread(runs, variant, key)
        entry["goal"] = VARIANTS[variant]
        summary[variant] = entry
    return summary


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    def f(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"# HTTP/2 and gRPC: pylon vs Envoy {meta['envoy_version']}", "",
             f"{meta['reps']} interleaved repetitions x {meta['duration_s']:g} s; `h2load -c{CLIENTS} -m{STREAMS}` over "
             f"h2c; both proxies `--concurrency 1`; medians. {meta['cpus']} CPUs, shared, nothing pinned. "
             f"Run at {meta['started']}. Made by `python benchmarks/h2_vs_envoy.py`.", "",
             f"Host: {describe(meta['host'])}.", "",
             "| variant | proxy | req/s | req per proxy-CPU-s | h2load CPU s/run | failed | pylon/Envoy "
             "| per-rep ratios: median (range) | goal |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for variant, entry in summary.items():
        if variant == "idle-memory":
            continue
        for proxy in PROXIES:
            s = entry[proxy]
            ratio = paired = goal = ""
            if proxy == "pylon":
                ratio = f"**{f(entry['ratio_pylon_over_envoy'], '.3f')}**"
                paired = spread_text(entry["paired"])
                goal = goal_text(entry)
            lines.append(f"| {variant} | {proxy} | {f(s['rps'], '.0f')} | {f(s['req_per_proxy_cpu_s'], '.0f')} | "
                         f"{f(s['h2load_cpu_s'], '.2f')} | {s['failed']} | {ratio} | {paired} | {goal} |")
    if "idle-memory" in summary:
        entry = summary["idle-memory"]
        lines += ["", f"Memory per idle HTTP/2 connection ({meta['idle']} connections held open, proxy tree RSS "
                  "after minus before): "
                  f"pylon {f(entry['pylon']['kib_per_connection'], '.1f')} KiB, "
                  f"Envoy {f(entry['envoy']['kib_per_connection'], '.1f')} KiB "
                  f"(pylon/Envoy {f(entry['ratio_pylon_over_envoy'], '.2f')})."]
    lines += ["", "A goal is met when both the ratio of the medians and the median of the per-rep ratios reach it "
              "(pylon.bench.paired): on shared cores a busy minute moves both proxies' figures, which only the "
              "per-rep ratio cancels."]
    if "grpc-unary" in summary:
        lines += ["", "grpc-unary: every call h2load counted reached the gRPC upstream (checked per run by the proxy's "
                  "cluster.grpc.upstream_rq_total)."]
    return "\n".join(lines) + "\n"


def envoy_version() -> str:
    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return match.group(1) if match else out.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per h2load run (10)")
    parser.add_argument("--idle", type=int, default=1000, help="idle connections for idle-memory (1000)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 reps x 3 s, 200 idle connections")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.idle = 2, 3.0, 200
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants) or args.reps < 1 or args.duration <= 0 or args.idle < 1:
        parser.error(f"variants are {list(VARIANTS)}; --reps, --duration and --idle must be positive")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": args.reps, "duration_s": args.duration,
            "idle": args.idle, "cpus": os.cpu_count(), "python": platform.python_version(), "pylon": __version__,
            "envoy_version": envoy_version(), "host": host_facts()}
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-h2-vs-envoy-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            upstreams: dict[str, dict[str, Any]] = {}
            if "h2c-get" in variants or "idle-memory" in variants:
                nginx = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
                upstreams["h2c-get"] = upstreams["idle-memory"] = cluster("web", nginx.port, http2=False)
            if "grpc-unary" in variants:
                grpc_server = stack.enter_context(start_grpc_server(work))
                upstreams["grpc-unary"] = cluster("grpc", grpc_server.port, http2=True)
            proxies = {(v, p): start_proxy(stack, work, p, v, upstreams[v])
                       for v in variants if v != "idle-memory" for p in PROXIES}
            for (variant, _), proc in proxies.items():
                load(proc, variant, 1.0)  # warm-up, and the gRPC path checked once
            for rep in range(1, args.reps + 1):
                for variant in variants:
                    for proxy in (PROXIES if rep % 2 else PROXIES[::-1]):
                        if variant == "idle-memory":
                            with contextlib.ExitStack() as fresh:
                                measured = idle_memory(start_proxy(fresh, work, proxy, variant, upstreams[variant]),
                                                       args.idle)
                        else:
                            measured = load(proxies[variant, proxy], variant, args.duration)
                        runs.append({"rep": rep, "variant": variant, "proxy": proxy, **measured})
                        print(f"  rep {rep} {variant:11s} {proxy:5s} " + ", ".join(
                            f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in measured.items()),
                            flush=True)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    summary = summarize(runs, variants)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "h2_vs_envoy.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                                          indent=2) + "\n")
    table = markdown(summary, meta)
    (args.out / "h2_vs_envoy.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
