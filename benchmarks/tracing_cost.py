"""What HCM tracing costs per request, pylon next to Envoy: tracing off, and OpenTelemetry (OTLP/HTTP) on.

Both proxies run the bench template (one listener, one cluster, `--concurrency 1`) in front of one 1-worker
nginx; the "otel" variant adds `tracing` with the OpenTelemetry provider, every request sampled
(random_sampling 100 %), exporting OTLP/HTTP to a second nginx that answers every POST with 200 (a collector
that costs nothing, so the proxies' own export work is what is measured). Load: `wrk -t1 -c50` keep-alive,
in interleaved repetitions; the metric is requests per proxy-CPU-second (medians), wrk's CPU recorded to
show it was not the limit. Run it alone (`flock /tmp/pylon-bench.lock`): the machine's other load moves it.

Usage: python benchmarks/tracing_cost.py [--reps 3] [--duration 6] [--out DIR]
Writes DIR/tracing_cost.{json,md} (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from pylon.bench.scenario import render_template
from pylon.bench.targets import Running, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "bench" / "proxy-plain.yaml"
CONNECTIONS = 50
OTEL = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"


def render(variant: str, listen: int, admin: int, upstream: int, collector: int) -> str:
    """The bench template, with OpenTelemetry tracing (every request) for the "otel" variant."""
    text = render_template(TEMPLATE.read_text(), {"listen_port": listen, "admin_port": admin,
                                                  "upstream_port": upstream})
    if variant == "off":
        return text
    config = yaml.safe_load(text)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["tracing"] = {"random_sampling": {"value": 100}, "provider": {
        "name": "envoy.tracers.opentelemetry", "typed_config": {
            "@type": OTEL, "service_name": "bench",
            "http_service": {"http_uri": {"uri": "http://collector/v1/traces", "cluster": "collector",
                                          "timeout": "1s"}}}}}
    config["static_resources"]["clusters"].append({
        "name": "collector", "connect_timeout": "1s", "type": "STATIC", "load_assignment": {
            "cluster_name": "collector", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": "127.0.0.1", "port_value": collector}}}}]}]}})
    return yaml.safe_dump(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    variants, sides = ("off", "otel"), ("pylon", "envoy")
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="pylon-tracing-cost-") as tmp:
        work = Path(tmp)
        upstream, collector = free_port(), free_port()
        stack.enter_context(start_nginx(upstream))
        stack.enter_context(start_nginx(collector, body_size=0))
        proxies: dict[tuple[str, str], Running] = {}
        for variant in variants:
            for side in sides:
                listen, admin = free_port(), free_port()
                config = work / f"{variant}-{side}.yaml"
                config.write_text(render(variant, listen, admin, upstream, collector))
                start = start_pylon_proxy if side == "pylon" else start_envoy
                proxies[variant, side] = stack.enter_context(
                    start(config, port=listen, admin_port=admin, log_path=work / f"{variant}-{side}.log"))
        for rep in range(args.reps):
            for variant in variants:
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    proc = proxies[variant, side]
                    before = proc.cpu_seconds()
                    w = run_wrk(f"http://127.0.0.1:{proc.port}/", duration=args.duration, connections=CONNECTIONS)
                    cpu = proc.cpu_seconds() - before
                    runs.append({"variant": variant, "side": side, "rep": rep, "requests": w.requests,
                                 "rps": w.requests_per_sec, "errors": w.errors, "proxy_cpu_s": cpu,
                                 "req_per_proxy_cpu_s": w.requests / cpu if cpu else None,
                                 "wrk_cpu_s": w.cpu_seconds, "p99_ms": w.latency_ms.get(99.0)})
                    print(f"rep {rep + 1} {variant:5} {side:6} {runs[-1]['req_per_proxy_cpu_s'] or 0:8.0f} req/CPU-s",
                          flush=True)
    summary: dict[str, Any] = {}
    for side in sides:
        entry = {}
        for variant in variants:
            rows = [r for r in runs if r["variant"] == variant and r["side"] == side]
            entry[variant] = {key: statistics.median(r[key] for r in rows)
                              for key in ("req_per_proxy_cpu_s", "rps", "p99_ms", "wrk_cpu_s")}
            entry[variant]["errors"] = sum(r["errors"] for r in rows)
        entry["on_over_off"] = entry["otel"]["req_per_proxy_cpu_s"] / entry["off"]["req_per_proxy_cpu_s"]
        entry["added_us_per_request"] = 1e6 * (1 / entry["otel"]["req_per_proxy_cpu_s"]
                                               - 1 / entry["off"]["req_per_proxy_cpu_s"])
        summary[side] = entry
    meta = {"reps": args.reps, "duration_s": args.duration, "cpus": os.cpu_count(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load": f"wrk -t1 -c{CONNECTIONS}"}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracing_cost.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    lines = ["# Tracing cost: OpenTelemetry (OTLP/HTTP, every request sampled) vs tracing off", "",
             f"{args.reps} interleaved repetitions x {args.duration:g} s, `wrk -t1 -c{CONNECTIONS}` keep-alive, "
             f"`--concurrency 1`, 1-worker nginx upstream and collector; medians; {meta['cpus']} CPUs; "
             f"{meta['started']}.", "",
             "| proxy | tracing | req per proxy-CPU-s | req/s | p99 ms | wrk CPU s/run | errors | on/off | "
             "added CPU µs/req |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for side, entry in summary.items():
        for variant in variants:
            s = entry[variant]
            extra = (f"| **{entry['on_over_off']:.3f}** | {entry['added_us_per_request']:.1f} |" if variant == "otel"
                     else "| | |")
            lines.append(f"| {side} | {variant} | {s['req_per_proxy_cpu_s']:.0f} | {s['rps']:.0f} | {s['p99_ms']:.2f} "
                         f"| {s['wrk_cpu_s']:.2f} | {s['errors']} {extra}")
    (args.out / "tracing_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
