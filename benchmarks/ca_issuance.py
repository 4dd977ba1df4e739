"""The mesh CA's throughput: workload certificates issued per CPU-second of `pylon pilot` (issue 14's figure).

A real `pylon pilot` (its CA on the TLS port, a fresh self-signed root in a temporary CA directory) and, in
this process, agents' CreateCertificate calls as `pylon agent` makes them: TLS verified against the mesh
root, a service-account token (`authorization: Bearer`), an RSA-2048 CSR (Istio's workload default; made
before the clock starts, so key generation is not counted), a 24 h TTL. --concurrency calls are kept in
flight for --duration seconds. Reported per rep: certificates issued, pilot's CPU seconds (utime+stime from
/proc over the run), certificates per pilot CPU-second and per wall second, and this client's CPU (the
load side, to show it was not the limit). Median of --reps, each with a fresh pilot.

Usage: flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/ca_issuance.py [--duration 10] [--reps 5]
       [--concurrency 8] [--quick] [--out DIR]
Writes benchmarks/results/ca_issuance.{json,md}. Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from pylon.agent.keys import AgentKeySource  # noqa: E402
from pylon.identity.client import create_certificate  # noqa: E402
from pylon.identity.spiffe import SpiffeId  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pilot exited: {proc.stdout.read().decode(errors='replace') if proc.stdout else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing on {port}")


async def issue(address: str, root: bytes, token: str, csrs: list[str], duration: float, concurrency: int) -> int:
    """Keep `concurrency` CreateCertificate calls in flight for `duration` seconds; certificates issued."""
    issued = 0
    deadline = time.monotonic() + duration

    async def caller(index: int) -> None:
        nonlocal issued
        n = index
        while time.monotonic() < deadline:
            await create_certificate(address, root, csrs[n % len(csrs)], ttl_seconds=86400, token=token)
            issued += 1
            n += concurrency

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return issued


def one_rep(duration: float, concurrency: int, csrs: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="ca-bench-") as work:
        ca_dir, config = Path(work) / "cacerts", Path(work) / "config"
        config.mkdir()
        ca_port = free_port()
        pilot = subprocess.Popen(
            [sys.executable, "-m", "pylon.cli", "pilot", "--config-dir", str(config), "--ca-dir", str(ca_dir),
             "--ca-address", f"127.0.0.1:{ca_port}", "--grpc-address", f"127.0.0.1:{free_port()}",
             "--debug-address", f"127.0.0.1:{free_port()}", "--monitoring-address", f"127.0.0.1:{free_port()}",
             "-l", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
        try:
            wait_for_port(ca_port, pilot)
            token = subprocess.run([sys.executable, "-m", "pylon.cli", "pilot", "token", "--ca-dir", str(ca_dir),
                                    "--namespace", "default", "--service-account", "bench"],
                                   check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
            root = (ca_dir / "root-cert.pem").read_bytes()
            address = f"127.0.0.1:{ca_port}"
            asyncio.run(issue(address, root, token, csrs[:1], 1.0, 1))  # warm up (imports, first TLS)
            before, client_before = cpu_seconds(pilot.pid), resource.getrusage(resource.RUSAGE_SELF)
            started = time.monotonic()
            issued = asyncio.run(issue(address, root, token, csrs, duration, concurrency))
            wall = time.monotonic() - started
            pilot_cpu = cpu_seconds(pilot.pid) - before
            client = resource.getrusage(resource.RUSAGE_SELF)
            client_cpu = client.ru_utime + client.ru_stime - client_before.ru_utime - client_before.ru_stime
        finally:
            os.killpg(pilot.pid, signal.SIGTERM)
            try:
                pilot.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(pilot.pid, signal.SIGKILL)
                pilot.wait()
    return {"issued": issued, "wall_s": round(wall, 3), "pilot_cpu_s": round(pilot_cpu, 3),
            "per_pilot_cpu_s": round(issued / pilot_cpu, 1), "per_wall_s": round(issued / wall, 1),
            "client_cpu_s": round(client_cpu, 3)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 rep of 3 s")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.reps = 3.0, 1
    source = AgentKeySource()
    csrs = [source.new_key(SpiffeId("cluster.local", "default", "bench")).csr_pem for _ in range(32)]
    reps = []
    for index in range(args.reps):
        reps.append(one_rep(args.duration, args.concurrency, csrs))
        print(f"rep {index + 1}: {reps[-1]}", file=sys.stderr)
    median = {key: statistics.median(rep[key] for rep in reps) for key in reps[0]}
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    result = {"commit": commit, "duration_s": args.duration, "concurrency": args.concurrency, "reps": reps,
              "median": median}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ca_issuance.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "ca_issuance.md").write_text(f"""# The mesh CA: certificates issued per CPU-second

pylon {commit}; `pylon pilot`'s CA on its TLS port, CreateCertificate as `pylon agent` calls it (TLS verified
against the mesh root, a service-account token, RSA-2048 CSRs made beforehand, 24 h TTL), {args.concurrency}
calls in flight for {args.duration:g} s; median of {args.reps} rep(s), each with a fresh pilot and CA.
Two cores, shared by pilot and this client.

| figure | median |
|---|---|
| certificates issued per pilot CPU-second | {median['per_pilot_cpu_s']} |
| certificates issued per wall second | {median['per_wall_s']} |
| pilot CPU seconds over the run | {median['pilot_cpu_s']} |
| client CPU seconds over the run (the load side) | {median['client_cpu_s']} |

Per rep: {', '.join(f"{r['per_pilot_cpu_s']}" for r in reps)} certificates per pilot CPU-second.
Command: `flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/ca_issuance.py --reps {args.reps} --duration {args.duration:g} --concurrency {args.concurrency}`
""")
    print((args.out / "ca_issuance.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
