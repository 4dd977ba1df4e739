"""One load run inside a client pod, and what it cost every proxy on its path.

The load is `pylon load` (Fortio's flags and JSON) started with `pylon mesh exec <client> --`, against
`/echo?size=<size>` (Istio's runner URL: a GET answered with a <size>-byte body). Around it: the CPU of
each proxy's process tree before and after, its RSS sampled every 0.5 s, and the load process's own
steady-state CPU (to show the client was not the bottleneck). Every run is bounded: the load's `-t`, and a
kill of the `mesh exec` we started if it overstays by a minute.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylon.bench.mesh_runs.meshctl import PYTHON, MeshCli
from pylon.bench.mesh_runs.modes import ROLES, Mode, qps_of
from pylon.bench.procfs import RssSampler, children_cpu, has_argument, proc_table, tree, tree_cpu

OVERSTAY_S = 60.0  # a run's `mesh exec` is killed this long after its -t


@dataclass(frozen=True)
class LoadProfile:
    """Istio's runner knobs (`--qps`, `--conn`, `--duration`, `--size`) and the handshake modes' own rate."""

    qps: int = 1000
    conn: int = 16
    duration: float = 10.0
    size: int = 1024
    newconn_qps: int = 250
    warmup: float = 2.0


def label_of(run_id: str, mode: Mode, profile: LoadProfile, tag: str) -> str:
    """Istio's run label: `<runid>_qps_<q>_c_<c>_<size>_<telemetry>_<mode>` (our `tag` in telemetry's place)."""
    qps = qps_of(mode, profile.qps, profile.newconn_qps)
    return f"{run_id}_qps_{qps}_c_{profile.conn}_{profile.size}_{tag}_{mode.name}"


def load_command(mode: Mode, profile: LoadProfile, seconds: float, json_path: Path, label: str, ca: Path,
                 qps: int | None = None, exactly: int = 0) -> list[str]:  # fmt: skip
    """`pylon load` as Istio's runner calls fortio (`-r 0.00001` resolution), keep-alive or a connection per
    request; a run is `seconds` long, or `exactly` requests."""
    rate = qps if qps is not None else qps_of(mode, profile.qps, profile.newconn_qps)
    command = [PYTHON, "-m", "pylon.cli", "load", "-qps", str(rate), "-c", str(profile.conn), "-r", "0.00001",
               "-timeout", "3s", "-labels", label, "-json", str(json_path)]  # fmt: skip
    command += ["-n", str(exactly)] if exactly else ["-t", f"{seconds:g}s"]
    command += ["-new-connection"] if mode.new_connection else ["-keepalive"]
    if mode.tls:
        command += ["-cacert", str(ca)]
    return [*command, f"{mode.target}/echo?size={profile.size}"]


def exec_load(mesh: MeshCli, mode: Mode, command: list[str], seconds: float) -> tuple[float, float | None, int | None]:
    """Run the load in the mode's client pod; (client CPU s incl. start-up, the load process's steady-state
    millicores, exit code). The steady state: the load process's own CPU from 1.5 s after it started (imports
    done) to its last sample, from /proc every 0.2 s."""
    before = children_cpu()
    out_path = mesh.log.with_name("load-output.txt")
    with out_path.open("wb") as out:
        proc = subprocess.Popen(mesh.exec_command(mode.client, command), env=mesh.env, stdout=out,
                                stderr=subprocess.STDOUT)  # fmt: skip
    samples: list[tuple[float, float]] = []
    load_pid, load_start = None, 0.0
    deadline = time.monotonic() + seconds + OVERSTAY_S
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                break
            children, cpu = proc_table()
            if load_pid is None:
                load_pid = next((p for p in tree(proc.pid, children) if p != proc.pid and has_argument(p, b"load")),
                                None)  # fmt: skip
                load_start = time.monotonic()
            elif load_pid in cpu:
                samples.append((time.monotonic(), sum(cpu.get(p, 0.0) for p in tree(load_pid, children))))
            time.sleep(0.2)
    finally:
        if proc.poll() is None:  # overstayed, or interrupted: the `mesh exec` we started (its load ends with -t)
            proc.kill()
        proc.wait()
    mesh.record(f"pylon mesh exec {mode.client} -- {' '.join(command)}", proc.returncode,
                out_path.read_text(errors="replace")[-1500:])  # fmt: skip
    return children_cpu() - before, steady_millicores(samples, load_start), proc.returncode


def steady_millicores(samples: list[tuple[float, float]], start: float, settle: float = 1.5) -> float | None:
    """Millicores between the first sample `settle` s after `start` and the last; None with under 3 samples."""
    steady = [(t, c) for t, c in samples if t >= start + settle]
    if len(steady) < 3 or steady[-1][0] <= steady[0][0]:
        return None
    return 1000 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])


def percentile_us(result: dict[str, Any], p: float) -> float | None:
    """A percentile of Fortio's JSON (seconds) in µs, as Istio's CSV has them."""
    for item in result["DurationHistogram"].get("Percentiles") or ():
        if abs(item["Percentile"] - p) < 1e-9:
            return item["Value"] * 1e6
    return None


def result_fields(result: dict[str, Any]) -> dict[str, Any]:
    """A run's row fields from its Fortio JSON: Istio's columns, counts, errors (anything but 200)."""
    count = int(result["DurationHistogram"]["Count"])
    ok = int(result["RetCodes"].get("200", 0))
    return {
        "StartTime": result["StartTime"], "ActualDuration": result["ActualDuration"],
        "NumThreads": result["NumThreads"],
        "ActualQPS": result["ActualQPS"], "requests": count, "ok": ok, "errors": count - ok,
        "error_kinds": result.get("ErrorKinds", {}), "ret_codes": result["RetCodes"],
        "error_percent": 100.0 * (count - ok) / count if count else 100.0,
        **{f"p{k}_us": percentile_us(result, p) for k, p in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))},
    }  # fmt: skip


def cost_fields(roles: list[str], cpu: dict[str, float], rss: dict[str, tuple[float, float]], duration: float,
                ok: int) -> dict[str, Any]:  # fmt: skip
    """Per role: CPU seconds, millicores over the run, CPU-ms per 1,000 good requests, mean RSS of the tree and
    of the proxy alone (the tree without the agent at its root)."""
    row: dict[str, Any] = {}
    for role in roles:
        row[f"{role}_cpu_s"] = cpu[role]
        row[f"{role}_millicores"] = 1000 * cpu[role] / duration if duration else None
        row[f"{role}_cpu_ms_per_1k"] = 1e6 * cpu[role] / ok if ok else None
        if role != "echo" and role in rss:
            row[f"{role}_rss_mib"], agent_rss = rss[role]
            row[f"{role}_proxy_rss_mib"] = rss[role][0] - agent_rss
    return row


def measure(mesh: MeshCli, mode: Mode, profile: LoadProfile, label: str, json_path: Path, ca: Path,
            startup_cpu: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run `mode` once and measure it; a row with `failed` when the load left no result."""
    agents, apps, keyds = mesh.pids("sidecar"), mesh.pids("app"), mesh.pids("keyd")
    roots = {role: agents[workload] for role, workload in mode.roles}
    roots["echo"] = apps[mode.server]
    # A gateway whose keys live in a `pylon keyd` of its pod signs there: keyd's CPU is the gateway's too.
    key_homes = {f"{role}+keyd": keyds[workload] for role, workload in mode.roles if workload in keyds}
    qps = qps_of(mode, profile.qps, profile.newconn_qps)
    command = load_command(mode, profile, profile.duration, json_path, label, ca)
    sampler = RssSampler({k: v for k, v in roots.items() if k != "echo"})
    cpu_before = tree_cpu({**roots, **key_homes})
    sampler.start()
    started = time.monotonic()
    try:
        load_cpu, load_rate, code = exec_load(mesh, mode, command, profile.duration)
    finally:
        wall = time.monotonic() - started
        cpu_after = tree_cpu({**roots, **key_homes})
        rss = sampler.stop()
    row: dict[str, Any] = {"mode": mode.name, "label": label, "requested_qps": qps, "connections": profile.conn,
                           "size": profile.size, "exit_code": code, "wall_s": wall, "json": str(json_path)}
    if not json_path.exists():
        row["failed"] = f"pylon load exited {code} without a result"
        return row
    result = json.loads(json_path.read_text())
    row.update(result_fields(result))
    duration = result["ActualDuration"] / 1e9
    row["load_cpu_s"], row["load_millicores"] = load_cpu, load_rate
    if startup_cpu is not None:
        row["load_millicores_by_rusage"] = 1000 * max(load_cpu - startup_cpu, 0.0) / duration if duration else None
    cpu = {r: cpu_after[r] - cpu_before[r] for r in roots}
    for home in key_homes:
        role = home.removesuffix("+keyd")
        row[f"{role}_keyd_cpu_s"] = cpu_after[home] - cpu_before[home]
        cpu[role] += row[f"{role}_keyd_cpu_s"]
    row.update(cost_fields([r for r in (*ROLES, "echo") if r in roots], cpu, rss, duration, row["ok"]))
    if mode.new_connection:
        row["handshakes"] = result.get("Handshakes")
        if row.get("handshakes") and row.get("gateway_cpu_s"):
            row["handshakes_per_gateway_cpu_s"] = row["handshakes"] / row["gateway_cpu_s"]
    return row


def idle_cpu(mesh: MeshCli, seconds: float = 3.0) -> dict[str, float]:
    """Millicores each sidecar and gateway uses with no traffic (xDS, health checks, the agent's own loop)."""
    roots = mesh.pids("sidecar")
    before = tree_cpu(roots)
    time.sleep(seconds)
    after = tree_cpu(roots)
    return {name: 1000 * (after[name] - before[name]) / seconds for name in roots}


def startup_cost(mesh: MeshCli, mode: Mode, profile: LoadProfile, work: Path, ca: Path) -> float:
    """CPU seconds `mesh exec` + `pylon load` take to start and stop (one request): subtracted from each run's."""
    costs = []
    for i in range(2):
        out = work / f"startup-{i}.json"
        cpu, _, _ = exec_load(mesh, mode, load_command(mode, profile, 0, out, "startup", ca, qps=0, exactly=1), 0)
        costs.append(cpu)
    return min(costs)

