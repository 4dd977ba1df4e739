"""Live config changes through filesystem xDS: pylon vs Envoy 1.40, side by side in one run.

Part 1 — changes under load. Each proxy (`--concurrency 1`, `--drain-time-s` the same for both) sits
in front of a 1-worker nginx with three server blocks (upstreams a, b, c; 100-byte body) and gets a
fixed rate from `pylon load -qps Q -c C -uniform` (keep-alive; latency counted from each request's
intended send time, so a stalled proxy cannot hide) for --duration seconds, while one watched file is
replaced (atomic rename) once a second:

  steady     no change (the baseline for latency)
  routes     the RDS file alternates the route between clusters a and b
  clusters   the CDS file adds and removes a cluster nothing routes to (first half), then modifies
             the cluster the route uses (endpoint a <-> b, connect_timeout 1s <-> 2s)
  listeners  the LDS file modifies the listener (stat_prefix, a response header with the version)

Reported: requests, non-2xx, socket errors (by kind), connections the client had to open, p50/p99/
p99.9/max latency, the proxy's CPU per request, and whether the changes were applied (update
counters). The load client's own CPU and achieved rate are recorded to show it was not the limit.

Part 2 — update-to-effect at N clusters (default 1,000). Each proxy starts with a CDS file of N
STATIC clusters (even ones on upstream a, odd ones on b) and an RDS file routing / to one of them.
Timed from the atomic rename of a file until the first response served through the new cluster
(a poller sends a request every ~1 ms on a keep-alive connection and reads `x-upstream`):

  rds-swap    RDS: the route points at another of the N clusters (on the other upstream)
  cds-modify  CDS: the cluster the route uses gets the other upstream as its endpoint
  cds-add     CDS: one more cluster, the one the route names (503 NC before); N+1 .. N+reps clusters

Median of --effect-reps (5), pylon and Envoy interleaved, for each file format (YAML, JSON: the proxy
reads the same file). Then the resident memory of each proxy at N clusters: RSS summed over all its
processes (pylon: supervisor + workers; Envoy: one process), and PSS, which counts pages the pylon
processes share (forked) once.

Usage: python benchmarks/live_config.py [--duration 30] [--qps 2000] [--reps 1] [--effect-reps 5]
       [--clusters 1000] [--formats yaml,json] [--quick]
Writes benchmarks/results/live_config.{json,md} (or --out DIR). Every process is started here and
stopped by its PID (process group); every load run is bounded by its own -t.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from pylon import __version__
from pylon.bench.procfs import proc_table, tree
from pylon.bench.targets import (
    BackgroundTool, Running, TargetError, find_envoy, free_port, nginx_preamble, run_tool, start_process, unique_base_id,
)

ROOT = Path(__file__).resolve().parent.parent
PROXIES = ("pylon", "envoy")
SCENARIOS = ("steady", "routes", "clusters", "listeners")
EFFECTS = ("rds-swap", "cds-modify", "cds-add")
UPSTREAMS = ("a", "b", "c")
BODY_SIZE = 100

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTES_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


# --------------------------------------------------------------------------- processes


def envoy_version() -> str:
    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    for part in out.split("/"):
        if part.count(".") == 2 and part.replace(".", "").isdigit():
            return part
    return out.strip()


def start_nginx_upstreams(work: Path) -> tuple[Running, dict[str, int]]:
    """One 1-worker nginx serving upstreams a, b, c on three ports; each answers 200 with `x-upstream: <name>`."""
    base = work / "nginx"
    (base / "tmp").mkdir(parents=True)
    ports = {name: free_port() for name in UPSTREAMS}
    body = "x" * (BODY_SIZE - 1) + "\\n"
    servers = "".join(f"""    server {{
        listen 127.0.0.1:{port};
        location / {{ add_header x-upstream {name}; return 200 "{body}"; }}
    }}
""" for name, port in ports.items())
    conf = base / "nginx.conf"
    conf.write_text(nginx_preamble(base) + "    default_type text/plain;\n    keepalive_requests 1000000;\n"
                    + servers + "}\n")
    nginx = start_process("nginx", ["nginx", "-e", str(base / "error.log"), "-p", str(base), "-c", str(conf)],
                          port=ports["a"], log_path=base / "stdout.log")
    return nginx, ports


def start_proxy(proxy: str, config: Path, port: int, admin_port: int, drain_time: float, log: Path,
                ready_timeout: float = 60.0) -> Running:
    if proxy == "pylon":
        args = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(config), "--concurrency", "1",
                "-l", "warning", "--drain-time-s", f"{drain_time:g}"]
    else:
        args = [find_envoy(), "-c", str(config), "--concurrency", "1", "--base-id", str(unique_base_id()),
                "-l", "error", "--drain-time-s", f"{drain_time:g}"]
    return start_process(f"{proxy} proxy", args, port=port, admin_port=admin_port, log_path=log,
                         ready_timeout=ready_timeout)


def stats(running: Running) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", running.admin_port, timeout=10)
    try:
        conn.request("GET", "/stats")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            out[name] = int(value)
    return out


def memory_mib(root: int) -> dict[str, Any]:
    """RSS and PSS (MiB) summed over `root` and its descendants, and how many processes that is."""
    rss = pss = 0
    pids = tree(root, proc_table()[0])
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": len(pids)}


# --------------------------------------------------------------------------- config files


def replace_file(path: Path, document: dict[str, Any], fmt: str) -> float:
    """Write beside the watched directory, then rename into it (atomic); returns the monotonic time of the rename."""
    staging = path.parent.parent / f".{path.name}.{time.monotonic_ns()}"
    staging.write_text(json.dumps(document) if fmt == "json" else yaml.safe_dump(document, sort_keys=False))
    now = time.monotonic()
    os.rename(staging, path)
    return now


def watched(path: Path) -> dict[str, Any]:
    """A path_config_source for `path`, which lives alone in its watched directory."""
    return {"path_config_source": {"path": str(path), "watched_directory": {"path": str(path.parent)}},
            "resource_api_version": "V3"}


def cluster(name: str, port: int, connect_timeout: str = "1s") -> dict[str, Any]:
    return {"name": name, "connect_timeout": connect_timeout, "type": "STATIC",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}}


def clusters_doc(clusters: list[dict[str, Any]], version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": CLUSTER_TYPE, **c} for c in clusters]}


def route_config(target: str, **extra: Any) -> dict[str, Any]:
    return {"name": "main_routes", **extra, "virtual_hosts": [
        {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": target}}]}]}


def routes_doc(target: str, version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": ROUTES_TYPE, **route_config(target)}]}


def listener(port: int, *, rds: Path | None = None, version: int | None = None) -> dict[str, Any]:
    """Listener `main`: routes by RDS from `rds`, or inline to cluster a with a version header and stat_prefix."""
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}
    hcm: dict[str, Any] = {"@type": HCM_TYPE, "stat_prefix": "main", "http_filters": [router]}
    if rds is not None:
        hcm["rds"] = {"route_config_name": "main_routes", "config_source": watched(rds)}
    else:
        hcm["stat_prefix"] = f"main_{'ab'[(version or 0) % 2]}"
        hcm["route_config"] = route_config("a", response_headers_to_add=[
            {"header": {"key": "x-listener-version", "value": str(version)}}])
    return {"name": "main", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": hcm}]}]}


def listeners_doc(port: int, version: int) -> dict[str, Any]:
    return {"version_info": str(version), "resources": [{"@type": LISTENER_TYPE, **listener(port, version=version)}]}


@dataclass
class Setup:
    """A proxy's files: its bootstrap, the port the load goes to, and `change(step)` for the scenario."""

    bootstrap: Path
    port: int
    admin_port: int
    change: Callable[[int], None] = lambda step: None
    counters: tuple[str, ...] = ()  # update counters that must grow by one per change
    extra: dict[str, Any] = field(default_factory=dict)


def write_bootstrap(path: Path, admin_port: int, listeners: list[dict[str, Any]], clusters: list[dict[str, Any]],
                    dynamic: dict[str, Any]) -> Path:
    document = {"node": {"id": "bench", "cluster": "bench"},
                "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
                "static_resources": {"listeners": listeners, "clusters": clusters}}
    if dynamic:
        document["dynamic_resources"] = dynamic
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def scenario_setup(scenario: str, directory: Path, ups: dict[str, int], duration: float) -> Setup:
    for sub in ("cds", "rds", "lds"):
        (directory / sub).mkdir(parents=True)
    cds, rds, lds = directory / "cds" / "cds.yaml", directory / "rds" / "rds.yaml", directory / "lds" / "lds.yaml"
    port, admin = free_port(), free_port()
    boot = directory / "bootstrap.yaml"
    if scenario in ("steady", "routes"):
        replace_file(rds, routes_doc("a", "0"), "yaml")
        write_bootstrap(boot, admin, [listener(port, rds=rds)], [cluster("a", ups["a"]), cluster("b", ups["b"])], {})

        def swap(step: int) -> None:
            replace_file(rds, routes_doc("ab"[step % 2], str(step)), "yaml")

        if scenario == "steady":
            return Setup(boot, port, admin)
        return Setup(boot, port, admin, swap, ("http.main.rds.main_routes.update_success",))
    if scenario == "clusters":
        replace_file(rds, routes_doc("a", "0"), "yaml")
        replace_file(cds, clusters_doc([cluster("a", ups["a"])], "0"), "yaml")
        write_bootstrap(boot, admin, [listener(port, rds=rds)], [], {"cds_config": watched(cds)})
        half = int(duration) // 2

        def change(step: int) -> None:
            if step <= half:  # `extra` (upstream c) comes and goes; nothing routes to it
                clusters = [cluster("a", ups["a"])] + ([cluster("extra", ups["c"])] if step % 2 else [])
            else:  # the used cluster changes: endpoint b <-> a, connect_timeout 2s <-> 1s
                clusters = [cluster("a", ups["b" if step % 2 else "a"], f"{1 + step % 2}s")]
            replace_file(cds, clusters_doc(clusters, str(step)), "yaml")

        return Setup(boot, port, admin, change, ("cluster_manager.cds.update_success",))
    if scenario == "listeners":
        replace_file(lds, listeners_doc(port, 0), "yaml")
        write_bootstrap(boot, admin, [], [cluster("a", ups["a"])], {"lds_config": watched(lds)})

        def modify(step: int) -> None:
            replace_file(lds, listeners_doc(port, step), "yaml")

        return Setup(boot, port, admin, modify, ("listener_manager.lds.update_success",
                                                 "listener_manager.listener_modified"))
    raise ValueError(scenario)


# --------------------------------------------------------------------------- part 1: changes under load


def load_args(url: str, qps: float, connections: int, duration: float, out: Path) -> list[str]:
    return [sys.executable, "-m", "pylon.cli", "load", "-qps", f"{qps:g}", "-c", str(connections), "-uniform",
            "-t", f"{duration:g}s", "-timeout", "3s", "-p", "50,90,99,99.9", "-json", str(out), url]


def live_run(scenario: str, proxy: str, rep: int, args: argparse.Namespace, work: Path,
             ups: dict[str, int]) -> dict[str, Any]:
    directory = work / f"live-{scenario}-{proxy}-{rep}"
    setup = scenario_setup(scenario, directory, ups, args.duration)
    with start_proxy(proxy, setup.bootstrap, setup.port, setup.admin_port, args.drain_time,
                     directory / "proxy.log") as running:
        url = f"http://127.0.0.1:{setup.port}/"
        run_tool(load_args(url, args.qps, args.connections, args.warmup, directory / "warmup.json"), args.warmup + 30)
        before, cpu_before = stats(running), running.cpu_seconds()
        out = directory / "load.json"
        tool = BackgroundTool(load_args(url, args.qps, args.connections, args.duration, out), args.duration + 30)
        started = time.monotonic()
        changes = 0
        for step in range(1, int(args.duration)):
            time.sleep(max(0.0, started + step - time.monotonic()))
            if not tool.running:
                break
            setup.change(step)
            changes += 1 if setup.counters else 0
        _, client_cpu = tool.result()
        proxy_cpu = running.cpu_seconds() - cpu_before
        time.sleep(1.5)  # the last change reaches the counters
        after = stats(running)
        memory = memory_mib(running.pid)
    result = json.loads(out.read_text())
    hist = result["DurationHistogram"]
    pct = {p["Percentile"]: p["Value"] * 1000 for p in hist.get("Percentiles") or ()}
    codes = result["RetCodes"]
    count = int(hist["Count"])
    applied = {name: after.get(name, 0) - before.get(name, 0) for name in setup.counters}
    cluster_rq = {name: after.get(f"cluster.{name}.upstream_rq_total", 0)
                  - before.get(f"cluster.{name}.upstream_rq_total", 0) for name in ("a", "b")}
    return {
        "scenario": scenario, "proxy": proxy, "rep": rep, "changes": changes, "applied": applied,
        "requests": count, "ok_2xx": sum(n for code, n in codes.items() if code.startswith("2")),
        "non_2xx": sum(n for code, n in codes.items() if code != "-1" and not code.startswith("2")),
        "socket_errors": int(codes.get("-1", 0)), "error_kinds": result.get("ErrorKinds", {}),
        "connections_opened": result.get("SocketCount"), "ret_codes": codes,
        "p50_ms": pct.get(50.0), "p90_ms": pct.get(90.0), "p99_ms": pct.get(99.0), "p999_ms": pct.get(99.9),
        "max_ms": hist["Max"] * 1000, "actual_qps": result["ActualQPS"], "client_cpu_s": client_cpu,
        "proxy_cpu_s": proxy_cpu, "proxy_cpu_us_per_request": proxy_cpu / count * 1e6 if count else None,
        "cluster_requests": cluster_rq, "memory": memory,
    }


def part1(args: argparse.Namespace, work: Path, ups: dict[str, int]) -> list[dict[str, Any]]:
    runs = []
    print(f"part 1: {len(args.scenarios)} scenarios x {PROXIES}, {args.reps} rep(s) x {args.duration:g}s at "
          f"{args.qps:g} req/s, pylon load -c {args.connections} -uniform; one change a second", flush=True)
    for rep in range(1, args.reps + 1):
        for i, scenario in enumerate(args.scenarios):
            order = PROXIES if (rep + i) % 2 else PROXIES[::-1]
            for proxy in order:
                row = live_run(scenario, proxy, rep, args, work, ups)
                runs.append(row)
                print(f"  {scenario:9s} {proxy:5s} {row['requests']:7d} req  non-2xx {row['non_2xx']:4d}  "
                      f"errors {row['socket_errors']:4d} {row['error_kinds']}  conns {row['connections_opened']}  "
                      f"p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} p99.9 {row['p999_ms']:.2f} max "
                      f"{row['max_ms']:.1f} ms  applied {row['applied']}/{row['changes']}  "
                      f"client {row['actual_qps']:.0f} qps {row['client_cpu_s']:.1f} CPU-s  "
                      f"proxy {row['proxy_cpu_us_per_request']:.0f} us CPU/req", flush=True)
    return runs


# --------------------------------------------------------------------------- part 2: update-to-effect


class Poller:
    """Requests on a keep-alive connection: which upstream served /, if any."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)

    def served_by(self) -> str | None:
        try:
            self.conn.request("GET", "/")
            reply = self.conn.getresponse()
            reply.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            return None
        return reply.getheader("x-upstream") if reply.status == 200 else None

    def wait_for(self, upstream: str, since: float, timeout: float = 30.0) -> float:
        """Seconds from `since` until a response from `upstream` (polling about every millisecond)."""
        while True:
            got = self.served_by()
            now = time.monotonic()
            if got == upstream:
                return now - since
            if now - since > timeout:
                raise TargetError(f"no response from upstream {upstream} within {timeout:g}s (last: {got})")
            time.sleep(0.001)

    def close(self) -> None:
        self.conn.close()


@dataclass
class EffectProxy:
    """A proxy with N clusters, and the model of what its CDS and RDS files hold."""

    proxy: str
    fmt: str
    running: Running
    cds: Path
    rds: Path
    ups: dict[str, int]
    clusters: dict[str, str]  # name -> upstream
    route: str
    poller: Poller
    version: int = 0

    def write_cds(self) -> float:
        self.version += 1
        return replace_file(self.cds, clusters_doc([cluster(n, self.ups[u]) for n, u in self.clusters.items()],
                                                   str(self.version)), self.fmt)

    def write_rds(self) -> float:
        self.version += 1
        return replace_file(self.rds, routes_doc(self.route, str(self.version)), self.fmt)

    def current(self) -> str:
        return self.clusters.get(self.route, "none")


def start_effect_proxy(proxy: str, fmt: str, n: int, work: Path, ups: dict[str, int],
                       drain_time: float) -> tuple[EffectProxy, float]:
    directory = work / f"effect-{proxy}-{fmt}"
    for sub in ("cds", "rds"):
        (directory / sub).mkdir(parents=True)
    cds, rds = directory / "cds" / f"cds.{fmt}", directory / "rds" / f"rds.{fmt}"
    clusters = {f"c{i:04d}": "ab"[i % 2] for i in range(n)}
    port, admin = free_port(), free_port()
    boot = write_bootstrap(directory / "bootstrap.yaml", admin, [listener(port, rds=rds)], [],
                           {"cds_config": watched(cds)})
    model = EffectProxy(proxy, fmt, None, cds, rds, ups, clusters, "c0000", Poller(port))  # type: ignore[arg-type]
    model.write_cds()
    model.write_rds()
    started = time.monotonic()
    model.running = start_proxy(proxy, boot, port, admin, drain_time, directory / "proxy.log", ready_timeout=120)
    ready_s = time.monotonic() - started
    model.poller.wait_for(model.current(), time.monotonic())
    return model, ready_s


def measure_effect(model: EffectProxy, effect: str, rep: int) -> float:
    """Make one change of kind `effect`; seconds from its rename until the first response through it."""
    if effect == "rds-swap":  # to a cluster on the other upstream (odd <-> even index)
        other = "b" if model.current() == "a" else "a"
        candidates = [n for n, u in model.clusters.items() if u == other and n.startswith("c")]
        model.route = candidates[(7 * rep) % len(candidates)]
        return model.poller.wait_for(other, model.write_rds())
    if effect == "cds-modify":  # the used cluster's endpoint moves to the other upstream
        other = "b" if model.current() == "a" else "a"
        model.clusters[model.route] = other
        return model.poller.wait_for(other, model.write_cds())
    if effect == "cds-add":  # the route first names a cluster CDS does not have (503 NC), then CDS adds it
        model.route = f"new{rep}"  # (the new clusters of earlier reps stay: N+1 .. N+reps clusters)
        since = model.write_rds()
        while model.poller.served_by() is not None:
            if time.monotonic() - since > 30:
                raise TargetError("the route to a missing cluster still served")
            time.sleep(0.001)
        time.sleep(0.3 + random.uniform(0.0, 0.1))
        model.clusters[model.route] = "c"
        return model.poller.wait_for("c", model.write_cds())
    raise ValueError(effect)


def part2(args: argparse.Namespace, work: Path, ups: dict[str, int]) -> dict[str, Any]:
    print(f"part 2: update-to-effect with {args.clusters} clusters, formats {args.formats}, "
          f"median of {args.effect_reps}", flush=True)
    out: dict[str, Any] = {"times_ms": {}, "ready_s": {}, "memory": {}}
    for fmt in args.formats:
        with contextlib.ExitStack() as stack:
            models: dict[str, EffectProxy] = {}
            for proxy in PROXIES:
                model, ready_s = start_effect_proxy(proxy, fmt, args.clusters, work, ups, args.drain_time)
                stack.enter_context(model.running)
                stack.callback(model.poller.close)
                models[proxy] = model
                out["ready_s"].setdefault(fmt, {})[proxy] = ready_s
                print(f"  {fmt} {proxy}: ready with {args.clusters} clusters after {ready_s:.2f}s", flush=True)
            times: dict[str, dict[str, list[float]]] = {e: {p: [] for p in PROXIES} for e in EFFECTS}
            for rep in range(1, args.effect_reps + 1):
                for effect in EFFECTS:
                    order = PROXIES if rep % 2 else PROXIES[::-1]
                    for proxy in order:
                        # Let the previous change settle; the random part keeps renames out of step with
                        # pylon's file polling (every 0.1 s), which a fixed pause would phase-lock to.
                        time.sleep(0.3 + random.uniform(0.0, 0.1))
                        seconds = measure_effect(models[proxy], effect, rep)
                        times[effect][proxy].append(seconds * 1000)
                line = "  ".join(f"{e} " + " / ".join(f"{times[e][p][-1]:.0f}" for p in PROXIES) for e in EFFECTS)
                print(f"  {fmt} rep {rep} (ms, pylon / envoy): {line}", flush=True)
            out["times_ms"][fmt] = times
            time.sleep(1.0)
            for proxy, model in models.items():
                out["memory"].setdefault(fmt, {})[proxy] = memory_mib(model.running.pid)
                out["memory"][fmt][proxy]["clusters"] = len(model.clusters)
    return out


# --------------------------------------------------------------------------- summary


def med(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]], effect: dict[str, Any] | None) -> dict[str, Any]:
    live: dict[str, Any] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        entry: dict[str, Any] = {}
        for proxy in PROXIES:
            rows = [r for r in runs if r["scenario"] == scenario and r["proxy"] == proxy]
            if not rows:
                continue
            entry[proxy] = {
                "reps": len(rows), "requests": sum(r["requests"] for r in rows),
                "non_2xx": sum(r["non_2xx"] for r in rows), "socket_errors": sum(r["socket_errors"] for r in rows),
                "changes": sum(r["changes"] for r in rows),
                "applied": {k: sum(r["applied"].get(k, 0) for r in rows) for k in rows[0]["applied"]},
                "connections_opened": med([r["connections_opened"] for r in rows]),
                **{k: med([r[k] for r in rows]) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms",
                                                          "actual_qps", "client_cpu_s", "proxy_cpu_us_per_request")},
                "rss_mib": med([r["memory"]["rss_mib"] for r in rows]),
                "pss_mib": med([r["memory"]["pss_mib"] for r in rows]),
            }
        if "pylon" in entry and "envoy" in entry:
            for key in ("p50_ms", "p99_ms", "proxy_cpu_us_per_request"):
                p, e = entry["pylon"][key], entry["envoy"][key]
                entry[f"ratio_{key}_pylon_over_envoy"] = p / e if p and e else None
        live[scenario] = entry
    summary: dict[str, Any] = {"live": live}
    if effect is not None:
        eff: dict[str, Any] = {}
        for fmt, times in effect["times_ms"].items():
            eff[fmt] = {}
            for name, by_proxy in times.items():
                row = {p: {"median_ms": med(v), "min_ms": min(v), "max_ms": max(v), "samples_ms": v}
                       for p, v in by_proxy.items()}
                p, e = row["pylon"]["median_ms"], row["envoy"]["median_ms"]
                row["ratio_pylon_over_envoy"] = p / e if p and e else None
                eff[fmt][name] = row
        summary["effect"] = eff
        summary["ready_s"] = effect["ready_s"]
        summary["memory"] = effect["memory"]
    return summary


def f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Live config changes (filesystem xDS): pylon vs Envoy {meta['envoy_version']}",
        "",
        f"benchmarks/live_config.py, run {meta['started']} on {meta['machine']} (shared, noisy; nothing pinned). "
        f"Both proxies `--concurrency 1`, `--drain-time-s {meta['drain_time_s']:g}`; upstream: one 1-worker nginx "
        f"(three server blocks a/b/c, {BODY_SIZE}-byte body).",
        "",
        f"## 1. Changes under load: {meta['duration_s']:g} s at {meta['qps']:g} req/s, one change a second",
        "",
        f"Load: `pylon load -qps {meta['qps']:g} -c {meta['connections']} -uniform -t {meta['duration_s']:g}s` "
        f"(keep-alive; latency from each request's intended send time), after a {meta['warmup_s']:g} s unmeasured "
        f"warm-up; {meta['reps']} rep(s), pylon/Envoy order alternating; medians (counts: sums). `errors` = requests "
        "without a response (socket errors); `conns` = connections the client opened; `applied` = update counter "
        "growth / changes made.",
        "",
        "| scenario | proxy | requests | non-2xx | errors | conns | p50 ms | p99 ms | p99.9 ms | max ms "
        "| applied | proxy µs CPU/req | client req/s | client CPU s | RSS MiB (PSS) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for scenario, entry in summary["live"].items():
        for proxy in PROXIES:
            s = entry.get(proxy)
            if s is None:
                continue
            applied = ", ".join(f"{v}/{s['changes']}" for v in s["applied"].values()) or "-"
            lines.append(
                f"| {scenario} | {proxy} | {s['requests']} | {s['non_2xx']} | **{s['socket_errors']}** | "
                f"{f(s['connections_opened'], '.0f')} | {f(s['p50_ms'], '.2f')} | {f(s['p99_ms'], '.2f')} | "
                f"{f(s['p999_ms'], '.2f')} | {f(s['max_ms'], '.1f')} | {applied} | "
                f"{f(s['proxy_cpu_us_per_request'], '.0f')} | {f(s['actual_qps'], '.0f')} | "
                f"{f(s['client_cpu_s'], '.1f')} | {f(s['rss_mib'], '.0f')} ({f(s['pss_mib'], '.0f')}) |")
    lines += ["", "| scenario | p50 pylon/Envoy | p99 pylon/Envoy | CPU/req pylon/Envoy |", "|---|---:|---:|---:|"]
    for scenario, entry in summary["live"].items():
        lines.append(f"| {scenario} | {f(entry.get('ratio_p50_ms_pylon_over_envoy'), '.2f')} | "
                     f"{f(entry.get('ratio_p99_ms_pylon_over_envoy'), '.2f')} | "
                     f"{f(entry.get('ratio_proxy_cpu_us_per_request_pylon_over_envoy'), '.2f')} |")
    rows = [s for entry in summary["live"].values() for s in (entry.get(p) for p in PROXIES) if s]
    low, high = min(s["actual_qps"] for s in rows), max(s["actual_qps"] for s in rows)
    kept = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}-{high:.0f}"
    lines += ["", f"The load client was not the limit: it kept {kept} req/s of the {meta['qps']:g} asked in every run, "
              f"using at "
              f"most {max(s['client_cpu_s'] for s in rows):.1f} CPU-s per {meta['duration_s']:g} s run "
              f"({100 * max(s['client_cpu_s'] for s in rows) / meta['duration_s']:.0f}% of one core). "
              "Latency at a fixed rate far below saturation mostly shows scheduling noise on the shared cores; "
              "`steady` is the no-change baseline. RSS sums every process of the proxy; PSS also depends on "
              "other processes mapping the same files (e.g. other Envoys on the machine)."]
    for scenario, entry in summary["live"].items():
        for proxy in PROXIES:
            s = entry.get(proxy)
            if s and (s["socket_errors"] or s["non_2xx"]):
                lines.append(f"\n**{proxy} lost requests in `{scenario}`: {s['non_2xx']} non-2xx, "
                             f"{s['socket_errors']} without a response.**")
    listeners = summary["live"].get("listeners", {})
    if listeners.get("pylon", {}).get("socket_errors") and not listeners.get("envoy", {}).get("socket_errors"):
        lines.append("\nIn `listeners`, both proxies close what is still open on a replaced listener version when "
                     "its drain time ends. Envoy (default `--drain-strategy gradual`) answers requests on draining "
                     "connections with `connection: close` with a probability rising to 1 over the drain time, so "
                     "keep-alive clients reconnect (see `conns`) before that; pylon keeps serving them without "
                     "`connection: close` and then closes them, cutting requests in flight (client: closed/reset).")
    if "effect" in summary:
        lines += [
            "",
            f"## 2. Update-to-effect at {meta['clusters']} clusters (median of {meta['effect_reps']}, ms)",
            "",
            "From the atomic rename of the file until the first response served through the new cluster "
            "(a poller on a keep-alive connection, one request about every millisecond). "
            "rds-swap: the route points at another of the clusters; cds-modify: the used cluster's endpoint "
            "changes; cds-add: the cluster the route names is added (N+1 .. N+reps clusters).",
            "",
            "| format | change | pylon median (min-max) | Envoy median (min-max) | pylon/Envoy |",
            "|---|---|---:|---:|---:|",
        ]
        for fmt, rows in summary["effect"].items():
            for name, row in rows.items():
                p, e = row["pylon"], row["envoy"]
                lines.append(f"| {fmt} | {name} | {p['median_ms']:.0f} ({p['min_ms']:.0f}-{p['max_ms']:.0f}) | "
                             f"{e['median_ms']:.0f} ({e['min_ms']:.0f}-{e['max_ms']:.0f}) | "
                             f"**{f(row['ratio_pylon_over_envoy'], '.1f')}** |")
        lines += ["", "Envoy reads a changed file at once (inotify on the watched directory); pylon's supervisor "
                  "looks at the files every 0.1 s, parses the changed file whole, validates the update and sends "
                  "each worker what it changed."]
        lines += ["", f"## 3. Memory at {meta['clusters']} clusters (after the changes above)", "",
                  "| format | proxy | processes | RSS MiB (sum) | PSS MiB (sum) | start until /ready s |",
                  "|---|---|---:|---:|---:|---:|"]
        for fmt, by_proxy in summary["memory"].items():
            for proxy, m in by_proxy.items():
                lines.append(f"| {fmt} | {proxy} | {m['processes']} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} | "
                             f"{summary['ready_s'][fmt][proxy]:.2f} |")
        for fmt, by_proxy in summary["memory"].items():
            p, e = by_proxy["pylon"], by_proxy["envoy"]
            lines.append(f"\n{fmt}: RSS pylon/Envoy **{p['rss_mib'] / e['rss_mib']:.2f}**, "
                         f"PSS pylon/Envoy {p['pss_mib'] / e['pss_mib']:.2f}.")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per scenario run (30)")
    parser.add_argument("--qps", type=float, default=2000.0, help="fixed request rate (2000)")
    parser.add_argument("--connections", type=int, default=16, help="load client connections (16)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load seconds per proxy first (2)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of part 1 (1)")
    parser.add_argument("--drain-time", type=float, default=5.0, help="--drain-time-s of both proxies (5)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters in part 2 (1000)")
    parser.add_argument("--effect-reps", type=int, default=5, help="repetitions of each part 2 change (5)")
    parser.add_argument("--formats", default="yaml,json", help="file formats for part 2 (yaml,json)")
    parser.add_argument("--skip-effect", action="store_true", help="part 1 only")
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 s runs, 100 clusters, 2 reps in part 2")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.clusters, args.effect_reps = 6.0, 1.0, 100, 2
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.formats = [s for s in args.formats.split(",") if s]
    if any(s not in SCENARIOS for s in args.scenarios) or any(s not in ("yaml", "json") for s in args.formats):
        parser.error("unknown scenario or format")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "pylon": __version__, "envoy_version": envoy_version(), "duration_s": args.duration, "qps": args.qps,
            "connections": args.connections, "warmup_s": args.warmup, "reps": args.reps,
            "drain_time_s": args.drain_time, "clusters": args.clusters, "effect_reps": args.effect_reps,
            "load_tool": "pylon load (python -m pylon.cli load)"}
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-live-") as tmp:
            work = Path(tmp)
            nginx, ups = start_nginx_upstreams(work)
            with nginx:
                runs = part1(args, work, ups)
                effect = None if args.skip_effect else part2(args, work, ups)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    meta["wall_s"] = round(time.monotonic() - began, 1)
    summary = summarize(runs, effect)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live_config.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs},
                                                          indent=2) + "\n")
    table = markdown(summary, meta)
    (args.out / "live_config.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
