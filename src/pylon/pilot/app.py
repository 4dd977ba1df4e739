"""`pylon pilot`: the control plane process — load and watch the config, serve ADS, debug and metrics.

Startup is all-or-nothing: a config directory with any error is reported (every
error, each naming file, document and field) and pilot exits 1, so a typo never
starts a control plane that serves half a mesh. After startup a bad edit is
logged and counted (`pilot_config_errors`), and the last good config stays.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from envoy.service.discovery.v3 import ads_pb2_grpc
from pylon.config.errors import ConfigError
from pylon.identity.authority import CaSetupError
from pylon.identity.certs import PrivateKey
from pylon.identity.server import DEFAULT_CA_DIR, CaServer
from pylon.keys.pkcs11 import Pkcs11Error
from pylon.pilot.ca_key import CA_TOKEN_FLAGS, CaToken, open_ca_key
from pylon.pilot.autoregistration import DEFAULT_GRACE_PERIOD, AutoRegistration
from pylon.pilot.debug import DebugHandler, serve_http
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen import SharedGenerations
from pylon.pilot.gen.types import ENDPOINT, SECRET, Resources
from pylon.pilot.istio.mesh import load_mesh_config
from pylon.pilot.istio.resources import Resource
from pylon.pilot.metrics import PilotMetrics
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot, build_snapshot, endpoints_only_change, with_secrets
from pylon.pilot.source.directory import CachedLoader, DirectoryWatcher, LoadResult
from pylon.pilot.source.secrets import SecretsResult, load_secrets
from pylon.pilot.xds.server import AdsServer, AuthenticatedAds

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
    ca_token: CaToken | None = None  # the CA's key in a PKCS#11 token instead of ca_dir/ca-key.pem
    secrets_dir: Path | None = None
    workload_entry_grace_period: float = DEFAULT_GRACE_PERIOD


class Pilot:
    """The current config and what serves it.

    The snapshot is built from the config directory's resources (`config`) plus the WorkloadEntries that
    connected workloads registered (`registration`); a change of either rebuilds it and pushes.
    """

    def __init__(self, snapshot: Snapshot, metrics: PilotMetrics, config: list[Resource] | None = None,
                 registration: AutoRegistration | None = None) -> None:  # fmt: skip
        self.snapshot = snapshot
        self.metrics = metrics
        self.config = list(snapshot.resources) if config is None else config
        self.registration = registration or AutoRegistration()
        self.generations = SharedGenerations()
        self.ads = AdsServer(self.generate, metrics, on_connect=self.on_connect, on_disconnect=self.on_disconnect)

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
            self.registration.expire(time.monotonic(), result.resources)  # entries of deleted groups go too
            snapshot = self._build(result.resources)
        except ConfigError:
            self.metrics.config_errors.inc()
            for error in result.errors or [sys.exc_info()[1]]:
                log.error("%s", error)
            log.error("config change rejected; still serving version %s", self.snapshot.version)
            return
        self.config = result.resources
        self._apply(snapshot)

    def _build(self, config: list[Resource]) -> Snapshot:
        return build_snapshot(config + self.registration.resources(config), mesh=self.snapshot.mesh,
                              secrets=self.snapshot.secrets, previous=self.snapshot)  # fmt: skip

    def _apply(self, snapshot: Snapshot) -> None:
        """Serve `snapshot` and push it: endpoints (EDS) alone when only workload addresses changed."""
        eds_only = endpoints_only_change(self.snapshot, snapshot)
        self.snapshot = snapshot
        self.generations.advance(snapshot, endpoints_only=eds_only)
        freeze_long_lived()
        log.info("config version %s: %d resources; pushing %s to %d proxies", snapshot.version, len(snapshot.resources),
                 "endpoints (EDS) only" if eds_only else "everything", len(self.ads.connections))  # fmt: skip
        self.ads.push_all(frozenset({ENDPOINT}) if eds_only else None)

    def on_connect(self, proxy: Proxy) -> None:
        """A proxy connected: register its workload if it asks to (WorkloadGroup)."""
        if self.registration.connect(proxy, self.config):
            self._apply(self._build(self.config))

    def on_disconnect(self, proxy: Proxy) -> None:
        """A proxy's stream ended: its registered entry goes after the grace period unless it reconnects."""
        self.registration.disconnect(proxy, time.monotonic())
        asyncio.get_running_loop().call_later(self.registration.grace_period, self._expire)

    def _expire(self) -> None:
        if self.registration.expire(time.monotonic(), self.config):
            self._apply(self._build(self.config))

    def on_secrets(self, result: SecretsResult) -> None:
        """A debounced change of the secrets directory: serve the new credentials (SDS only), or keep the last."""
        if result.errors:
            self.metrics.config_errors.inc()
            for error in result.errors:
                log.error("%s", error)
            log.error("secrets change rejected; still serving the previous gateway secrets")
            return
        self.snapshot = with_secrets(self.snapshot, result.secrets)
        log.info("gateway secrets: %d; pushing secrets (SDS) only", len(result.secrets))
        self.ads.push_all(frozenset({SECRET}))


# CPython's default (700): a young collection every 700 container allocations, a full one (over the whole heap)
# every 70,000. A push allocates hundreds of thousands of containers, most of them kept (generated config), so
# collections ran constantly, each scanning what they could not free. Generated config holds no reference cycles;
# collecting less often only keeps the few cycles asyncio and grpc leave a little longer.
GC_YOUNG_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Process-wide collector settings for pilot's heap (the threshold above); pilot's process only."""
    gc.set_threshold(max(gc.get_threshold()[0], GC_YOUNG_THRESHOLD), *gc.get_threshold()[1:])


def freeze_long_lived() -> None:
    """Move everything alive now (the config, the snapshot, the pieces kept across snapshots) out of the
    collector's generations: a full collection then scans only what was allocated since, instead of hundreds of
    thousands of long-lived objects (up to 0.6 s each at 1,000 services). Frozen objects are still freed by
    reference counting when dropped; only a reference cycle among them would be kept, and config has none."""
    gc.freeze()


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
    load = CachedLoader()  # the watcher's, primed: its first reload re-reads only what changed
    result = load(options.config_dir)
    try:
        if result.errors:
            raise result.errors[0]
        snapshot = build_snapshot(result.resources, mesh=mesh)
    except ConfigError:
        for error in result.errors or [sys.exc_info()[1]]:
            print(error, file=sys.stderr)
        return 1
    if options.secrets_dir is not None:
        secrets = load_secrets(options.secrets_dir)
        for error in secrets.errors:
            print(error, file=sys.stderr)
        if secrets.errors:
            return 1
        snapshot = with_secrets(snapshot, secrets.secrets)
    pilot = Pilot(snapshot, PilotMetrics(), result.resources, AutoRegistration(options.workload_entry_grace_period))
    tune_garbage_collector()
    freeze_long_lived()
    signing_key = None
    if options.ca_token is not None:
        try:
            signing_key = open_ca_key(options.ca_token)
        except Pkcs11Error as exc:
            print(f"{CA_TOKEN_FLAGS[exc.what]}: {exc.message}", file=sys.stderr)
            return 1
    return asyncio.run(_serve(options, pilot, load, signing_key))


async def _serve(options: PilotOptions, pilot: Pilot, load: CachedLoader, signing_key: PrivateKey | None = None) -> int:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(pilot.ads, server)
    server.add_insecure_port(options.grpc_address)
    await server.start()
    handler = DebugHandler(pilot.ads, pilot.metrics, ready=lambda: True, version=lambda: pilot.snapshot.version)
    http_servers = [await serve_http(*split_address(address), handler)
                    for address in (options.debug_address, options.monitoring_address)]  # fmt: skip
    # The mesh CA (istiod's :15012), last: it also binds an ephemeral loopback port, which must not take a
    # port the addresses above asked for. It issues identities in MeshConfig's trustDomain, and serves ADS to
    # proxies that authenticate (the only ADS that hands out gateway secrets).
    def add_secure_ads(grpc_server: grpc.aio.Server, identify: Callable[[grpc.aio.ServicerContext], SpiffeId]) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(AuthenticatedAds(pilot.ads, identify), grpc_server)

    try:
        ca_server = await CaServer.start(*split_address(options.ca_address), options.ca_dir,
                                         pilot.snapshot.mesh.trust_domain, extra_services=[add_secure_ads],
                                         signing_key=signing_key)  # fmt: skip
    except CaSetupError as exc:
        log.error("cannot start the CA: %s", exc)
        return 1
    watchers = [DirectoryWatcher(options.config_dir, pilot.on_load, load=load)]
    if options.secrets_dir is not None:
        watchers.append(DirectoryWatcher(options.secrets_dir, pilot.on_secrets, load=load_secrets))
    watch_tasks = [asyncio.create_task(watcher.run()) for watcher in watchers]
    log.info("pilot serving ADS on %s, debug on %s, metrics on %s; config %s version %s", options.grpc_address,
             options.debug_address, options.monitoring_address, options.config_dir, pilot.snapshot.version)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("pilot shutting down")
    for task in watch_tasks:
        task.cancel()
    for http_server in http_servers:
        http_server.close()
    await server.stop(grace=1)
    await ca_server.stop()
    return 0
