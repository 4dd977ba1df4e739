"""Live config changes over gRPC ADS (state of the world): pylon vs Envoy 1.40, side by side in one run.

The management server is this benchmark's own small grpcio server (`AdsServer`, one per proxy): it holds
the current resources of each type, answers a request whose resource names changed, and pushes a changed
type to the stream. Responses are serialized before they are stamped, so the time recorded is taken just
before the response is put on the stream. Both proxies run with `--concurrency 1` (and the same
`--drain-time-s`) in front of a 1-worker nginx (server blocks a and b, a 100-byte body with
`x-upstream: <name>`), with a static listener whose routes come over RDS and CDS clusters of `type: EDS`
(each with its own ClusterLoadAssignment: one endpoint, on upstream a for even clusters, b for odd ones).

Part 1 — update-to-effect at N clusters (10 and 1,000). From the server putting the response on the
stream until the first response served on the new config (a poller on a keep-alive connection, one
request about every millisecond, reading `x-upstream`):

  rds-swap  RDS: the route points at another of the N clusters (on the other upstream)
  eds-full  EDS: the routed cluster's assignment gets the other upstream as its endpoint; the response
            holds every assignment the proxy asked for (N, the full state, as a snapshot server sends)
  eds-one   the same change; the response holds only the changed assignment (SotW EDS allows that, and
            Istio does it: assignments left out are kept)

Median of --reps, pylon and Envoy interleaved (order alternating). The time until the proxy's ACK reached
the server is recorded too; then each proxy's memory at N clusters.

Part 2 — taking a snapshot of 1,000 EDS clusters with 10 endpoints each (10,000 endpoints, each a
distinct address; the last cluster's ten are real nginx listeners). A fresh proxy starts with one
static cluster over CDS and routes (`/last` already names the last cluster of the snapshot: 503 before);
after a settle, the server sends the CDS snapshot (the proxy then asks for the 1,000 assignments and gets
them). Measured: wall time and the proxy's CPU seconds (whole process tree, /proc) from the CDS send
until the snapshot is applied (a request to `/last` is served by the last cluster; /stats, read after the
settle, must say `cluster_manager.warming_clusters` 0), the CPU until it has settled (+--settle s), and RSS growth
(pylon: supervisor + workers summed, and PSS; Envoy: its one process). --snapshot-reps fresh proxies
each, interleaved.

Part 3 — updates under load. A fresh proxy with --load-clusters EDS clusters (10, then 1,000) gets a fixed
rate from `pylon load -qps Q -c C -uniform` (keep-alive; latency from each request's intended send time) for
--duration seconds while the server sends one update a second:

  steady     no update (the baseline for latency)
  routes     RDS: the route alternates between a cluster on upstream a and one on b
  endpoints  EDS (full state): the routed cluster's endpoint alternates between upstream a and b

Reported: requests, non-2xx, socket errors (by kind), latency percentiles, updates applied (counters)
and ACKed, NACKs, the proxy's and the load client's CPU (the client's from wait4: it was not the limit).

Usage: python benchmarks/xds_updates.py [--sizes 10,1000] [--reps 9] [--snapshot-clusters 1000]
       [--snapshot-endpoints 10] [--snapshot-reps 5] [--duration 30] [--qps 2000] [--load-clusters 10,1000]
       [--parts 1,2,3] [--profile DIR] [--quick] [--out DIR]
Run it alone on the machine: flock /tmp/pylon-bench.lock .venv/bin/python benchmarks/xds_updates.py
Writes benchmarks/results/xds_updates.{json,md} (or --out DIR). Every process is started here and stopped
by its PID (process group), on failure too; every load run is bounded by its own -t.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import os
import platform
import queue
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# This process forks (subprocess with preexec_fn) while grpc threads run: no fork handlers, and no note about it.
# Set only while grpc is imported (it reads the variable then), so the proxies started here do not inherit it.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "0"
import grpc  # noqa: E402

del os.environ["GRPC_ENABLE_FORK_SUPPORT"]
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import any_pb2, json_format
from google.protobuf import __version__ as protobuf_version

from pylon import __version__
from pylon.bench.targets import (
    BackgroundTool, Running, TargetError, free_port, nginx_preamble, run_tool, start_process,
)
from pylon.config.discovery import CLUSTER_LOAD_ASSIGNMENT_TYPE, CLUSTER_TYPE, ROUTE_CONFIGURATION_TYPE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from live_config import (  # noqa: E402  (the filesystem-xDS benchmark's helpers: same processes, same memory view)
    HCM_TYPE, ROUTER_TYPE, Poller, envoy_version, load_args, memory_mib, start_proxy, stats,
)

ROOT = Path(__file__).resolve().parent.parent
PROXIES = ("pylon", "envoy")
EFFECTS = ("rds-swap", "eds-full", "eds-one")
SCENARIOS = ("steady", "routes", "endpoints")
BODY_SIZE = 100

CDS, RDS, EDS = CLUSTER_TYPE, ROUTE_CONFIGURATION_TYPE, CLUSTER_LOAD_ASSIGNMENT_TYPE
NAMED = (RDS, EDS)  # types whose requests name resources (CDS is wildcard)
_MESSAGES = {CDS: Cluster, RDS: RouteConfiguration, EDS: ClusterLoadAssignment}
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


# --------------------------------------------------------------------------- the management server


def to_any(type_url: str, resource: dict[str, Any]) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(json_format.ParseDict(resource, _MESSAGES[type_url]()))
    return packed


@dataclass
class Sent:
    type_url: str
    version: str
    nonce: str
    resources: int
    size: int
    at: float  # monotonic, just before the response went on the stream


@dataclass
class Seen:
    type_url: str
    at: float
    nonce: str  # response_nonce: "" for a first request
    version: str
    names: int
    nack: str  # error_detail.message of a NACK


@dataclass
class _Stream:
    outbox: queue.Queue[tuple[str, frozenset[str] | None] | None] = field(default_factory=queue.Queue)
    names: dict[str, frozenset[str]] = field(default_factory=dict)  # what each type's last request named


class AdsServer:
    """State-of-the-world ADS for one proxy: `set` a type's resources (and push them); a request answered when
    its names change. Records every response sent (`sent`) and request seen (`seen`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self.resources: dict[str, tuple[str, dict[str, any_pb2.Any]]] = {}
        self.streams: list[_Stream] = []
        self.sent: list[Sent] = []
        self.seen: list[Seen] = []
        self.nonces = itertools.count(1)
        self.server: grpc.Server | None = None

    def start(self) -> "AdsServer":
        handler = grpc.method_handlers_generic_handler(ADS_SERVICE, {
            "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                self._stream, request_deserializer=DiscoveryRequest.FromString,
                response_serializer=lambda data: data)})  # responses are serialized before they are stamped
        self.server = grpc.server(futures.ThreadPoolExecutor(8),
                                  options=[("grpc.max_send_message_length", 64 << 20),
                                           ("grpc.max_receive_message_length", 64 << 20)])
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()
        return self

    def stop(self) -> None:
        with self.lock:
            for stream in self.streams:
                stream.outbox.put(None)
            self.streams.clear()
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    def set(self, type_url: str, version: str, resources: dict[str, any_pb2.Any],
            only: frozenset[str] | None = None) -> None:
        """Serve `resources` as `version` from now on and push them to the streams that asked for the type
        (`only`: the response holds just these names, for EDS/RDS, whose SotW responses may hold a subset)."""
        with self.lock:
            self.resources[type_url] = (version, dict(resources))
            for stream in self.streams:
                if type_url in stream.names:
                    stream.outbox.put((type_url, only))

    def sent_at(self, type_url: str, version: str, timeout: float = 30.0) -> Sent:
        """The (first) response of this type and version sent, waiting for it."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                for sent in self.sent:
                    if sent.type_url == type_url and sent.version == version:
                        return sent
            if time.monotonic() > deadline:
                raise TargetError(f"the server did not send {type_url} version {version} within {timeout:g}s")
            time.sleep(0.001)

    def reply_to(self, sent: Sent) -> Seen | None:
        """The proxy's ACK or NACK of `sent`, if it came."""
        with self.lock:
            return next((s for s in self.seen if s.type_url == sent.type_url and s.nonce == sent.nonce), None)

    def nacks(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.nack]

    def _response(self, stream: _Stream, type_url: str, only: frozenset[str] | None) -> tuple[bytes, Sent] | None:
        version, resources = self.resources[type_url]
        if type_url in NAMED:
            names = stream.names.get(type_url, frozenset())
            if only is not None:
                names = names & only
            if not names:
                return None
            chosen = [resources[n] for n in sorted(names) if n in resources]
        else:
            chosen = list(resources.values())
        nonce = str(next(self.nonces))
        data = DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce,
                                 resources=chosen).SerializeToString()
        return data, Sent(type_url, version, nonce, len(chosen), len(data), 0.0)

    def _read(self, stream: _Stream, requests: Iterator[DiscoveryRequest]) -> None:
        try:
            for request in requests:
                now = time.monotonic()
                names = frozenset(request.resource_names)
                with self.lock:
                    self.seen.append(Seen(request.type_url, now, request.response_nonce, request.version_info,
                                          len(names), request.error_detail.message))
                    changed = stream.names.get(request.type_url) != names
                    stream.names[request.type_url] = names
                    if changed and request.type_url in self.resources:
                        stream.outbox.put((request.type_url, None))
        except grpc.RpcError:
            pass
        stream.outbox.put(None)

    def _stream(self, requests: Iterator[DiscoveryRequest], context: Any) -> Iterator[bytes]:
        stream = _Stream()
        with self.lock:
            self.streams.append(stream)
        threading.Thread(target=self._read, args=(stream, requests), daemon=True).start()
        try:
            while (item := stream.outbox.get()) is not None:
                with self.lock:
                    built = self._response(stream, *item)
                if built is None:
                    continue
                data, sent = built
                sent.at = time.monotonic()  # just before the response goes on the stream
                with self.lock:
                    self.sent.append(sent)
                yield data
        finally:
            with self.lock:
                if stream in self.streams:
                    self.streams.remove(stream)


# --------------------------------------------------------------------------- resources and bootstrap


def socket_address(address: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": address, "port_value": port}}


def eds_cluster(name: str) -> dict[str, Any]:
    source = {"ads": {}, "initial_fetch_timeout": "30s", "resource_api_version": "V3"}
    return {"name": name, "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": {"eds_config": source, "service_name": name}}


def static_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s", **extra, "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(
            "127.0.0.1", port)}}]}]}}


def assignment(name: str, endpoints: list[tuple[str, int]]) -> dict[str, Any]:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": socket_address(address, port)}} for address, port in endpoints]}]}


def route_config(routes: list[tuple[str, str]]) -> dict[str, Any]:
    return {"name": "main_routes", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": prefix}, "route": {"cluster": cluster}} for prefix, cluster in routes]}]}


def write_bootstrap(path: Path, admin_port: int, port: int, xds_port: int) -> Path:
    """A static listener taking `main_routes` over ADS; CDS over ADS; the xds-grpc cluster (HTTP/2) as Istio's."""
    ads = {"ads": {}, "initial_fetch_timeout": "30s", "resource_api_version": "V3"}
    hcm = {"@type": HCM_TYPE, "stat_prefix": "main",
           "rds": {"route_config_name": "main_routes", "config_source": ads},
           "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}}]}
    listener = {"name": "main", "address": socket_address("127.0.0.1", port), "filter_chains": [{"filters": [
        {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]}
    xds = static_cluster("xds-grpc", xds_port, typed_extension_protocol_options={HTTP_OPTIONS: {
        "@type": f"type.googleapis.com/{HTTP_OPTIONS}", "explicit_http_config": {"http2_protocol_options": {}}}})
    document = {
        "node": {"id": "bench", "cluster": "bench"},
        "admin": {"address": socket_address("127.0.0.1", admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [xds]},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": ads},
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# --------------------------------------------------------------------------- processes


def pylon_source() -> dict[str, Any]:
    """Which pylon code ran: its path, and the commit (a checkout: plus the files changed under src/; a copy made
    with `git archive HEAD src`: the commit in a COMMIT file beside its src/)."""
    import pylon
    package = Path(pylon.__file__).resolve().parent
    info: dict[str, Any] = {"path": str(package)}
    if package.is_relative_to(ROOT):
        run = lambda *a: subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=30).stdout.strip()
        info["commit"] = run("rev-parse", "HEAD")
        info["uncommitted"] = run("status", "--porcelain", "src").splitlines()
    elif (package.parent.parent / "COMMIT").exists():
        info["commit"] = (package.parent.parent / "COMMIT").read_text().strip()
        info["uncommitted"] = []
    return info


def tool_versions() -> dict[str, str]:
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, timeout=30).stderr.strip()
    return {"pylon": __version__, "envoy": envoy_version(), "grpcio": grpc.__version__,
            "protobuf": protobuf_version, "nginx": nginx.rpartition("/")[2] or nginx,
            "python": platform.python_version()}


def start_nginx(work: Path, snapshot: list[tuple[str, int]]) -> tuple[Running, dict[str, int]]:
    """One 1-worker nginx: upstreams a and b on 127.0.0.1, and `snap` on the `snapshot` addresses (loopback)."""
    base = work / "nginx"
    (base / "tmp").mkdir(parents=True)
    ports = {"a": free_port(), "b": free_port()}
    body = "x" * (BODY_SIZE - 1) + "\\n"

    def server(name: str, listens: list[tuple[str, int]]) -> str:
        lines = "".join(f"        listen {address}:{port};\n" for address, port in listens)
        return (f"    server {{\n{lines}        location / {{ add_header x-upstream {name}; "
                f"return 200 \"{body}\"; }}\n    }}\n")

    servers = server("a", [("127.0.0.1", ports["a"])]) + server("b", [("127.0.0.1", ports["b"])])
    if snapshot:
        servers += server("snap", snapshot)
    conf = base / "nginx.conf"
    conf.write_text(nginx_preamble(base) + "    default_type text/plain;\n    keepalive_requests 1000000;\n"
                    + servers + "}\n")
    nginx = start_process("nginx", ["nginx", "-e", str(base / "error.log"), "-p", str(base), "-c", str(conf)],
                          port=ports["a"], log_path=base / "stdout.log")
    return nginx, ports


def cpu_seconds(running: Running) -> float:
    return running.cpu_seconds()


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        reply.read()
        return reply.status, reply.getheader("x-upstream")
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        conn.close()


# --------------------------------------------------------------------------- a proxy on its own ADS server


class Rig:
    """A proxy (pylon or Envoy) with N EDS clusters and routes from its own AdsServer, and the model of what the
    server holds. Use as a context manager: the proxy, the server and the poller always stop."""

    def __init__(self, proxy: str, n: int, directory: Path, ups: dict[str, int], drain_time: float) -> None:
        self.proxy, self.n, self.directory, self.ups, self.drain_time = proxy, n, directory, ups, drain_time
        self.clusters = {f"c{i:04d}": "ab"[i % 2] for i in range(n)}
        self.route = "c0000"
        self.versions = {CDS: 0, EDS: 0, RDS: 0}
        self.cla_cache: dict[tuple[str, str], any_pb2.Any] = {}
        self.stack = contextlib.ExitStack()
        self.ads = AdsServer()
        self.running: Running | None = None
        self.poller: Poller | None = None
        self.ready_s = 0.0

    def __enter__(self) -> "Rig":
        try:
            self.stack.callback(self.ads.stop)
            self.ads.start()
            self.ads.set(CDS, self.bump(CDS), {n: to_any(CDS, eds_cluster(n)) for n in self.clusters})
            self.ads.set(EDS, self.bump(EDS), self.assignments())
            self.ads.set(RDS, self.bump(RDS), self.routes())
            self.directory.mkdir(parents=True, exist_ok=True)
            port, admin = free_port(), free_port()
            boot = write_bootstrap(self.directory / "bootstrap.yaml", admin, port, self.ads.port)
            started = time.monotonic()
            self.running = self.stack.enter_context(start_proxy(
                self.proxy, boot, port, admin, self.drain_time, self.directory / "proxy.log", ready_timeout=180))
            self.poller = Poller(port)
            self.stack.callback(self.poller.close)
            self.wait_for(self.upstream(), time.monotonic() + 60)
            self.ready_s = time.monotonic() - started
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.close()

    def bump(self, type_url: str) -> str:
        self.versions[type_url] += 1
        return str(self.versions[type_url])

    def cla(self, name: str) -> any_pb2.Any:
        key = (name, self.clusters[name])
        if key not in self.cla_cache:
            self.cla_cache[key] = to_any(EDS, assignment(name, [("127.0.0.1", self.ups[key[1]])]))
        return self.cla_cache[key]

    def assignments(self) -> dict[str, any_pb2.Any]:
        return {name: self.cla(name) for name in self.clusters}

    def routes(self) -> dict[str, any_pb2.Any]:
        return {"main_routes": to_any(RDS, route_config([("/", self.route)]))}

    def upstream(self) -> str:
        return self.clusters[self.route]

    def wait_for(self, upstream: str, deadline: float) -> float:
        """Poll (about every millisecond) until `upstream` serves /; the monotonic time of that response."""
        assert self.poller is not None
        while True:
            got = self.poller.served_by()
            now = time.monotonic()
            if got == upstream:
                return now
            if now > deadline:
                raise TargetError(f"{self.proxy}: no response from upstream {upstream} in time (last: {got})")
            time.sleep(0.001)

    # -- the changes
    def swap_route(self, rep: int) -> tuple[str, str]:
        """RDS: the route to a cluster on the other upstream; (type, version) sent."""
        other = "b" if self.upstream() == "a" else "a"
        candidates = [n for n, u in self.clusters.items() if u == other and n != self.route]
        self.route = candidates[(7 * rep) % len(candidates)]
        version = self.bump(RDS)
        self.ads.set(RDS, version, self.routes())
        return RDS, version

    def move_endpoint(self, full: bool) -> tuple[str, str]:
        """EDS: the routed cluster's endpoint to the other upstream (the response: every assignment, or it only)."""
        self.clusters[self.route] = "b" if self.upstream() == "a" else "a"
        version = self.bump(EDS)
        self.ads.set(EDS, version, self.assignments(), None if full else frozenset([self.route]))
        return EDS, version

    def change(self, effect: str, rep: int) -> tuple[str, str]:
        if effect == "rds-swap":
            return self.swap_route(rep)
        return self.move_endpoint(full=effect == "eds-full")

    def measure(self, effect: str, rep: int) -> dict[str, Any]:
        """One change; ms from its response going on the stream until the first request served on it, and the ACK."""
        type_url, version = self.change(effect, rep)
        served = self.wait_for(self.upstream(), time.monotonic() + 30)
        sent = self.ads.sent_at(type_url, version)
        deadline = time.monotonic() + 10
        while (reply := self.ads.reply_to(sent)) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return {"effect_ms": (served - sent.at) * 1000, "ack_ms": (reply.at - sent.at) * 1000 if reply else None,
                "nack": reply.nack if reply else "", "resources": sent.resources, "bytes": sent.size}


# --------------------------------------------------------------------------- part 1: update-to-effect


def part1(args: argparse.Namespace, work: Path, ups: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in args.sizes:
        print(f"part 1: update-to-effect at {n} clusters, {args.reps} reps of {EFFECTS}, pylon and Envoy "
              "interleaved", flush=True)
        with contextlib.ExitStack() as stack:
            rigs: dict[str, Rig] = {}
            for proxy in PROXIES:
                rigs[proxy] = stack.enter_context(Rig(proxy, n, work / f"effect-{n}-{proxy}", ups, args.drain_time))
                print(f"  {proxy}: ready with {n} EDS clusters after {rigs[proxy].ready_s:.2f}s", flush=True)
            samples: dict[str, dict[str, list[dict[str, Any]]]] = {e: {p: [] for p in PROXIES} for e in EFFECTS}
            for rep in range(1, args.reps + 1):
                for i, effect in enumerate(EFFECTS):
                    for proxy in (PROXIES if (rep + i) % 2 else PROXIES[::-1]):
                        time.sleep(0.3 + random.uniform(0.0, 0.1))  # the previous change settles
                        samples[effect][proxy].append(rigs[proxy].measure(effect, rep))
                line = "  ".join(f"{e} " + " / ".join(f"{samples[e][p][-1]['effect_ms']:.1f}" for p in PROXIES)
                                 for e in EFFECTS)
                print(f"  rep {rep} (ms, pylon / envoy): {line}", flush=True)
            if args.profile and n == max(args.sizes):
                profile_effects(rigs["pylon"], args.profile, n)
            time.sleep(1.0)
            memory = {}
            for proxy, rig in rigs.items():
                assert rig.running is not None
                memory[proxy] = memory_mib(rig.running.pid)
            nacks = {proxy: [s.nack for s in rig.ads.nacks()] for proxy, rig in rigs.items()}
            out[str(n)] = {"samples": samples, "memory": memory, "nacks": nacks,
                           "ready_s": {p: r.ready_s for p, r in rigs.items()}}
    return out


PROFILED_CHANGES = 20


def profile_effects(rig: Rig, directory: Path, n: int, count: int = PROFILED_CHANGES) -> None:
    """py-spy over pylon's processes during `count` changes of each kind (not measured)."""
    assert rig.running is not None
    print(f"  profiling pylon at {n} clusters: {count} of each change under py-spy -> {directory}", flush=True)
    for effect in EFFECTS:
        with py_spy(rig.running, directory, f"pylon-{n}-{effect}"):
            for rep in range(count):
                time.sleep(0.1)
                rig.measure(effect, rep)


# --------------------------------------------------------------------------- part 2: a 1,000-cluster snapshot


def snapshot_addresses(clusters: int, endpoints: int, port: int) -> dict[str, list[tuple[str, int]]]:
    """Distinct loopback addresses: cluster i's endpoint j is 127.(2 + i // 250).(i % 250).(j + 1):port."""
    return {f"s{i:04d}": [(f"127.{2 + i // 250}.{i % 250}.{j + 1}", port) for j in range(endpoints)]
            for i in range(clusters)}


def snapshot_run(proxy: str, rep: int, args: argparse.Namespace, work: Path, ups: dict[str, int],
                 snapshot: dict[str, list[tuple[str, int]]], resources: dict[str, dict[str, any_pb2.Any]],
                 profile: Path | None = None) -> dict[str, Any]:
    directory = work / f"snapshot-{proxy}-{rep}"
    directory.mkdir(parents=True)
    last = list(snapshot)[-1]
    with contextlib.ExitStack() as stack:
        ads = AdsServer().start()
        stack.callback(ads.stop)
        ads.set(CDS, "1", {"init": to_any(CDS, static_cluster("init", ups["a"]))})
        ads.set(RDS, "1", {"main_routes": to_any(RDS, route_config([("/last", last), ("/", "init")]))})
        port, admin = free_port(), free_port()
        boot = write_bootstrap(directory / "bootstrap.yaml", admin, port, ads.port)
        running = stack.enter_context(start_proxy(proxy, boot, port, admin, args.drain_time,
                                                  directory / "proxy.log", ready_timeout=120))
        if get(port, "/")[1] != "a" or get(port, "/last")[0] != 503:
            raise TargetError(f"{proxy}: the initial config does not serve as expected")
        time.sleep(args.settle)
        idle_cpu0 = cpu_seconds(running)
        time.sleep(1.0)
        idle_cpu_per_s = cpu_seconds(running) - idle_cpu0
        before = memory_mib(running.pid)
        spy = contextlib.ExitStack()  # py-spy, when profiling: from before the send until applied
        stack.callback(spy.close)
        if profile is not None:
            spy.enter_context(py_spy(running, profile, f"{proxy}-snapshot"))
        cpu0 = cpu_seconds(running)
        ads.set(EDS, "2", resources[EDS])  # nobody asks for these yet: nothing is sent
        ads.set(CDS, "2", resources[CDS])
        sent = ads.sent_at(CDS, "2")
        deadline = sent.at + 120
        polls = 0
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        stack.callback(conn.close)
        while True:  # /last every ~10 ms until the last cluster serves (then /stats, after the settle)
            try:
                conn.request("GET", "/last")
                reply = conn.getresponse()
                reply.read()
                status, by = reply.status, reply.getheader("x-upstream")
            except (OSError, http.client.HTTPException):
                conn.close()
                status, by = 0, None
            polls += 1
            now = time.monotonic()
            if status == 200 and by == "snap":
                served_at, cpu_served = now, cpu_seconds(running)
                spy.close()
                break
            if now > deadline:
                raise TargetError(f"{proxy}: the snapshot was not applied within 120 s")
            time.sleep(0.01)
        time.sleep(args.settle)
        cpu_settled = cpu_seconds(running)
        after = memory_mib(running.pid)
        final = stats(running)  # after the CPU and memory readings: a /stats of 1,000 clusters costs CPU itself
        if final.get("cluster_manager.warming_clusters", -1) != 0:
            raise TargetError(f"{proxy}: /last served by the last cluster, but after the settle /stats says "
                              f"warming_clusters {final.get('cluster_manager.warming_clusters')}")
        eds_sent = next((s for s in ads.sent if s.type_url == EDS), None)
        eds_asked = next((s for s in ads.seen if s.type_url == EDS and s.names), None)
        cds_reply = ads.reply_to(sent)
        eds_reply = ads.reply_to(eds_sent) if eds_sent else None
    rel = lambda t: None if t is None else (t - sent.at) * 1000  # noqa: E731
    return {
        "proxy": proxy, "rep": rep, "clusters": len(snapshot), "endpoints": sum(map(len, snapshot.values())),
        "applied_ms": rel(served_at),
        "cpu_s_to_applied": cpu_served - cpu0, "cpu_s_settled": cpu_settled - cpu0,
        "settle_s": args.settle, "idle_cpu_s_per_s": idle_cpu_per_s,
        "rss_before_mib": before["rss_mib"], "rss_after_mib": after["rss_mib"],
        "rss_growth_mib": after["rss_mib"] - before["rss_mib"],
        "pss_before_mib": before["pss_mib"], "pss_after_mib": after["pss_mib"],
        "pss_growth_mib": after["pss_mib"] - before["pss_mib"], "processes": after["processes"],
        "cds_bytes": sent.size, "eds_bytes": eds_sent.size if eds_sent else None,
        "timeline_ms": {"cds_sent": 0.0, "eds_asked": rel(eds_asked.at if eds_asked else None),
                        "cds_acked": rel(cds_reply.at if cds_reply else None),
                        "eds_sent": rel(eds_sent.at if eds_sent else None),
                        "eds_acked": rel(eds_reply.at if eds_reply else None), "served": rel(served_at)},
        "nacks": [s.nack for s in ads.nacks()], "polls": polls,
        "active_clusters": final.get("cluster_manager.active_clusters"),
        "warming_clusters": final.get("cluster_manager.warming_clusters"),
    }


@contextlib.contextmanager
def py_spy(running: Running, directory: Path, label: str) -> Iterator[None]:
    """py-spy record (raw folded stacks) of every process of `running` while the block runs; stopped by PID."""
    from live_config import tree_pids
    procs = []
    directory.mkdir(parents=True, exist_ok=True)
    for pid in tree_pids(running.pid):
        out = directory / f"{label}-{'supervisor' if pid == running.pid else 'worker'}-{pid}.folded"
        procs.append(subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                                       "-r", "250", "-f", "raw", "-o", str(out), "-d", "120", "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
    time.sleep(1.0)  # py-spy attached
    try:
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 2)  # SIGINT: py-spy writes what it has
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


_GENERIC = ("click/", "<frozen runpy>", "pylon/cli.py", "run_proxy ", "uvloop/__init__", "asyncio/runners.py",
            "AdsClient.run ", "AdsClient._stream ", "_control_loop ", "main (pylon/proxy/worker.py", "<module> ")


def profile_summary(directory: Path, changes: dict[str, int], top: int = 10) -> list[dict[str, Any]]:
    """From py-spy's folded stacks: each profile's active time per change by process, and the frames (pylon's own
    and the libraries it calls) taking the most of it, inclusive (so a call chain shows as several frames)."""
    rows = []
    for path in sorted(directory.glob("*.folded")):
        label, role, _pid = path.stem.rsplit("-", 2)
        count = changes.get(label, 1)
        total, inclusive = 0, {}
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            for frame in {frame.rpartition(":")[0] + ")" if ":" in frame else frame for frame in stack.split(";")}:
                if not any(g in frame for g in _GENERIC):
                    inclusive[frame] = inclusive.get(frame, 0) + int(n)
        ms = lambda samples: samples / 250 * 1000 / count  # noqa: E731  (py-spy -r 250)
        rows.append({"profile": label, "process": role, "changes": count, "active_ms_per_change": ms(total),
                     "top": [(frame, ms(samples)) for frame, samples in
                             sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]]})
    return rows


def part2(args: argparse.Namespace, work: Path, ups: dict[str, int], snap_port: int) -> list[dict[str, Any]]:
    snapshot = snapshot_addresses(args.snapshot_clusters, args.snapshot_endpoints, snap_port)
    print(f"part 2: a snapshot of {len(snapshot)} EDS clusters x {args.snapshot_endpoints} endpoints, "
          f"{args.snapshot_reps} fresh proxies each, interleaved", flush=True)
    resources = {CDS: {"init": to_any(CDS, static_cluster("init", ups["a"])),
                       **{name: to_any(CDS, eds_cluster(name)) for name in snapshot}},
                 EDS: {name: to_any(EDS, assignment(name, endpoints)) for name, endpoints in snapshot.items()}}
    runs = []
    for rep in range(1, args.snapshot_reps + 1):
        for proxy in (PROXIES if rep % 2 else PROXIES[::-1]):
            row = snapshot_run(proxy, rep, args, work, ups, snapshot, resources)
            runs.append(row)
            t = row["timeline_ms"]
            print(f"  {proxy:5s} rep {rep}: applied after {row['applied_ms']:.0f} ms, CPU {row['cpu_s_to_applied']:.2f}"
                  f" s ({row['cpu_s_settled']:.2f} s settled), RSS +{row['rss_growth_mib']:.1f} MiB (PSS "
                  f"+{row['pss_growth_mib']:.1f}); EDS asked {f(t['eds_asked'], '.0f')} sent {f(t['eds_sent'], '.0f')}"
                  f" ACKed {f(t['eds_acked'], '.0f')} ms; CDS ACKed {f(t['cds_acked'], '.0f')} ms; "
                  f"nacks {row['nacks']}", flush=True)
    if args.profile:
        print(f"part 2: one more pylon run under py-spy (not measured) -> {args.profile}", flush=True)
        snapshot_run("pylon", 0, args, work, ups, snapshot, resources, profile=args.profile)
    return runs


# --------------------------------------------------------------------------- part 3: updates under load


def load_run(scenario: str, proxy: str, n: int, args: argparse.Namespace, work: Path,
             ups: dict[str, int]) -> dict[str, Any]:
    directory = work / f"load-{n}-{scenario}-{proxy}"
    with Rig(proxy, n, directory, ups, args.drain_time) as rig:
        assert rig.running is not None and rig.poller is not None
        rig.poller.close()
        url = f"http://127.0.0.1:{rig.poller.port}/"
        run_tool(load_args(url, args.qps, args.connections, args.warmup, directory / "warmup.json"), args.warmup + 30)
        counter = ("http.main.rds.main_routes.update_success" if scenario == "routes"
                   else f"cluster.{rig.route}.update_success")
        before, cpu_before = stats(rig.running), cpu_seconds(rig.running)
        out = directory / "load.json"
        tool = BackgroundTool(load_args(url, args.qps, args.connections, args.duration, out), args.duration + 30)
        started = time.monotonic()
        sent: list[tuple[str, str]] = []
        for step in range(1, int(args.duration)):
            time.sleep(max(0.0, started + step - time.monotonic()))
            if not tool.running:
                break
            if scenario == "steady":
                continue
            if scenario == "routes":  # between c0000 (upstream a) and c0001 (b)
                rig.route = "c0001" if rig.route == "c0000" else "c0000"
                version = rig.bump(RDS)
                rig.ads.set(RDS, version, rig.routes())
                sent.append((RDS, version))
            else:
                sent.append(rig.move_endpoint(full=True))
        _, client_cpu = tool.result()
        proxy_cpu = cpu_seconds(rig.running) - cpu_before
        time.sleep(1.5)  # the last change reaches the counters
        after = stats(rig.running)
        memory = memory_mib(rig.running.pid)
        records = [rig.ads.sent_at(t, v, timeout=5) for t, v in sent]
        acks = [rig.ads.reply_to(s) for s in records]
        nacks = [s.nack for s in rig.ads.nacks()]
    result = json.loads(out.read_text())
    hist = result["DurationHistogram"]
    pct = {p["Percentile"]: p["Value"] * 1000 for p in hist.get("Percentiles") or ()}
    codes = result["RetCodes"]
    count = int(hist["Count"])
    ack_ms = [(a.at - s.at) * 1000 for s, a in zip(records, acks) if a is not None and not a.nack]
    return {
        "scenario": scenario, "proxy": proxy, "clusters": n, "changes": len(sent),
        "applied": after.get(counter, 0) - before.get(counter, 0), "acked": len(ack_ms), "nacks": nacks,
        "ack_ms_median": med(ack_ms), "ack_ms_max": max(ack_ms) if ack_ms else None,
        "requests": count, "ok_2xx": sum(n for code, n in codes.items() if code.startswith("2")),
        "non_2xx": sum(n for code, n in codes.items() if code != "-1" and not code.startswith("2")),
        "socket_errors": int(codes.get("-1", 0)), "error_kinds": result.get("ErrorKinds", {}), "ret_codes": codes,
        "connections_opened": result.get("SocketCount"),
        "p50_ms": pct.get(50.0), "p90_ms": pct.get(90.0), "p99_ms": pct.get(99.0), "p999_ms": pct.get(99.9),
        "max_ms": hist["Max"] * 1000, "actual_qps": result["ActualQPS"], "client_cpu_s": client_cpu,
        "proxy_cpu_s": proxy_cpu, "proxy_cpu_us_per_request": proxy_cpu / count * 1e6 if count else None,
        "memory": memory,
    }


def part3(args: argparse.Namespace, work: Path, ups: dict[str, int]) -> list[dict[str, Any]]:
    print(f"part 3: {SCENARIOS} x {PROXIES} at {args.load_clusters} clusters, {args.duration:g}s at {args.qps:g} "
          f"req/s (pylon load -c {args.connections} -uniform), one update a second", flush=True)
    runs = []
    for i, (n, scenario) in enumerate(itertools.product(args.load_clusters, SCENARIOS)):
        for proxy in (PROXIES if i % 2 == 0 else PROXIES[::-1]):
            row = load_run(scenario, proxy, n, args, work, ups)
            runs.append(row)
            print(f"  {n:5d} {scenario:9s} {proxy:5s} {row['requests']:7d} req  non-2xx {row['non_2xx']}  errors "
                  f"{row['socket_errors']} {row['error_kinds']}  conns {row['connections_opened']}  p50 "
                  f"{row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} p99.9 {row['p999_ms']:.2f} max {row['max_ms']:.1f} ms"
                  f"  applied {row['applied']}/{row['changes']} acked {row['acked']} (median "
                  f"{f(row['ack_ms_median'], '.1f')} ms)  client {row['actual_qps']:.0f} qps "
                  f"{row['client_cpu_s']:.1f} CPU-s  proxy {row['proxy_cpu_us_per_request']:.0f} us CPU/req",
                  flush=True)
    return runs


# --------------------------------------------------------------------------- summary


def med(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def ratio(p: float | None, e: float | None) -> float | None:
    return p / e if p is not None and e else None


def summarize(effect: dict[str, Any] | None, snapshot: list[dict[str, Any]] | None,
              load: list[dict[str, Any]] | None) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    if effect is not None:
        summary["effect"] = {}
        for n, data in effect.items():
            rows = {}
            for name, by_proxy in data["samples"].items():
                row: dict[str, Any] = {}
                for proxy, samples in by_proxy.items():
                    ms = [s["effect_ms"] for s in samples]
                    row[proxy] = {"median_ms": med(ms), "min_ms": min(ms), "max_ms": max(ms),
                                  "ack_median_ms": med([s["ack_ms"] for s in samples]),
                                  "response_resources": samples[0]["resources"],
                                  "response_bytes": samples[0]["bytes"]}
                row["ratio_pylon_over_envoy"] = ratio(row["pylon"]["median_ms"], row["envoy"]["median_ms"])
                rows[name] = row
            summary["effect"][n] = {"rows": rows, "memory": data["memory"], "ready_s": data["ready_s"],
                                    "nacks": data["nacks"]}
    if snapshot:
        snap: dict[str, Any] = {}
        for proxy in PROXIES:
            rows = [r for r in snapshot if r["proxy"] == proxy]
            snap[proxy] = {k: med([r[k] for r in rows]) for k in (
                "applied_ms", "cpu_s_to_applied", "cpu_s_settled", "rss_before_mib", "rss_after_mib",
                "rss_growth_mib", "pss_growth_mib", "idle_cpu_s_per_s")}
            snap[proxy]["timeline_ms"] = {k: med([r["timeline_ms"][k] for r in rows])
                                          for k in rows[0]["timeline_ms"]}
            snap[proxy]["reps"] = len(rows)
            snap[proxy]["processes"] = rows[0]["processes"]
        for key in ("applied_ms", "cpu_s_to_applied", "cpu_s_settled", "rss_growth_mib"):
            snap[f"ratio_{key}"] = ratio(snap["pylon"][key], snap["envoy"][key])
        snap["clusters"], snap["endpoints"] = snapshot[0]["clusters"], snapshot[0]["endpoints"]
        summary["snapshot"] = snap
    if load:
        summary["load"] = load
    return summary


def goals(summary: dict[str, Any], meta: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    effect = summary.get("effect", {})
    big = str(max(meta["sizes"])) if meta.get("sizes") else None
    for n, data in effect.items():
        for name, row in data["rows"].items():
            r, p = row["ratio_pylon_over_envoy"], row["pylon"]["median_ms"]
            out.append((f"update-to-effect {name} at {n} clusters <= 2x Envoy's", r is not None and r <= 2.0,
                        f"{p:.1f} ms vs {row['envoy']['median_ms']:.1f} ms = {f(r, '.1f')}x"))
            if n == big and int(n) >= 1000:
                out.append((f"update-to-effect {name} at {n} clusters < 100 ms", p < 100, f"{p:.1f} ms"))
    snap = summary.get("snapshot")
    if snap:
        r = snap["ratio_rss_growth_mib"]
        out.append((f"RSS growth taking {snap['clusters']} clusters / {snap['endpoints']} endpoints <= 2x Envoy's",
                    r is not None and r <= 2.0, f"+{snap['pylon']['rss_growth_mib']:.1f} MiB vs "
                    f"+{snap['envoy']['rss_growth_mib']:.1f} MiB = {f(r, '.2f')}x"))
    for row in summary.get("load", []):
        if row["scenario"] == "steady":
            continue
        lost = row["non_2xx"] + row["socket_errors"]
        out.append((f"no request lost under load, {row['scenario']} updates at {row['clusters']} clusters, "
                    f"{row['proxy']}",
                    lost == 0 and row["applied"] == row["changes"],
                    f"{row['non_2xx']} non-2xx, {row['socket_errors']} socket errors of {row['requests']}; "
                    f"{row['applied']}/{row['changes']} updates applied"))
    return out


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    v = meta["versions"]
    where = meta["pylon_source"]["path"]
    copy = "" if where.startswith(str(ROOT)) else f" (a copy of that commit's src/ at {where})"
    lines = [
        f"# Live config changes over gRPC ADS (state of the world): pylon vs Envoy {v['envoy']}",
        "",
        f"benchmarks/xds_updates.py{' --quick' if meta['quick'] else ''}, run {meta['started']} on {meta['machine']} "
        f"(shared, noisy; nothing pinned; runs under `flock /tmp/pylon-bench.lock`). pylon {v['pylon']}, Envoy "
        f"{v['envoy']}, grpcio {v['grpcio']}, protobuf {v['protobuf']}, nginx {v['nginx']}, Python {v['python']}. "
        f"Both proxies `--concurrency 1`, `--drain-time-s {meta['drain_time_s']:g}`; upstream: one 1-worker nginx "
        f"(server blocks a/b, {BODY_SIZE}-byte body). pylon code: commit "
        f"{meta['pylon_source'].get('commit', '?')[:10]}"
        f"{' with uncommitted changes under src/' if meta['pylon_source'].get('uncommitted') else ''}"
        f"{copy}. "
        "Management server: the benchmark's own grpcio ADS server "
        "(one per proxy, in the benchmark process); a response is serialized, then stamped, then put on the "
        "stream. Clusters come over CDS as `type: EDS`, each with its own ClusterLoadAssignment over EDS; the "
        "listener takes its routes over RDS. Wall time of the whole run: "
        f"{meta.get('wall_s', 0):.0f} s; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in meta['loadavg_start'])} at the start, "
        f"{'/'.join(f'{x:.1f}' for x in meta['loadavg_end'])} at the end.",
    ]
    g = goals(summary, meta)
    if g:
        lines += ["", "## Goals", "", "| goal | | measured |", "|---|---|---|"]
        for text, ok, measured in g:
            lines.append(f"| {text} | {'✅' if ok else '❌'} | {measured} |")
    if "effect" in summary:
        lines += [
            "", f"## 1. Update-to-effect (median of {meta['reps']}, ms)", "",
            "From the management server putting the response on the stream until the first response served on "
            "the new config (a poller on a keep-alive connection, one request about every millisecond, in the "
            "benchmark process). rds-swap: the route points at another cluster (other upstream); eds-full: the "
            "routed cluster's assignment moves to the other upstream, the response holding all N assignments; "
            "eds-one: the same, the response holding only that assignment. ACK: until the proxy's ACK of that "
            "response reached the server.",
            "",
            "| clusters | change | response | pylon median (min-max) | Envoy median (min-max) | pylon/Envoy "
            "| ACK pylon | ACK Envoy |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for n, data in summary["effect"].items():
            for name, row in data["rows"].items():
                p, e = row["pylon"], row["envoy"]
                lines.append(
                    f"| {n} | {name} | {p['response_resources']} res, {p['response_bytes'] / 1024:.1f} KiB | "
                    f"{p['median_ms']:.1f} ({p['min_ms']:.1f}-{p['max_ms']:.1f}) | "
                    f"{e['median_ms']:.1f} ({e['min_ms']:.1f}-{e['max_ms']:.1f}) | "
                    f"**{f(row['ratio_pylon_over_envoy'], '.1f')}** | {f(p['ack_median_ms'], '.1f')} | "
                    f"{f(e['ack_median_ms'], '.1f')} |")
        lines += ["", "| clusters | proxy | start until serving s | processes | RSS MiB (sum) | PSS MiB (sum) "
                  "| NACKs |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for n, data in summary["effect"].items():
            for proxy in PROXIES:
                m = data["memory"][proxy]
                lines.append(f"| {n} | {proxy} | {data['ready_s'][proxy]:.2f} | {m['processes']} | "
                             f"{m['rss_mib']:.0f} | {m['pss_mib']:.0f} | {len(data['nacks'][proxy])} |")
        lines += ["", "The poller's resolution is about 1.5 ms (a request through the proxy, then a 1 ms sleep), which "
                  "is most of Envoy's time. pylon ACKs a response after its workers have applied it (the ACK waits "
                  "for the push), Envoy once its main thread has taken it, before its workers have; so pylon's ACK "
                  "time is about its update-to-effect time. Workers are sent only what an accepted update changed "
                  "(pylon's `DynamicConfig.changes()`); run with --profile to see where the rest goes."]
    snap = summary.get("snapshot")
    if snap:
        lines += [
            "", f"## 2. Taking a snapshot of {snap['clusters']} EDS clusters / {snap['endpoints']} endpoints "
            f"(median of {snap['pylon']['reps']} fresh proxies each)", "",
            "Each proxy starts with one static cluster (over CDS) and its routes; after a "
            f"{meta['settle_s']:g} s settle the server sends the CDS snapshot, the proxy asks for the "
            f"{snap['clusters']} assignments and gets them (one response). Applied: `/last` (a route to the last "
            "cluster, 503 before) is served by it (/stats, read after the settle so that its own cost stays out of the "
            "CPU figures, must then say `cluster_manager.warming_clusters: 0`). CPU: the "
            f"proxy's whole process tree from /proc (10 ms ticks), from just before the CDS send until applied, and "
            f"until {meta['settle_s']:g} s after that (settled). RSS/PSS growth: after settling minus before the "
            "snapshot, summed over the proxy's processes.",
            "",
            "| proxy | processes | applied ms | CPU s to applied | CPU s settled | RSS before MiB | RSS growth MiB "
            "| PSS growth MiB | idle CPU s/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for proxy in PROXIES:
            s = snap[proxy]
            lines.append(f"| {proxy} | {s['processes']} | {s['applied_ms']:.0f} | {s['cpu_s_to_applied']:.2f} | "
                         f"{s['cpu_s_settled']:.2f} | {s['rss_before_mib']:.0f} | **{s['rss_growth_mib']:.1f}** | "
                         f"{s['pss_growth_mib']:.1f} | {s['idle_cpu_s_per_s']:.3f} |")
        lines.append(f"| pylon/Envoy | | {f(snap['ratio_applied_ms'], '.1f')} | "
                     f"{f(snap['ratio_cpu_s_to_applied'], '.1f')} | {f(snap['ratio_cpu_s_settled'], '.1f')} | | "
                     f"**{f(snap['ratio_rss_growth_mib'], '.2f')}** | | |")
        lines += ["", "Timeline (medians, ms after the CDS response was put on the stream):", "",
                  "| proxy | EDS asked | CDS ACKed | EDS sent | EDS ACKed | /last served |",
                  "|---|---:|---:|---:|---:|---:|"]
        for proxy in PROXIES:
            t = snap[proxy]["timeline_ms"]
            lines.append(f"| {proxy} | {f(t['eds_asked'], '.0f')} | {f(t['cds_acked'], '.0f')} | "
                         f"{f(t['eds_sent'], '.0f')} | {f(t['eds_acked'], '.0f')} | {f(t['served'], '.0f')} |")
    load = summary.get("load")
    if load:
        m = meta
        lines += [
            "", f"## 3. Updates under load: {m['duration_s']:g} s at {m['qps']:g} req/s, one update a second", "",
            f"Load: `pylon load -qps {m['qps']:g} -c {m['connections']} -uniform -t {m['duration_s']:g}s -timeout 3s` "
            f"(keep-alive; latency from each request's intended send time) after a {m['warmup_s']:g} s unmeasured "
            "warm-up, a fresh proxy per run. steady: no update (the baseline); routes: RDS swaps the route between "
            "a cluster on upstream a and one "
            "on b; endpoints: EDS (every assignment in each response) moves the routed cluster's endpoint between "
            "a and b. `errors` = requests without a response; `applied` = update_success growth / updates sent; "
            "ACK ms = median time until the proxy's ACK.",
            "",
            "| clusters | updates | proxy | requests | non-2xx | errors | conns | p50 ms | p99 ms | p99.9 ms "
            "| max ms | applied "
            "| ACK ms (max) | NACKs | proxy µs CPU/req | client req/s | client CPU s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for s in load:
            lines.append(
                f"| {s['clusters']} | {s['scenario']} | {s['proxy']} | {s['requests']} | {s['non_2xx']} | "
                f"**{s['socket_errors']}** | "
                f"{s['connections_opened']} | {f(s['p50_ms'], '.2f')} | {f(s['p99_ms'], '.2f')} | "
                f"{f(s['p999_ms'], '.2f')} | {s['max_ms']:.1f} | {s['applied']}/{s['changes']} | "
                f"{f(s['ack_ms_median'], '.1f')} ({f(s['ack_ms_max'], '.0f')}) | {len(s['nacks'])} | "
                f"{f(s['proxy_cpu_us_per_request'], '.0f')} | {s['actual_qps']:.0f} | {s['client_cpu_s']:.1f} |")
        top = max(s["client_cpu_s"] for s in load)
        low = min(s["actual_qps"] for s in load)
        lines += ["", f"The load client was not the limit: it kept at least {low:.0f} req/s of the {m['qps']:g} "
                  f"asked in every run, using at most {top:.1f} CPU-s per {m['duration_s']:g} s run "
                  f"({100 * top / m['duration_s']:.0f}% of one core). Compare each p99 with its `steady` row: a pylon "
                  "worker serves nothing while it decodes and diffs a version (one event loop), so that time shows "
                  "in the tail latency of the requests that arrive meanwhile; Envoy's main thread does that work "
                  "and its worker threads only take the result."]
        for s in load:
            if s["non_2xx"] or s["socket_errors"]:
                lines.append(f"\n**{s['proxy']} lost requests with {s['scenario']} updates at {s['clusters']} "
                             "clusters: "
                             f"{s['non_2xx']} non-2xx "
                             f"({s['ret_codes']}), {s['socket_errors']} without a response ({s['error_kinds']}).**")
    profile = summary.get("profile")
    if profile:
        lines += ["", "## Where pylon spends the time (py-spy)", "",
                  f"`--profile`: py-spy record (250 Hz, raw folded stacks) of pylon's supervisor and worker during "
                  f"{PROFILED_CHANGES} more changes of each kind at the largest part 1 size, and during one more "
                  "snapshot "
                  "(from just before the CDS send until applied); not part of the figures above. Active ms per "
                  "change: samples / 250 Hz / changes, where py-spy counts a thread that runs or waits for a core "
                  "(on this 2-core machine, some of it is waiting); the worker's includes serving the poller's "
                  "requests. Then the frames taking the most of it (inclusive ms per change, so a call chain shows as "
                  "several frames).",
                  "", "| profile | process | active ms per change | top frames (inclusive ms per change) |",
                  "|---|---|---:|---|"]
        for row in profile:
            frames = "; ".join(f"`{frame}` {ms:.0f}" for frame, ms in row["top"])
            lines.append(f"| {row['profile']} | {row['process']} | {row['active_ms_per_change']:.0f} | {frames} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="1,2,3", help="which parts to run (1,2,3)")
    parser.add_argument("--sizes", default="10,1000", help="cluster counts of part 1 (10,1000)")
    parser.add_argument("--reps", type=int, default=9, help="repetitions of each part 1 change (9)")
    parser.add_argument("--snapshot-clusters", type=int, default=1000, help="EDS clusters in part 2's snapshot (1000)")
    parser.add_argument("--snapshot-endpoints", type=int, default=10, help="endpoints per cluster in part 2 (10)")
    parser.add_argument("--snapshot-reps", type=int, default=5, help="fresh proxies of each kind in part 2 (5)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds to settle before/after a snapshot (2)")
    parser.add_argument("--profile", type=Path,
                        help="py-spy (folded stacks into this new folder) over pylon during 20 more changes of each "
                        "kind at the largest size and one more snapshot (neither measured)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per part 3 run (30)")
    parser.add_argument("--qps", type=float, default=2000.0, help="fixed request rate in part 3 (2000)")
    parser.add_argument("--connections", type=int, default=16, help="load client connections (16)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured load seconds before each run (2)")
    parser.add_argument("--load-clusters", default="10,1000", help="EDS cluster counts of part 3 (10,1000)")
    parser.add_argument("--drain-time", type=float, default=5.0, help="--drain-time-s of both proxies (5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: sizes 10,100, 2 reps, a 100-cluster snapshot, 1 rep, 5 s loads at 100 "
                             "clusters; "
                             "writes xds_updates-quick.{json,md}")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="results folder")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.reps, args.snapshot_clusters, args.snapshot_reps = "10,100", 2, 100, 1
        args.duration, args.warmup, args.load_clusters, args.settle = 5.0, 1.0, "100", 1.0
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.load_clusters = [int(s) for s in args.load_clusters.split(",") if s]
    parts = {int(p) for p in args.parts.split(",") if p}
    if args.profile and any(args.profile.glob("*.folded")):
        parser.error(f"{args.profile} already holds profiles (*.folded): give a new folder")
    meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": args.quick, "loadavg_start": os.getloadavg(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
            "versions": tool_versions(), "pylon_source": pylon_source(), "parts": sorted(parts),
            "sizes": args.sizes if 1 in parts else [],
            "reps": args.reps, "settle_s": args.settle, "drain_time_s": args.drain_time,
            "duration_s": args.duration, "qps": args.qps, "connections": args.connections, "warmup_s": args.warmup,
            "load_clusters": args.load_clusters, "snapshot_clusters": args.snapshot_clusters,
            "snapshot_endpoints": args.snapshot_endpoints, "snapshot_reps": args.snapshot_reps,
            "load_tool": "pylon load (python -m pylon.cli load), fixed rate"}
    began = time.monotonic()
    effect = snapshot = load = None
    try:
        with tempfile.TemporaryDirectory(prefix="pylon-xds-") as tmp:
            work = Path(tmp)
            snap_port = free_port()
            last = snapshot_addresses(args.snapshot_clusters, args.snapshot_endpoints, snap_port)
            nginx, ups = start_nginx(work, list(last.values())[-1] if 2 in parts else [])
            with nginx:
                if 1 in parts:
                    effect = part1(args, work, ups)
                if 2 in parts:
                    snapshot = part2(args, work, ups, snap_port)
                if 3 in parts:
                    load = part3(args, work, ups)
    except TargetError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    meta["wall_s"] = round(time.monotonic() - began, 1)
    meta["loadavg_end"] = os.getloadavg()
    summary = summarize(effect, snapshot, load)
    if args.profile:
        changes = {f"pylon-{max(args.sizes)}-{e}": PROFILED_CHANGES for e in EFFECTS} if 1 in parts else {}
        summary["profile"] = profile_summary(args.profile, changes)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {"effect": effect, "snapshot": snapshot, "load": load}
    name = "xds_updates-quick" if args.quick else "xds_updates"
    (args.out / f"{name}.json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": raw},
                                                          indent=2, default=str) + "\n")
    table = markdown(summary, meta)
    (args.out / f"{name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
