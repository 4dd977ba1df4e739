"""Istio's Fortio perf benchmark on `pylon mesh`: pylon sidecars vs real Envoy sidecars, side by side.

The whole mesh runs on this machine (`pylon mesh`: network namespaces as pods, pilot with its CA, injected
sidecars). Per proxy kind (`pylon mesh up --proxy pylon|envoy`) one mesh holds every workload of every mode:

  server        `pylon echo` with a sidecar            (Istio's fortioserver, captured port 8080)
  server-plain  `pylon echo`, `run --no-sidecar`       (the server's uncaptured port, 8077 in Istio)
  client        idle, with a sidecar                   (fortioclient)
  client-plain  idle, `run --no-sidecar`               (a client outside the mesh)
  istio-ingressgateway   the install file's gateway, key file
  ingress-cryptomb       a second gateway whose proxy.istio.io/config asks for privateKeyProvider cryptomb
                         (fallback: true)

and the load runs inside a client pod: `pylon mesh exec <client> -- python -m pylon.cli load` (Fortio's
flags and JSON) against `/echo?size=<size>` (Istio's runner URL: a GET answered with a <size>-byte body;
default 1024, Istio's `--size`). Modes, named as Istio's runner labels them:

  baseline        client-plain -> server-plain          (no_istio: no sidecar anywhere)
  client_sidecar  client -> server-plain                (--clientsidecar)
  server_sidecar  client-plain -> server                (--serversidecar)
  both_sidecar    client -> server                      (--bothsidecar, Istio's default)
  ingress_http    client-plain -> gateway :8080 (HTTP) -> server's sidecar (mTLS)          (--ingress)
  ingress_https   the same over TLS on :8443 (Gateway with credentialName and a Secret), keep-alive
  ingress_https_newconn           every request on a new TLS connection (a full handshake each), at
                                  --newconn-qps: also handshakes per gateway-CPU-second
  ingress_https_newconn_cryptomb  the same through ingress-cryptomb; on a CPU without AVX-512 crypto_mb
                                  cannot run: the pylon gateway falls back to the key in software (reported
                                  as such); stock Envoy has no cryptomb extension and rejects the config
                                  (reported instead of a number)

Per run: actual QPS, p50/p90/p99/p999 in µs (pylon load's histogram, 10 µs resolution), errors, and for every
proxy on the path (client sidecar, server sidecar, gateway) the CPU of its process tree (`pylon agent` and
its children: the proxy and its workers; /proc utime+stime, before and after the run) as millicores over
the run and CPU-ms per 1,000 requests, and its RSS (VmRSS of the tree, averaged over 0.5 s samples). Also
the load client's CPU (rusage of the exec'd client, minus its start-up, measured once per mesh) to show it
was not the bottleneck. Meshes alternate (rep 1: pylon then envoy, rep 2: envoy then pylon, ...), a fresh
mesh per repetition and proxy kind, and the mode order rotates; results are medians.

Only one mesh may run on this machine at a time (namespace names are global): the benchmark takes
/tmp/pylon-bench.lock, refuses to start if any `pm-` namespace exists, and always runs `pylon mesh down`.
The machinery (modes, inputs, runs, Istio's CSV, medians) is `pylon.bench.mesh_runs`, shared with `pylon demo`;
this file is the pylon-vs-Envoy comparison and its report.
Every load run is bounded in time. Nothing leaves the machine: all traffic is between the mesh's namespaces.

Usage: python benchmarks/mesh_perf.py [--qps 1000] [--conn 16] [--duration 10] [--reps 3] [--quick]
Writes benchmarks/results/mesh_perf.{json,md,csv} (or --out DIR / --name). Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from pylon.bench.host import describe, host_facts
from pylon.bench.mesh_runs.csv_rows import fmt, write_csv
from pylon.bench.mesh_runs.inputs import Inputs, IngressGateway, write_inputs
from pylon.bench.mesh_runs.key_modes import CRYPTOMB_CONFIG
from pylon.bench.mesh_runs.lock import LockBusy, bench_lock
from pylon.bench.mesh_runs.meshctl import MeshCli
from pylon.bench.mesh_runs.modes import GW, GW_CMB, MODES, ROLES
from pylon.bench.mesh_runs.runs import LoadProfile
from pylon.bench.mesh_runs.session import SessionSpec, run_session
from pylon.bench.mesh_runs.summary import med, summarize

ROOT = Path(__file__).resolve().parent.parent
STATE = Path("/tmp/pm-bench/s")  # short: the agents' Unix sockets live under it (< 108 bytes)
PROXIES = ("pylon", "envoy")
GATEWAYS = [IngressGateway(GW, http=True), IngressGateway(GW_CMB, CRYPTOMB_CONFIG)]


def gateway_log_notes(state: Path) -> list[str]:
    """The cryptomb gateway's key-provider lines: a fallback to software, or Envoy refusing the provider."""
    log = state / "logs" / f"{GW_CMB}-sidecar.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    keys = ("cannot run here", "failed to load private key provider")
    found: dict[str, str] = {}
    for line in text.splitlines():
        if any(k in line.lower() for k in keys):
            found.setdefault(line.split("]")[-1].strip()[:400], line.strip()[:500])  # one per message
    return list(found.values())[:6]


def after_runs(mesh: MeshCli, info: dict[str, Any]) -> None:
    """Before the mesh goes: what proxies rejected, and what the cryptomb gateway logged about its provider."""
    info["rejections"] = mesh.rejections()
    info["cryptomb_log"] = gateway_log_notes(mesh.state_dir)


def print_row(row: dict[str, Any]) -> None:
    print(f"  rep {row['rep']} {row['proxy']:5s} {row['mode']:31s} " + (
        f"{row['ActualQPS']:7.1f} qps p50 {row['p50_us']:8.0f} p90 {row['p90_us']:8.0f} p99 {row['p99_us']:8.0f} µs"
        f" err {row['errors']:5d}  cpu " + " ".join(f"{r} {row[f'{r}_millicores']:.0f}mc" for r in ROLES
                                                 if f"{r}_millicores" in row)
        + f"  load {fmt(row['load_millicores'])}mc" if "ActualQPS" in row else row.get("failed", "?")), flush=True)


def add_ratios(summary: dict[str, Any]) -> None:
    """pylon / Envoy for each mode, where both have usable runs."""
    for entry in summary.values():
        ratios = {}
        for key in ("p90_us", "added_p90_us", *(f"{role}_{k}" for role in ROLES for k in ("cpu_ms_per_1k", "rss_mib")),
                    "handshakes_per_gateway_cpu_s"):
            p, e = entry["pylon"].get(key), entry["envoy"].get(key)
            if p is not None and e and entry["pylon"]["reps"] and entry["envoy"]["reps"]:
                ratios[key] = p / e
        entry["ratio_pylon_over_envoy"] = ratios


def markdown(summary: dict[str, Any], meta: dict[str, Any], sessions: list[dict[str, Any]]) -> str:
    lines = [
        "# Istio's Fortio perf benchmark on `pylon mesh`: pylon sidecars vs Envoy sidecars",
        "",
        f"pylon {meta['pylon']} at {meta['commit']}, Envoy {meta['envoy_version']}; {meta['machine']}; "
        f"run {meta['started']}. Medians of {meta['reps']} repetition(s); each repetition is a fresh mesh per proxy "
        f"kind, pylon and Envoy meshes alternating, mode order rotating.",
        "",
        f"Load: `pylon load -qps {meta['qps']} -c {meta['conn']} -t {meta['duration_s']:g}s -r 0.00001` inside the "
        f"client pod (`pylon mesh exec`), GET `/echo?size={meta['size']}` (Istio's runner URL: a {meta['size']}-byte "
        f"response) from `pylon echo` in the server pod; keep-alive, except the `newconn` modes "
        f"(`-new-connection`, a full TLS handshake per request, at {meta['newconn_qps']} qps). "
        f"Warm-up {meta['warmup_s']:g} s per mode per mesh. Latencies in µs, as Istio's CSV.",
        "",
        "Proxy CPU: utime+stime of the sidecar's process tree (`pylon agent` and its children: the proxy and its "
        "workers; Istio's `istio-proxy` container holds pilot-agent and Envoy alike), over the run, per proxy on the "
        "path. mc = millicores over the run; ms/1k = CPU-ms per 1,000 requests; RSS = VmRSS of the tree (MiB, "
        "averaged over the run; `proxy` = the tree without the agent).",
        "",
        "## Latency and throughput",
        "",
        "| mode | proxy | reps | actual qps | p50 | p90 | p99 | p999 | +p50 vs baseline | +p90 | +p99 | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, entry in summary.items():
        for proxy in PROXIES:
            s = entry[proxy]
            if not s["reps"]:
                lines.append(f"| {mode} | {proxy} | 0 | - | - | - | - | - | - | - | - | "
                             f"{'; '.join(s.get('failures', ['no run']))} |")
                continue
            added = ("-", "-", "-") if mode == "baseline" else tuple(fmt(s[f"added_p{p}_us"], "+.0f") for p in ("50", "90", "99"))
            lines.append(f"| {mode} | {proxy} | {s['reps']} | {fmt(s['ActualQPS'], '.1f')} | {fmt(s['p50_us'])} | "
                         f"{fmt(s['p90_us'])} | {fmt(s['p99_us'])} | {fmt(s['p999_us'])} | {added[0]} | {added[1]} | "
                         f"{added[2]} | {s['errors']} / {s['requests']} |")
    lines += [
        "",
        "## Proxy CPU and memory (per proxy on the path)",
        "",
        "| mode | proxy | client sidecar mc | ms/1k | server sidecar mc | ms/1k | gateway mc | ms/1k | "
        "RSS client / server / gateway MiB (proxy only) | load client mc | echo server mc |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for mode, entry in summary.items():
        for proxy in PROXIES:
            s = entry[proxy]
            if not s["reps"]:
                continue
            cells = []
            for role in ROLES:
                cells += [fmt(s[f"{role}_millicores"]), fmt(s[f"{role}_cpu_ms_per_1k"])]
            rss = " / ".join("-" if s[f"{r}_rss_mib"] is None else
                             f"{s[f'{r}_rss_mib']:.0f} ({s[f'{r}_proxy_rss_mib']:.0f})" for r in ROLES)
            lines.append(f"| {mode} | {proxy} | {' | '.join(cells)} | {rss} | {fmt(s['load_millicores'])} | "
                         f"{fmt(s['echo_millicores'])} |")
    lines += [
        "",
        "## pylon / Envoy",
        "",
        "| mode | p90 | added p90 | client sidecar CPU/req | server sidecar CPU/req | gateway CPU/req | "
        "RSS client / server / gateway | handshakes per gateway-CPU-s |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for mode, entry in summary.items():
        r = entry["ratio_pylon_over_envoy"]
        if not r:
            continue
        rss = " / ".join(fmt(r.get(f"{role}_rss_mib"), ".2f") for role in ROLES)
        lines.append(f"| {mode} | {fmt(r.get('p90_us'), '.2f')} | {fmt(r.get('added_p90_us'), '.2f')} | "
                     f"{fmt(r.get('client_cpu_ms_per_1k'), '.2f')} | {fmt(r.get('server_cpu_ms_per_1k'), '.2f')} | "
                     f"{fmt(r.get('gateway_cpu_ms_per_1k'), '.2f')} | {rss} | "
                     f"{fmt(r.get('handshakes_per_gateway_cpu_s'), '.2f')} |")
    lines += ["", "## Handshakes (ingress HTTPS, a new TLS connection per request; RSA-2048 credential)", "",
              "| gateway key | proxy | handshakes per gateway-CPU-s | gateway CPU-ms per handshake | actual qps | "
              "p50 / p99 µs | note |", "|---|---|---:|---:|---:|---|---|"]
    for mode, key in (("ingress_https_newconn", "key file"), ("ingress_https_newconn_cryptomb", "cryptomb requested")):
        if mode not in summary:
            continue
        for proxy in PROXIES:
            s = summary[mode][proxy]
            note = ""
            if mode.endswith("cryptomb"):
                logs = [line for sess in sessions if sess["proxy"] == proxy for line in sess.get("cryptomb_log", [])]
                rejected = [line for sess in sessions if sess["proxy"] == proxy for line in sess.get("rejections", [])
                            if GW_CMB in line]  # fmt: skip
                if proxy == "pylon":
                    fallback = [line for line in logs if "cannot run here" in line]
                    note = ("cryptomb requested, not available here (fallback to software), never accelerated: the "
                            f"gateway logged `{fallback[0].split('] ')[-1][:220]}`" if fallback
                            else "cryptomb requested; no fallback warning found in the gateway log")
                else:
                    sds = [line for line in rejected if " sds: " in line] or rejected
                    note = ("Envoy (stock, no contrib extensions) rejects the cryptomb key provider, so the gateway "
                            "has no certificate and serves nothing on :8443; `pylon mesh status`: "
                            f"`{sds[0][:200]}`" + (" (CDS rejected too: its mTLS clusters carry the workload key with "
                                                   "the same provider)" if any(" cds: " in x for x in rejected) else "")
                            if rejected else "not reachable with Envoy; no rejection recorded")
            if not s["reps"]:
                lines.append(f"| {key} | {proxy} | not measured | - | - | - | {note or '; '.join(s.get('failures', []))} |")
                continue
            hs = s["handshakes_per_gateway_cpu_s"]
            lines.append(f"| {key} | {proxy} | {fmt(hs)} | {fmt(1000 / hs if hs else None, '.3f')} | "
                         f"{fmt(s['ActualQPS'], '.1f')} | {fmt(s['p50_us'])} / {fmt(s['p99_us'])} | {note} |")
    idle = {proxy: med([sess["idle_millicores"].get(w) for sess in sessions if sess["proxy"] == proxy
                        and "idle_millicores" in sess for w in ("client", "server")]) for proxy in PROXIES}
    startup = med([sess.get("load_startup_cpu_s") for sess in sessions])
    lines += [
        "",
        "## Reading it",
        "",
        f"- Istio's anchor (its 1,000-service test on real clusters): about 0.35 vCPU per 1,000 rps per proxy "
        f"(350 mc at 1,000 qps, i.e. 350 CPU-ms per 1,000 requests) and +2.65 ms at p90 with both sidecars. This "
        f"machine is different: {meta['machine']}, where client, server, both sidecars, the gateway and pilot all "
        f"share the same cores, so latencies include queueing behind the other processes; compare pylon with Envoy "
        f"here, not these numbers with Istio's.",
        f"- Sidecars idle (no traffic; agent, xDS, health): pylon {fmt(idle['pylon'])} mc, Envoy {fmt(idle['envoy'])} mc "
        f"(median per sidecar). Each run's proxy CPU window also holds ~1 s of `mesh exec` start-up at this idle rate.",
        f"- Load client: `pylon load` is one Python process (at most 1,000 mc); its millicores above are its "
        f"steady-state rate (its own /proc CPU from 1.5 s after start to its end, start-up excluded; start-up and "
        f"`mesh exec` cost ~{fmt(startup, '.2f')} CPU-s per run). A load client near 1,000 mc, or an actual qps below "
        f"the requested rate, would mean the client, not the mesh, bounded the run.",
        "- Proxies as `pylon mesh` starts them: `pylon agent --concurrency 2` (Istio's sidecar default) for both, "
        "i.e. 2 worker threads in Envoy and 2 worker processes in `pylon proxy`.",
        "",
    ]
    return "\n".join(lines)


def commit() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "src")
    return git("rev-parse", "--short", "HEAD") + ("+changes in src/" if dirty else "")


def envoy_version() -> str:
    from pylon.bench.targets import find_envoy

    out = subprocess.run([find_envoy(), "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)  # "<sha>/1.40.0/Clean/RELEASE/BoringSSL"
    return match.group(1) if match else out.strip()


def machine() -> str:
    return describe(host_facts())


def one_mesh(proxy: str, rep: int, modes: list[str], profile: LoadProfile, work: Path, inputs: Inputs, run_id: str,
             body_size: int) -> dict[str, Any]:  # fmt: skip
    """A fresh mesh of `proxy` sidecars running every mode once; a failure is recorded, the other meshes go on."""
    started = time.monotonic()
    spec = SessionSpec(proxy=proxy, modes=[MODES[m] for m in modes], profile=profile, inputs=inputs, work=work,
                       state=STATE, run_id=run_id, tag=proxy, rep=rep, optional={"ingress_https_newconn_cryptomb"},
                       measure_idle=True, rotate=True)  # fmt: skip
    try:
        info = run_session(spec, body_size, on_row=print_row, after=after_runs)
    except Exception as exc:  # noqa: BLE001 - record and go on with the other meshes
        print(f"  rep {rep} {proxy}: FAILED {exc}", file=sys.stderr, flush=True)
        info = {"proxy": proxy, "rep": rep, "rows": [], "error": str(exc)[:3000]}
    if info.get("left_over"):
        print(f"WARNING: pm- namespaces remain after down: {info['left_over']}", file=sys.stderr)
    print(f"  rep {rep} {proxy}: mesh session {time.monotonic() - started:.0f} s", flush=True)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--qps", type=int, default=1000, help="requested qps per run (1000, Istio's default)")
    parser.add_argument("--conn", type=int, default=16, help="connections (16, Istio's default)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument("--size", type=int, default=1024, help="response size, /echo?size= (1024, Istio's --size)")
    parser.add_argument("--newconn-qps", type=int, default=250,
                        help="qps of the new-TLS-connection-per-request modes (250: below the gateway's handshake "
                             "capacity here, so latency is not a queue)")
    parser.add_argument("--body-size", type=int, default=1024, help="pylon echo's default body size (1024)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, a fresh mesh per proxy each (3)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per mode per mesh (2)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    parser.add_argument("--proxies", default=",".join(PROXIES), help="pylon,envoy")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 rep x 3 s, 1 s warm-up")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="mesh_perf", help="results file stem (mesh_perf)")
    parser.add_argument("--lock-timeout", type=float, default=600, help="seconds to wait for the bench lock (600)")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.duration, args.warmup = 1, 3.0, 1.0
    modes = [m for m in args.modes.split(",") if m]
    proxies = [p for p in args.proxies.split(",") if p]
    if [m for m in modes if m not in MODES] or [p for p in proxies if p not in PROXIES]:
        parser.error("unknown mode or proxy")
    if "baseline" not in modes:
        modes.insert(0, "baseline")  # added latency is against it
    if os.geteuid() != 0:
        print("pylon mesh needs root (network namespaces)", file=sys.stderr)
        return 1
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit(), "pylon": _pylon_version(),
            "envoy_version": envoy_version(), "machine": machine(), "qps": args.qps, "conn": args.conn,
            "duration_s": args.duration, "size": args.size, "newconn_qps": args.newconn_qps,
            "body_size": args.body_size, "reps": args.reps, "warmup_s": args.warmup, "modes": modes,
            "proxies": proxies, "quick": args.quick}  # fmt: skip
    work = STATE.parent / "work"
    shutil.rmtree(work, ignore_errors=True)
    inputs = write_inputs(work, GATEWAYS)
    profile = LoadProfile(qps=args.qps, conn=args.conn, duration=args.duration, size=args.size,
                          newconn_qps=args.newconn_qps, warmup=args.warmup)  # fmt: skip
    sessions: list[dict[str, Any]] = []
    try:
        with bench_lock(args.lock_timeout, on_wait=lambda: print("waiting for /tmp/pylon-bench.lock ...", flush=True)):
            print(f"{args.reps} rep(s) x {len(modes)} modes x {proxies}; {args.qps} qps, -c {args.conn}, "
                  f"{args.duration:g} s; commit {meta['commit']}", flush=True)
            for rep in range(1, args.reps + 1):
                run_id = uuid.uuid4().hex[:8]
                for proxy in (proxies if rep % 2 else proxies[::-1]):
                    sessions.append(one_mesh(proxy, rep, modes, profile, work, inputs, run_id, args.body_size))
    except LockBusy as exc:
        print(exc, file=sys.stderr)
        return 1
    rows = [row for sess in sessions for row in sess["rows"]]
    summary = summarize(rows, modes, list(PROXIES), "proxy")
    add_ratios(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "sessions": [{k: v for k, v in s.items() if k != "rows"} for s in sessions],
         "runs": rows}, indent=2, default=str) + "\n")  # fmt: skip
    write_csv(args.out / f"{args.name}.csv", rows)
    table = markdown(summary, meta, sessions)
    (args.out / f"{args.name}.md").write_text(table)
    print(table)
    return 0 if all("error" not in s for s in sessions) else 2


def _pylon_version() -> str:
    from pylon import __version__

    return __version__


if __name__ == "__main__":
    sys.exit(main())
