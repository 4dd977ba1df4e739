"""Regex route tables: pylon with each regex engine vs Envoy 1.40, as the table grows.

Configs have N = 10, 100, 1,000, 5,000 `safe_regex` routes (`/svc<i>/[a-z]+/[0-9]+`)
with `direct_response` (no upstream: the route lookup is the work). Two request
paths: one matching the LAST route, one matching NO route (404 NR; Envoy tries
every route for it). Measured, all in one run:

- requests per proxy-CPU-second under `wrk -t1 -c50` (short runs, interleaved
  across targets, median of --reps), for pylon with google_re2, hyperscan and
  Python re, and for Envoy (`--concurrency 1` each). This is the stable metric
  on a 2-core machine where proxy and wrk share the cores;
- pylon's per-lookup µs (`RouteTable.match`, in-process, warm), build time and
  RSS added by building the table, each engine measured in a fresh subprocess;
  for Hyperscan both a cold build (empty cache: the table serves with RE2::Set
  at once and the build thread compiles the database; lookups are measured once
  it serves, "ready") and a warm one (the database loaded from the on-disk
  cache, what workers and restarts do);
- each proxy's start-up time (until /ready) and its process-tree RSS after load.

Goals (issue 5): pylon at 5,000 routes >= 0.9x its own rate at 10 routes, and
>= 5x Envoy's rate at 5,000.

Usage: python benchmarks/regex_routes.py [--reps 3] [--duration 2] [--sizes 10,100,1000,5000]
Writes benchmarks/results/regex_routes.{json,md} (or --out DIR).
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

import yaml

from pylon.bench.targets import Running, find_envoy, free_port, run_wrk, start_envoy, start_pylon_proxy

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {  # short name: (engine name, typed_config @type)
    "re2": ("envoy.regex_engines.google_re2", "type.googleapis.com/envoy.extensions.regex_engines.v3.GoogleRE2"),
    "hyperscan": ("envoy.regex_engines.hyperscan",
                  "type.googleapis.com/envoy.extensions.regex_engines.hyperscan.v3alpha.Hyperscan"),
    "re": ("pylon.regex_engines.re", "type.googleapis.com/pylon.extensions.regex_engines.v1.PythonRe"),
}
TARGETS = [f"pylon-{e}" for e in ENGINES] + ["envoy"]
CONNECTIONS = 50


def route_config(n: int) -> dict[str, Any]:
    routes = [{"name": f"r{i}", "match": {"safe_regex": {"regex": f"/svc{i}/[a-z]+/[0-9]+"}},
               "direct_response": {"status": 200, "body": {"inline_string": "ok"}}} for i in range(n)]
    return {"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}


def paths(n: int) -> dict[str, str]:
    return {"last": f"/svc{n - 1}/items/42", "none": "/nomatch/items/42"}


def bootstrap(n: int, port: int, admin_port: int, engine: str | None) -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "route_config": route_config(n),
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    config: dict[str, Any] = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [{
            "name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}], "clusters": []},
    }
    if engine is not None:
        name, type_url = ENGINES[engine]
        config["default_regex_engine"] = {"name": name, "typed_config": {"@type": type_url}}
    return config


# --------------------------------------------------------------------------- in-process micro-benchmark


def micro_one(engine: str, n: int, cache_dir: str) -> dict[str, Any]:
    """Run in a fresh subprocess: build time, RSS added, per-lookup µs for one engine and size."""
    import msgspec

    from pylon import regex
    from pylon.config.envoy import RouteConfiguration, dec_hook
    from pylon.proxy.headers import HeaderList
    from pylon.proxy.router import RouteTable

    os.environ["PYLON_HYPERSCAN_CACHE"] = cache_dir
    config = msgspec.convert(route_config(n), RouteConfiguration, dec_hook=dec_hook)
    started = time.perf_counter()
    table = RouteTable(config, regex.get_engine(ENGINES[engine][0]))
    regex_set = table._default.regex_set
    if hasattr(regex_set, "wait"):  # Hyperscan: RE2::Set serves until the build thread installs the database
        assert regex_set.wait(600), "the Hyperscan database was not built"
    out: dict[str, Any] = {"build_s": table.build_seconds, "build_rss_mib": table.build_rss_bytes / 2**20,
                           "ready_s": time.perf_counter() - started}
    headers = HeaderList([])
    for label, path in paths(n).items():
        want = f"r{n - 1}" if label == "last" else None
        got = table.match("h", path, headers)
        assert (got.name if got else None) == want, (engine, n, label, got)
        loops = max(20, min(20000, int(0.3 / max(_time_once(table, path, headers), 1e-7))))
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(loops):
                table.match("h", path, headers)
            samples.append((time.perf_counter() - started) / loops * 1e6)
        out[f"lookup_us_{label}"] = statistics.median(samples)
    return out


def _time_once(table: Any, path: str, headers: Any) -> float:
    started = time.perf_counter()
    table.match("h", path, headers)
    return time.perf_counter() - started


def micro(sizes: list[int], work: Path) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for n in sizes:
        for engine in ENGINES:
            cache = work / f"hs-micro-{n}"
            runs = {"cold": None, "warm": None} if engine == "hyperscan" else {"": None}
            for phase in runs:  # hyperscan: first build compiles and stores, the second loads
                code = ("import json, sys; sys.path.insert(0, %r); from regex_routes import micro_one; "
                        "print(json.dumps(micro_one(%r, %d, %r)))" % (str(Path(__file__).parent), engine, n, str(cache)))
                text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                      timeout=600).stdout
                key = f"{engine}{'-' + phase if phase else ''}"
                results.setdefault(str(n), {})[key] = json.loads(text.strip().splitlines()[-1])
                print(f"micro N={n} {key}: {results[str(n)][key]}", flush=True)
    return results


# --------------------------------------------------------------------------- proxies under load


def tree_rss_mib(pid: int) -> float:
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def start_targets(stack: contextlib.ExitStack, n: int, work: Path) -> dict[str, tuple[Running, float]]:
    running = {}
    for target in TARGETS:
        port, admin = free_port(), free_port()
        engine = target.split("-", 1)[1] if target.startswith("pylon-") else None
        config = work / f"{target}-{n}.yaml"
        config.write_text(yaml.safe_dump(bootstrap(n, port, admin, engine)))
        started = time.perf_counter()
        if engine is None:
            proc = start_envoy(config, port=port, admin_port=admin, log_path=work / f"{target}-{n}.log")
        else:
            proc = start_pylon_proxy(config, port=port, admin_port=admin, log_level="info",
                                     log_path=work / f"{target}-{n}.log")
        running[target] = (stack.enter_context(proc), time.perf_counter() - started)
    for proc, _ in running.values():
        wait_idle(proc)  # pylon-hyperscan: until its workers' build thread has the database serving
    return running


def wait_idle(proc: Running, window: float = 2.0, timeout: float = 300.0) -> None:
    """Until the process tree used under 5% of a core over `window` seconds (longer than the Hyperscan
    build thread's settle delay, during which a build about to start looks idle)."""
    deadline = time.monotonic() + timeout
    before = proc.cpu_seconds()
    while time.monotonic() < deadline:
        time.sleep(window)
        now = proc.cpu_seconds()
        if now - before < 0.05 * window:
            return
        before = now
    raise RuntimeError(f"{proc.name} still busy after {timeout:g}s")


def measure(proc: Running, url: str, duration: float) -> dict[str, Any]:
    before = proc.cpu_seconds()
    w = run_wrk(url, duration=duration, connections=CONNECTIONS, threads=1)
    cpu = proc.cpu_seconds() - before
    return {"requests": w.requests, "rps": w.requests_per_sec, "proxy_cpu_s": cpu,
            "req_per_cpu_s": w.requests / cpu if cpu else None, "socket_errors": sum(w.socket_errors.values()),
            "wrk_cpu_s": w.cpu_seconds}


def load(sizes: list[int], reps: int, duration: float, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for n in sizes:
        with contextlib.ExitStack() as stack:
            running = start_targets(stack, n, work)
            for target, (proc, startup) in running.items():
                for path in paths(n).values():
                    run_wrk(proc.url(path), duration=1, connections=CONNECTIONS)  # warm-up (wrk takes whole seconds)
                info[f"{target}@{n}"] = {"startup_s": startup, "rss_mib": tree_rss_mib(proc.pid)}
            for rep in range(reps):
                order = TARGETS if rep % 2 == 0 else TARGETS[::-1]
                for label, path in paths(n).items():
                    for target in order:
                        row = {"n": n, "target": target, "path": label, "rep": rep,
                               **measure(running[target][0], running[target][0].url(path), duration)}
                        runs.append(row)
                        print(f"N={n} {target:16} {label:4} rep{rep}: {row['req_per_cpu_s']:.0f} req/CPU-s, "
                              f"{row['rps']:.0f} req/s", flush=True)
    return runs, info


# --------------------------------------------------------------------------- report


def summarize(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for n in sizes:
        for target in TARGETS:
            for label in ("last", "none"):
                rows = [r for r in runs if r["n"] == n and r["target"] == target and r["path"] == label]
                values = [r["req_per_cpu_s"] for r in rows if r["req_per_cpu_s"]]
                if values:
                    table[f"{target}|{n}|{label}"] = {
                        "req_per_cpu_s": statistics.median(values), "rps": statistics.median(r["rps"] for r in rows)}
    return table


def goals(summary: dict[str, Any], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    small, big = min(sizes), max(sizes)
    for engine in ENGINES:
        for label in ("last", "none"):
            at_big = summary.get(f"pylon-{engine}|{big}|{label}")
            at_small = summary.get(f"pylon-{engine}|{small}|{label}")
            envoy = summary.get(f"envoy|{big}|{label}")
            if at_big and at_small and envoy:
                out[f"{engine}|{label}"] = {
                    "vs_own_small": at_big["req_per_cpu_s"] / at_small["req_per_cpu_s"],
                    "vs_envoy_big": at_big["req_per_cpu_s"] / envoy["req_per_cpu_s"],
                }
    return out


def markdown(summary: dict[str, Any], micro_results: dict[str, Any], info: dict[str, Any], goal: dict[str, Any],
             sizes: list[int], meta: dict[str, Any]) -> str:
    lines = [f"# Regex route tables: pylon engines vs Envoy {meta['envoy']}", "",
             f"{meta['when']} · {meta['machine']} · wrk -t1 -c{CONNECTIONS}, {meta['duration']}s runs, "
             f"median of {meta['reps']} · `--concurrency 1` everywhere", "",
             "## Requests per proxy-CPU-second (higher is better)", "",
             "| target | path | " + " | ".join(f"N={n}" for n in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    for target in TARGETS:
        for label in ("last", "none"):
            cells = [summary.get(f"{target}|{n}|{label}") for n in sizes]
            lines.append(f"| {target} | {label} | " + " | ".join(f"{c['req_per_cpu_s']:,.0f}" if c else "–"
                                                               for c in cells) + " |")
    small, big = min(sizes), max(sizes)
    lines += ["", f"## Goals (N={big} vs N={small}; vs Envoy at N={big})", "",
              "| engine | path | pylon N=big / N=small (goal ≥ 0.9) | pylon / Envoy at N=big (goal ≥ 5) |",
              "|---|---|---|---|"]
    for key, g in goal.items():
        engine, label = key.split("|")
        ok1 = "✅" if g["vs_own_small"] >= 0.9 else "❌"
        ok2 = "✅" if g["vs_envoy_big"] >= 5 else "❌"
        lines.append(f"| {engine} | {label} | {g['vs_own_small']:.2f} {ok1} | {g['vs_envoy_big']:.2f} {ok2} |")
    lines += ["", "## pylon in-process: `RouteTable.match` µs (warm), build time, RSS added by the table", "",
              "| N | engine | lookup µs (last) | lookup µs (none) | build ms | database serves after ms | RSS MiB |",
              "|---|---|---|---|---|---|---|"]
    for n in sizes:
        for key, m in micro_results.get(str(n), {}).items():
            ready = f"{m['ready_s'] * 1e3:,.0f}" if key.startswith("hyperscan") and "ready_s" in m else "–"
            lines.append(f"| {n} | {key} | {m['lookup_us_last']:.2f} | {m['lookup_us_none']:.2f} | "
                         f"{m['build_s'] * 1e3:,.0f} | {ready} | {m['build_rss_mib']:.1f} |")
    lines += ["", "## Start-up (until /ready) and process-tree RSS after load", "",
              "| target | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    for target in TARGETS:
        cells = [info.get(f"{target}@{n}") for n in sizes]
        lines.append(f"| {target} | " + " | ".join(f"{c['startup_s']:.1f} s, {c['rss_mib']:.0f} MiB" if c else "–"
                                                    for c in cells) + " |")
    lines += ["", "pylon's start-up includes the supervisor's validation build and the worker's build; with "
              "Hyperscan (cold cache per run here) the table serves with RE2::Set at once while one worker's build "
              "thread compiles the database (the other loads it from the on-disk cache); the load runs start once "
              "every proxy is idle, so on the database. Build ms = until the table serves; \"database serves "
              "after\" includes the build thread's settle delay (`SETTLE_S`).", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--skip-load", action="store_true", help="only the in-process micro-benchmark")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    find_envoy()
    with tempfile.TemporaryDirectory(prefix="pylon-regex-bench-") as tmp:
        work = Path(tmp)
        os.environ["PYLON_HYPERSCAN_CACHE"] = str(work / "hs-proxy")  # cold for the first process of each N
        micro_results = micro(sizes, work)
        runs, info = ([], {}) if args.skip_load else load(sizes, args.reps, args.duration, work)
    summary = summarize(runs, sizes)
    goal = goals(summary, sizes)
    envoy = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    version = re.search(r"/(\d+\.\d+\.\d+)/", envoy)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "envoy": version.group(1) if version else envoy.strip(), "reps": args.reps, "duration": args.duration}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "regex_routes.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "goals": goal, "micro": micro_results, "proxies": info, "runs": runs},
        indent=1))
    text = markdown(summary, micro_results, info, goal, sizes, meta)
    (args.out / "regex_routes.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
