"""Update-to-effect of a one-route change in a 5,000-regex route table: pylon (RE2, Hyperscan) vs Envoy 1.40.

Issue 12: "an RDS update that changes one route of a 5,000-regex table takes effect in under 1 s with
either engine, requests meanwhile served by the previous table".

Part 1 — in-process (`RouteTable` of one virtual host with N `safe_regex` routes
`/svc<i>/[a-z]+/[0-9]+`, each engine in a fresh subprocess with its own Hyperscan cache directory):
build time cold (empty cache) and warm (everything cached), and the build after one route's regex
changed (the rest cached), which is what an RDS update costs each process; for Hyperscan also the
time until its database serves (built in the background while RE2::Set stands in).

Part 2 — end to end. Each proxy (`--concurrency 2`; pylon with `default_regex_engine` RE2, pylon with
Hyperscan, Envoy with its default RE2) serves a route configuration of N regex routes (direct_response,
no upstream) from a `path_config_source` file (JSON). Each rep changes the regex of one route k (a
different k each rep) to `/svc<k>/v<version>/[a-z]+/[0-9]+` and replaces the file by an atomic rename;
a poller (Python `http.client` in this process, the only load: one request about every 2 ms, round-robin
over 6 keep-alive connections so both workers are reached) asks for `/svc<k>/v<version>/items/42`, 404
before the change, 200 after. Reported, median (min-max) of --reps:

- first: rename -> first 200 on any connection (the goal: < 1 s);
- all: rename -> every connection has had a 200 (every worker that holds one applied it);
- max latency: the slowest single poll request during the update (a worker stalled by a build shows here;
  404s meanwhile come from the previous table, as they should);
- idle after: rename -> the proxy's process tree uses under 5% of a core (pylon with Hyperscan: its
  background database build has finished). Every change starts with all proxies idle.

Usage: python benchmarks/regex_route_update.py [--routes 5000] [--reps 5] [--targets pylon-re2,...]
Writes benchmarks/results/regex_route_update.{json,md} (or --out DIR). Every process is started here and
stopped by its PID (process group, `Running.stop`); every wait is bounded (--timeout per change).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pylon.bench.targets import (
    Running, TargetError, find_envoy, free_port, start_process, tree_cpu_seconds, unique_base_id,
)

ROOT = Path(__file__).resolve().parent.parent
ENGINES = {  # pylon target: (engine name, typed_config @type)
    "pylon-re2": ("envoy.regex_engines.google_re2",
                  "type.googleapis.com/envoy.extensions.regex_engines.v3.GoogleRE2"),
    "pylon-hyperscan": ("envoy.regex_engines.hyperscan",
                        "type.googleapis.com/envoy.extensions.regex_engines.hyperscan.v3alpha.Hyperscan"),
}
TARGETS = (*ENGINES, "envoy")
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CONNECTIONS = 6
POLL_INTERVAL_S = 0.002
IDLE_WINDOW_S = 2.0  # a proxy is idle when it used under IDLE_CPU of a core over this window (longer than
IDLE_CPU = 0.05      # the Hyperscan build thread's settle delay, or a build about to start looks idle)


def regex_of(i: int, version: int | None = None) -> str:
    return f"/svc{i}/[a-z]+/[0-9]+" if version is None else f"/svc{i}/v{version}/[a-z]+/[0-9]+"


def route_config(regexes: list[str]) -> dict[str, Any]:
    routes = [{"name": f"r{i}", "match": {"safe_regex": {"regex": r}},
               "direct_response": {"status": 200, "body": {"inline_string": f"r{i}"}}} for i, r in enumerate(regexes)]
    return {"name": "routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}


# --------------------------------------------------------------------------- part 1: in-process


def micro_one(engine: str, n: int, cache_dir: str) -> dict[str, float]:
    """In a fresh subprocess: seconds to build an N-regex virtual host cold, warm and after a one-route
    change, and (Hyperscan) until its database serves instead of the RE2::Set stand-in."""
    os.environ["PYLON_HYPERSCAN_CACHE"] = cache_dir
    import msgspec

    from pylon import regex
    from pylon.config.envoy import RouteConfiguration, dec_hook
    from pylon.proxy.router import RouteTable

    regexes = [regex_of(i) for i in range(n)]
    tables = []  # kept alive: a dropped table's database is never built

    def build(patterns: list[str]) -> tuple[float, float]:
        config = msgspec.convert(route_config(patterns), RouteConfiguration, dec_hook=dec_hook)
        started = time.perf_counter()
        table = RouteTable(config, regex.get_engine(engine))
        built = time.perf_counter() - started
        regex_set = table._default.regex_set
        if hasattr(regex_set, "wait"):
            regex_set.wait(600)
        tables.append(table)
        return built, time.perf_counter() - started

    out: dict[str, float] = {}
    out["cold_s"], out["cold_ready_s"] = build(regexes)
    out["warm_s"], out["warm_ready_s"] = build(regexes)
    changes = []
    for rep in range(3):
        regexes[(rep * 1931 + n // 2) % n] = regex_of(rep, 1000 + rep)
        changes.append(build(regexes))
    out["one_change_s"] = statistics.median(c[0] for c in changes)
    out["one_change_ready_s"] = statistics.median(c[1] for c in changes)
    return out


def micro(n: int, work: Path) -> dict[str, dict[str, float]]:
    results = {}
    for target, (engine, _) in ENGINES.items():
        code = ("import json, sys; sys.path.insert(0, %r); from regex_route_update import micro_one; "
                "print(json.dumps(micro_one(%r, %d, %r)))" % (str(Path(__file__).parent), engine, n,
                                                              str(work / f"hs-micro-{target}")))
        text = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              timeout=900).stdout
        results[target] = json.loads(text.strip().splitlines()[-1])
        print(f"in-process N={n} {target}: " + ", ".join(f"{k} {v * 1e3:,.0f} ms" for k, v in results[target].items()),
              flush=True)
    return results


# --------------------------------------------------------------------------- part 2: proxies


class Proxy:
    """A running proxy, the route table its RDS file holds, and keep-alive connections to poll it."""

    def __init__(self, target: str, n: int, work: Path, concurrency: int) -> None:
        self.target = target
        self.regexes = [regex_of(i) for i in range(n)]
        self.version = 0
        directory = work / target
        (directory / "rds").mkdir(parents=True)
        self.rds = directory / "rds" / "routes.json"
        self.port, admin = free_port(), free_port()
        self.write()
        boot = directory / "bootstrap.json"
        boot.write_text(json.dumps(bootstrap(target, self.port, admin, self.rds)))
        env = {**os.environ, "PYLON_HYPERSCAN_CACHE": str(directory / "hs-cache")}  # cold at start
        if target == "envoy":
            args = [find_envoy(), "-c", str(boot), "--concurrency", str(concurrency),
                    "--base-id", str(unique_base_id()), "-l", "error"]
        else:
            args = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(boot), "--concurrency", str(concurrency),
                    "-l", "warning"]
        started = time.monotonic()
        self.running: Running = start_process(target, args, port=self.port, admin_port=admin,
                                              log_path=directory / "proxy.log", ready_timeout=300, env=env)
        self.conns: list[http.client.HTTPConnection] = []
        self.ready_s = time.monotonic() - started

    def write(self) -> float:
        """Replace the RDS file (write beside the watched directory, rename into it); the rename's time."""
        self.version += 1
        staging = self.rds.parent.parent / f".routes.{self.version}.json"
        staging.write_text(json.dumps({"version_info": str(self.version),
                                       "resources": [{"@type": ROUTES_TYPE, **route_config(self.regexes)}]}))
        now = time.monotonic()
        os.rename(staging, self.rds)
        return now

    def get(self, i: int, path: str) -> tuple[int | None, float]:
        """(status or None on a failure, seconds) of one request on keep-alive connection `i`."""
        while len(self.conns) <= i:
            self.conns.append(http.client.HTTPConnection("127.0.0.1", self.port, timeout=30))
        conn = self.conns[i]
        started = time.monotonic()
        try:
            conn.request("GET", path)
            reply = conn.getresponse()
            reply.read()
            return reply.status, time.monotonic() - started
        except (OSError, http.client.HTTPException):
            conn.close()
            return None, time.monotonic() - started

    def change_one(self, k: int, timeout: float) -> dict[str, float]:
        """Give route k a new regex; seconds to the first 200 and to a 200 on every connection, max latency."""
        new = self.version + 1
        self.regexes[k] = regex_of(k, new)
        path = f"/svc{k}/v{new}/items/42"
        for i in range(CONNECTIONS):  # all connections open and answering 404 (the old table) first
            status, _ = self.get(i, path)
            if status != 404:
                raise TargetError(f"{self.target}: {path} answered {status} before the change")
        since = self.write()
        first = None
        seen: set[int] = set()
        slowest = 0.0
        i = 0
        while len(seen) < CONNECTIONS:
            status, took = self.get(i, path)
            now = time.monotonic()
            slowest = max(slowest, took)
            if status == 200:
                seen.add(i)
                if first is None:
                    first = now - since
            elif status != 404:
                raise TargetError(f"{self.target}: {path} answered {status} during the change")
            if now - since > timeout:
                raise TargetError(f"{self.target}: route {k} not in effect on every connection after {timeout:g}s")
            i = (i + 1) % CONNECTIONS
            time.sleep(POLL_INTERVAL_S)
        row = {"first_s": first or 0.0, "all_s": now - since, "max_latency_s": slowest}
        row["quiet_s"] = self.quiet_since(since, timeout)
        return row

    def quiet_since(self, since: float, timeout: float) -> float:
        """Seconds from `since` until the proxy's processes went idle (Hyperscan: its background build is done)."""
        before, start = tree_cpu_seconds(self.running.pid), time.monotonic()
        while True:
            time.sleep(IDLE_WINDOW_S)
            now, cpu = time.monotonic(), tree_cpu_seconds(self.running.pid)
            if cpu - before < IDLE_CPU * (now - start):
                return start - since
            if now - since > timeout:
                raise TargetError(f"{self.target}: still busy {timeout:g}s after the change")
            before, start = cpu, now

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.running.stop()


def bootstrap(target: str, port: int, admin: int, rds: Path) -> dict[str, Any]:
    hcm = {"@type": HCM_TYPE, "stat_prefix": "bench",
           "rds": {"route_config_name": "routes", "config_source": {
               "path_config_source": {"path": str(rds), "watched_directory": {"path": str(rds.parent)}},
               "resource_api_version": "V3"}},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    config: dict[str, Any] = {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [{
            "name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}]},
    }
    if target in ENGINES:
        name, type_url = ENGINES[target]
        config["default_regex_engine"] = {"name": name, "typed_config": {"@type": type_url}}
    return config


def end_to_end(targets: list[str], n: int, reps: int, concurrency: int, timeout: float,
               work: Path) -> tuple[dict[str, list[dict[str, float]]], dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {t: [] for t in targets}
    ready: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        proxies = {}
        for target in targets:
            proxies[target] = proxy = Proxy(target, n, work, concurrency)
            stack.callback(proxy.close)
            ready[target] = proxy.ready_s
            quiet = proxy.quiet_since(time.monotonic(), timeout)
            print(f"{target}: ready with {n} regex routes after {proxy.ready_s:.1f}s, idle {quiet:.1f}s later",
                  flush=True)
        for rep in range(reps):
            k = (rep * 1931 + n // 2) % n  # a different route each rep, spread over the table
            for target in (targets if rep % 2 == 0 else targets[::-1]):
                for other in proxies.values():  # nothing else busy (a background build) while this one changes
                    other.quiet_since(time.monotonic(), timeout)
                time.sleep(random.uniform(0.0, 0.1))  # keep renames out of step with pylon's file polling
                row = proxies[target].change_one(k, timeout)
                runs[target].append({"route": k, **row})
                print(f"rep {rep} {target:16} route {k:5}: first {row['first_s'] * 1e3:7.0f} ms, all "
                      f"{row['all_s'] * 1e3:7.0f} ms, max latency {row['max_latency_s'] * 1e3:6.0f} ms, "
                      f"idle after {row['quiet_s']:.1f} s", flush=True)
    return runs, ready


# --------------------------------------------------------------------------- report


def spread(values: list[float]) -> str:
    ms = [v * 1e3 for v in values]
    return f"{statistics.median(ms):,.0f} ({min(ms):,.0f}-{max(ms):,.0f})"


def markdown(meta: dict[str, Any], micro_results: dict[str, Any], runs: dict[str, list[dict[str, float]]],
             ready: dict[str, float]) -> str:
    n = meta["routes"]
    lines = [f"# One-route change in a {n:,}-regex route table: pylon vs Envoy {meta['envoy']}", "",
             f"benchmarks/regex_route_update.py, {meta['when']} · {meta['machine']} (shared, noisy) · "
             f"`--concurrency {meta['concurrency']}` · median (min-max) of {meta['reps']}", ""]
    if micro_results:
        lines += ["## In-process: building the virtual host (`RouteTable`, ms)", "",
                  "Serving = the constructor returns and the table answers; database = until the Hyperscan "
                  "database serves instead of the RE2::Set stand-in (background build, after a "
                  f"{meta.get('settle_s', 0):g} s settle delay). Each in a fresh process with its own cache.", "",
                  "| engine | cold: serving | cold: database | warm (cached) | one-route change: serving | "
                  "one-route change: database |", "|---|---:|---:|---:|---:|---:|"]
        for target, m in micro_results.items():
            def ms(key: str) -> str:  # RE2 has no database to wait for
                return "–" if key.endswith("_ready_s") and "hyperscan" not in target else f"{m[key] * 1e3:,.0f}"

            lines.append(f"| {target} | " + " | ".join(ms(k) for k in (
                "cold_s", "cold_ready_s", "warm_s", "one_change_s", "one_change_ready_s")) + " |")
        lines.append("")
    if runs:
        lines += ["## End to end: RDS file renamed -> the changed route answers (ms)", "",
                  f"Load: this script's poller only (Python `http.client`, one GET about every "
                  f"{POLL_INTERVAL_S * 1e3:g} ms, round-robin over {CONNECTIONS} keep-alive connections). "
                  "first = first 200 on any connection (goal < 1 s); all = a 200 on every connection; "
                  "max latency = slowest single request during the change (a stalled worker shows here); "
                  f"idle = until the proxy's processes use under {IDLE_CPU:.0%} of a core (pylon-hyperscan: its "
                  "background database build is done). Each change starts with every proxy idle.", "",
                  "| target | first | all | max latency | idle after | start until /ready s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for target, rows in runs.items():
            if rows:
                lines.append(f"| {target} | {spread([r['first_s'] for r in rows])} | {spread([r['all_s'] for r in rows])}"
                             f" | {spread([r['max_latency_s'] for r in rows])} | {spread([r['quiet_s'] for r in rows])}"
                             f" | {ready.get(target, 0):.1f} |")
        lines.append("")
    lines += meta.get("notes", [])
    return "\n".join(lines) + "\n"


def _settle_s() -> float:
    try:
        from pylon.regex.hyperscan_engine import SETTLE_S
    except ImportError:
        return 0.0
    return SETTLE_S


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds a change may take before the run fails")
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--skip-proxies", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="regex_route_update", help="results file name (without extension)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (repeatable)")
    args = parser.parse_args()
    targets = args.targets.split(",")
    with tempfile.TemporaryDirectory(prefix="pylon-regex-update-") as tmp:
        work = Path(tmp)
        micro_results = {} if args.skip_micro else micro(args.routes, work)
        runs, ready = ({}, {}) if args.skip_proxies else end_to_end(
            targets, args.routes, args.reps, args.concurrency, args.timeout, work)
    version = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    envoy = next((p for p in version.split("/") if p.count(".") == 2 and p.replace(".", "").isdigit()), version.strip())
    meta = {"when": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "envoy": envoy, "routes": args.routes, "reps": args.reps, "concurrency": args.concurrency,
            "settle_s": _settle_s(), "notes": args.note}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "micro": micro_results, "ready_s": ready, "runs": runs}, indent=1))
    text = markdown(meta, micro_results, runs, ready)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
