"""pilot under load: many simulated sidecars on one `pylon pilot` (issue 13's figures; Istio's `pilot-load` idea).

The mesh: --services ServiceEntries (MESH_INTERNAL, resolution STATIC, one HTTP port, 2 endpoints each labelled
`security.istio.io/tlsMode: istio`, so clusters carry Istio's auto-mTLS match) spread over --namespaces
namespaces (`ns-0`...), on five ports (80, 8080, 9080, 3000, 5000: five RDS route configurations), plus
--virtual-services VirtualServices with retries and a timeout, the first of which (`split`) splits svc-0's
traffic by weight over svc-0, svc-1 and svc-2.

The sidecars: --proxies simulated Envoys, in a separate process from pilot (they share the machine's cores with
pilot: the client's CPU is reported to show it was not the limit). Each is one gRPC connection to pilot's ADS
(grpcio aio, its own TCP connection), node id `sidecar~10.x.y.z~pod-i.ns-k~ns-k.svc.cluster.local`, metadata
NAMESPACE, LABELS (`app`, `version`; pods of a namespace are replicas of a few deployments) and
INTERCEPTION_MODE (REDIRECT) as Istio's agent sends them. It subscribes as Envoy does: CDS and LDS wildcard, then
EDS for the EDS clusters it received and RDS for the route names its listeners' HTTP connection managers name;
every response is ACKed (version_info + response_nonce) as soon as it is read. State of the world, or delta with
--delta (subscribe/unsubscribe by name, ACK by nonce).

Per repetition (a fresh pilot and fresh sidecars each):

  connect   all sidecars start at once: seconds until every one has ACKed CDS and LDS and received every EDS and
            RDS resource it subscribed to
  vs        the `split` VirtualService file is rewritten (new weights, a new route name as marker): per sidecar,
            seconds from the file's rename into the directory to its ACK of the RDS response holding the new route
            (checked: the marker is in it); and every type pushed to the sidecars after the change
  eds       one ServiceEntry's endpoint addresses change (svc-1: a new address as marker): per sidecar, seconds
            to its receipt of the ClusterLoadAssignment with the new address; asserted: nothing but EDS was pushed

Both changes are also timed from pilot's push start (its log line "config version ...: pushing", millisecond
resolution): the directory source polls every 50 ms and debounces 100 ms, a floor of about 100-150 ms from the
write that no push can beat. Pilot's CPU seconds (utime+stime from /proc) over each change, until it is settled,
are its cost per push; RSS (VmRSS) after connect and after the pushes; pilot's own `pilot_proxy_convergence_time`
histogram (count, mean) per phase. Figures are medians over --reps.

Anchor: Istio's published load test (1,000 services, 2,000 sidecars) runs istiod at about 1 vCPU and 1.5 GB.

Usage: python benchmarks/pilot_load.py [--services 1000] [--proxies 100] [--namespaces 10] [--reps 3] [--delta]
       [--profile DIR] [--quick] [--out DIR]
--profile DIR: py-spy (raw folded stacks) of pilot during each phase, DIR/<phase>-<rep>.folded.
Run it alone on the machine: flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/pilot_load.py
Writes benchmarks/results/pilot_load{-delta}.{json,md} (or --out DIR). Pilot and the sidecar process are started
here and stopped by their PIDs, on failure too; every wait is bounded (--timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import yaml

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3.base_pb2 import Node
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager)  # fmt: skip
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DiscoveryRequest
from google.protobuf import struct_pb2

ROOT = Path(__file__).resolve().parent.parent
PORTS = (80, 8080, 9080, 3000, 5000)
DEPLOYMENTS_PER_NAMESPACE = 2  # sidecars of a namespace are replicas of this many deployments
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SHORT = {CDS: "cds", EDS: "eds", LDS: "lds", RDS: "rds"}
PUSH_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*config version (\S+): .*pushing (.*) to (\d+) proxies")


# =========================================================================== the mesh config


def service_name(i: int) -> str:
    return f"svc-{i}"


def host(i: int, namespaces: int) -> str:
    return f"{service_name(i)}.ns-{i % namespaces}.svc.cluster.local"


def endpoint_ips(i: int, generation: int = 0) -> list[str]:
    """Two distinct addresses per service; a later `generation` moves the first one (the EDS change)."""
    first = f"10.{100 + generation % 100}.{i // 250}.{i % 250 + 1}" if generation else f"10.1.{i // 250}.{i % 250 + 1}"
    return [first, f"10.2.{i // 250}.{i % 250 + 1}"]


def service_entry(i: int, namespaces: int, generation: int = 0) -> dict[str, Any]:
    labels = {"app": service_name(i), "version": "v1", "security.istio.io/tlsMode": "istio"}
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
        "metadata": {"name": service_name(i), "namespace": f"ns-{i % namespaces}"},
        "spec": {
            "hosts": [host(i, namespaces)], "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": PORTS[i % len(PORTS)], "name": "http", "protocol": "HTTP", "targetPort": 8080}],
            "endpoints": [{"address": ip, "labels": labels} for ip in endpoint_ips(i, generation)],
        },
    }  # fmt: skip


def virtual_service(i: int, namespaces: int, marker: str = "initial", weights: tuple[int, int, int] = (60, 30, 10)
                    ) -> dict[str, Any]:  # fmt: skip
    """`split` (i == 0): svc-0's traffic by weight over svc-0..2, its route named by `marker`; others: retries."""
    me = host(i, namespaces)
    port = PORTS[i % len(PORTS)]
    if i == 0:
        http = [{"name": f"split-{marker}", "timeout": "5s", "route": [
            {"destination": {"host": host(j, namespaces), "port": {"number": PORTS[j % len(PORTS)]}}, "weight": w}
            for j, w in enumerate(weights)]}]  # fmt: skip
    else:
        http = [{"name": "retries", "timeout": "3s", "retries": {"attempts": 2, "perTryTimeout": "1s"},
                 "route": [{"destination": {"host": me, "port": {"number": port}}}]}]  # fmt: skip
    return {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": "split" if i == 0 else f"vs-{i}", "namespace": f"ns-{i % namespaces}"},
            "spec": {"hosts": [me], "http": http}}  # fmt: skip


@dataclass
class Mesh:
    """The config directory and how to change it."""

    root: Path
    services: int
    namespaces: int
    virtual_services: int
    changes: int = 0

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in self.root.glob("*.yaml"):
            path.unlink()
        for k in range(self.namespaces):
            docs = [service_entry(i, self.namespaces) for i in range(k, self.services, self.namespaces) if i != 1]
            (self.root / f"services-ns-{k}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        self._replace("svc-1.yaml", [service_entry(1, self.namespaces)])
        self._replace("split.yaml", [virtual_service(0, self.namespaces)])
        docs = [virtual_service(i, self.namespaces) for i in range(1, self.virtual_services)]
        (self.root / "virtual-services.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))

    def change_route(self) -> tuple[str, float]:
        """New weights and route name for `split`; returns the marker and the wall time of the rename."""
        self.changes += 1
        marker = f"change{self.changes}x{os.getpid()}"
        weights = (50, 30, 20) if self.changes % 2 else (60, 30, 10)
        return marker, self._replace("split.yaml", [virtual_service(0, self.namespaces, marker, weights)])

    def change_endpoints(self) -> tuple[str, float]:
        """svc-1's first endpoint moves to a new address (the marker)."""
        self.changes += 1
        entry = service_entry(1, self.namespaces, generation=self.changes)
        return entry["spec"]["endpoints"][0]["address"], self._replace("svc-1.yaml", [entry])

    def _replace(self, name: str, docs: list[dict[str, Any]]) -> float:
        """Write beside the watched directory, then rename into it (atomic: the watcher never sees half a file)."""
        staging = self.root.parent / f".{name}.{time.monotonic_ns()}"
        staging.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        now = time.time()
        os.rename(staging, self.root / name)
        return now


# =========================================================================== the simulated sidecars (client process)


@dataclass
class Received:
    """One response read by a sidecar while a watch was on."""

    type: str
    at: float  # wall time it was read
    acked_at: float  # wall time its ACK was handed to gRPC
    resources: int
    marked: bool  # holds the watched marker


@dataclass
class Sidecar:
    """One simulated Envoy on one ADS stream: subscribes as Envoy does and ACKs everything."""

    index: int
    namespaces: int
    delta: bool
    names: dict[str, set[str]] = field(default_factory=lambda: {EDS: set(), RDS: set()})
    have: dict[str, set[str]] = field(default_factory=lambda: {EDS: set(), RDS: set()})
    acked: set[str] = field(default_factory=set)
    versions: dict[str, str] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    converged_at: float | None = None
    watch: tuple[str, bytes] | None = None  # (type URL, marker)
    seen: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # streams that ended with an error (then reconnected)
    stopped: bool = False

    def __post_init__(self) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()

    @property
    def node_id(self) -> str:
        i = self.index
        return f"sidecar~10.{200 + i // 65025}.{i // 255 % 255}.{i % 255 + 1}~pod-{i}.{self.namespace}~{self.namespace}.svc.cluster.local"

    @property
    def namespace(self) -> str:
        return f"ns-{self.index % self.namespaces}"

    def metadata(self) -> dict[str, Any]:
        deployment = self.index // self.namespaces % DEPLOYMENTS_PER_NAMESPACE
        return {"NAMESPACE": self.namespace, "INTERCEPTION_MODE": "REDIRECT",
                "LABELS": {"app": f"client-{deployment}", "version": "v1"}}  # fmt: skip

    async def run(self, target: str) -> None:
        """One ADS stream at a time; as Envoy, a stream that ends with an error is opened again (after 0.5 s)
        and the sidecar starts over (its converged time, once reached, stays)."""
        options = [("grpc.max_receive_message_length", -1), ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            while not self.stopped:
                self.outbox = asyncio.Queue()
                self.names, self.have = {EDS: set(), RDS: set()}, {EDS: set(), RDS: set()}
                self.acked, self.versions, self.nonces = set(), {}, {}
                method = stub.DeltaAggregatedResources if self.delta else stub.StreamAggregatedResources
                call = method(self._requests())
                self._first_requests()
                try:
                    async for response in call:
                        self._on_response(response)
                    return
                except grpc.aio.AioRpcError as exc:
                    self.errors.append(f"{exc.code().name}: {exc.details()}")
                await asyncio.sleep(0.5)

    async def _requests(self) -> Any:
        while True:
            request = await self.outbox.get()
            if request is None:
                return
            yield request

    def _first_requests(self) -> None:
        metadata = struct_pb2.Struct()
        metadata.update(self.metadata())
        node = Node(id=self.node_id, cluster=f"client.{self.namespace}", metadata=metadata)
        for i, type_url in enumerate((CDS, LDS)):
            self._send(type_url, node=node if i == 0 else None)

    def _send(self, type_url: str, node: Any = None, subscribe: set[str] = frozenset(),
              unsubscribe: set[str] = frozenset()) -> None:  # fmt: skip
        if self.delta:
            request = DeltaDiscoveryRequest(type_url=type_url, response_nonce=self.nonces.get(type_url, ""),
                                            resource_names_subscribe=sorted(subscribe),
                                            resource_names_unsubscribe=sorted(unsubscribe))  # fmt: skip
        else:
            request = DiscoveryRequest(type_url=type_url, version_info=self.versions.get(type_url, ""),
                                       response_nonce=self.nonces.get(type_url, ""),
                                       resource_names=sorted(self.names.get(type_url, ())))  # fmt: skip
        if node is not None:
            request.node.CopyFrom(node)
        self.outbox.put_nowait(request)

    def _on_response(self, response: Any) -> None:
        at = time.time()
        type_url = response.type_url
        if self.delta:
            packed = {r.name: r.resource for r in response.resources}
            removed = set(response.removed_resources)
            version = response.system_version_info
        else:
            packed = {_name(type_url, a): a for a in response.resources}
            removed = set()
            version = response.version_info
        self.versions[type_url], self.nonces[type_url] = version, response.nonce
        follow: tuple[str, set[str]] | None = None
        if type_url in (CDS, LDS):
            wanted = EDS if type_url == CDS else RDS
            found = {n for a in packed.values() for n in _references(type_url, a.value)}
            if self.delta:
                old = self.names[wanted]
                current = (old | found) - {n for n in old if _owner(wanted, n) in removed}
            else:
                current = found
            if current != self.names[wanted]:
                follow = (wanted, current)
        else:
            self.have[type_url] |= set(packed)
            self.have[type_url] -= removed
        self._send(type_url)  # the ACK
        if follow is not None:
            wanted, current = follow
            added, gone = current - self.names[wanted], self.names[wanted] - current
            self.names[wanted] = current
            self.have[wanted] &= current
            self._send(wanted, subscribe=added, unsubscribe=gone)
        acked_at = time.time()
        self.acked.add(type_url)
        if self.converged_at is None and {CDS, LDS} <= self.acked and all(
                self.names[t] <= self.have[t] for t in (EDS, RDS)):  # fmt: skip
            self.converged_at = acked_at
        if self.watch is not None:
            marker = self.watch[1]
            marked = type_url == self.watch[0] and any(marker in a.value for a in packed.values())
            self.seen.append(Received(SHORT[type_url], at, acked_at, len(packed), marked))


def _name(type_url: str, packed: Any) -> str:
    """A SotW resource's name (field 1 of each of the four messages: name, or cluster_name for EDS)."""
    return _decoded(type_url, packed.value)[0]


_DECODED: dict[bytes, tuple[str, tuple[str, ...]]] = {}


def _references(type_url: str, value: bytes) -> tuple[str, ...]:
    return _decoded(type_url, value)[1]


def _decoded(type_url: str, value: bytes) -> tuple[str, tuple[str, ...]]:
    """(name, what it makes the sidecar subscribe to: an EDS cluster's own name, a listener's RDS names).
    Cached by the resource's bytes: a hundred sidecars get the same clusters and listeners."""
    cached = _DECODED.get(value)
    if cached is not None:
        return cached
    if type_url == CDS:
        cluster = Cluster.FromString(value)
        eds = cluster.type == Cluster.EDS
        out = (cluster.name, ((cluster.eds_cluster_config.service_name or cluster.name),) if eds else ())
    elif type_url == LDS:
        listener = Listener.FromString(value)
        routes = []
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.typed_config.type_url.endswith("HttpConnectionManager"):
                    hcm = HttpConnectionManager.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        routes.append(hcm.rds.route_config_name)
        out = (listener.name, tuple(routes))
    elif type_url == EDS:
        out = (ClusterLoadAssignment.FromString(value).cluster_name, ())
    else:
        out = (RouteConfiguration.FromString(value).name, ())
    _DECODED[value] = out
    return out


def _owner(type_url: str, name: str) -> str:
    """The CDS/LDS resource a subscribed EDS/RDS name comes from, for delta removals (EDS: the cluster itself)."""
    return name if type_url == EDS else ""


async def client_main(args: argparse.Namespace) -> int:
    """The sidecar process: commands on stdin (one JSON object a line), one JSON answer a line on stdout."""
    sidecars = [Sidecar(i, args.namespaces, args.delta) for i in range(args.proxies)]
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "connect":
            started = time.time()
            tasks = [asyncio.create_task(s.run(command["target"])) for s in sidecars]
            await _until(lambda: all(s.converged_at for s in sidecars), command["timeout"])
            _reply({"started": started, "converged": [s.converged_at for s in sidecars],
                    "errors": [e for s in sidecars for e in s.errors]})  # fmt: skip
            for s in sidecars:
                s.errors.clear()
        elif command["cmd"] == "watch":
            for s in sidecars:
                s.watch, s.seen = (command["type"], command["marker"].encode()), []
            _reply({"ok": True})
        elif command["cmd"] == "collect":
            await _until(lambda: all(any(r.marked for r in s.seen) for s in sidecars), command["timeout"])
            await asyncio.sleep(command["settle"])
            _reply({"sidecars": [[vars(r) for r in s.seen] for s in sidecars],
                    "errors": [e for s in sidecars for e in s.errors]})  # fmt: skip
            for s in sidecars:
                s.watch, s.seen = None, []
                s.errors.clear()
        elif command["cmd"] == "quit":
            break
    for s in sidecars:
        s.stopped = True
        s.outbox.put_nowait(None)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return 0


async def _until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# =========================================================================== the orchestrator


def proc_cpu(pid: int) -> float:
    """utime + stime (seconds) of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def convergence_histogram(monitoring_port: int) -> dict[str, float]:
    """pilot_proxy_convergence_time's count, sum and buckets from pilot's /metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{monitoring_port}/metrics", timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("pilot_proxy_convergence_time"):
            key, value = line.rsplit(" ", 1)
            out[key.removeprefix("pilot_proxy_convergence_time")] = float(value)
    return out


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    count = after.get("_count", 0) - before.get("_count", 0)
    total = after.get("_sum", 0) - before.get("_sum", 0)
    buckets = {re.sub(r'.*le="([^"]+)".*', r"\1", k): after[k] - before.get(k, 0) for k in after if "_bucket" in k}
    return {"count": count, "mean_ms": round(1000 * total / count, 1) if count else None,
            "le_buckets": {le: n for le, n in buckets.items()}}  # fmt: skip


def push_times(log_path: Path) -> list[tuple[float, str]]:
    """(wall time, what) of each "config version ...: pushing ..." line in pilot's log."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = PUSH_LINE.match(line)
        if m:
            out.append((datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp(), m.group(3)))
    return out


class Client:
    """The sidecar process, driven over its stdin/stdout."""

    def __init__(self, args: argparse.Namespace) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--client", "--proxies", str(args.proxies),
               "--namespaces", str(args.namespaces), *(["--delta"] if args.delta else [])]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)  # fmt: skip

    def ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the sidecar process exited ({self.proc.poll()})")
        return json.loads(line)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(cmd="quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def py_spy(pid: int, directory: Path | None, label: str) -> Iterator[None]:
    """py-spy record of `pid` while the block runs (nothing without a directory); stopped by its PID."""
    if directory is None:
        yield
        return
    directory.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "200",
                            "-f", "raw", "-o", str(directory / f"{label}.folded"), "-d", "600", "--nonblocking"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    time.sleep(1.0)  # attached
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(spy.pid, 2)  # SIGINT: py-spy writes what it has
        try:
            spy.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(spy.pid, 9)
            spy.wait()


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]

    return {"p50_ms": round(1000 * pick(0.5), 1), "p99_ms": round(1000 * pick(0.99), 1),
            "max_ms": round(1000 * ordered[-1], 1)}  # fmt: skip


def change(client: Client, mesh: Mesh, pilot_pid: int, args: argparse.Namespace, log_path: Path, kind: str,
           monitoring_port: int) -> dict[str, Any]:  # fmt: skip
    """One config change: per sidecar, seconds from the write (and from pilot's push start) to its marked
    response (vs: the ACK of RDS with the new route; eds: the receipt of EDS with the new address)."""
    watched = RDS if kind == "vs" else EDS
    marker = f"split-change{mesh.changes + 1}x{os.getpid()}" if kind == "vs" else endpoint_ips(1, mesh.changes + 1)[0]
    client.ask(cmd="watch", type=watched, marker=marker)
    histogram = convergence_histogram(monitoring_port)
    pushes_before = len(push_times(log_path))
    with py_spy(pilot_pid, args.profile, f"{kind}-{mesh.changes + 1}"):
        cpu, client_cpu = proc_cpu(pilot_pid), proc_cpu(client.proc.pid)
        written_marker, written = mesh.change_route() if kind == "vs" else mesh.change_endpoints()
        assert written_marker in marker, (written_marker, marker)
        answer = client.ask(cmd="collect", timeout=args.timeout, settle=args.settle)
    cpu, client_cpu = proc_cpu(pilot_pid) - cpu, proc_cpu(client.proc.pid) - client_cpu
    pushes = push_times(log_path)[pushes_before:]
    push_at = pushes[0][0] if pushes else written
    done, types, missing = [], {}, 0
    for seen in answer["sidecars"]:
        marked = [r for r in seen if r["marked"]]
        if not marked:
            missing += 1
            continue
        done.append(marked[0]["acked_at" if kind == "vs" else "at"])
        for r in seen:
            types[r["type"]] = types.get(r["type"], 0) + 1
    out = {"kind": kind, "missing": missing, "types_pushed": types, "pilot_cpu_s": round(cpu, 3),
           "client_cpu_s": round(client_cpu, 3), "pilot_pushes": [what for _, what in pushes],
           "pilot_push_delay_ms": round(1000 * (push_at - written), 1),
           "pilot_convergence_histogram": histogram_delta(histogram, convergence_histogram(monitoring_port)),
           "stream_errors": len(answer["errors"]), "first_errors": answer["errors"][:3]}  # fmt: skip
    if done:
        out["from_write"] = percentiles([t - written for t in done])
        out["from_push"] = percentiles([t - push_at for t in done])
    if kind == "eds" and set(types) - {"eds"}:
        out["error"] = f"an endpoint change pushed {sorted(types)}, not EDS alone"
    return out


def run_rep(args: argparse.Namespace, work: Path, rep: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    from pylon.bench.targets import free_port, start_process

    mesh = Mesh(work / "config", args.services, args.namespaces, args.virtual_services)
    mesh.write()
    xds, debug, monitoring, ca = free_port(), free_port(), free_port(), free_port()
    log_path = work / f"pilot-{rep}.log"
    cmd = [sys.executable, "-m", "pylon.cli", "pilot", "--config-dir", str(mesh.root), "--grpc-address",
           f"127.0.0.1:{xds}", "--debug-address", f"127.0.0.1:{debug}", "--monitoring-address",
           f"127.0.0.1:{monitoring}", "--ca-address", f"127.0.0.1:{ca}", "--ca-dir", str(work / "cacerts")]  # fmt: skip
    pilot = start_process("pilot", cmd, port=xds, admin_port=debug, log_path=log_path, ready_timeout=120)
    client: Client | None = None
    try:
        out: dict[str, Any] = {"rep": rep, "rss_start_mib": round(rss_mib(pilot.pid), 1)}
        client = Client(args)
        with py_spy(pilot.pid, args.profile, f"connect-{rep}"):
            cpu, client_cpu = proc_cpu(pilot.pid), proc_cpu(client.proc.pid)
            answer = client.ask(cmd="connect", target=f"127.0.0.1:{xds}", timeout=args.timeout)
        converged = [t for t in answer["converged"] if t]
        out["connect"] = {"converged": len(converged), "stream_errors": len(answer["errors"]),
                          "first_errors": answer["errors"][:3],
                          "all_s": round(max(converged) - answer["started"], 3) if converged else None,
                          **({"p50_s": round(statistics.median(converged) - answer["started"], 3)} if converged else {}),
                          "pilot_cpu_s": round(proc_cpu(pilot.pid) - cpu, 3),
                          "client_cpu_s": round(proc_cpu(client.proc.pid) - client_cpu, 3)}  # fmt: skip
        time.sleep(args.settle)
        out["rss_connected_mib"] = round(rss_mib(pilot.pid), 1)
        out["vs"] = change(client, mesh, pilot.pid, args, log_path, "vs", monitoring)
        time.sleep(args.settle)
        out["eds"] = change(client, mesh, pilot.pid, args, log_path, "eds", monitoring)
        out["rss_after_pushes_mib"] = round(rss_mib(pilot.pid), 1)
        print(json.dumps(out), file=sys.stderr)
        return out
    finally:
        if client is not None:
            client.stop()
        pilot.stop()


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(path: str) -> float | None:
        values = []
        for run in runs:
            value: Any = run
            for key in path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, (int, float)):
                values.append(value)
        return round(statistics.median(values), 3) if values else None

    out: dict[str, Any] = {"connect_all_s": med("connect.all_s"), "connect_pilot_cpu_s": med("connect.pilot_cpu_s"),
                           "connect_client_cpu_s": med("connect.client_cpu_s")}  # fmt: skip
    for kind in ("vs", "eds"):
        for base in ("from_write", "from_push"):
            for q in ("p50_ms", "p99_ms", "max_ms"):
                out[f"{kind}_{base}_{q}"] = med(f"{kind}.{base}.{q}")
        out[f"{kind}_pilot_cpu_s"] = med(f"{kind}.pilot_cpu_s")
        out[f"{kind}_client_cpu_s"] = med(f"{kind}.client_cpu_s")
        out[f"{kind}_types_pushed"] = [run[kind]["types_pushed"] for run in runs]
        out[f"{kind}_missing"] = [run[kind]["missing"] for run in runs]
        out[f"{kind}_pilot_histogram_mean_ms"] = med(f"{kind}.pilot_convergence_histogram.mean_ms")
    for key in ("rss_start_mib", "rss_connected_mib", "rss_after_pushes_mib"):
        out[key] = med(key)
    out["stream_errors"] = {k: [run[k]["stream_errors"] for run in runs] for k in ("connect", "vs", "eds")}
    out["errors"] = [run[k]["error"] for run in runs for k in ("vs", "eds") if run[k].get("error")]
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    s = summary
    mode = "delta" if meta["delta"] else "state of the world"
    lines = [
        f"# pilot under load: {meta['services']:,} services, {meta['proxies']} sidecars ({mode})",
        "",
        f"{meta['machine']}; pylon {meta['pylon']} at {meta['commit']}; {meta['started']}; median of {meta['reps']} "
        f"rep(s), each a fresh pilot and fresh sidecars. {meta['services']:,} ServiceEntries (STATIC, 2 endpoints, "
        f"one HTTP port of 5) in {meta['namespaces']} namespaces, {meta['virtual_services']} VirtualServices; "
        f"{meta['proxies']} simulated sidecars (REDIRECT, {DEPLOYMENTS_PER_NAMESPACE} deployments a namespace) in one "
        "process beside pilot, sharing its cores. `benchmarks/pilot_load.py` says how each figure is taken.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        f"| connect: all sidecars converged | {s['connect_all_s']} s | |",
        f"| VirtualService change -> RDS ACK, from the write: p50 / p99 / max | {s['vs_from_write_p50_ms']} / "
        f"{s['vs_from_write_p99_ms']} / {s['vs_from_write_max_ms']} ms | p99 <= 1,000 ms |",
        f"| same, from pilot's push start | {s['vs_from_push_p50_ms']} / {s['vs_from_push_p99_ms']} / "
        f"{s['vs_from_push_max_ms']} ms | |",
        f"| types pushed on the VirtualService change (responses, per rep) | {s['vs_types_pushed']} | |",
        f"| endpoint change -> EDS received, from the write: p50 / p99 / max | {s['eds_from_write_p50_ms']} / "
        f"{s['eds_from_write_p99_ms']} / {s['eds_from_write_max_ms']} ms | |",
        f"| same, from pilot's push start | {s['eds_from_push_p50_ms']} / {s['eds_from_push_p99_ms']} / "
        f"{s['eds_from_push_max_ms']} ms | <= 100 ms |",
        f"| types pushed on the endpoint change (per rep) | {s['eds_types_pushed']} | EDS only |",
        f"| pilot CPU: connect / VirtualService push / endpoint push | {s['connect_pilot_cpu_s']} / "
        f"{s['vs_pilot_cpu_s']} / {s['eds_pilot_cpu_s']} s | |",
        f"| sidecar process CPU: connect / VirtualService / endpoint | {s['connect_client_cpu_s']} / "
        f"{s['vs_client_cpu_s']} / {s['eds_client_cpu_s']} s | |",
        f"| pilot RSS: started / connected / after the pushes | {s['rss_start_mib']} / {s['rss_connected_mib']} / "
        f"{s['rss_after_pushes_mib']} MiB | |",
        f"| pilot_proxy_convergence_time mean: VirtualService / endpoint push | {s['vs_pilot_histogram_mean_ms']} / "
        f"{s['eds_pilot_histogram_mean_ms']} ms | |",
        f"| ADS streams that failed (then reopened): connect / VirtualService / endpoint, per rep | "
        f"{s['stream_errors']['connect']} / {s['stream_errors']['vs']} / {s['stream_errors']['eds']} | none |",
        "",
        "The time from the write includes the directory source's 50 ms polling and 100 ms debounce (istiod debounces "
        "100 ms too), and reading the changed files and indexing the config again. A push's CPU is pilot's utime+stime from the "
        f"write until {meta['settle_s']} s after the last sidecar got the change. Anchor: Istio's published load test "
        "(1,000 services, 2,000 sidecars) runs istiod at about 1 vCPU and 1.5 GB.",
    ]
    if s["errors"]:
        lines += ["", "Errors: " + "; ".join(s["errors"])]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000, help="ServiceEntries (1000)")
    parser.add_argument("--proxies", type=int, default=100, help="simulated sidecars (100)")
    parser.add_argument("--namespaces", type=int, default=10, help="namespaces for services and sidecars (10)")
    parser.add_argument("--virtual-services", type=int, default=10, help="VirtualServices (10)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, each a fresh pilot (3)")
    parser.add_argument("--delta", action="store_true", help="delta ADS instead of state of the world")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of quiet after each phase (1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds any phase may take (120)")
    parser.add_argument("--profile", type=Path, help="py-spy folded stacks of pilot per phase into this folder")
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 services, 20 sidecars, 1 rep")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)  # the sidecar process
    args = parser.parse_args()
    if args.client:
        return asyncio.run(client_main(args))
    if args.quick:
        args.services, args.proxies, args.reps = 200, 20, 1
    sys.path.insert(0, str(ROOT / "src"))
    from pylon import __version__

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True,
                           text=True).stdout.strip()  # fmt: skip
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": commit + ("+changes" if dirty else ""),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "pylon": __version__, "services": args.services, "proxies": args.proxies, "namespaces": args.namespaces,
            "virtual_services": args.virtual_services, "reps": args.reps, "delta": args.delta,
            "settle_s": args.settle}  # fmt: skip
    began = time.monotonic()
    runs = []
    with tempfile.TemporaryDirectory(prefix="pylon-pilot-load-") as tmp:
        for rep in range(args.reps):
            work = Path(tmp) / f"rep{rep}"
            work.mkdir()
            runs.append(run_rep(args, work, rep))
    meta["wall_s"] = round(time.monotonic() - began, 1)
    summary = summarize(runs)
    name = "pilot_load-delta" if args.delta else "pilot_load"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=2) + "\n")
    table = markdown(summary, meta)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
