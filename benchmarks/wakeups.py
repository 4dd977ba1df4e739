"""How often a proxy's writes wake its peers: scheduler wake-ups and context switches per proxied request.

On this loopback a write to a sleeping peer wakes it, and a wake-up across CPUs in a VM is an interrupt into a
halted vCPU: in perf it is the worker's time in `sock_def_readable` under `write`. A proxy that writes as each request
is handled, slower than the C peers serve them, lets each peer sleep between requests and wakes it again for the
next; one that writes a phase's requests together wakes it once per phase (src/pylon/proxy/write_batch.py). This
counts it: `perf record -e sched:sched_wakeup -e sched:sched_switch -a` for a window of a bounded `wrk -t1 -c50`
run through each proxy (`--concurrency 1`, the plain bench config, a 1-worker nginx upstream), then per request:
wake-ups of nginx and of wrk, and context switches of every task. Alongside, the proxy's CPU per request over the
same run. Needs perf (linux-perf) and root; refuses to run without them.

Usage: python benchmarks/wakeups.py [--duration 6] [--window 3] [--reps 3] [--out benchmarks/results]
Writes benchmarks/results/wakeups.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pylon.bench.host import describe, host_facts
from pylon.bench.scenario import render_template
from pylon.bench.targets import Running, free_port, run_wrk, start_envoy, start_nginx, start_pylon_proxy

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "examples" / "bench" / "proxy-plain.yaml"
PROXIES = ("pylon", "envoy")


def count_events(script: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """(wake-ups by the woken task's name, context switches by the task switched out) from `perf script` lines
    printed with `-F comm,event,trace` (e.g. `swapper  sched:sched_wakeup: comm=nginx pid=7 prio=120 ...`)."""
    woken: collections.Counter[str] = collections.Counter()
    switched: collections.Counter[str] = collections.Counter()
    for line in script.splitlines():
        comm, _, rest = line.strip().partition(" ")
        if "sched:sched_wakeup:" in rest:
            fields = rest.split("sched:sched_wakeup:", 1)[1].split()
            name = next((f[5:] for f in fields if f.startswith("comm=")), "?")
            woken[name] += 1
        elif "sched:sched_switch:" in rest:
            switched[comm] += 1
    return woken, switched


def one_run(proxy: Running, port: int, duration: float, window: float, data: Path) -> dict[str, Any]:
    """A wrk run through `proxy`, the scheduler's events recorded for `window` seconds in its middle."""
    result: list[Any] = []
    load = threading.Thread(target=lambda: result.append(
        run_wrk(f"http://127.0.0.1:{port}/", duration=duration, connections=50)))
    cpu_before = proxy.cpu_seconds()
    load.start()
    time.sleep((duration - window) / 2)
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "sched:sched_wakeup", "-e", "sched:sched_switch", "-a",
                             "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(window)
    perf.send_signal(signal.SIGINT)
    perf.wait(timeout=30)
    load.join()
    cpu = proxy.cpu_seconds() - cpu_before
    wrk = result[0]
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,event,trace"], capture_output=True,
                            text=True, check=True).stdout
    woken, switched = count_events(script)
    in_window = wrk.requests * window / duration  # requests during the recorded window (wrk's rate is steady)
    return {"requests": wrk.requests, "errors": wrk.errors, "cpu_us_per_request": cpu / wrk.requests * 1e6,
            "nginx_wakeups": woken["nginx"] / in_window, "wrk_wakeups": woken["wrk"] / in_window,
            "switches": sum(switched.values()) / in_window, "wrk_cpu_s": wrk.cpu_seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--window", type=float, default=3.0, help="seconds of each run recorded by perf")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if shutil.which("perf") is None or os.geteuid() != 0:
        print("wakeups.py needs perf (Debian: linux-perf) and root to record scheduler events", file=sys.stderr)
        return 2
    if not 0 < args.window < args.duration:
        parser.error("--window must be positive and shorter than --duration")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pylon-wakeups-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        nginx = stack.enter_context(start_nginx(free_port()))
        proxies = {}
        for name in PROXIES:
            listen, admin = free_port(), free_port()
            config = work / f"{name}.yaml"
            config.write_text(render_template(TEMPLATE.read_text(), {
                "listen_port": listen, "admin_port": admin, "upstream_port": nginx.port, "workdir": work}))
            start = start_pylon_proxy if name == "pylon" else start_envoy
            proxies[name] = (stack.enter_context(start(config, port=listen, admin_port=admin)), listen)
        for proxy, port in proxies.values():
            run_wrk(f"http://127.0.0.1:{port}/", duration=1.0, connections=50)  # warm-up
        for rep in range(args.reps):
            for name in (PROXIES if rep % 2 == 0 else PROXIES[::-1]):
                proxy, port = proxies[name]
                row = {"proxy": name, "rep": rep, **one_run(proxy, port, args.duration, args.window,
                                                           work / "perf.data")}
                runs.append(row)
                print(f"rep {rep + 1} {name:5} {row['cpu_us_per_request']:.1f} µs CPU/req, nginx woken "
                      f"{row['nginx_wakeups']:.3f}, wrk woken {row['wrk_wakeups']:.3f}, switches "
                      f"{row['switches']:.3f} per request", flush=True)
    keys = ("cpu_us_per_request", "nginx_wakeups", "wrk_wakeups", "switches", "wrk_cpu_s")
    summary = {name: {key: statistics.median(r[key] for r in runs if r["proxy"] == name) for key in keys}
               for name in PROXIES}
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "reps": args.reps, "duration_s": args.duration,
            "window_s": args.window, "host": host_facts()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "wakeups.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    lines = ["# Wake-ups of the peers per proxied request: pylon vs Envoy", "",
             f"`python benchmarks/wakeups.py`, {meta['started']}: {args.reps} interleaved runs of `wrk -t1 -c50` for "
             f"{args.duration:g} s through each proxy (`--concurrency 1`, examples/bench/proxy-plain.yaml, a 1-worker "
             f"nginx upstream), scheduler events recorded system-wide for {args.window:g} s of each; medians.", "",
             f"Host: {describe(meta['host'])}.", "",
             "| proxy | µs proxy CPU per request | nginx woken per request | wrk woken per request "
             "| context switches per request (all tasks) | wrk CPU s/run |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['cpu_us_per_request']:.1f} | {s['nginx_wakeups']:.3f} | {s['wrk_wakeups']:.3f} "
                     f"| {s['switches']:.3f} | {s['wrk_cpu_s']:.2f} |")
    (args.out / "wakeups.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
