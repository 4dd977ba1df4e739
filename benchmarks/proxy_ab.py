"""pylon against an earlier pylon: the same configs, upstream and load, side by side, to show what a change costs.

A refactor of the data path (the codec/stream split, new filter seams) must keep the speed; comparing
each version with Envoy separately mixes in the machine's drift between runs. This starts the proxy
from this tree and from a git revision (checked out into a temporary worktree) with the same config,
in front of one 1-worker nginx, and loads each with `wrk -t1 -c50` (keep-alive) in interleaved
repetitions, alternating which goes first. The `plain-close` variant sends `Connection: close`: a new
TCP connection per request, so accepting, setting up and tearing down a connection is most of its cost
(what a TLS handshake pays besides the TLS itself). The metric is requests per proxy-CPU-second; wrk's CPU is
recorded to show it was not the limit.

`--baseline-python PATH` runs the baseline side on another interpreter (a virtualenv's python with pylon's
dependencies), e.g. `--baseline HEAD --baseline-python OTHER/bin/python` compares two builds of CPython running
the same code. `--baseline-env NAME=VALUE` sets the baseline side's environment, e.g. `--baseline HEAD
--baseline-env PYLON_PURE_PYTHON=1` compares the compiled hot modules with the interpreted ones (pylon.compiled).
Each side runs its own tree's builds of the hot modules (the baseline's are compiled into its worktree).

Usage: python benchmarks/proxy_ab.py --baseline REV [--baseline-python PATH] [--reps 5] [--duration 6]
[--variants plain json-log]
Writes benchmarks/results/proxy_ab.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pylon.bench.scenario import render_template
from pylon.bench.host import describe, host_facts
from pylon.bench.procfs import side_thread_cpu_seconds
from pylon.bench.paired import paired_spread, spread_text
from pylon.bench.targets import Running, free_port, pylon_workers, run_wrk, start_nginx, start_process
from pylon.identity.certs import make_test_pki

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "examples" / "bench"
TEMPLATE_OF = {"plain": "proxy-plain.yaml", "plain-close": "proxy-plain.yaml", "json-log": "proxy-json-log.yaml",
               "tls13": "proxy-tls.yaml"}
#: what the load sends besides wrk's request, per variant
HEADERS_OF = {"plain-close": ("Connection: close",)}
CONNECTIONS = 50


@contextlib.contextmanager
def baseline_tree(rev: str, python: str) -> Any:
    """`rev` checked out in a temporary worktree, with its native modules (the key hook, the HTTP/2 codec's binding:
    git holds their sources, not the builds) copied from this tree where their C and build sources are the same, else
    built from its own, and its own builds of the hot modules (this tree's are copied first: a build is used only for
    the source it was made from, so only what differs is compiled); removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="pylon-ab-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    try:
        for built in (ROOT / "src" / "pylon").rglob("_*.abi3.so"):
            target = path / built.relative_to(ROOT)
            if not target.parent.is_dir():  # revisions older than a native module have nothing to load it
                continue
            if _native_sources(built.parent) == _native_sources(target.parent):
                shutil.copy2(built, target)
            else:  # the module's C differs at `rev`: its own build scripts build it in place
                for script in sorted(target.parent.glob("_*build.py")):
                    subprocess.run([python, script.name], cwd=target.parent, check=True, capture_output=True)
        compiled = path / "src" / "pylon" / "compiled"
        if compiled.is_dir():  # revisions before pylon.compiled run interpreted
            shutil.copytree(ROOT / "src" / "pylon" / "compiled" / "builds", compiled / "builds", dirs_exist_ok=True)
            subprocess.run([python, "-m", "pylon.compiled", "build"], check=True,
                           env={**os.environ, "PYTHONPATH": str(path / "src")})
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def _native_sources(directory: Path) -> list[bytes]:
    """What a directory's native module is built from: its C files and its cffi build scripts."""
    return [path.read_bytes() for path in sorted([*directory.glob("*.c"), *directory.glob("_*build.py")])]


def start_proxy(python: str, tree: Path, config: Path, port: int, admin: int, log: Path,
                extra_env: dict[str, str] | None = None) -> Running:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), **(extra_env or {})}
    args = [python, "-m", "pylon.cli", "proxy", "-c", str(config), "--concurrency", "1", "-l", "warning"]
    return start_process(f"pylon ({tree})", args, port=port, admin_port=admin, log_path=log, env=env)


def hot_modules(python: str, tree: Path, env: dict[str, str]) -> str:
    """How `tree`'s proxy loads its hot modules under `env` (pylon.compiled; older trees have no builds)."""
    probe = ("from pylon.bench.host import compiled_modules; print(compiled_modules())")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree / "src"), **env})
    return done.stdout.strip() if done.returncode == 0 else "interpreted (no pylon.compiled)"


def interpreter(python: str) -> str:
    """`python`'s version, path and whether libpython is a shared library it loads or linked into the executable
    (a distribution's build, e.g. Debian's /usr/bin/python3.11, is linked statically and optimized with PGO and LTO;
    pyenv's default build is neither)."""
    probe = ("import sys; maps = open('/proc/self/maps').read(); "
             "print(sys.version.split()[0], sys.executable, "
             "'(shared libpython)' if 'libpython' in maps else '(libpython linked in)')")
    return subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare with (e.g. HEAD~3)")
    parser.add_argument("--baseline-python", default=sys.executable,
                        help="interpreter of the baseline side (default: this one)")
    parser.add_argument("--baseline-env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment of the baseline side (e.g. PYLON_PURE_PYTHON=1)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--variants", nargs="+", default=["plain", "json-log"], choices=sorted(TEMPLATE_OF))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline], check=True,
                         capture_output=True, text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], check=True,
                      capture_output=True, text=True).stdout.strip():
        head += "+uncommitted"  # this side runs the working tree, not HEAD
    runs: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="pylon-ab-work-") as tmp:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        trees = {"this": ROOT, "baseline": stack.enter_context(baseline_tree(rev, args.baseline_python))}
        pythons = {"this": sys.executable, "baseline": args.baseline_python}
        envs = {"this": {}, "baseline": dict(pair.split("=", 1) for pair in args.baseline_env)}
        modules = {side: hot_modules(pythons[side], tree, envs[side]) for side, tree in trees.items()}
        upstream_port = free_port()
        nginx = stack.enter_context(start_nginx(upstream_port))
        proxies: dict[tuple[str, str], Running] = {}
        for variant in args.variants:
            for side, tree in trees.items():
                listen, admin = free_port(), free_port()
                config = work / f"{variant}-{side}.yaml"
                config.write_text(render_template((TEMPLATES / TEMPLATE_OF[variant]).read_text(), {
                    "listen_port": listen, "admin_port": admin, "upstream_port": upstream_port, "workdir": work,
                    "server_cert": pki.server_ecdsa.cert, "server_key": pki.server_ecdsa.key,
                    "ca_cert": pki.ca.cert}))
                proxies[variant, side] = stack.enter_context(
                    start_proxy(pythons[side], tree, config, listen, admin, work / f"{variant}-{side}.log",
                                envs[side]))
        for rep in range(args.reps):
            for variant in args.variants:
                order = ("this", "baseline") if rep % 2 == 0 else ("baseline", "this")
                for side in order:
                    proc = proxies[variant, side]
                    scheme = "https" if variant == "tls13" else "http"
                    worker = next(iter(pylon_workers(proc).values()))
                    before, side_before = proc.cpu_seconds(), side_thread_cpu_seconds(worker)
                    w = run_wrk(f"{scheme}://127.0.0.1:{proc.port}/", duration=args.duration,
                                connections=CONNECTIONS, headers=HEADERS_OF.get(variant, ()))
                    cpu = proc.cpu_seconds() - before
                    side_cpu = side_thread_cpu_seconds(worker) - side_before
                    runs.append({"variant": variant, "side": side, "rep": rep, "requests": w.requests,
                                 "rps": w.requests_per_sec, "errors": w.errors, "proxy_cpu_s": cpu,
                                 "req_per_proxy_cpu_s": w.requests / cpu if cpu else None,
                                 "side_threads_us_per_req": side_cpu / w.requests * 1e6 if w.requests else None,
                                 "wrk_cpu_s": w.cpu_seconds, "p99_ms": w.latency_ms.get(99.0)})
                    print(f"rep {rep + 1} {variant:8} {side:8} {runs[-1]['req_per_proxy_cpu_s'] or 0:8.0f} req/CPU-s",
                          flush=True)
    summary = {}
    for variant in args.variants:
        entry = {}
        for side in ("this", "baseline"):
            rows = [r for r in runs if r["variant"] == variant and r["side"] == side]
            entry[side] = {key: statistics.median(r[key] for r in rows)
                           for key in ("req_per_proxy_cpu_s", "side_threads_us_per_req", "rps", "p99_ms",
                                       "wrk_cpu_s")}
            entry[side]["errors"] = sum(r["errors"] for r in rows)
        entry["ratio"] = entry["this"]["req_per_proxy_cpu_s"] / entry["baseline"]["req_per_proxy_cpu_s"]
        entry["paired"] = paired_spread(runs, variant, "req_per_proxy_cpu_s", numerator="this",
                                        denominator="baseline", side="side")
        summary[variant] = entry
    meta = {"this": head, "baseline": rev, "baseline_env": args.baseline_env, "hot_modules": modules,
            "this_python": interpreter(sys.executable),
            "baseline_python": interpreter(args.baseline_python), "reps": args.reps, "duration_s": args.duration,
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "host": host_facts()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy_ab.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2))
    lines = [f"# pylon {head} vs pylon {rev}", "",
             f"{args.reps} interleaved repetitions x {args.duration:g} s, `wrk -t1 -c{CONNECTIONS}` keep-alive "
             "(plain-close: `Connection: close`, a new connection per request), both "
             f"`--concurrency 1`, one 1-worker nginx upstream; medians; {meta['cpus']} CPUs. Run at {meta['started']}.",
             "", f"Interpreters: this {meta['this_python']}; baseline {meta['baseline_python']}"
             + (f", with {' '.join(args.baseline_env)}." if args.baseline_env else "."),
             "", f"Hot modules (pylon.compiled): this {modules['this']}; baseline {modules['baseline']}.",
             "", f"Host: {describe(meta['host'])}.",
             "", "Worker side threads: CPU per request of the worker's threads other than its event loop (the access-log "
             "writer), included in the proxy's CPU.",
             "", "| variant | tree | req per proxy-CPU-s | µs CPU/req | of it worker side threads | req/s | p99 ms "
             "| wrk CPU s/run | errors | this/baseline | per-rep ratios: median (range) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for variant, entry in summary.items():
        for side in ("this", "baseline"):
            s = entry[side]
            ratio = f"**{entry['ratio']:.3f}**" if side == "this" else ""
            paired = spread_text(entry["paired"]) if side == "this" else ""
            lines.append(f"| {variant} | {side} ({head if side == 'this' else rev}) | {s['req_per_proxy_cpu_s']:.0f} "
                         f"| {1e6 / s['req_per_proxy_cpu_s']:.1f} | {s['side_threads_us_per_req']:.2f} "
                         f"| {s['rps']:.0f} | {s['p99_ms']:.2f} | {s['wrk_cpu_s']:.2f} | {s['errors']} | {ratio} "
                         f"| {paired} |")
    (args.out / "proxy_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
