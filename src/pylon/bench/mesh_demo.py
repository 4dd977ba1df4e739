"""`pylon demo` on a real mesh: the seed's walk-through on this machine, network namespaces as pods.

For each place the ingress gateway's key can live (file, cryptomb, keyd, PKCS#11: `mesh_runs.key_modes`), in
turn: `pylon mesh up -f` an IstioOperator file whose gateway annotation names the key provider, a `pylon echo`
server workload with a sidecar, a client pod, the gateway's credential, Gateway and VirtualService applied;
then `pylon load` from the client pod through the gateway, keep-alive and a new TLS connection per request;
then `pylon mesh down`. The first mesh also runs Istio's sidecar-overhead modes (no sidecar, server sidecar,
both sidecars). A key mode that cannot run here is named with its reason, never simulated.

Output in the out dir: Istio's CSV (`istio-perf.csv`), `report.md`, `report.html` with `pylon report`'s run
table and charts (`report.png`), `runs.json`, and under `work/` each run's Fortio JSON, the mesh commands
and every pod's log. One mesh at a time: the bench lock is held throughout; every load is bounded by its
`-t`; `pylon mesh down` ends every mesh, also on failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pylon.bench.host import cpu_model
from pylon.bench.mesh_demo_report import (TextTable, chart_label, gateway_table, html_preface, markdown_report,
                                          sidecar_table)  # fmt: skip
from pylon.bench.mesh_runs.csv_rows import fmt, write_csv
from pylon.bench.mesh_runs.inputs import IngressGateway, write_inputs
from pylon.bench.mesh_runs.key_modes import KEY_MODES, KeyMode, cryptomb_status
from pylon.bench.mesh_runs.lock import bench_lock
from pylon.bench.mesh_runs.meshctl import MeshCli, mesh_namespaces
from pylon.bench.mesh_runs.modes import GW, INGRESS_MODES, MODES, ROLES, SIDECAR_MODES, Mode
from pylon.bench.mesh_runs.runs import LoadProfile
from pylon.bench.mesh_runs.session import SessionSpec, run_session
from pylon.bench.mesh_runs.summary import summarize
from pylon.keys import cryptomb

STATE = Path("/tmp/pm-demo/s")  # short: the agents' Unix sockets live under it (< 108 bytes)
TOOLS = ("ip", "nft", "setpriv", "curl", "unshare")


class MeshDemoError(Exception):
    """The mesh demo cannot go on (another mesh is up, the lock is busy); the message says what to do."""


def mesh_unavailable_reason() -> str | None:
    """Why the mesh demo cannot run here (None when it can): root, the tools, and network namespaces that can
    actually be made (a container may be root without that right). The probe makes an unnamed namespace, so it
    leaves no name behind."""
    if os.geteuid() != 0:
        return "not root, so no network namespaces for a mesh"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (iproute2, nftables, util-linux, curl), which the mesh needs"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"network namespaces are not available here (unshare --net: {probe.stderr.strip() or probe.returncode})"
    return None


@dataclass(frozen=True)
class MeshDemoOptions:
    out: Path
    key_modes: tuple[str, ...] = tuple(KEY_MODES)
    profile: LoadProfile = field(default_factory=lambda: LoadProfile(qps=1000, duration=5.0, newconn_qps=200,
                                                                     warmup=1.0))  # fmt: skip
    lock_timeout: float = 600.0


@dataclass(frozen=True)
class Planned:
    """One mesh of the demo: the gateway's key mode, and the perf modes it runs."""

    key_mode: KeyMode
    modes: list[Mode]


def plan(key_modes: tuple[str, ...]) -> tuple[list[Planned], dict[str, str]]:
    """The meshes to bring up in turn, and the key modes left out with why. The first mesh that runs also
    carries Istio's sidecar modes (they do not depend on the gateway's key)."""
    meshes: list[Planned] = []
    left_out: dict[str, str] = {}
    for name in key_modes:
        mode = KEY_MODES[name]
        reason = mode.unavailable()
        if reason:
            left_out[name] = reason
            continue
        names = (SIDECAR_MODES if not meshes else ()) + INGRESS_MODES
        meshes.append(Planned(mode, [MODES[m] for m in names]))
    return meshes, left_out


@dataclass(frozen=True)
class MeshDemoFiles:
    csv: Path
    markdown: Path
    html: Path
    png: Path | None
    runs: Path
    failed: tuple[str, ...] = ()  # key modes whose mesh run failed (the report says how)


def run_mesh_demo(options: MeshDemoOptions, console: Console) -> MeshDemoFiles:
    """Every planned mesh in turn, then the report. Raises MeshDemoError when it cannot start; a mesh that fails
    is reported in its key mode's row and the others still run."""
    meshes, left_out = plan(options.key_modes)
    notes = dict(left_out)  # per key mode: why it was left out, how it ran (cryptomb: accelerated or fallback)
    for name, reason in left_out.items():
        console.print(f"[yellow]gateway key mode {name}: {reason}[/yellow]")
    if "cryptomb" in (p.key_mode.name for p in meshes) and cryptomb.unavailable_reason():
        console.print(f"[yellow]cryptomb: {cryptomb.unavailable_reason()}; the gateway runs it with fallback: true, "
                      "i.e. signs in software - reported as fallback, not as accelerated[/yellow]")
    options.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    sessions: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with bench_lock(options.lock_timeout, on_wait=lambda: console.print("waiting for /tmp/pylon-bench.lock (another "
                                                                       "benchmark or mesh run holds it) ...")):
        if mesh_namespaces():
            raise MeshDemoError(f"a pylon mesh is already up ({', '.join(mesh_namespaces())}); "
                                "`pylon mesh down` (with its PYLON_MESH_STATE) first")  # fmt: skip
        if STATE.exists():  # our own state, its namespaces gone: a demo killed hard; `mesh up` would refuse it
            removed = MeshCli(STATE, options.out / "cleanup.log").down()
            console.print(f"removed a previous demo's leftover state: {removed}")
        run_id = uuid.uuid4().hex[:8]
        for planned in meshes:
            sessions.append(_one_mesh(planned, options, run_id, console, notes))
            rows += sessions[-1]["rows"]
    return _write_report(options, rows, sessions, notes, [p.key_mode.name for p in meshes], started, console)


def _one_mesh(planned: Planned, options: MeshDemoOptions, run_id: str, console: Console,
              notes: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    key = planned.key_mode
    console.print(f"[bold]mesh up with the gateway's key: {key.name}[/bold] ({key.what}); "
                  f"modes: {', '.join(m.name for m in planned.modes)}")
    gateway = IngressGateway(GW, key.proxy_config, templates=key.templates)
    inputs = write_inputs(options.out / "inputs", [gateway], stem=key.name)
    spec = SessionSpec(proxy="pylon", modes=planned.modes, profile=options.profile, inputs=inputs,
                       work=options.out / "work" / key.name, state=STATE, run_id=run_id, tag=key.name)
    began = time.monotonic()

    def after(mesh: MeshCli, info: dict[str, Any]) -> None:
        info["rejections"] = mesh.rejections()
        log = mesh.state_dir / "logs" / f"{GW}-sidecar.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        notes[key.name] = (cryptomb_status(text, cryptomb.unavailable_reason()) if key.name == "cryptomb"
                           else key.what)

    try:
        info = run_session(spec, options.profile.size, on_row=lambda row: console.print(_progress(row)), after=after)
    except Exception as exc:  # noqa: BLE001 - this key mode failed; say so and go on with the others
        console.print(f"[red]{key.name}: the mesh run failed: {exc}[/red]")
        notes[key.name] = f"failed: {str(exc)[:300]}"
        info = {"tag": key.name, "rows": [], "error": str(exc)[:3000]}
    info["seconds"] = time.monotonic() - began
    if info.get("left_over"):
        console.print(f"[red]pm- namespaces remain after mesh down: {info['left_over']}[/red]")
    console.print(f"  mesh {key.name}: {info['seconds']:.0f} s, then `pylon mesh down`: {info.get('down', '-')}")
    return info


def _progress(row: dict[str, Any]) -> str:
    if "ActualQPS" not in row:
        return f"  {row['tag']:9s} {row['mode']:24s} {row.get('failed', '?')}"
    cpu = " ".join(f"{r} {row[f'{r}_millicores']:.0f}mc" for r in ROLES if f"{r}_millicores" in row)
    return (f"  {row['tag']:9s} {row['mode']:24s} {row['ActualQPS']:7.1f} qps  p50 {fmt(row['p50_us'], ',.0f')} "
            f"p90 {fmt(row['p90_us'], ',.0f')} p99 {fmt(row['p99_us'], ',.0f')} µs  errors {row['errors']}/"
            f"{row['requests']}  {cpu}")


def _intro(options: MeshDemoOptions, started: str) -> list[str]:
    p = options.profile
    model = cpu_model()
    lines = [
        f"Run {started} on {os.cpu_count()} CPUs ({model}); every pod, proxy, pilot and the load share them "
        f"(load average when the report was written: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; anything "
        "else running on this machine shows in the latencies).",
        f"Load: `pylon load -qps {p.qps} -c {p.conn} -t {p.duration:g}s` from a client pod (`pylon mesh exec`), "
        f"GET /echo?size={p.size} from `pylon echo` in the server pod (sidecar: `pylon agent` + `pylon proxy`); "
        f"a new TLS connection per request (a full handshake, RSA-2048) at {p.newconn_qps} qps; warm-up "
        f"{p.warmup:g} s per mode. One fresh mesh per gateway key mode "
        "(`pylon mesh up -f inputs/<mode>-install.yaml`).",
        "CPU: millicores of each proxy's process tree over the run (Istio's cpu_mili_avg_istio_proxy_* columns); "
        "Istio's CSV has latencies in µs, the tables here in ms.",
    ]
    return lines


def _write_report(options: MeshDemoOptions, rows: list[dict[str, Any]], sessions: list[dict[str, Any]],
                  notes: dict[str, str], ran: list[str], started: str, console: Console) -> MeshDemoFiles:  # fmt: skip
    out = options.out
    notes = {key: notes[key] for key in options.key_modes if key in notes}  # in the order the modes ran
    summary = summarize(rows, [*SIDECAR_MODES, *INGRESS_MODES], list(options.key_modes), "tag")
    tables: list[TextTable] = []
    if ran:
        tables.append(sidecar_table(summary, ran[0]))
    tables.append(gateway_table(summary, list(options.key_modes), notes))
    intro = _intro(options, started)
    files = MeshDemoFiles(csv=out / "istio-perf.csv", markdown=out / "report.md", html=out / "report.html",
                          png=out / "report.png", runs=out / "runs.json",
                          failed=tuple(s["tag"] for s in sessions if "error" in s))  # fmt: skip
    write_csv(files.csv, rows)
    results = []
    for row in rows:
        if "ActualQPS" in row and Path(row["json"]).exists():
            result = json.loads(Path(row["json"]).read_text())
            result["Labels"] = chart_label(row["tag"], row["mode"])
            results.append(result)
    png = None
    if results:
        from pylon.bench.plots import render_png  # matplotlib is slow to import; only when charts are drawn

        png = render_png(results)
        files.png.write_bytes(png)  # type: ignore[union-attr]
    from pylon.bench.report import html_page

    files.html.write_text(html_page(results, png, title="pylon demo: the seed's benchmark on pylon mesh",
                                    preface=html_preface(tables, intro, notes)))  # fmt: skip
    listing = {"Istio's CSV": str(files.csv), "charts": str(files.png), "HTML": str(files.html),
               "every run": str(files.runs), "Fortio JSON, mesh commands, pod logs": str(out / "work")}
    files.markdown.write_text(markdown_report(tables, intro, notes, listing))
    files.runs.write_text(json.dumps({"started": started, "profile": options.profile.__dict__, "notes": notes,
                                      "summary": summary, "sessions": [{k: v for k, v in s.items() if k != "rows"}
                                                                       for s in sessions], "runs": rows},
                                     indent=2, default=str) + "\n")  # fmt: skip
    for table in tables:
        console.print(_rich(table))
    return files


def _rich(table: TextTable) -> Table:
    shown = Table(title=table.title)
    for i, name in enumerate(table.header):
        shown.add_column(name, justify="left" if i in (0, len(table.header) - 1) else "right")
    for row in table.rows:
        shown.add_row(*row)
    return shown
