"""One mesh's life for a perf run: up from the install file, workloads, resources, warm-up, each mode once,
then `pylon mesh down` whatever happened (failure, Ctrl-C, SIGTERM made an interrupt by the caller).

The workloads are those the modes need (`modes.workloads_for`): `pylon echo` answering `/echo?size=` with and
without a sidecar, idle clients with and without one. A mesh refuses to start while any `pm-` namespace
exists (another mesh, or a crashed one's leftovers: not ours to remove).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pylon.bench.mesh_runs.inputs import Inputs
from pylon.bench.mesh_runs.meshctl import PYTHON, MeshCli, mesh_namespaces
from pylon.bench.mesh_runs.modes import (CLIENT_PLAIN, CLIENT_PORT, ECHO_PORT, SERVER, SERVER_PLAIN, Mode,
                                        workloads_for)
from pylon.bench.mesh_runs.runs import LoadProfile, exec_load, idle_cpu, label_of, load_command, measure, startup_cost

#: How long a mode's path may take to answer its first 200 (pushes, certificates, the gateway's secret).
REACH_TIMEOUT_S = 40.0


@dataclass
class SessionSpec:
    """What one mesh runs: its proxy kind, modes, load profile, inputs, and where its files go."""

    proxy: str
    modes: list[Mode]
    profile: LoadProfile
    inputs: Inputs
    work: Path  # load JSON, logs
    state: Path  # the mesh's state directory (short: agents' Unix sockets live under it)
    run_id: str
    tag: str  # the label's telemetry field: the proxy kind, or the gateway's key mode
    rep: int = 1
    optional: set[str] = field(default_factory=set)  # modes that may stay unreachable (recorded, not fatal)
    measure_idle: bool = False  # sidecars' idle CPU and the load's start-up cost, before the runs
    rotate: bool = False  # start the mode order at rep - 1, so no mode always runs first


def bring_up(mesh: MeshCli, spec: SessionSpec, body_size: int) -> dict[str, bool]:
    """Start the mesh and the workloads the modes need; which modes answered 200 (optional ones may not)."""
    mesh("up", "-f", str(spec.inputs.install), "--proxy", spec.proxy)
    echo = [PYTHON, "-m", "pylon.cli", "echo", "--port", str(ECHO_PORT), "--body-size", str(body_size)]
    for workload in workloads_for(spec.modes):
        plain = ["--no-sidecar"] if workload in (SERVER_PLAIN, CLIENT_PLAIN) else []
        if workload in (SERVER, SERVER_PLAIN):
            mesh("run", workload, *plain, "--port", str(ECHO_PORT), "--", *echo)
        else:
            mesh("run", workload, *plain, "--port", str(CLIENT_PORT), "--", "sleep", "infinity")
    mesh("apply", "-f", str(spec.inputs.resources))
    reached = {}
    for mode in spec.modes:
        url = f"{mode.target}/echo?size=16"
        optional = mode.name in spec.optional
        reached[mode.name] = mesh.wait_for(mode.client, url, spec.inputs.ca, 15 if optional else REACH_TIMEOUT_S)
        if not reached[mode.name] and not optional:
            raise RuntimeError(f"{mode.name}: {url} from {mode.client} does not answer 200")
    return reached


def run_session(spec: SessionSpec, body_size: int, on_row: Callable[[dict[str, Any]], None] | None = None,
                after: Callable[[MeshCli, dict[str, Any]], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """One fresh mesh: up, workloads, warm-up, every mode once, `after` (read logs, status), down (always).
    The result: `rows` (one per mode), `reached`, `up_s`, and what `after` added; logs copied to work/logs-*."""
    spec.work.mkdir(parents=True, exist_ok=True)
    mesh = MeshCli(spec.state, spec.work / "mesh-commands.log")
    info: dict[str, Any] = {"proxy": spec.proxy, "tag": spec.tag, "rep": spec.rep, "rows": []}
    if mesh_namespaces():
        raise RuntimeError(f"pm- namespaces exist ({', '.join(mesh_namespaces())}): another mesh is up or a crashed "
                           "one is left over; not touching it (pylon mesh down with its PYLON_MESH_STATE first)")
    started = time.monotonic()
    try:
        info["reached"] = reached = bring_up(mesh, spec, body_size)
        info["up_s"] = time.monotonic() - started
        startup = None
        if spec.measure_idle:
            info["idle_millicores"] = idle_cpu(mesh)
            first = spec.modes[0]
            info["load_startup_cpu_s"] = startup = startup_cost(mesh, first, spec.profile, spec.work, spec.inputs.ca)
        for mode in spec.modes:  # warm-up: first connections, handshakes, caches
            if reached[mode.name] and spec.profile.warmup > 0:
                command = load_command(mode, spec.profile, spec.profile.warmup, spec.work / "warmup.json", "warmup",
                                       spec.inputs.ca)  # fmt: skip
                exec_load(mesh, mode, command, spec.profile.warmup)
        shift = (spec.rep - 1) % len(spec.modes) if spec.rotate else 0
        for mode in spec.modes[shift:] + spec.modes[:shift]:
            if not reached[mode.name]:
                row = {"mode": mode.name, "failed": "not reachable (did not answer 200)"}
            else:
                label = label_of(spec.run_id, mode, spec.profile, spec.tag)
                row = measure(mesh, mode, spec.profile, label, spec.work / f"{label}.json", spec.inputs.ca, startup)
            row.update(proxy=spec.proxy, tag=spec.tag, rep=spec.rep)
            info["rows"].append(row)
            if on_row is not None:
                on_row(row)
        if after is not None:
            after(mesh, info)
    finally:
        logs = spec.work / f"logs-{spec.tag}-{spec.rep}"
        if (spec.state / "logs").exists():
            shutil.copytree(spec.state / "logs", logs, dirs_exist_ok=True)
        info["down"] = mesh.down()
        info["left_over"] = mesh_namespaces()
    return info
