"""`pylon pilot`: the control plane process — load and watch the config, serve ADS, debug and metrics.

Startup is all-or-nothing: a config directory with any error is reported (every
error, each naming file, document and field) and pilot exits 1, so a typo never
starts a control plane that serves half a mesh. After startup a bad edit is
logged and counted (`pilot_config_errors`), and the last good config stays.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

from envoy.service.discovery.v3 import ads_pb2_grpc
from pylon.config.errors import ConfigError
from pylon.identity.server import DEFAULT_CA_DIR, CaServer
from pylon.pilot.debug import DebugHandler, serve_http
from pylon.pilot.gen import SharedGenerations
from pylon.pilot.gen.types import ENDPOINT, Resources
from pylon.pilot.istio.mesh import load_mesh_config
from pylon.pilot.metrics import PilotMetrics
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot, build_snapshot, endpoints_only_change
from pylon.pilot.source.directory import DirectoryWatcher, LoadResult, load_directory
from pylon.pilot.xds.server import AdsServer

log = logging.getLogger("pylon.pilot")


@dataclass(frozen=True)
class PilotOptions:
    config_dir: Path
    mesh_config: Path | None = None
    grpc_address: str = "127.0.0.1:15010"
    monitoring_address: str = "127.0.0.1:15014"
    debug_address: str = "127.0.0.1:8080"
    log_level: str = "info"
    ca_address: str = "127.0.0.1:15012"
    ca_dir: Path = DEFAULT_CA_DIR


class Pilot:
    """The current config and what serves it."""

    def __init__(self, snapshot: Snapshot, metrics: PilotMetrics) -> None:
        self.snapshot = snapshot
        self.metrics = metrics
        self.generations = SharedGenerations()
        self.ads = AdsServer(self.generate, metrics)

    def generate(self, proxy: Proxy) -> tuple[Resources, str]:
        """The proxy's resources for the current snapshot (shared with every proxy of the same generation key:
        not to be changed) and its version."""
        snapshot = self.snapshot
        return self.generations.generate(proxy, snapshot), snapshot.version

    def on_load(self, result: LoadResult) -> None:
        """A debounced reload: apply it and push, or keep the last good config and say why."""
        try:
            if result.errors:
                raise result.errors[0]
            snapshot = build_snapshot(result.resources, mesh=self.snapshot.mesh)
        except ConfigError:
            self.metrics.config_errors.inc()
            for error in result.errors or [sys.exc_info()[1]]:
                log.error("%s", error)
            log.error("config change rejected; still serving version %s", self.snapshot.version)
            return
        eds_only = endpoints_only_change(self.snapshot, snapshot)
        self.snapshot = snapshot
        log.info("config version %s: %d resources; pushing %s to %d proxies", snapshot.version, len(snapshot.resources),
                 "endpoints (EDS) only" if eds_only else "everything", len(self.ads.connections))  # fmt: skip
        self.ads.push_all(frozenset({ENDPOINT}) if eds_only else None)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) to (host, port); ValueError if malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"invalid address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def run_pilot(options: PilotOptions) -> int:
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        mesh = load_mesh_config(options.mesh_config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    result = load_directory(options.config_dir)
    try:
        if result.errors:
            raise result.errors[0]
        snapshot = build_snapshot(result.resources, mesh=mesh)
    except ConfigError:
        for error in result.errors or [sys.exc_info()[1]]:
            print(error, file=sys.stderr)
        return 1
    return asyncio.run(_serve(options, Pilot(snapshot, PilotMetrics())))


async def _serve(options: PilotOptions, pilot: Pilot) -> int:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(pilot.ads, server)
    server.add_insecure_port(options.grpc_address)
    await server.start()
    handler = DebugHandler(pilot.ads, pilot.metrics, ready=lambda: True, version=lambda: pilot.snapshot.version)
    http_servers = [await serve_http(*split_address(address), handler)
                    for address in (options.debug_address, options.monitoring_address)]  # fmt: skip
    # The mesh CA (istiod's :15012), last: it also binds an ephemeral loopback port, which must not take a
    # port the addresses above asked for. Trust domain: cluster.local until MeshConfig.trustDomain is implemented.
    ca_server = await CaServer.start(*split_address(options.ca_address), options.ca_dir)
    watcher = DirectoryWatcher(options.config_dir, pilot.on_load)
    watch_task = asyncio.create_task(watcher.run())
    log.info("pilot serving ADS on %s, debug on %s, metrics on %s; config %s version %s", options.grpc_address,
             options.debug_address, options.monitoring_address, options.config_dir, pilot.snapshot.version)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("pilot shutting down")
    watch_task.cancel()
    for http_server in http_servers:
        http_server.close()
    await server.stop(grace=1)
    await ca_server.stop()
    return 0
