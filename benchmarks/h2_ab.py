"""pylon against an earlier pylon under h2_vs_envoy.py's HTTP/2 loads: what a change to the HTTP/2 path saves.

h2_vs_envoy.py compares with Envoy; a change to the HTTP/2 path is measured against the revision before it, so the
machine's drift between runs (2 shared CPUs) does not hide it. The same configs, upstreams and loads as
h2_vs_envoy.py (`h2load -c10 -m10` h2c GETs to an HTTP/1.1 nginx; gRPC unary calls to a grpcio server over h2c),
this tree's proxy and `--baseline REV`'s (a temporary worktree, as proxy_ab.py), interleaved repetitions
alternating which goes first, medians. Metric: requests per proxy-CPU-second, and this tree's over the baseline's.

Usage: python benchmarks/h2_ab.py --baseline REV [--reps 5] [--duration 6] [--variants h2c-get,grpc-unary]
Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from h2_vs_envoy import BODY_SIZE, bootstrap, cluster, load, start_grpc_server
from proxy_ab import ROOT, baseline_tree, start_proxy
from pylon.bench.paired import paired_spread, spread_text
from pylon.bench.targets import TargetError, free_port, start_nginx

VARIANTS = ("h2c-get", "grpc-unary")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. HEAD~1)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per h2load run (6)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if any(v not in VARIANTS for v in variants) or args.reps < 1 or args.duration <= 0:
        parser.error(f"variants are {list(VARIANTS)}; --reps and --duration must be positive")
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-h2-ab-") as tmp, contextlib.ExitStack() as stack:
            work = Path(tmp)
            trees = {"this": ROOT, "baseline": stack.enter_context(baseline_tree(args.baseline, sys.executable))}
            upstreams = {}
            if "h2c-get" in variants:
                nginx = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
                upstreams["h2c-get"] = cluster("web", nginx.port, http2=False)
            if "grpc-unary" in variants:
                upstreams["grpc-unary"] = cluster("grpc", stack.enter_context(start_grpc_server(work)).port,
                                                  http2=True)
            proxies = {}
            for variant in variants:
                for name, tree in trees.items():
                    port, admin = free_port(), free_port()
                    config = work / f"{variant}-{name}.yaml"
                    config.write_text(yaml.safe_dump(bootstrap(port, admin, upstreams[variant])))
                    proxies[variant, name] = stack.enter_context(
                        start_proxy(sys.executable, tree, config, port, admin, work / f"{variant}-{name}.log"))
                    load(proxies[variant, name], variant, 1.0)  # warm-up
            for rep in range(1, args.reps + 1):
                for variant in variants:
                    for name in (("this", "baseline") if rep % 2 else ("baseline", "this")):
                        row = load(proxies[variant, name], variant, args.duration)
                        runs.append({"rep": rep, "variant": variant, "side": name, **row})
                        print(f"  rep {rep} {variant:10s} {name:8s} req/proxy-CPU-s {row['req_per_proxy_cpu_s']:.0f} "
                              f"failed {row['failed']}", flush=True)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    print(f"\n{args.reps} interleaved reps x {args.duration:g} s, medians; this tree vs {args.baseline}")
    print("| variant | this | baseline | this/baseline | per-rep ratios: median (range) |\n|---|---:|---:|---:|---:|")
    for variant in variants:
        this, base = (statistics.median(r["req_per_proxy_cpu_s"] for r in runs
                                         if r["variant"] == variant and r["side"] == n) for n in ("this", "baseline"))
        paired = paired_spread(runs, variant, "req_per_proxy_cpu_s", numerator="this", denominator="baseline",
                               side="side")
        print(f"| {variant} | {this:.0f} | {base:.0f} | **{this / base:.3f}** | {spread_text(paired)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
