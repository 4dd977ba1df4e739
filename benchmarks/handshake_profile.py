"""Where a full TLS 1.3 handshake's CPU goes: pylon (key file, cryptomb) beside nginx and Envoy.

handshakes.py measures how many handshakes each target does per CPU-second;
this says why. Per key type (ECDSA P-256, where the signature is almost free,
and RSA-2048) and target (`--concurrency 1`, the templates and nginx upstream
of handshakes.py), under `h2load --h1 -H 'Connection: close' -c 32` (one full
handshake and one proxied request per connection):

1. CPU per handshake: the process tree's CPU time / handshakes, the median
   of `--reps` runs without a profiler (the machine is shared: CPU time, not
   rates);
2. `perf record --call-graph dwarf` on every process of the tree (native
   frames, kernel included), each sample sorted into a category by
   `handshake_split` (signature, key exchange, key schedule, RNG, ...);
3. for pylon, `py-spy record --native`, whose Python frames split what perf
   can only call "Python code" into TLS transport, connection set-up and
   teardown, and proxying the request.

Milliseconds per category = (1) x the category's share in (2)/(3). The
profilers' own overhead stays out of (1). Also checked: whether each target
issues TLS 1.3 session tickets with the benchmark's configuration
(`openssl s_client -msg`), and, for RSA, the signature's share and the
Amdahl bound it sets on any key provider.

`--resumed` profiles resumption.py's load instead: session tickets on, so every
handshake after each h2load client's first one is a resumed TLS 1.3 handshake.

Usage: python benchmarks/handshake_profile.py [--requests 3000] [--reps 3] [--keys ecdsa-p256,rsa2048] [--resumed]
Needs perf (Debian linux-perf) and py-spy. Writes benchmarks/results/handshake_profile.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handshake_split import CATEGORIES, PYTHON_CODE, combine, perf_stacks, pyspy_stacks, python_split, split  # noqa: E402
from handshakes import TARGETS, BODY_SIZE, Started, Target, saturate, start_target  # noqa: E402
from resumption import resumption_template, start_nginx_with_tickets  # noqa: E402

from pylon.bench.procfs import proc_table, tree  # noqa: E402
from pylon.bench.targets import free_port, pylon_workers, start_nginx  # noqa: E402
from pylon.identity.certs import make_test_pki  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PROFILED = ("pylon-file", "pylon-cryptomb", "nginx", "envoy")
KEYS = ("ecdsa-p256", "rsa2048")
PY_SPY = Path(sys.executable).parent / "py-spy"
PERF_SECONDS_MARGIN = 1.0


def tree_pids(started: Started) -> list[int]:
    children, _cpu = proc_table()
    return sorted(tree(started.proxy.proc.pid, children))


def cpu_ms_per_handshake(started: Started, requests: int) -> float:
    sat = saturate(started, requests)
    if sat["failed"] or not sat["hs_per_proxy_cpu_s"]:
        raise RuntimeError(f"{started.target.label}: {sat['failed']} handshakes failed")
    return 1000 / sat["hs_per_proxy_cpu_s"]


def sampled(started: Started, requests: int, command: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a profiler `command` (it stops itself) around one saturation run; (its duration estimate, result)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached before the load starts
    start = time.monotonic()
    saturate(started, requests)
    took = time.monotonic() - start
    out, err = proc.communicate(timeout=120)
    return took, subprocess.CompletedProcess(command, proc.returncode, out, err)


def perf_split(started: Started, requests: int, seconds: float, work: Path) -> dict[str, float]:
    data = work / f"{started.target.label}.perf"
    pids = ",".join(map(str, tree_pids(started)))
    _, done = sampled(started, requests, ["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-o",
                                          str(data), "-p", pids, "--", "sleep", f"{seconds:g}"])
    if done.returncode != 0:
        raise RuntimeError(f"perf record failed for {started.target.label}: {done.stderr[-500:]}")
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True).stdout
    data.unlink()
    return split(perf_stacks(script))


def pyspy_split(started: Started, requests: int, seconds: float, work: Path) -> dict[str, float]:
    raw = work / f"{started.target.label}.spy"
    workers = list(pylon_workers(started.proxy).values())
    _, done = sampled(started, requests, [str(PY_SPY), "record", "--native", "-r", "250", "-f", "raw", "-o", str(raw),
                                          "-p", str(workers[0]), "-d", str(max(1, round(seconds)))])
    if done.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed for {started.target.label}: {done.stderr[-500:]}")
    return python_split(pyspy_stacks(raw.read_text()))


def tickets_issued(started: Started, ca: Path) -> int:
    """NewSessionTicket messages the target sends after a TLS 1.3 handshake (0 when tickets are off)."""
    out = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{started.proxy.port}", "-tls1_3", "-CAfile", str(ca),
                          "-msg", "-ign_eof"],
                         input=b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", capture_output=True,
                         timeout=20, check=False)
    return out.stdout.decode(errors="replace").count("NewSessionTicket")


def profile_target(started: Started, args: argparse.Namespace, work: Path, ca: Path) -> dict[str, Any]:
    runs = [cpu_ms_per_handshake(started, args.requests) for _ in range(args.reps)]
    cpu_ms = statistics.median(runs)
    seconds = args.requests / (1000 / cpu_ms) + PERF_SECONDS_MARGIN  # the run's length, roughly, at full speed
    native = perf_split(started, args.requests, seconds, work)
    python = pyspy_split(started, args.requests // 2, seconds, work) if started.target.kind == "pylon" else None
    shares = combine(native, python)
    return {"cpu_ms_per_hs_runs": runs, "cpu_ms_per_hs": cpu_ms, "perf_shares": native, "pyspy_python_shares": python,
            "shares": shares, "ms_per_hs": {name: cpu_ms * share for name, share in shares.items()},
            "tickets_issued": tickets_issued(started, ca)}


def start(stack: contextlib.ExitStack, target: Target, work: Path, upstream_port: int, cert: Path, key: Path,
          resumed: bool) -> Started:
    """handshakes.py's target, or with resumed: resumption.py's (session tickets at the server's defaults)."""
    if not resumed:
        return start_target(stack, target, work, upstream_port, cert, key)
    if target.kind == "nginx":
        return start_nginx_with_tickets(stack, work / target.label, upstream_port, cert, key)
    if target.template != "handshake-file.yaml":
        raise SystemExit(f"--resumed profiles key-file targets only, not {target.label}")
    return start_target(stack, dataclasses.replace(target, template=str(resumption_template(work))), work,
                        upstream_port, cert, key)


def markdown(results: dict[str, dict[str, dict[str, Any]]], meta: dict[str, Any]) -> str:
    lines = [
        f"# Where a {'resumed' if meta.get('resumed') else 'full'} TLS 1.3 handshake's CPU goes: pylon beside nginx "
        "and Envoy", "",
        (f"`python benchmarks/handshake_profile.py{' --resumed' if meta.get('resumed') else ''}`, {meta['started']}. "
         "`h2load --h1 -H 'Connection: close' -c 32`, "
         f"{meta['requests']} handshakes per run, each target `--concurrency 1` in front of the same nginx upstream. "
         f"**CPU ms per handshake** = the process tree's CPU time / handshakes, median of {meta['reps']} runs without "
         "a profiler (the machine is shared with other work: CPU time, not rates). Split by the share of "
         "`perf record --call-graph dwarf` samples (whole process tree, kernel included) in each category of "
         "`benchmarks/handshake_split.py`; for pylon, perf's \"Python code\" is split further by `py-spy record "
         "--native` (the Python frames). Envoy's binary is stripped: only its kernel time splits, the rest is "
         "\"other\"."), "",
    ]
    for key, by_target in results.items():
        labels = list(by_target)
        lines += [f"## {key}", "", "| CPU ms per handshake | " + " | ".join(labels) + " |",
                  "|---|" + "---:|" * len(labels),
                  "| **total** | " + " | ".join(f"**{by_target[t]['cpu_ms_per_hs']:.3f}**" for t in labels) + " |"]
        names = [n for n in CATEGORIES if n != PYTHON_CODE] + [PYTHON_CODE]
        for name in names:
            values = [by_target[t]["ms_per_hs"].get(name) for t in labels]
            if all(not v for v in values):
                continue
            lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.3f}" for v in values) + " |")
        outside = {t: by_target[t]["cpu_ms_per_hs"] - by_target[t]["ms_per_hs"].get("signature", 0.0) for t in labels}
        lines += ["| outside the signature | " + " | ".join(f"{outside[t]:.3f}" for t in labels) + " |",
                  "| TLS 1.3 tickets issued per handshake | "
                  + " | ".join(str(by_target[t]["tickets_issued"]) for t in labels) + " |", ""]
        if key == "rsa2048" and "pylon-file" in by_target:
            share = by_target["pylon-file"]["shares"]["signature"]
            lines += [f"- The signature is **{share:.0%}** of pylon-file's CPU per RSA-2048 handshake: a provider that "
                      f"made it free would give at most **{1 / (1 - share):.2f}x** pylon-file's handshakes per "
                      "CPU-second.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="handshakes per run (3000)")
    parser.add_argument("--reps", type=int, default=3, help="profiler-free runs per target for the CPU figure (3)")
    parser.add_argument("--keys", default=",".join(KEYS), help=f"comma-separated subset of {list(KEYS)}")
    parser.add_argument("--targets", default=",".join(PROFILED), help="comma-separated subset")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--name", default="handshake_profile", help="results file name (handshake_profile)")
    parser.add_argument("--resumed", action="store_true", help="session tickets on: resumed handshakes (resumption.py)")
    args = parser.parse_args()
    for tool, hint in (("perf", "apt-get install linux-perf"), (str(PY_SPY), "pip install py-spy")):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed ({hint})", file=sys.stderr)
            return 1
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "requests": args.requests, "reps": args.reps,
            "resumed": args.resumed}
    by_label = {t.label: t for t in TARGETS}
    results: dict[str, dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pylon-hs-profile-") as tmp:
        work = Path(tmp)
        pki = make_test_pki(work / "pki")
        for key in args.keys.split(","):
            files = pki.server_rsa if key == "rsa2048" else pki.server_ecdsa
            results[key] = {}
            for label in args.targets.split(","):
                with contextlib.ExitStack() as stack:  # one target at a time: nothing else of ours runs meanwhile
                    upstream = stack.enter_context(start_nginx(free_port(), body_size=BODY_SIZE))
                    target_work = work / key / label
                    target_work.mkdir(parents=True)
                    started = start(stack, by_label[label], target_work, upstream.port, files.cert, files.key,
                                    args.resumed)
                    saturate(started, 500)  # warm-up
                    results[key][label] = profile_target(started, args, target_work, pki.ca.cert)
                print(f"{key} {label}: {results[key][label]['cpu_ms_per_hs']:.3f} CPU ms per handshake", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    text = markdown(results, meta)
    (args.out / f"{args.name}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
