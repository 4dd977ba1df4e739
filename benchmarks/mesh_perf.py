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
Every load run is bounded in time. Nothing leaves the machine: all traffic is between the mesh's namespaces.

Usage: python benchmarks/mesh_perf.py [--qps 1000] [--conn 16] [--duration 10] [--reps 3] [--quick]
Writes benchmarks/results/mesh_perf.{json,md,csv} (or --out DIR / --name). Needs root.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import fcntl
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
LOCK = Path("/tmp/pylon-bench.lock")
STATE = Path("/tmp/pm-bench/s")  # short: the agents' Unix sockets live under it (< 108 bytes)
PROXIES = ("pylon", "envoy")
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

GW = "istio-ingressgateway"
GW_CMB = "ingress-cryptomb"
GW_NS = "istio-system"
HTTP_PORT, HTTPS_PORT = 8080, 8443  # Istio's gateway container ports (its Service maps 80/443 onto them)
CRYPTOMB_CONFIG = "privateKeyProvider:\n  cryptomb:\n    pollDelay: 10ms\n    fallback: true\n"


def host(name: str, namespace: str = "default") -> str:
    return f"{name}.{namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Mode:
    name: str
    client: str           # the workload the load runs in
    target: str           # URL without the path
    roles: tuple[tuple[str, str], ...]  # (role, workload) of each proxy on the path
    tls: bool = False
    new_connection: bool = False


MODES = {m.name: m for m in (
    Mode("baseline", "client-plain", f"http://{host('server-plain')}:8080", ()),
    Mode("client_sidecar", "client", f"http://{host('server-plain')}:8080", (("client", "client"),)),
    Mode("server_sidecar", "client-plain", f"http://{host('server')}:8080", (("server", "server"),)),
    Mode("both_sidecar", "client", f"http://{host('server')}:8080", (("client", "client"), ("server", "server"))),
    Mode("ingress_http", "client-plain", f"http://{host(GW, GW_NS)}:{HTTP_PORT}",
         (("gateway", GW), ("server", "server"))),
    Mode("ingress_https", "client-plain", f"https://{host(GW, GW_NS)}:{HTTPS_PORT}",
         (("gateway", GW), ("server", "server")), tls=True),
    Mode("ingress_https_newconn", "client-plain", f"https://{host(GW, GW_NS)}:{HTTPS_PORT}",
         (("gateway", GW), ("server", "server")), tls=True, new_connection=True),
    Mode("ingress_https_newconn_cryptomb", "client-plain", f"https://{host(GW_CMB, GW_NS)}:{HTTPS_PORT}",
         (("gateway", GW_CMB), ("server", "server")), tls=True, new_connection=True),
)}
ROLES = ("client", "server", "gateway")
CSV_COLUMNS = ["StartTime", "ActualDuration", "Labels", "NumThreads", "ActualQPS", "p50", "p90", "p99", "p999",
               "cpu_mili_avg_istio_proxy_fortioclient", "cpu_mili_avg_istio_proxy_fortioserver",
               "cpu_mili_avg_istio_proxy_istio-ingressgateway", "mem_Mi_avg_istio_proxy_fortioclient",
               "mem_Mi_avg_istio_proxy_fortioserver", "mem_Mi_avg_istio_proxy_istio-ingressgateway"]
CSV_ROLE = {"client": "fortioclient", "server": "fortioserver", "gateway": "istio-ingressgateway"}


# --------------------------------------------------------------------------- /proc


def proc_table() -> tuple[dict[int, list[int]], dict[int, float]]:
    """Children of every process, and every process's utime+stime+cutime+cstime in seconds."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        cpu[pid] = sum(int(f) for f in fields[11:15]) / CLK
    return children, cpu


def tree(root: int, children: dict[int, list[int]]) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    children, cpu = proc_table()
    return {name: sum(cpu.get(p, 0.0) for p in tree(pid, children)) for name, pid in roots.items()}


def rss_mib(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_rss(roots: dict[str, int]) -> dict[str, tuple[float, float]]:
    """(tree RSS, the root's own RSS) in MiB: with the agent as root, tree minus own is the proxy's."""
    children, _ = proc_table()
    return {name: (sum(rss_mib(p) for p in tree(pid, children)), rss_mib(pid)) for name, pid in roots.items()}


class RssSampler(threading.Thread):
    def __init__(self, roots: dict[str, int], every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.roots, self.every, self.samples = roots, every, []  # type: ignore[var-annotated]
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.samples.append(tree_rss(self.roots))
            self.stopping.wait(self.every)

    def stop(self) -> dict[str, tuple[float, float]]:
        self.stopping.set()
        self.join()
        if not self.samples:
            return {}
        return {name: (statistics.fmean(s[name][0] for s in self.samples),
                       statistics.fmean(s[name][1] for s in self.samples)) for name in self.roots}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the mesh


class MeshCli:
    def __init__(self, log: Path) -> None:
        self.env = {**os.environ, "PYLON_MESH_STATE": str(STATE)}
        self.log = log

    def __call__(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
        done = subprocess.run([PYTHON, "-m", "pylon.cli", "mesh", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)  # fmt: skip
        with self.log.open("a") as log:
            log.write(f"$ pylon mesh {' '.join(args)}\n-> {done.returncode}\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            raise RuntimeError(f"pylon mesh {' '.join(args[:3])}... failed ({done.returncode}): "
                               f"{done.stdout[-2000:]}{done.stderr[-2000:]}")
        return done

    def state(self) -> dict[str, Any]:
        return json.loads((STATE / "state.json").read_text())

    def pids(self, kind: str) -> dict[str, int]:
        """workload -> pid of its process named `kind` ('sidecar': the agent, 'app')."""
        return {name: p["pid"] for name, w in self.state()["workloads"].items()
                for p in w["processes"] if p["name"] == kind}


def mesh_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("pm-")]


def write_inputs(work: Path) -> tuple[Path, Path, Path]:
    """The install file (two gateways), the gateway credential (Secret), Gateways and VirtualService; the CA."""
    from pylon.identity.certs import issue_leaf, make_ca

    install = work / "install.yaml"
    install.write_text(yaml.safe_dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {
        "components": {"ingressGateways": [
            {"name": GW, "enabled": True},
            {"name": GW_CMB, "enabled": True, "label": {"istio": GW_CMB},
             "k8s": {"podAnnotations": {"proxy.istio.io/config": CRYPTOMB_CONFIG}}}]}}}))  # fmt: skip
    ca = make_ca("mesh_perf CA")
    leaf = issue_leaf(ca, common_name=host(GW, GW_NS), dns_names=[host(GW, GW_NS), host(GW_CMB, GW_NS)])  # RSA-2048
    ca_pem = work / "ca.pem"
    ca_pem.write_bytes(ca.cert_pem)
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "bench-cred", "namespace": GW_NS},
        "data": {"tls.crt": base64.b64encode(leaf.cert_pem).decode(),
                 "tls.key": base64.b64encode(leaf.key_pem).decode()}}]  # fmt: skip
    for gw, selector, servers in (
            ("bench-gw", "ingressgateway", [
                {"port": {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"}, "hosts": [host(GW, GW_NS)]},
                {"port": {"number": HTTPS_PORT, "name": "https", "protocol": "HTTPS"}, "hosts": [host(GW, GW_NS)],
                 "tls": {"mode": "SIMPLE", "credentialName": "bench-cred"}}]),
            ("bench-gw-cryptomb", GW_CMB, [
                {"port": {"number": HTTPS_PORT, "name": "https", "protocol": "HTTPS"}, "hosts": [host(GW_CMB, GW_NS)],
                 "tls": {"mode": "SIMPLE", "credentialName": "bench-cred"}}])):  # fmt: skip
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                     "metadata": {"name": gw, "namespace": GW_NS},
                     "spec": {"selector": {"istio": selector}, "servers": servers}})
    docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                 "metadata": {"name": "bench-via-gw", "namespace": GW_NS},
                 "spec": {"hosts": [host(GW, GW_NS), host(GW_CMB, GW_NS)], "gateways": ["bench-gw", "bench-gw-cryptomb"],
                          "http": [{"route": [{"destination": {"host": host("server"),
                                                               "port": {"number": 8080}}}]}]}})  # fmt: skip
    resources = work / "gateway.yaml"
    resources.write_text(yaml.safe_dump_all(docs))
    return install, resources, ca_pem


def curl_code(mesh: MeshCli, client: str, url: str, ca: Path) -> str:
    done = mesh("exec", client, "--", "curl", "-s", "-m", "3", "--cacert", str(ca), "-o", "/dev/null",
                "-w", "%{http_code}", url, check=False, timeout=30)  # fmt: skip
    return done.stdout.strip()


def wait_for(mesh: MeshCli, client: str, url: str, ca: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if curl_code(mesh, client, url, ca) == "200":
            return True
        time.sleep(0.5)
    return False


def bring_up(mesh: MeshCli, proxy: str, install: Path, resources: Path, ca: Path, body: int) -> dict[str, Any]:
    """Start the mesh and its workloads; what the gateways reached (the cryptomb one may not be)."""
    mesh("up", "-f", str(install), "--proxy", proxy)
    echo = [PYTHON, "-m", "pylon.cli", "echo", "--port", "8080", "--body-size", str(body)]
    mesh("run", "server", "--port", "8080", "--", *echo)
    mesh("run", "server-plain", "--no-sidecar", "--port", "8080", "--", *echo)
    mesh("run", "client", "--port", "9000", "--", "sleep", "infinity")
    mesh("run", "client-plain", "--no-sidecar", "--port", "9000", "--", "sleep", "infinity")
    mesh("apply", "-f", str(resources))
    reached = {}
    for mode in MODES.values():
        url = f"{mode.target}/echo?size=16"
        optional = mode.name.endswith("cryptomb")
        reached[mode.name] = wait_for(mesh, mode.client, url, ca, 15 if optional else 40)
        if not reached[mode.name] and not optional:
            raise RuntimeError(f"{mode.name}: {url} from {mode.client} does not answer 200")
    return reached


# --------------------------------------------------------------------------- one run


def load_command(mode: Mode, args: argparse.Namespace, seconds: float, json_path: Path, label: str,
                 ca: Path, qps: int | None = None, exactly: int = 0) -> list[str]:  # fmt: skip
    command = [PYTHON, "-m", "pylon.cli", "load", "-qps", str(qps if qps is not None else mode_qps(mode, args)),
               "-c", str(args.conn), "-r", "0.00001", "-timeout", "3s", "-labels", label, "-json", str(json_path)]
    command += ["-n", str(exactly)] if exactly else ["-t", f"{seconds:g}s"]
    command += ["-new-connection"] if mode.new_connection else ["-keepalive"]
    if mode.tls:
        command += ["-cacert", str(ca)]
    return [*command, f"{mode.target}/echo?size={args.size}"]


def mode_qps(mode: Mode, args: argparse.Namespace) -> int:
    return args.newconn_qps if mode.new_connection else args.qps


def exec_load(mesh: MeshCli, mode: Mode, command: list[str], seconds: float) -> tuple[float, float | None, int]:
    """Run the load in the mode's client pod; (client CPU s incl. start-up, the load process's steady-state
    millicores, exit code). The steady state: the load process's own CPU from 1.5 s after it started (imports
    done) to its last sample, from /proc every 0.2 s."""
    before = children_cpu()
    out_path = mesh.log.with_name("load-output.txt")
    with out_path.open("wb") as out:
        proc = subprocess.Popen([PYTHON, "-m", "pylon.cli", "mesh", "exec", mode.client, "--", *command],
                                env=mesh.env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    samples: list[tuple[float, float]] = []
    load_pid, load_start = None, 0.0
    deadline = time.monotonic() + seconds + 60
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()  # bounded: the mesh exec process we started (its load child ends with its -t anyway)
                break
            children, cpu = proc_table()
            if load_pid is None:
                load_pid = next((p for p in tree(proc.pid, children) if p != proc.pid and _is_load(p)), None)
                load_start = time.monotonic()
            elif load_pid in cpu:
                samples.append((time.monotonic(), sum(cpu.get(p, 0.0) for p in tree(load_pid, children))))
            time.sleep(0.2)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with mesh.log.open("a") as log:
        log.write(f"$ pylon mesh exec {mode.client} -- {' '.join(command)}\n-> {proc.returncode}\n"
                  f"{out_path.read_text(errors='replace')[-1500:]}\n")
    steady = [(t, c) for t, c in samples if t >= load_start + 1.5]
    rate = (1000 * (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
            if len(steady) >= 3 and steady[-1][0] > steady[0][0] else None)
    return children_cpu() - before, rate, proc.returncode


def _is_load(pid: int) -> bool:
    try:
        return b"\0load\0" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def percentile_us(result: dict[str, Any], p: float) -> float | None:
    for item in result["DurationHistogram"].get("Percentiles") or ():
        if abs(item["Percentile"] - p) < 1e-9:
            return item["Value"] * 1e6
    return None


def measure(mesh: MeshCli, proxy: str, mode: Mode, args: argparse.Namespace, run_id: str, rep: int,
            work: Path, ca: Path, startup_cpu: float) -> dict[str, Any]:  # fmt: skip
    agents = mesh.pids("sidecar")
    apps = mesh.pids("app")
    roots = {role: agents[workload] for role, workload in mode.roles}
    roots["echo"] = apps["server" if any(w == "server" for _, w in mode.roles) or mode.name.startswith("ingress")
                         else "server-plain"]  # fmt: skip
    qps = mode_qps(mode, args)
    label = f"{run_id}_qps_{qps}_c_{args.conn}_{args.size}_{proxy}_{mode.name}"
    out = work / f"{label}.json"
    command = load_command(mode, args, args.duration, out, label, ca)
    sampler = RssSampler(roots)
    cpu_before = tree_cpu(roots)
    sampler.start()
    started = time.monotonic()
    load_cpu, load_rate, code = exec_load(mesh, mode, command, args.duration)
    wall = time.monotonic() - started
    cpu_after = tree_cpu(roots)
    rss = sampler.stop()
    row: dict[str, Any] = {"proxy": proxy, "mode": mode.name, "rep": rep, "label": label, "requested_qps": qps,
                           "connections": args.conn, "size": args.size, "exit_code": code, "wall_s": wall}
    if not out.exists():
        row["failed"] = f"pylon load exited {code} without a result"
        return row
    result = json.loads(out.read_text())
    count = int(result["DurationHistogram"]["Count"])
    ok = int(result["RetCodes"].get("200", 0))
    duration = result["ActualDuration"] / 1e9
    row.update({
        "StartTime": result["StartTime"], "ActualDuration": result["ActualDuration"], "NumThreads": result["NumThreads"],
        "ActualQPS": result["ActualQPS"], "requests": count, "ok": ok, "errors": count - ok,
        "error_kinds": result.get("ErrorKinds", {}), "ret_codes": result["RetCodes"],
        "error_percent": 100.0 * (count - ok) / count if count else 100.0,
        **{f"p{k}_us": percentile_us(result, p) for k, p in (("50", 50), ("90", 90), ("99", 99), ("999", 99.9))},
        "load_cpu_s": load_cpu, "load_millicores": load_rate,
        "load_millicores_by_rusage": 1000 * max(load_cpu - startup_cpu, 0.0) / duration if duration else None,
    })
    if mode.new_connection:
        row["handshakes"] = result.get("Handshakes")
    for role in (*ROLES, "echo"):
        if role not in roots:
            continue
        cpu = cpu_after[role] - cpu_before[role]
        row[f"{role}_cpu_s"] = cpu
        row[f"{role}_millicores"] = 1000 * cpu / duration if duration else None
        row[f"{role}_cpu_ms_per_1k"] = 1e6 * cpu / ok if ok else None
        if role != "echo" and role in rss:
            row[f"{role}_rss_mib"], agent_rss = rss[role]
            row[f"{role}_proxy_rss_mib"] = rss[role][0] - agent_rss  # the tree without the agent itself
    if mode.new_connection and row.get("handshakes") and row.get("gateway_cpu_s"):
        row["handshakes_per_gateway_cpu_s"] = row["handshakes"] / row["gateway_cpu_s"]
    return row


def idle_cpu(mesh: MeshCli, seconds: float = 3.0) -> dict[str, float]:
    """Millicores each sidecar and gateway uses with no traffic (xDS, health checks, the agent's own loop)."""
    roots = mesh.pids("sidecar")
    before = tree_cpu(roots)
    time.sleep(seconds)
    after = tree_cpu(roots)
    return {name: 1000 * (after[name] - before[name]) / seconds for name in roots}


def startup_cost(mesh: MeshCli, args: argparse.Namespace, work: Path, ca: Path) -> float:
    """CPU seconds `mesh exec` + `pylon load` take to start and stop (one request): subtracted from each run's."""
    mode = MODES["baseline"]
    costs = []
    for i in range(2):
        out = work / f"startup-{i}.json"
        cpu, _, _ = exec_load(mesh, mode, load_command(mode, args, 0, out, "startup", ca, qps=0, exactly=1), 0)
        costs.append(cpu)
    return min(costs)


def gateway_log_notes(proxy: str) -> list[str]:
    log = STATE / "logs" / f"{GW_CMB}-sidecar.log"
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


def rejections(mesh: MeshCli) -> list[str]:
    done = mesh("status", check=False, timeout=30)
    return [line for line in done.stdout.splitlines() if line.startswith("rejected:")]


def session(proxy: str, rep: int, modes: list[str], args: argparse.Namespace, work: Path, inputs: tuple[Path, Path, Path],
            run_id: str) -> dict[str, Any]:  # fmt: skip
    """One fresh mesh: up, workloads, warm-up, every mode once, down (always)."""
    install, resources, ca = inputs
    mesh = MeshCli(work / "mesh-commands.log")
    info: dict[str, Any] = {"proxy": proxy, "rep": rep, "rows": []}
    if mesh_namespaces():
        raise RuntimeError(f"pm- namespaces exist ({', '.join(mesh_namespaces())}): another mesh is up or a crashed "
                           "one is left over; not touching it (pylon mesh down with its PYLON_MESH_STATE first)")
    started = time.monotonic()
    try:
        info["reached"] = bring_up(mesh, proxy, install, resources, ca, args.body_size)
        info["up_s"] = time.monotonic() - started
        info["idle_millicores"] = idle_cpu(mesh)
        info["load_startup_cpu_s"] = startup = startup_cost(mesh, args, work, ca)
        for name in modes:  # warm-up: first connections, handshakes, caches
            mode = MODES[name]
            if info["reached"][name] and args.warmup > 0:
                exec_load(mesh, mode, load_command(mode, args, args.warmup, work / "warmup.json", "warmup", ca),
                          args.warmup)
        shift = (rep - 1) % len(modes)
        for name in modes[shift:] + modes[:shift]:
            mode = MODES[name]
            if not info["reached"][name]:
                row = {"proxy": proxy, "mode": name, "rep": rep, "failed": "not reachable (did not answer 200)"}
            else:
                row = measure(mesh, proxy, mode, args, run_id, rep, work, ca, startup)
            info["rows"].append(row)
            print(f"  rep {rep} {proxy:5s} {name:31s} " + (
                f"{row['ActualQPS']:7.1f} qps p50 {row['p50_us']:8.0f} p90 {row['p90_us']:8.0f} p99 {row['p99_us']:8.0f} µs"
                f" err {row['errors']:5d}  cpu " + " ".join(f"{r} {row[f'{r}_millicores']:.0f}mc" for r in ROLES
                                                         if f"{r}_millicores" in row)
                + f"  load {row['load_millicores']:.0f}mc" if "ActualQPS" in row else row.get("failed", "?")),
                flush=True)
        info["rejections"] = rejections(mesh)
        info["cryptomb_log"] = gateway_log_notes(proxy)
    finally:
        logs = work / f"logs-{proxy}-{rep}"
        if (STATE / "logs").exists():
            shutil.copytree(STATE / "logs", logs, dirs_exist_ok=True)
        down = mesh("down", check=False, timeout=120)
        info["down"] = down.stdout.strip()
        if mesh_namespaces():
            print(f"WARNING: pm- namespaces remain after down: {mesh_namespaces()}", file=sys.stderr)
    return info


# --------------------------------------------------------------------------- summary and output


def med(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> dict[str, Any]:
    ok_rows = [r for r in rows if "ActualQPS" in r]
    base = {(r["proxy"], r["rep"]): r for r in ok_rows if r["mode"] == "baseline"}
    summary: dict[str, Any] = {}
    for mode in modes:
        entry: dict[str, Any] = {}
        for proxy in PROXIES:
            mine = [r for r in ok_rows if r["mode"] == mode and r["proxy"] == proxy]
            failed = [r for r in rows if r["mode"] == mode and r["proxy"] == proxy and "ActualQPS" not in r]
            usable = [r for r in mine if r["error_percent"] < 50]
            s: dict[str, Any] = {"reps": len(usable), "runs": len(mine) + len(failed),
                                 "errors": sum(r["errors"] for r in mine), "requests": sum(r["requests"] for r in mine)}
            if failed or len(usable) < len(mine):
                s["failures"] = sorted({r.get("failed") or f"{r['error_percent']:.0f}% errors {r['error_kinds']}"
                                        for r in failed + [r for r in mine if r not in usable]})[:3]
            for key in ("ActualQPS", "p50_us", "p90_us", "p99_us", "p999_us", "load_millicores", "echo_millicores",
                        "handshakes_per_gateway_cpu_s"):
                s[key] = med([r.get(key) for r in usable])
            for role in ROLES:
                for key in ("millicores", "cpu_ms_per_1k", "rss_mib", "proxy_rss_mib"):
                    s[f"{role}_{key}"] = med([r.get(f"{role}_{key}") for r in usable])
            for p in ("50", "90", "99"):
                s[f"added_p{p}_us"] = med([r[f"p{p}_us"] - base[proxy, r["rep"]][f"p{p}_us"] for r in usable
                                           if (proxy, r["rep"]) in base])  # fmt: skip
            entry[proxy] = s
        ratios = {}
        for key in ("p90_us", "added_p90_us", *(f"{role}_{k}" for role in ROLES for k in ("cpu_ms_per_1k", "rss_mib")),
                    "handshakes_per_gateway_cpu_s"):
            p, e = entry["pylon"].get(key), entry["envoy"].get(key)
            if p is not None and e and entry["pylon"]["reps"] and entry["envoy"]["reps"]:
                ratios[key] = p / e
        entry["ratio_pylon_over_envoy"] = ratios
        summary[mode] = entry
    return summary


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


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


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            if "ActualQPS" not in r:
                continue
            cells = [r["StartTime"], r["ActualDuration"], r["label"], r["NumThreads"], f"{r['ActualQPS']:.2f}",
                     *(fmt(r[f"p{p}_us"], ".1f") for p in ("50", "90", "99", "999"))]
            cells += [fmt(r.get(f"{role}_millicores"), ".1f") if f"{role}_millicores" in r else "" for role in ROLES]
            cells += [fmt(r.get(f"{role}_rss_mib"), ".1f") if f"{role}_rss_mib" in r else "" for role in ROLES]
            writer.writerow(cells)


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
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.machine())
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}"


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
    work.mkdir(parents=True)
    inputs = write_inputs(work)
    sessions: list[dict[str, Any]] = []
    LOCK.touch()
    with LOCK.open("r") as lock:
        deadline = time.monotonic() + args.lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    print(f"{LOCK} is held by another benchmark; gave up", file=sys.stderr)
                    return 1
                time.sleep(2)
        print(f"{args.reps} rep(s) x {len(modes)} modes x {proxies}; {args.qps} qps, -c {args.conn}, "
              f"{args.duration:g} s; commit {meta['commit']}", flush=True)
        with contextlib.ExitStack():
            for rep in range(1, args.reps + 1):
                run_id = uuid.uuid4().hex[:8]
                for proxy in (proxies if rep % 2 else proxies[::-1]):
                    started = time.monotonic()
                    try:
                        sessions.append(session(proxy, rep, modes, args, work, inputs, run_id))
                    except Exception as exc:  # noqa: BLE001 - record and go on with the other meshes
                        print(f"  rep {rep} {proxy}: FAILED {exc}", file=sys.stderr, flush=True)
                        sessions.append({"proxy": proxy, "rep": rep, "rows": [], "error": str(exc)[:3000]})
                    print(f"  rep {rep} {proxy}: mesh session {time.monotonic() - started:.0f} s", flush=True)
    rows = [row for sess in sessions for row in sess["rows"]]
    summary = summarize(rows, modes)
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
