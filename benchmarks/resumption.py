"""Resumed TLS 1.3 handshakes (session tickets on): CPU per handshake, pylon beside Envoy 1.40 and nginx.

Issue 18 asks for resumed handshakes per proxy-CPU-second, pylon / Envoy >= 1.0. A
resumed TLS 1.3 handshake (PSK with an ECDHE share) signs nothing, so what it
costs is the key exchange, the key schedule, ticket decryption and issuance, and
everything each server wraps around them: on a gateway whose clients come back,
this is most handshakes.

Every server runs handshakes.py's key-file setup (`--concurrency 1` / 1 worker,
in front of the same 1-worker nginx upstream, ECDSA P-256 certificate) with
session resumption left at its defaults instead of switched off: Envoy's and
pylon's stateless tickets (keys made at start), nginx's `ssl_session_tickets on`.
Load: `h2load --h1 -H 'Connection: close' -c 32`; h2load keeps the session of
its first connection per client and offers it on every later one, so after the
first handshake per client every handshake is a resumption. The admin stats
`ssl.session_reused` / `ssl.handshake` of pylon and Envoy show the share that
resumed (nginx has no such counter). Rounds go to the targets in a shuffled
order so the drift of a shared machine hits all alike; the figure is CPU ms per
handshake (process tree CPU / handshakes), the median over rounds, and the
median of the per-round ratio to Envoy.

Usage: python benchmarks/resumption.py [--rounds 6] [--requests 3000]
Writes benchmarks/results/resumption.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handshakes import (  # noqa: E402
    BODY_SIZE,
    TARGETS,
    TEMPLATES,
    Started,
    envoy_version,
    nginx_tls_conf,
    saturate,
    start_target,
)

from pylon.bench.targets import free_port, start_nginx, start_process  # noqa: E402
from pylon.identity.certs import make_test_pki  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.0  # pylon / Envoy, resumed handshakes per proxy-CPU-second
_RESUMPTION_OFF = ("          disable_stateless_session_resumption: true\n",
                   "          disable_stateful_session_resumption: true\n")
_NGINX_OFF = ("        ssl_session_cache off;\n", "        ssl_session_tickets off;\n")


def resumption_template(work: Path) -> Path:
    """handshakes.py's key-file template with session resumption at the servers' defaults."""
    text = (TEMPLATES / "handshake-file.yaml").read_text()
    for line in _RESUMPTION_OFF:
        if line not in text:
            raise RuntimeError(f"handshake-file.yaml changed shape: {line.strip()!r} not found")
        text = text.replace(line, "")
    path = work / "handshake-resumption.yaml"
    path.write_text(text)
    return path


def start_nginx_with_tickets(stack: contextlib.ExitStack, work: Path, upstream_port: int,
                             cert: Path, key: Path) -> Started:
    """handshakes.py's TLS nginx with `ssl_session_tickets on` (its ticket keys made at start)."""
    work.mkdir(parents=True)
    (work / "tmp").mkdir()
    port = free_port()
    text = nginx_tls_conf(work, port, upstream_port, cert, key)
    for line in _NGINX_OFF:
        if line not in text:
            raise RuntimeError(f"handshakes.nginx_tls_conf changed shape: {line.strip()!r} not found")
    text = text.replace(_NGINX_OFF[1], "        ssl_session_tickets on;\n")
    (work / "nginx.conf").write_text(text)
    running = stack.enter_context(start_process(
        "nginx", ["nginx", "-e", str(work / "error.log"), "-p", str(work), "-c", str(work / "nginx.conf")],
        port=port, log_path=work / "stdout.log"))
    return Started(next(t for t in TARGETS if t.kind == "nginx"), running)


def ssl_counters(started: Started) -> dict[str, int]:
    """The listener's `ssl.handshake` and `ssl.session_reused` (pylon and Envoy), summed over listeners."""
    if started.proxy.admin_port is None:
        return {}
    with urllib.request.urlopen(f"http://127.0.0.1:{started.proxy.admin_port}/stats?filter=ssl", timeout=5) as r:
        lines = r.read().decode().splitlines()
    out: dict[str, int] = {}
    for line in lines:
        name, _, value = line.partition(": ")
        if name.startswith("listener.") and name.endswith((".ssl.handshake", ".ssl.session_reused")):
            short = name.rsplit(".", 1)[1]
            out[short] = out.get(short, 0) + int(value)
    return out


def markdown(results: dict[str, Any]) -> str:
    meta, summary = results["meta"], results["summary"]
    lines = [
        f"# Resumed TLS 1.3 handshakes: pylon vs Envoy {meta['envoy_version']} and nginx",
        "",
        (f"`python benchmarks/resumption.py`, {meta['started']}. Session tickets on (each server's defaults; nginx "
         f"`ssl_session_tickets on`), ECDSA P-256 certificate, key file. {meta['rounds']} shuffled rounds of "
         f"`h2load --h1 -H 'Connection: close' -c 32 -n {meta['requests']}` per target (h2load resumes each "
         "client's first session on every later connection). Each server `--concurrency 1` / 1 worker in front of "
         f"the same 1-worker nginx upstream; {meta['cpus']} CPUs shared by server, upstream and h2load, nothing "
         "pinned. **CPU ms per handshake** = the server's process tree CPU / handshakes; medians over rounds."),
        "",
        "| target | CPU ms per handshake | resumed handshakes per CPU-s | / Envoy (median of per-round ratios) "
        "| resumed share (ssl.session_reused / ssl.handshake) | h2load CPU s per round | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, s in summary.items():
        share = f"{s['resumed_share']:.3f}" if s["resumed_share"] is not None else "- (no counter)"
        lines.append(f"| {label} | {s['cpu_ms_per_hs']:.3f} | {1000 / s['cpu_ms_per_hs']:.0f} | "
                     f"{s['per_cpu_over_envoy']:.2f} | {share} | {s['h2load_cpu_s']:.2f} | {s['errors']} |")
    verdict = summary["pylon"]["per_cpu_over_envoy"]
    lines += ["", f"Goal (issue 18): pylon / Envoy resumed handshakes per proxy-CPU-second >= {GOAL:g}: "
              f"**{verdict:.2f}**, {'met' if verdict >= GOAL else 'not met'}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each target once per round (6)")
    parser.add_argument("--requests", type=int, default=3000, help="handshakes per target and round (3000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args()
    started_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="pylon-resumption-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        cert, key = pki.server_ecdsa.cert, pki.server_ecdsa.key
        template = resumption_template(work)
        upstream = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
        started = {
            label: start_target(stack, dataclasses.replace(next(t for t in TARGETS if t.kind == kind), label=label,
                                                           template=str(template)),
                                work, upstream.port, cert, key)
            for label, kind in (("pylon", "pylon"), ("envoy", "envoy"))
        }
        started["nginx"] = start_nginx_with_tickets(stack, work / "nginx", upstream.port, cert, key)
        for s in started.values():
            saturate(s, 500)  # warm-up; also gives every h2load client a session to resume
        before = {label: ssl_counters(s) for label, s in started.items()}
        runs: dict[str, list[dict[str, Any]]] = {label: [] for label in started}
        for _ in range(args.rounds):
            for label in random.sample(list(started), len(started)):
                runs[label].append(saturate(started[label], args.requests))
        after = {label: ssl_counters(s) for label, s in started.items()}
    summary: dict[str, Any] = {}
    for label, rounds in runs.items():
        delta = {k: after[label][k] - before[label].get(k, 0) for k in after[label]}
        summary[label] = {
            "cpu_ms_per_hs": statistics.median(1000 / r["hs_per_proxy_cpu_s"] for r in rounds),
            "per_cpu_over_envoy": statistics.median(r["hs_per_proxy_cpu_s"] / e["hs_per_proxy_cpu_s"]
                                                    for r, e in zip(rounds, runs["envoy"])),
            "resumed_share": delta["session_reused"] / delta["handshake"] if delta.get("handshake") else None,
            "h2load_cpu_s": statistics.median(r["h2load_cpu_s"] for r in rounds),
            "errors": sum(r["failed"] for r in rounds),
        }
    results = {"meta": {"started": started_at, "rounds": args.rounds, "requests": args.requests,
                        "cpus": os.cpu_count(), "envoy_version": envoy_version()},
               "summary": summary, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "resumption.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / "resumption.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
