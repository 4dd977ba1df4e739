"""Certificate rotation under load, through two sidecars (issue 14's figure): no request may fail.

`pylon mesh` with a server (`pylon echo`) and a client pod, both with sidecars whose certificates live
--ttl seconds (60: the agent renews at half, so a 190 s run sees each sidecar rotate six times), under a
fixed-rate load from `pylon load` inside the client pod for --duration seconds. Each sidecar's log is read
afterwards for the rotations that happened during the run. Run for pylon sidecars and for Envoy sidecars
(`mesh up --proxy`), one after the other.

Usage (root; alone on the machine: it brings a mesh up):
  flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/mesh_rotation.py [--duration 190] [--ttl 60]
      [--qps 300] [--proxies pylon,envoy] [--quick] [--out DIR]
Writes benchmarks/results/mesh_rotation.{json,md}. The mesh is taken down at the end, on failure too.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE = Path("/tmp/pm-rot/s")  # short: the sidecars' Unix sockets live below it
ISSUED = re.compile(r"^(\S+ \S+) INFO pylon\.agent: certificate for (\S+) valid until", re.M)


def mesh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pylon.cli", "mesh", *args], capture_output=True, text=True,
                          env={**os.environ, "PYLON_MESH_STATE": str(STATE)}, timeout=600)  # fmt: skip
    if check and done.returncode != 0:
        raise RuntimeError(f"pylon mesh {' '.join(args)}: {done.stdout}{done.stderr}")
    return done


def rotations(log: Path, since: float) -> int:
    """Certificates the sidecar's agent installed after `since` (epoch seconds): its renewals in the run."""
    count = 0
    for stamp, _identity in ISSUED.findall(log.read_text(errors="replace")):
        if time.mktime(time.strptime(stamp.split(",")[0], "%Y-%m-%d %H:%M:%S")) >= since:
            count += 1
    return count


def one_proxy(proxy: str, duration: int, ttl: int, qps: int) -> dict:
    shutil.rmtree(STATE.parent, ignore_errors=True)
    STATE.parent.mkdir(parents=True)
    try:
        mesh("up", "--proxy", proxy)
        mesh("run", "server", "--port", "8080", "--cert-ttl", str(ttl), "--", sys.executable, "-m", "pylon.cli",
             "echo", "--port", "8080")  # fmt: skip
        mesh("run", "client", "--port", "9000", "--cert-ttl", str(ttl), "--", "sleep", str(duration + 120))
        result = STATE.parent / "load.json"
        started = time.time()
        mesh("exec", "client", "--", sys.executable, "-m", "pylon.cli", "load", "-qps", str(qps), "-c", "8",
             "-t", f"{duration}s", "-json", str(result), "http://server.default.svc.cluster.local:8080/echo")
        data = json.loads(result.read_text())
        codes = {str(code): count for code, count in data.get("RetCodes", {}).items()}
        total = int(data.get("DurationHistogram", {}).get("Count", 0))
        logs = STATE / "logs"
        return {"proxy": proxy, "requests": total, "ok": codes.get("200", 0), "failed": total - codes.get("200", 0),
                "ret_codes": codes, "actual_qps": round(float(data.get("ActualQPS", 0)), 1),
                "rotations": {"server": rotations(logs / "server-sidecar.log", started),
                              "client": rotations(logs / "client-sidecar.log", started)}}  # fmt: skip
    finally:
        mesh("down", check=False)
        shutil.rmtree(STATE.parent, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=190)
    parser.add_argument("--ttl", type=int, default=60)
    parser.add_argument("--qps", type=int, default=300)
    parser.add_argument("--proxies", default="pylon,envoy")
    parser.add_argument("--quick", action="store_true", help="20 s with 10 s certificates")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.ttl = 20, 10
    runs = [one_proxy(proxy, args.duration, args.ttl, args.qps) for proxy in args.proxies.split(",")]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mesh_rotation.json").write_text(json.dumps(
        {"commit": commit, "duration_s": args.duration, "ttl_s": args.ttl, "qps": args.qps, "runs": runs},
        indent=2) + "\n")  # fmt: skip
    rows = "\n".join(f"| {r['proxy']} | {r['requests']} | {r['failed']} | {r['actual_qps']} | "
                     f"{r['rotations']['client']} / {r['rotations']['server']} |" for r in runs)  # fmt: skip
    (args.out / "mesh_rotation.md").write_text(f"""# Certificate rotation under load, through two sidecars

pylon {commit}; `pylon mesh` (network namespaces as pods), a `pylon echo` server and a client pod, both with
sidecars whose certificates live {args.ttl} s (renewed at half their life); `pylon load -qps {args.qps} -c 8`
inside the client pod for {args.duration} s to http://server.default.svc.cluster.local:8080/echo (mTLS between
the sidecars). Rotations are the certificates each sidecar's agent installed during the run.

| sidecars | requests | failed | actual qps | rotations client / server |
|---|---:|---:|---:|---:|
{rows}

Goal (issue 14): three or more rotations during a three-minute run, 0 failed requests.
Command: `flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/mesh_rotation.py --duration {args.duration} --ttl {args.ttl} --qps {args.qps}`
""")
    print((args.out / "mesh_rotation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
