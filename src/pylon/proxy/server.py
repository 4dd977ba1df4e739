"""`pylon proxy`: the supervisor process — validate, bind, start workers, serve admin, drain.

Order matters for "nothing half-started": the config is loaded and every
runtime piece that can fail (TLS contexts, route tables, access-log formats,
cluster TLS) is built once in the supervisor before any socket is bound; then
all listener sockets are bound; only then do workers start. How a listener's
connections reach the workers is its balancer's business (`balance/`): with
the kernel balancer each worker accepts on its own socket; with the hand-off
balancers (exact, dispatcher) this process accepts and passes each socket to
a worker. A worker that dies unexpectedly is restarted on the same sockets (the
balancers first stop choosing it and take back what it never read); on SIGTERM/SIGINT or
`POST /quitquitquit` the workers drain (stop accepting, finish in-flight
requests within `--drain-time-s`) and the supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import uvloop

from pylon import __version__, compiled
from pylon.config.errors import ConfigError
from pylon.config.loader import CONFIG_YAML_SOURCE, bootstrap_to_dict, load_bootstrap
from pylon.proxy import control
from pylon.proxy.access_log import AccessLogger, AccessLogWriter, build_access_loggers
from pylon.proxy.admin import start_admin_server
from pylon.proxy.balance import Balancer, balancer_for, bind_address, spell_address
from pylon.proxy.balance.loadtable import LoadTable
from pylon.proxy.clusters_text import render_clusters
from pylon.proxy.dynamic import POLL_INTERVAL_S, DynamicConfig, FileSources
from pylon.proxy.listener_sockets import ListenerSockets
from pylon.proxy.logging_setup import configure_logging
from pylon.proxy.netns import NetworkNamespaceError
from pylon.proxy.router import _compile_string_matcher
from pylon.proxy.overload_monitor import OverloadMonitor
from pylon.proxy.shared_buckets import SharedBuckets
from pylon.proxy.stats_sinks import build_sinks
from pylon.proxy.validate import configure_regex_engine, validate_runtime
from pylon.stats.store import StatsStore, cumulative, merge_snapshots
from pylon.regex import get_engine
from pylon.xds.client import XdsClient

log = logging.getLogger("pylon.main")

@dataclass
class ProxyOptions:
    """Envoy's command-line options that pylon honours."""

    config_path: str | None = None
    config_yaml: str | None = None
    concurrency: int = 1
    log_level: str = "info"
    mode: str = "serve"
    drain_time_s: float = 600.0
    base_id: int | None = None


@dataclass
class WorkerHandle:
    worker_id: int
    proc: subprocess.Popen
    client: control.ControlClient
    lds_channel: socket.socket  # our end: LDS listener sockets go to the worker over it
    restarts: int = 0
    gone: bool = False  # exited and its counts retired: a late stats reply from it must not count again


class Supervisor:
    """The main process: owns the sockets, the workers and the admin endpoint."""

    def __init__(self, options: ProxyOptions, bootstrap: Any, dynamic: DynamicConfig, files: FileSources,
                 balancers: list[list[Balancer]], listener_sockets: ListenerSockets,
                 load_table: LoadTable | None = None, admin_log_writer: AccessLogWriter | None = None,
                 admin_loggers: list[AccessLogger] | None = None) -> None:
        self.options = options
        self.listener_sockets = listener_sockets  # LDS listeners' (the dynamic config binds through it)
        self.bootstrap = bootstrap
        self.bootstrap_document = bootstrap_to_dict(bootstrap)
        self.balancers = balancers  # per static listener, one per address (its `address`, then additional ones)
        self.load_table = load_table
        # The rate limit buckets the workers share (local_ratelimit), one memfd handed to each; a lone worker keeps
        # its buckets to itself (no lock to take per request).
        self.shared_buckets = SharedBuckets.create() if options.concurrency > 1 else None
        # The overload manager's measuring half, and the connections table the workers share (None: not asked for).
        self.overload = OverloadMonitor.of(bootstrap, dynamic.stats, options.concurrency)
        # The bootstrap's stats_sinks, sent the merged stats at each flush (stats_sinks.py).
        self.sinks = build_sinks(bootstrap, self._export_through_worker)
        self.workers: dict[int, WorkerHandle] = {}
        self.state = "PRE_INITIALIZING"
        self.start_time = time.time()
        self.stopped = asyncio.Event()
        self.draining = False
        self.health_check_failed = False  # /healthcheck/fail until /healthcheck/ok; workers hear it (and at init)
        self.dynamic = dynamic
        self.files = files
        self.push_lock = asyncio.Lock()  # versions reach the workers in order, whichever source made them
        self.stats = dynamic.stats
        # Each worker's latest stats, and what workers that died had counted (counters never go back).
        self.last_seen: dict[int, dict[str, Any]] = {}
        self.retired: dict[str, Any] = {}
        self.admin_server: asyncio.AbstractServer | None = None
        # The admin endpoint's access logs (admin.access_log, admin.access_log_path), written from this loop.
        self.admin_log_writer = admin_log_writer or AccessLogWriter()
        self.admin_loggers = admin_loggers or []
        # How often the workers' stats are gathered when nobody asks (the bootstrap's stats_flush_interval,
        # Envoy's 5 s by default): a worker that dies takes at most this much of its counts with it.
        # None (stats_flush_on_admin): only when the admin endpoint asks.
        self.stats_refresh_interval: float | None = bootstrap.stats_refresh_interval

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.admin_log_writer.start(loop)
        admin = self.bootstrap.admin
        if admin is not None and admin.address is not None:
            sa = admin.address.socket_address
            try:
                allow_paths = [_compile_string_matcher(m, get_engine(), as_bytes=False) for m in admin.allow_paths]
                self.admin_server = await start_admin_server(sa.address, sa.port_value, self, self.admin_loggers,
                                                             allow_paths)
            except OSError as exc:
                log.critical("admin.address: cannot bind %s:%d: %s", sa.address, sa.port_value, exc.strerror or exc)
                self.admin_log_writer.close()
                return 1
            log.info("admin address: %s:%d", sa.address, self.admin_server.sockets[0].getsockname()[1])
        for balancer in self.all_balancers:
            balancer.start(loop)
        tasks = []
        # Envoy's initialization: workers serve once the first xDS updates are in (or initial_fetch_timeout).
        self.xds = XdsClient(self.bootstrap, self.dynamic, self._push_dynamic)
        tasks.append(loop.create_task(self.xds.run()))
        await self.xds.wait_initialized()
        if self.overload is not None:
            self.overload.measure([])  # as Envoy's, the actions are in force before the first connection
        speed = compiled.summary()  # the workers import the same builds (pylon.compiled)
        (log.info if compiled.data_path_compiled() else log.warning)("%s", speed)
        for worker_id in range(self.options.concurrency):
            try:
                self.workers[worker_id] = await self._spawn(worker_id)
            except WorkerStartError as exc:
                log.critical("%s", exc)
                await self._stop_workers(0.0)
                self.admin_log_writer.close()
                return 1
        self.state = "LIVE"
        for index, listener in enumerate(self.bootstrap.static_resources.listeners):
            if listener.internal_listener is not None:
                continue  # reached by name, from clusters (internal_listener.py)
            log.info("listener '%s' serving on %s with %d worker(s), %s balancing", listener.name or "",
                     ", ".join(spell_address(sa) for sa in listener.socket_addresses), self.options.concurrency,
                     self.balancers[index][0].name)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: loop.create_task(self.quit()))
        tasks.append(loop.create_task(self._monitor()))
        if self.stats_refresh_interval is not None:
            tasks.append(loop.create_task(self._refresh_stats(self.stats_refresh_interval)))
        if self.overload is not None:
            tasks.append(loop.create_task(self.overload.run(
                lambda: [h.proc.pid for h in self.workers.values()], self._send_overload)))
            if self.overload.shrink_count is not None:
                tasks.append(loop.create_task(self.overload.shrink_heap(self._shrink_workers)))
        if self.files.files:
            tasks.append(loop.create_task(self._watch_files()))
        await self.stopped.wait()
        for task in tasks:
            task.cancel()
        self.admin_log_writer.close()
        return 0

    @property
    def all_balancers(self) -> list[Balancer]:
        """Every static listener's balancers, one per address."""
        return [balancer for addresses in self.balancers for balancer in addresses]

    async def _refresh_stats(self, interval: float) -> None:
        """Gather the workers' stats every `interval` seconds (the bootstrap's stats_flush_interval).

        The next round waits for the replies of this one, so a 1 ms interval keeps one request per
        worker in flight at a time rather than piling them up.
        """
        while not self.draining:
            await asyncio.sleep(interval)
            if self.sinks:
                self._flush_sinks(await self.stats_snapshot())
            else:
                await self._worker_stats()

    def _flush_sinks(self, snapshot: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.flush(snapshot)

    def _export_through_worker(self, sink: int, body: bytes) -> None:
        """Have a worker send an extension sink's report (the collector is a cluster, and clusters live in the
        workers, as in Envoy's main thread's cluster manager): the first live one; dropped, as a failed export,
        when none is."""
        handle = next((h for _, h in sorted(self.workers.items()) if not h.gone), None)
        if handle is None:
            log.debug("stats sink %d: no worker to export through", sink)
            return
        asyncio.get_running_loop().create_task(handle.client.request({"op": "export_stats", "sink": sink,
                                                                      "body": body}))

    async def _watch_files(self) -> None:
        """Apply accepted changes of the CDS/RDS files to every worker."""
        while not self.draining:
            await asyncio.sleep(POLL_INTERVAL_S)
            if self.files.poll():
                await self.xds.follow()  # a file's listeners or clusters may name secrets (or routes) over gRPC
                await self._push_dynamic()

    async def _push_dynamic(self) -> None:
        """Send what changed in the dynamic version to every running worker (one started later gets the whole
        version at init, and again if it changed meanwhile)."""
        async with self.push_lock:
            document = self.dynamic.changes()
            await asyncio.gather(*(self._send_dynamic(h, document) for h in list(self.workers.values())))

    async def _send_dynamic(self, handle: WorkerHandle, document: dict[str, Any]) -> None:
        """A dynamic version to one worker: first the LDS sockets it lacks, then the version naming them."""
        self.listener_sockets.send_missing(handle.worker_id, handle.lds_channel)
        await handle.client.request({"op": "dynamic", "dynamic": document}, timeout=60)

    async def _send_overload(self, scales: dict[str, float]) -> None:
        """The overload actions' new scales to every running worker (a worker started later gets them at init)."""
        await asyncio.gather(*(h.client.request({"op": "overload", "scales": scales})
                               for h in list(self.workers.values())))

    async def _shrink_workers(self) -> None:
        """shrink_heap's round: every running worker releases its free heap memory."""
        await asyncio.gather(*(h.client.request({"op": "shrink_heap"}) for h in list(self.workers.values())))

    async def _spawn(self, worker_id: int) -> WorkerHandle:
        parent, child = socket.socketpair()
        lds_ours, lds_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener_socks = [[balancer.worker_socket(worker_id) for balancer in addresses] for addresses in self.balancers]
        lds_fds = self.listener_sockets.spawn_fds(worker_id)
        lds_channel_fd = lds_theirs.fileno()
        fds = [child.fileno(), lds_channel_fd, *lds_fds.values()] + [s.fileno() for socks in listener_socks
                                                                      for s in socks if s is not None]
        if self.load_table is not None:
            fds.append(self.load_table.fd)
        if self.shared_buckets is not None:
            fds.append(self.shared_buckets.fd)
        if self.overload is not None:
            fds.extend(self.overload.fds())
        proc = subprocess.Popen([sys.executable, "-m", "pylon.proxy.worker", str(child.fileno())], pass_fds=fds)
        child.close()
        lds_theirs.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        init = {
            # The configuration this process validated and serves, never the files again: they may
            # have been edited since (a restarted worker must not serve a second configuration).
            "op": "init", "worker_id": worker_id, "bootstrap": self.bootstrap_document,
            "dynamic": self.dynamic.document(),
            "config_source": self.options.config_path or CONFIG_YAML_SOURCE, "log_level": self.options.log_level,
            "drain_time": self.options.drain_time_s,
            # per listener, one per address; -1: unbound
            "listener_fds": [[sock.fileno() if sock is not None else -1 for sock in socks] for socks in listener_socks],
            "lds_channel_fd": lds_channel_fd, "lds_fds": lds_fds,
            "load_table_fd": self.load_table.fd if self.load_table is not None else None,
            "shared_buckets_fd": self.shared_buckets.fd if self.shared_buckets is not None else None,
            "workers": self.options.concurrency,
            "health_check_failed": self.health_check_failed,
            "overload": self.overload.worker_init() if self.overload is not None else None,
        }
        writer.write(control.encode(init))
        await writer.drain()
        ready = await asyncio.wait_for(control.read_message(reader), 60)
        if ready is None or ready.get("op") != "ready":
            proc.wait()
            raise WorkerStartError(f"worker {worker_id} failed to start (exit code {proc.returncode})")
        handle = WorkerHandle(worker_id, proc, control.ControlClient(reader, writer), lds_ours)
        if init["dynamic"]["version"] != self.dynamic.version:  # changed while it started: catch up
            await self._send_dynamic(handle, self.dynamic.document())
        for balancer in self.all_balancers:
            balancer.worker_ready(worker_id)
        return handle

    async def _monitor(self) -> None:
        """Restart workers that die outside a drain (Envoy would abort; a process can simply come back)."""
        while not self.draining:
            await asyncio.sleep(0.2)
            for worker_id, handle in list(self.workers.items()):
                code = handle.proc.poll()
                if code is None or self.draining:
                    continue
                handle.gone = True
                handle.client.close()
                handle.lds_channel.close()
                self.retired = merge_snapshots([self.retired, cumulative(self.last_seen.pop(worker_id, {}))])
                log.error("worker %d (pid %d) exited with %s; restarting it", worker_id, handle.proc.pid, code)
                for balancer in self.all_balancers:
                    balancer.worker_gone(worker_id)
                try:
                    new = await self._spawn(worker_id)
                except WorkerStartError as exc:
                    log.critical("%s", exc)
                    await self.quit()
                    return
                new.restarts = handle.restarts + 1
                self.workers[worker_id] = new

    async def quit(self) -> None:
        """Drain every worker, then stop (SIGTERM, SIGINT and /quitquitquit all land here)."""
        if self.draining:
            return
        self.draining = True
        self.state = "DRAINING"
        log.info("draining: no new connections; in-flight requests have %.1fs", self.options.drain_time_s)
        # Close our copies of the listening sockets first (and stop accepting for the hand-off
        # balancers): once the workers close theirs, new connections are refused instead of
        # waiting in a backlog nobody accepts from.
        for balancer in self.all_balancers:
            balancer.close()
        self.listener_sockets.close()
        await self._stop_workers(self.options.drain_time_s)
        if self.admin_server is not None:
            self.admin_server.close()
        log.info("exiting")
        self.stopped.set()

    async def _stop_workers(self, drain_time: float) -> None:
        for handle in self.workers.values():
            if handle.proc.poll() is None:
                handle.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + drain_time + 5.0
        for handle in self.workers.values():
            while handle.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if handle.proc.poll() is None:
                log.warning("worker %d did not stop within the drain time; killing it", handle.worker_id)
                handle.proc.kill()
                handle.proc.wait()
            handle.client.close()
            handle.lds_channel.close()

    # ------------------------------------------------------------------ admin backend
    async def _ask_all(self, op: str) -> list[dict[str, Any]]:
        replies = await asyncio.gather(*(h.client.request({"op": op}) for h in self.workers.values()))
        return [r for r in replies if r]

    async def fail_health_check(self, failed: bool) -> None:
        self.health_check_failed = failed
        await asyncio.gather(*(h.client.request({"op": "health_check", "failed": failed})
                               for h in self.workers.values()))

    async def stats_snapshot(self) -> dict[str, Any]:
        self.stats.gauge("server.live").set(1 if self.state == "LIVE" else 0)
        self.stats.gauge("server.uptime").set(int(time.time() - self.start_time))
        self.stats.gauge("server.concurrency").set(self.options.concurrency)
        self.stats.gauge("server.state").set({"LIVE": 0, "DRAINING": 1, "PRE_INITIALIZING": 2}[self.state])
        self.stats.counter("server.worker_restarts").value = sum(h.restarts for h in self.workers.values())
        await self._worker_stats()
        snapshot = merge_snapshots([self.stats.snapshot(), self.retired, *self.last_seen.values()])
        if self.sinks and self.stats_refresh_interval is None:
            self._flush_sinks(snapshot)  # stats_flush_on_admin: an admin request is the sinks' flush, as in Envoy
        return snapshot

    async def _worker_stats(self) -> None:
        """Refresh `last_seen` from every worker that answers (one that does not keeps its previous entry)."""
        handles = list(self.workers.values())
        replies = await asyncio.gather(*(h.client.request({"op": "stats"}) for h in handles))
        for handle, reply in zip(handles, replies):
            if reply and "stats" in reply and self.workers.get(handle.worker_id) is handle and not handle.gone:
                self.last_seen[handle.worker_id] = reply["stats"]

    async def clusters_text(self) -> str:
        return render_clusters([r["clusters"] for r in await self._ask_all("clusters")])

    def config_dump(self) -> dict[str, Any]:
        return {"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "bootstrap": self.bootstrap_document,
        }, *self.dynamic.config_dump()]}

    def server_info(self) -> dict[str, Any]:
        uptime = int(time.time() - self.start_time)
        return {
            "version": f"pylon/{__version__}",
            "state": self.state,
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
            "command_line_options": {
                "concurrency": self.options.concurrency,
                "config_path": self.options.config_path or "",
                "config_yaml": self.options.config_yaml or "",
                "log_level": self.options.log_level,
                "mode": self.options.mode.capitalize(),
                "drain_time": f"{self.options.drain_time_s:g}s",
                "base_id": str(self.options.base_id or 0),
            },
            "workers": [{"id": h.worker_id, "pid": h.proc.pid, "restarts": h.restarts} for h in self.workers.values()],
        }

    def is_ready(self) -> bool:
        return self.state == "LIVE" and all(h.proc.poll() is None for h in self.workers.values())

    def runtime(self) -> dict[str, Any]:
        return self.bootstrap.runtime.admin_view()


class WorkerStartError(Exception):
    """A worker process could not start; the supervisor stops everything it started."""


def bind_listeners(bootstrap: Any, workers: int) -> tuple[list[list[Balancer]], LoadTable | None]:
    """Bind every address of every listener through its balancer (one per address; a namespaced address in its
    network namespace); on failure close what was bound and raise ListenerBindError.

    Also creates the shared load table when any listener balances by hand-off.
    """
    listeners = bootstrap.static_resources.listeners
    bound: list[list[Balancer]] = []
    try:
        for index, listener in enumerate(listeners):
            if listener.internal_listener is not None:
                bound.append([balancer_for(listener, index)])  # unbound: internal listeners are reached by name
                continue
            sa = listener.socket_address
            where = f"static_resources.listeners[{index}] ({listener.name or sa.address})"
            if listener.is_udp and not listener.enable_reuse_port and workers > 1:
                raise ListenerBindError(  # Envoy's words, at the same point (its start, not its validation)
                    f"{where}: Listening on UDP when concurrency is > 1 without the SO_REUSEPORT socket option "
                    "results in unstable packet proxying. Configure the reuse_port listener option or set "
                    "concurrency = 1.")
            balancers: list[Balancer] = []
            bound.append(balancers)
            for address in listener.socket_addresses:
                balancer = balancer_for(listener, index)
                try:
                    bind_address(balancer, address, workers)
                except NetworkNamespaceError as exc:
                    # Envoy's words; as Envoy, the proxy does not start (a listener that cannot be created)
                    raise ListenerBindError(f"{where}: {exc.strerror}") from exc
                except OSError as exc:
                    raise ListenerBindError(f"{where}: cannot bind {spell_address(address)}: "
                                            f"{exc.strerror or exc}") from exc
                balancers.append(balancer)
    except ListenerBindError:
        for balancers in bound:
            for balancer in balancers:
                balancer.close()
        raise
    table = None
    handoff = [balancer for balancers in bound for balancer in balancers if balancer.handoff]
    if handoff:
        table = LoadTable.create(len(listeners), workers)
        for balancer in handoff:
            balancer.table = table
    return bound, table


class ListenerBindError(Exception):
    """A listener address could not be bound (in use, not local, no permission)."""


def admin_access_loggers(bootstrap: Any, source: str, writer: AccessLogWriter) -> list[AccessLogger]:
    """The admin endpoint's access loggers, their files open; ConfigError at the entry that cannot be built.

    As Envoy, in validate mode too: a file that cannot be opened is a config error
    ("unable to open file '<path>': <reason>"), and one that can is created.
    """
    admin = bootstrap.admin
    loggers: list[AccessLogger] = []
    for rel, entry in admin.access_logs() if admin is not None else []:
        base = f"admin.{rel}" if rel == "access_log_path" else f"admin.{rel}.typed_config"
        try:
            loggers += build_access_loggers([entry], writer)
        except OSError as exc:
            where = base if rel == "access_log_path" else f"{base}.path"
            raise ConfigError(source, where, f"unable to open file '{entry.typed_config.path}': "
                                             f"{exc.strerror or exc}") from exc
        except ValueError as exc:
            raise ConfigError(source, f"{base}.log_format", str(exc)) from exc
    return loggers


def run_proxy(options: ProxyOptions) -> int:
    """The whole `pylon proxy` command; returns the process exit code."""
    configure_logging(options.log_level, "main")
    listener_sockets = ListenerSockets(options.concurrency)
    admin_log_writer = AccessLogWriter()
    try:
        bootstrap = load_bootstrap(options.config_path, options.config_yaml)
        configure_regex_engine(bootstrap, options.config_path or "<config-yaml>")
        validate_runtime(bootstrap, options.config_path or "<config-yaml>")
        admin_loggers = admin_access_loggers(bootstrap, options.config_path or "<config-yaml>", admin_log_writer)
        # Validating binds nothing; serving binds LDS listeners as their updates are checked.
        dynamic = DynamicConfig(bootstrap, StatsStore(), None if options.mode == "validate" else listener_sockets)
        files = FileSources(dynamic)
        files.load_initial()
    except ConfigError as exc:
        # One plain line (no log prefix) so scripts and users can read the field path directly.
        print(str(exc), file=sys.stderr)
        listener_sockets.close()
        admin_log_writer.close()
        return 1
    if options.mode == "validate":
        admin_log_writer.close()
        print(f"configuration '{options.config_path or '<config-yaml>'}' OK")
        return 0
    if options.base_id is not None:
        log.debug("--base-id %d accepted and ignored: pylon has no hot restart", options.base_id)
    if bootstrap.asks_io_uring:
        log.warning("bootstrap_extensions: DefaultSocketInterface's io_uring_options: io_uring is not used (pylon's "
                    "workers run on uvloop's epoll); sockets are the kernel's default ones, as Envoy's where io_uring "
                    "is unavailable - remove io_uring_options to silence this")
    try:
        balancers, table = bind_listeners(bootstrap, options.concurrency)
    except ListenerBindError as exc:
        log.critical("%s", exc)
        listener_sockets.close()
        admin_log_writer.close()
        return 1
    return uvloop.run(Supervisor(options, bootstrap, dynamic, files, balancers, listener_sockets, table,
                                 admin_log_writer, admin_loggers).run())
