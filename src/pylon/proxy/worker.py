"""A worker process: one uvloop event loop serving every listener on its own sockets.

The supervisor (`server.py`) starts each worker as `python -m pylon.proxy.worker FD`,
where FD is the worker's end of a control socketpair. The first control
message carries the bootstrap the supervisor validated and serves (as Envoy-shaped
data: workers never read config files), the worker id and the listening socket
fds (inherited through `pass_fds`) — for a hand-off balanced listener
(exact, dispatcher) the "listening" fd is this worker's end of the channel
the supervisor passes accepted sockets on, plus the shared load table this
worker publishes its load in (`balance/`). The worker builds its own runtime —
clusters, pools, route tables, TLS contexts, stats — so workers share
nothing and never lock: like Envoy's workers, but processes, because a
Python process has one GIL.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import uvloop

from pylon.config.envoy import Cluster as ClusterConfig
from pylon.config.envoy import ClusterLoadAssignment, RouteConfiguration, Secret, convert
from pylon.config.loader import parse_bootstrap
from pylon.config.secrets import cluster_secret_refs, secret_names
from pylon.proxy import control, internal_listener
from pylon.proxy.access_log import AccessLogWriter
from pylon.proxy.balance import Accepting, balancer_for
from pylon.proxy.balance.loadtable import RQ_ACTIVE, LoadSlot, LoadTable
from pylon.proxy.balance.acceptor import ListenerAcceptor
from pylon.proxy.deadlines import DeadlineWheel, Watched
from pylon.proxy.downstream_connections import ConnectionCounts, ConnectionGate
from pylon.proxy.fairness import PhaseBudget
from pylon.proxy.lds import LdsListeners
from pylon.proxy.listener import ListenerRuntime, build_listener
from pylon.proxy.matching.network_inputs import namespace_input
from pylon.proxy.udp_listener import UdpListenerRuntime
from pylon.proxy.listener_filters import PeekWatcher
from pylon.proxy.logging_setup import configure_logging
from pylon.proxy.overload import WorkerOverload, release_free_memory
from pylon.proxy.router import RouteTable
from pylon.proxy.shared_buckets import SHARED_BUCKETS, SharedBuckets
from pylon.proxy.stats_sinks import sink_exporter
from pylon.proxy.upstream.cluster import Cluster, build_cluster, build_clusters
from pylon.proxy.validate import configure_regex_engine
from pylon.proxy.upstream.pool_registry import PoolRegistry
from pylon.stats.store import Counter, StatsStore

log = logging.getLogger("pylon.worker")

#: How often a worker publishes its in-flight requests for the dispatcher. Each publication wakes the
#: worker's loop; at 2 ms (500 wake-ups a second) workers capped at 30% of a CPU (benchmarks/balance.py
#: --worker-cpu-cap) showed a several times higher p99 than exact_balance, at 10-20 ms about the same.
LOAD_PUBLISH_INTERVAL_S = 0.010
#: Weight of each new in-flight sample in the published moving average (a horizon of about 25 ms).
INFLIGHT_SMOOTHING = 0.4
#: How finely timeouts are kept: a timeout fires at most this much (plus loop lag) after its setting.
#: 50 wheel ticks a second while connections are open cost far less than a timer per request.
TIMEOUT_RESOLUTION_S = 0.02
#: Young collections: one every this many container allocations not yet freed (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000


class Worker:
    """Everything one worker process owns."""

    def __init__(self, worker_id: int, loop: asyncio.AbstractEventLoop) -> None:
        self.worker_id = worker_id
        self.loop = loop
        self.stats = StatsStore()
        self.connections: set[Any] = set()
        self.listeners: list[ListenerRuntime] = []
        self.servers: list[Accepting] = []
        self.clusters: dict[str, Cluster] = {}  # static and CDS clusters by name, changed in place by CDS
        self.cds_configs: dict[str, Any] = {}  # the config of each cluster CDS gave
        self.eds_assignments: dict[str, Any] = {}  # the ClusterLoadAssignment each EDS cluster serves
        self.route_configs: dict[str, Any] = {}  # RDS route configurations by name
        self.route_tables: dict[str, RouteTable] = {}  # and the table each is compiled into (shared by its HCMs)
        self.rds_subscribers: dict[str, list[Any]] = {}  # route configuration name -> HcmRuntimes using it
        self.secrets: dict[str, Secret] = {}  # static and SDS secrets by name, for TLS contexts that name them
        # What extensions share by name in this worker (Envoy's singleton manager): the DFP's DNS caches.
        self.singletons: dict[str, Any] = {}
        #: what the listener being built waits for before it serves (a filter's first fetch: Envoy's init
        #: targets); taken by `start` per static listener, dropped for LDS ones (they serve at once)
        self.init_waits: list[asyncio.Future[Any]] = []
        self.node: Any = None  # the bootstrap's node (spans' node_id, zone, service name)
        self.stats_sinks: list[Any] = []  # the bootstrap's; an extension sink's reports go out from a worker
        self.sink_exporters: dict[int, Any] = {}  # by the sink's index, made on its first report
        self.access_log_writer = AccessLogWriter()
        self.draining = False
        #: the admin's /healthcheck/fail: health_check filters answer 503, connections close after each response
        self.health_check_failed = False
        #: the overload manager's actions as the supervisor last sent them (overload.py)
        self.overload = WorkerOverload()
        self.overload.on_accepting = self.set_accepting
        #: the global downstream connections limit's side of this worker (None: no limit)
        self.cx_gate: ConnectionGate | None = None
        self._conn_ids = worker_id << 40
        self._wall_offset = time.time() - loop.time()
        self.deadlines = DeadlineWheel(TIMEOUT_RESOLUTION_S)
        self.pools = PoolRegistry(loop, self.arm_deadline, self.deadlines.disarm)
        self.read_budget = PhaseBudget(loop)
        self.lds = LdsListeners(self, None, {}, 0.0)  # replaced at start by one with the supervisor's channel
        self._ticking = False
        self.load_slots: list[LoadSlot] = []  # where this worker publishes in-flight requests (dispatcher)
        self._inflight_avg = 0.0
        self._peek_watcher: PeekWatcher | None = None

    def listener_for(self, address: tuple[str, int]) -> ListenerRuntime | None:
        """The listener for a connection's original destination, as Envoy finds it for use_original_dst: the one
        on that very address, else one on the wildcard address of that port."""
        ip, port = ipaddress.ip_address(address[0]), address[1]
        wildcard = None
        for runtime in [*self.listeners, *self.lds.runtimes()]:
            if runtime.config.internal_listener is not None:
                continue
            sa = runtime.config.socket_address
            if sa.port_value != port:
                continue
            listening_on = ipaddress.ip_address(sa.address)
            if listening_on == ip:
                return runtime
            if listening_on.is_unspecified and wildcard is None:
                wildcard = runtime
        return wildcard

    def peek_watcher(self) -> PeekWatcher:
        """The epoll set of connections under listener filters (made when a listener first needs it)."""
        if self._peek_watcher is None:
            self._peek_watcher = PeekWatcher(self.loop)
        return self._peek_watcher

    def next_connection_id(self) -> int:
        self._conn_ids += 1
        return self._conn_ids

    def wall_time(self, loop_time: float) -> float:
        return self._wall_offset + loop_time

    def connection_opened(self, conn: Any) -> None:
        self.connections.add(conn)
        listener = conn.runtime_listener
        if listener is not None:
            listener.opened()
            if self.cx_gate is not None and listener.counts_globally:
                self.cx_gate.opened()
        self._start_ticking()

    def set_accepting(self, accepting: bool) -> None:
        """Pause or resume every listener's accepting (the overload manager's stop_accepting_connections)."""
        acceptors = [*self.servers, *(entry.acceptor for entry in self.lds.serving.values())]
        for acceptor in acceptors:
            if isinstance(acceptor, ListenerAcceptor):
                acceptor.resume() if accepting else acceptor.pause()

    def arm_deadline(self, target: Watched, when: float) -> None:
        """Arm the deadline wheel for something that is no downstream connection (an upstream connection, the pool
        registry): it may outlive every downstream connection, whose opening is what starts the wheel's ticks."""
        self.deadlines.arm(target, when)
        self._start_ticking()

    def _start_ticking(self) -> None:
        if not self._ticking:
            self._ticking = True
            self.loop.call_later(TIMEOUT_RESOLUTION_S, self._tick)

    def connection_closed(self, conn: Any, opened_at: float) -> None:
        """`conn` (opened at loop time `opened_at`) ended: its listener's counts and its length."""
        self.connections.discard(conn)
        listener = conn.runtime_listener
        if listener is not None:
            listener.closed((self.loop.time() - opened_at) * 1000.0)
            if self.cx_gate is not None and listener.counts_globally:
                self.cx_gate.closed()

    async def start(self, bootstrap: Any, listener_fds: list[list[int]], dynamic: dict[str, Any],
                    load_table: LoadTable | None = None, lds: LdsListeners | None = None) -> None:
        if lds is not None:
            self.lds = lds
        self.access_log_writer.start(self.loop)
        self.secrets = _decode_secrets(dynamic)
        self.node = bootstrap.node
        self.stats_sinks = bootstrap.stats_sinks
        self.clusters.update(build_clusters(bootstrap.static_resources.clusters, self.stats, self.worker_id,
                                            self.secrets, self.singletons))
        for cluster in self.clusters.values():
            cluster.on_hosts_removed = self.pools.retire_hosts
            cluster.start(self.loop)
        # Envoy's cluster warming: DNS clusters serve only once their first answer is in.
        await asyncio.gather(*(cluster.ready() for cluster in self.clusters.values()))
        await self.apply_dynamic(dynamic)
        if bootstrap.internal_listener is not None:
            internal_listener.configure(bootstrap.internal_listener.buffer_size)
        for index, listener_cfg in enumerate(bootstrap.static_resources.listeners):
            # The worker owns its inherited copies: closing a server on drain closes it (-1: bind_to_port false).
            socks = [socket.socket(fileno=fd) if fd >= 0 else None for fd in listener_fds[index]]
            if listener_cfg.is_udp:  # no connections: its datagrams go to its UDP listener filter
                self.servers.append(await balancer_for(listener_cfg, index).serve(
                    self.loop, socks[0], UdpListenerRuntime(listener_cfg, self)))
                continue
            runtime = build_listener(listener_cfg, self)
            waits, self.init_waits = self.init_waits, []
            if waits:
                await asyncio.gather(*waits)
            self.listeners.append(runtime)
            if listener_cfg.internal_listener is not None:
                internal_listener.register(runtime)
            balancer = balancer_for(listener_cfg, index)
            if balancer.handoff and load_table is not None:
                runtime.load_slot = load_table.slot(index, self.worker_id)
                if balancer.uses_inflight:
                    self.load_slots.append(runtime.load_slot)
            addresses = listener_cfg.socket_addresses if listener_cfg.internal_listener is None else [None]
            for sock, address in zip(socks, addresses):
                self.servers.append(await balancer.serve(self.loop, sock, runtime, namespace_input(address)))
        if self.overload.stop_accepting:  # the overload manager's stop_accepting_connections was on at init
            self.set_accepting(False)
        if self.load_slots:
            self.loop.call_later(LOAD_PUBLISH_INTERVAL_S, self._publish_load)

    async def apply_dynamic(self, document: dict[str, Any]) -> None:
        """Take a version of the supervisor's CDS clusters, EDS endpoints, RDS route configurations, secrets and
        LDS listeners (see `dynamic.py`): the whole of it, or what changed since the last one; either way with
        every name in force (`names`), so what is not there goes.

        Order as Envoy's: new and changed clusters first (each warmed before it
        serves), then the route tables (new requests only: a request keeps the
        route it matched), then the removed clusters, whose pools finish what is
        in flight and close. Nothing that did not change is rebuilt: an EDS
        cluster whose endpoints alone changed keeps its hosts that stay, with
        their pooled connections, health and outlier state.
        """
        # Every name in force of each section that may have changed; None: nothing of it goes.
        names = {key: set(found) if found is not None else None for key, found in document["names"].items()}
        secrets = {**self.secrets, **_decode_secrets(document)}
        if names["secrets"] is not None:
            secrets = {name: secret for name, secret in secrets.items() if name in names["secrets"]}
        rotated = {name for name in secrets.keys() | self.secrets.keys() if secrets.get(name) != self.secrets.get(name)}
        self.secrets = secrets
        retiring: list[Cluster] = []
        built: set[str] = set()
        for name, data in document["clusters"].items():
            config = convert(data, ClusterConfig)
            if self.cds_configs.get(name) == config:
                continue  # its endpoints may have changed: below
            cluster = build_cluster(config, self.stats, self.worker_id, secrets=self.secrets,
                                    singletons=self.singletons)
            endpoints = document["endpoints"].get(name)
            if endpoints is not None:
                assignment = convert(endpoints, ClusterLoadAssignment)
                cluster.set_assignment(assignment)
                self.eds_assignments[name] = assignment
            cluster.on_hosts_removed = self.pools.retire_hosts
            cluster.start(self.loop)
            await cluster.ready()
            old = self.clusters.get(name)
            self.clusters[name] = cluster
            self.cds_configs[name] = config
            built.add(name)
            if old is not None:
                retiring.append(old)
        for name, data in document["endpoints"].items():  # endpoint-only changes, static EDS clusters too
            if name not in built and name in self.clusters:
                self._update_assignment(name, convert(data, ClusterLoadAssignment))
        for name, data in document["routes"].items():
            config = convert(data, RouteConfiguration)
            if self.route_configs.get(name) == config:
                continue
            self.route_configs[name] = config
            table = self.route_tables[name] = RouteTable(config)
            for hcm in self.rds_subscribers.get(name, ()):
                hcm.route_table = table
        for name in [n for n in self.route_configs if names["routes"] is not None and n not in names["routes"]]:
            del self.route_configs[name]
            self.route_tables.pop(name, None)
        for name in [n for n in self.cds_configs if names["clusters"] is not None and n not in names["clusters"]]:
            del self.cds_configs[name]
            self.eds_assignments.pop(name, None)
            retiring.append(self.clusters.pop(name))
        if rotated:
            self._rotate(rotated)
        # Listeners after the clusters and routes they use, as Envoy's listener manager follows CDS.
        self.lds.apply(document["listeners"], document["bound_listeners"])
        for cluster in retiring:
            self.pools.retire_cluster(cluster)
            await cluster.stop()

    def _update_assignment(self, name: str, assignment: ClusterLoadAssignment) -> None:
        """An endpoint-only change: the hosts that stay keep their pools, health and outlier state."""
        if self.eds_assignments.get(name) != assignment:
            self.clusters[name].set_assignment(assignment)
            self.pools.retire_hosts(self.clusters[name])
            self.eds_assignments[name] = assignment

    def _rotate(self, names: set[str]) -> None:
        """Secrets `names` changed: the clusters and listener chains that name them build their TLS again, for
        the connections made from now on (Envoy's SDS update: open connections carry on)."""
        for cluster in self.clusters.values():
            if any(ref.name in names for _, ref in cluster_secret_refs(cluster.config)):
                cluster.refresh_tls(self.secrets)
        for runtime in [*self.listeners, *self.lds.runtimes()]:
            for chain in runtime.all_chains:
                if chain.tls_config is not None and secret_names(chain.tls_config.common_tls_context) & names:
                    chain.install_tls(self.secrets, self.stats)

    def forget_route_subscriber(self, hcm: Any) -> None:
        """A retired LDS listener's HCM takes no more RDS updates."""
        for subscribers in self.rds_subscribers.values():
            if hcm in subscribers:
                subscribers.remove(hcm)

    def route_table_for(self, hcm: Any, route_config_name: str) -> RouteTable:
        """The RDS route table an HTTP connection manager starts with; it is kept current from then on."""
        self.rds_subscribers.setdefault(route_config_name, []).append(hcm)
        table = self.route_tables.get(route_config_name)
        if table is None:
            # Not there yet (an xDS server that has not sent it within initial_fetch_timeout): like Envoy, no
            # route matches (404, flag NR) until it comes.
            table = RouteTable(RouteConfiguration(name=route_config_name))
        return table

    def _publish_load(self) -> None:
        """Write this worker's in-flight requests (moving average) where the supervisor's dispatcher reads them.

        A timer rather than a write per request: the HTTP path stays untouched,
        and a value at most `LOAD_PUBLISH_INTERVAL_S` old is as good for picking
        where the next connection goes.
        """
        in_flight = 0
        for runtime in self.listeners:
            for terminal in runtime.terminals:
                gauge = getattr(terminal, "rq_active", None)
                if gauge is not None:
                    in_flight += gauge.value
        # Smoothed (about the last 25 ms) and in thousandths: one sample is mostly 0 or 1, the
        # average tells a worker serving a busy connection from an idle one (Little's law:
        # in-flight = request rate × latency, so it grows with both).
        self._inflight_avg += (in_flight * 1000 - self._inflight_avg) * INFLIGHT_SMOOTHING
        average = int(self._inflight_avg)
        for slot in self.load_slots:
            slot[RQ_ACTIVE] = average
        if not self.draining:
            self.loop.call_later(LOAD_PUBLISH_INTERVAL_S, self._publish_load)

    def _tick(self) -> None:
        """Enforce the timeouts that are due; keep ticking while a connection is open or a deadline armed."""
        self.deadlines.expire(self.loop.time())
        if self.connections or self.deadlines:
            self.loop.call_later(TIMEOUT_RESOLUTION_S, self._tick)
        else:
            self._ticking = False

    async def drain(self, drain_time: float) -> None:
        """Stop accepting, let in-flight requests finish within `drain_time`, then stop."""
        if self.draining:
            return
        self.draining = True
        for server in self.servers:
            server.close()
        self.lds.close()
        for runtime in [*self.listeners, *self.lds.runtimes()]:
            runtime.draining = True
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + drain_time
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        self.access_log_writer.close()
        self.pools.close_all()
        for cluster in self.clusters.values():
            await cluster.stop()

    def export_stats(self, sink: int, body: bytes) -> bool:
        """Send a stats sink's report (encoded by the supervisor) through this worker's upstream pools."""
        exporter = self.sink_exporters.get(sink)
        if exporter is None:
            exporter = self.sink_exporters[sink] = sink_exporter(self.stats_sinks[sink].typed_config, self)
        exporter.send(body)
        return True

    def describe_clusters(self) -> list[dict[str, Any]]:
        return [cluster.describe() for cluster in self.clusters.values()]


def _decode_secrets(document: dict[str, Any]) -> dict[str, Secret]:
    return {name: convert(data, Secret) for name, data in document["secrets"].items()}


def tune_garbage_collector() -> None:
    """Once the worker is built. What is alive then (modules, the bootstrap, the runtime) lives as long as the
    worker: frozen out of the collector's generations, a full collection scans only what came since (under
    h2load the worker's full collections took ~0.1 s each, scanning these). Frozen objects are still freed by
    reference counting. A young collection runs every GC_YOUNG_THRESHOLD container allocations not yet freed:
    CPython's 700 is crossed by every burst of in-flight requests (100 HTTP/2 streams hold ~1,700 containers)
    though each is freed by reference counting when it ends (the streams hold no cycles), so each of those
    collections scanned the requests in flight and freed nothing."""
    gc.freeze()
    gc.set_threshold(max(gc.get_threshold()[0], GC_YOUNG_THRESHOLD), *gc.get_threshold()[1:])


async def _serve(control_fd: int) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=control_fd)
    reader, writer = await asyncio.open_connection(sock=sock)
    init = await control.read_message(reader)
    if init is None:
        return 1
    configure_logging(init["log_level"], f"worker_{init['worker_id']}")
    bootstrap = parse_bootstrap(init["bootstrap"], init["config_source"])
    configure_regex_engine(bootstrap, init["config_source"])
    worker = Worker(init["worker_id"], loop)
    worker.health_check_failed = bool(init.get("health_check_failed"))
    buckets_fd = init.get("shared_buckets_fd")
    if buckets_fd is not None:
        worker.singletons[SHARED_BUCKETS] = SharedBuckets(buckets_fd)
    overload = init.get("overload")
    if overload is not None:
        if overload["connections_fd"] is not None:
            counts = ConnectionCounts(overload["connections_fd"], init["workers"])
            monitor = overload["connections_monitor"]  # None: the runtime key's limit, which has no stats
            failed = worker.stats.counter(f"overload.{monitor}.failed_updates") if monitor else Counter("")
            worker.cx_gate = ConnectionGate(counts, worker.worker_id, overload["connections_limit"], failed)
        worker.overload.update(overload["scales"])
    table_fd = init.get("load_table_fd")
    table = LoadTable(table_fd, len(init["listener_fds"]), init["workers"]) if table_fd is not None else None
    drain_time = float(init.get("drain_time", 600))
    channel = socket.socket(fileno=init["lds_channel_fd"])
    lds = LdsListeners(worker, channel, init["lds_fds"], drain_time)
    await worker.start(bootstrap, init["listener_fds"], init["dynamic"], table, lds)
    tune_garbage_collector()
    stop = asyncio.Event()

    def on_term() -> None:
        loop.create_task(_drain_and_stop(worker, drain_time, stop))

    loop.add_signal_handler(signal.SIGTERM, on_term)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the supervisor decides; Ctrl-C reaches it too
    writer.write(control.encode({"op": "ready", "worker_id": worker.worker_id, "pid": os.getpid()}))
    await writer.drain()
    log.debug("worker %d ready", worker.worker_id)
    control_task = loop.create_task(_control_loop(worker, reader, writer, drain_time, stop))
    control_task.add_done_callback(lambda _: stop.set())  # the channel is this worker's life: its end ends it
    await stop.wait()
    if control_task.done() and not control_task.cancelled() and control_task.exception() is not None:
        return 1  # an order failed (logged): the supervisor restarts this worker with the whole current config
    control_task.cancel()
    return 0


async def _drain_and_stop(worker: Worker, drain_time: float, stop: asyncio.Event) -> None:
    await worker.drain(drain_time)
    stop.set()


async def _control_loop(worker: Worker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        drain_time: float, stop: asyncio.Event) -> None:
    while True:
        message = await control.read_message(reader)
        if message is None:
            # The supervisor is gone: nobody can drain us any more, so drain now.
            await _drain_and_stop(worker, drain_time, stop)
            return
        op = message.get("op")
        try:
            reply = await _carry_out(worker, message, drain_time, stop)
        except Exception:
            # Half applied, this worker's state is no version the supervisor knows: leave, and let the supervisor
            # restart it with the whole current configuration (as Envoy would crash) rather than serve that state
            # or leave the supervisor's request unanswered (it waited, and every later order queued behind it).
            log.critical("worker %d: the supervisor's %r order failed; exiting to be restarted", worker.worker_id, op,
                         exc_info=True)  # fmt: skip
            raise
        reply["id"] = message.get("id")
        writer.write(control.encode(reply))
        await writer.drain()


async def _carry_out(worker: Worker, message: dict[str, Any], drain_time: float, stop: asyncio.Event
                     ) -> dict[str, Any]:  # fmt: skip
    """One order of the supervisor, carried out; the reply (its id is added by the caller)."""
    op = message.get("op")
    if op == "stats":
        return {"stats": worker.stats.snapshot()}
    if op == "clusters":
        return {"clusters": worker.describe_clusters()}
    if op == "dynamic":
        await worker.apply_dynamic(message["dynamic"])
        return {"ok": True}
    if op == "overload":
        worker.overload.update(message["scales"])
        return {"ok": True}
    if op == "export_stats":
        return {"ok": worker.export_stats(message["sink"], message["body"])}
    if op == "shrink_heap":
        release_free_memory()
        return {"ok": True}
    if op == "health_check":
        worker.health_check_failed = bool(message["failed"])
        return {"ok": True}
    if op == "drain":
        asyncio.get_running_loop().create_task(
            _drain_and_stop(worker, float(message.get("drain_time", drain_time)), stop))
        return {"ok": True}
    return {"error": f"unknown op {op!r}"}


def main() -> None:
    control_fd = int(sys.argv[1])
    sys.exit(uvloop.run(_serve(control_fd)))


if __name__ == "__main__":
    main()
