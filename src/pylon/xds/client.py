"""The ADS client (state of the world) on grpcio aio, run in the supervisor's loop (grpcio aio runs on uvloop).

It moves messages only: requests come from `AdsState`, responses are decoded by
`resources.decode_response` and offered to the supervisor's `DynamicConfig`
(the same accept/reject/version path as filesystem xDS); an accepted version is
ACKed and pushed to the workers, a rejected one is NACKed with the ConfigError's
text while the last good version keeps serving. A stream that ends or cannot be
opened counts `update_failure` for every subscription, sets
`control_plane.connected_state` to 0 and is retried after a jittered backoff;
nothing served changes meanwhile.

RDS follows LDS the same way: each accepted LDS version names the route
configurations its listeners' HCMs take, asked for before the LDS ACK; a
listener warms until they come or their `initial_fetch_timeout` passes.

EDS follows CDS as in Envoy: each accepted CDS version names the
ClusterLoadAssignments its EDS clusters need, and the new names are asked for
before the CDS ACK goes out. Each new name gets its cluster's
`initial_fetch_timeout`; when it passes first, the cluster serves without hosts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import json_format

from pylon import __version__
from pylon.config.discovery import CLUSTERS, ENDPOINTS, LISTENERS, ROUTE_CONFIGURATIONS, ResourceKind, Update
from pylon.config.errors import ConfigError
from pylon.xds.backoff import Backoff
from pylon.xds.resources import KINDS, decode_response, rejection_detail
from pylon.xds.subscription import AdsState, Subscription

log = logging.getLogger("pylon.xds")

SOURCE = "ads"  # how errors name where a resource came from


class ResourceSink(Protocol):
    """What the client needs from the config owner (the supervisor's DynamicConfig): the subscriptions the
    bootstrap asks for, a place to offer updates (validated, versioned, or refused with a ConfigError), and
    the stats. A protocol, so this package depends on the config model only, never on the proxy."""

    ads_config: Any
    lds_source: Any
    cds_source: Any
    listeners: Mapping[str, Any]
    clusters: Mapping[str, Any]
    routes: Mapping[str, Any]
    stats: Any

    @property
    def rds_subscribers(self) -> Sequence[Any]: ...

    def listener_warm(self, listener: Any) -> bool: ...

    def expire_rds(self, route_name: str) -> bool: ...

    def eds_services(self) -> dict[str, list[str]]: ...

    def eds_warm(self, service: str) -> bool: ...

    def expire_eds(self, service: str) -> bool: ...

    def offer(self, kind: ResourceKind[Any], stat_names: Sequence[str], make: Callable[[], Update]) -> Update: ...

    def count(self, kind: ResourceKind[Any], stat_names: Sequence[str], name: str) -> None: ...


def node_message(node: Any) -> Node:
    """The bootstrap's node as the management server sees it (id, cluster, metadata, who we are)."""
    message = Node(id=node.id, cluster=node.cluster, user_agent_name="pylon", user_agent_version=__version__)
    json_format.ParseDict(node.metadata, message.metadata)
    return message


def grpc_target(bootstrap: Any, cluster_name: str) -> tuple[str, float]:
    """(grpc target, connect timeout) of the static cluster ADS goes to: its first endpoint (loader checked it)."""
    cluster = next(c for c in bootstrap.static_resources.clusters if c.name == cluster_name)
    endpoint = next(e for locality in cluster.load_assignment.endpoints for e in locality.lb_endpoints)
    sa = endpoint.endpoint.address.socket_address
    host = f"[{sa.address}]" if ":" in sa.address else sa.address
    return f"{host}:{sa.port_value}", float(cluster.connect_timeout)


class AdsClient:
    """One ADS stream at a time to the management server: CDS and LDS (wildcard), the RDS names HCMs need, and
    the EDS names CDS clusters need."""

    def __init__(self, bootstrap: Any, dynamic: ResourceSink, on_update: Callable[[], Awaitable[None]],
                 backoff: Backoff | None = None) -> None:
        ads_config = dynamic.ads_config
        assert ads_config is not None and bootstrap.node is not None
        self.dynamic = dynamic
        self.on_update = on_update
        self.backoff = backoff or Backoff()
        self.target, self.connect_timeout = grpc_target(bootstrap, ads_config.cluster_name)
        self.state = AdsState(node_message(bootstrap.node), ads_config.set_node_on_first_message_only)
        self.timeouts: dict[str, float] = {}  # initial_fetch_timeout by type URL (0: wait for ever)
        cds = dynamic.cds_source
        if cds is not None and cds.ads is not None:
            self.state.subscriptions.append(Subscription(CLUSTERS.type_url))
            self.timeouts[CLUSTERS.type_url] = float(cds.initial_fetch_timeout)
        lds = dynamic.lds_source
        if lds is not None and lds.ads is not None:
            self.state.subscriptions.append(Subscription(LISTENERS.type_url))
            self.timeouts[LISTENERS.type_url] = float(lds.initial_fetch_timeout)
        rds = [s for s in dynamic.rds_subscribers if s.source.ads is not None]
        if rds:
            self.state.subscriptions.append(Subscription(ROUTE_CONFIGURATIONS.type_url, self.route_names))
            timeouts = [float(s.source.initial_fetch_timeout) for s in rds]
            self.timeouts[ROUTE_CONFIGURATIONS.type_url] = 0.0 if 0.0 in timeouts else max(timeouts)
        self.first_update = {type_url: asyncio.Event() for type_url in self.timeouts}
        self._count_all("update_attempt")  # Envoy counts a subscription's start as an attempt
        self.eds_clusters: dict[str, Any] = {}  # the EDS clusters subscribed, by name, as configured
        self.eds_timers: dict[str, asyncio.Task[None]] = {}  # initial_fetch_timeout of services not yet warm
        self.eds_settled = asyncio.Event()  # every EDS cluster is warm (start-up waits for it)
        self.eds_settled.set()
        self.rds_timers: dict[str, asyncio.Task[None]] = {}  # initial_fetch_timeout of LDS listeners' routes
        self.listeners_settled = asyncio.Event()  # every LDS listener is warm (start-up waits for it)
        self.listeners_settled.set()

    @property
    def route_names(self) -> list[str]:
        """The route configurations asked for over ADS: those the static and the LDS listeners' HCMs name."""
        return sorted({s.route_name for s in self.dynamic.rds_subscribers if s.source.ads is not None})

    def _count_all(self, stat: str) -> None:
        for subscription in self.state.subscriptions:
            self.dynamic.count(KINDS[subscription.type_url], self._stat_names(subscription.type_url), stat)

    def _stat_names(self, type_url: str) -> list[str]:
        if type_url == ENDPOINTS.type_url:
            return sorted(self.eds_clusters)
        return self.route_names if type_url == ROUTE_CONFIGURATIONS.type_url else []

    async def wait_initialized(self) -> None:
        """Envoy's start-up: wait for each type's first update, or its initial_fetch_timeout (then serve without)."""
        async def one(type_url: str) -> None:
            timeout = self.timeouts[type_url]
            try:
                await asyncio.wait_for(self.first_update[type_url].wait(), timeout or None)
            except asyncio.TimeoutError:
                log.warning("no %s within initial_fetch_timeout %.3gs; starting without", type_url, timeout)
                self.dynamic.count(KINDS[type_url], self._stat_names(type_url), "init_fetch_timeout")

        await asyncio.gather(*(one(type_url) for type_url in self.timeouts))
        await self.eds_settled.wait()  # the EDS clusters of the first CDS version warm before workers start
        await self.listeners_settled.wait()  # and the first LDS version's listeners get their routes

    async def run(self) -> None:
        """Keep a stream open for ever (cancel to stop): reconnect after a jittered backoff."""
        gauge = self.dynamic.stats.gauge("control_plane.connected_state")
        while True:
            try:
                await self._stream(gauge)
                reason = "the management server closed the stream"
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "connect timeout"
            gauge.set(0)
            self._count_all("update_attempt")
            self._count_all("update_failure")
            delay = self.backoff.next_delay()
            log.warning("xDS stream to %s: %s; retrying in %.2fs (the last good config keeps serving)",
                        self.target, reason, delay)
            await asyncio.sleep(delay)

    async def _stream(self, gauge: Any) -> None:
        async with grpc.aio.insecure_channel(self.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            gauge.set(1)
            self.backoff.reset()
            for request in self.state.on_connect():
                await call.write(request)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                for request in await self._handle(response):
                    await call.write(request)

    async def _handle(self, response: DiscoveryResponse) -> list[DiscoveryRequest]:
        """Offer one response to the DynamicConfig; the requests to send back (EDS names CDS changed, the ACK or
        NACK)."""
        type_url = response.type_url
        if self.state.subscription(type_url) is None:
            log.warning("ignoring a response of %s, which was not asked for", type_url)
            return []
        kind = KINDS[type_url]

        def make() -> Update:
            discovered = decode_response(response, SOURCE)
            # LDS and CDS are the state of the world (absent means removed); RDS responses only add or change.
            if kind is CLUSTERS:
                removed = frozenset(self.dynamic.clusters)
            elif kind is LISTENERS:
                removed = frozenset(self.dynamic.listeners)
            else:
                removed = frozenset()
            return Update(kind, discovered, removed, SOURCE)

        try:
            self.dynamic.offer(kind, self._stat_names(type_url), make)
        except ConfigError as exc:
            detail = rejection_detail(response, exc)
            log.error("%s version %r rejected, the last good version keeps serving: %s", type_url,
                      response.version_info, detail)
            self._first_update(type_url)
            return [self.state.nack(type_url, response.nonce, detail)]
        if kind is CLUSTERS:
            requests = self._follow_clusters()
        elif kind is LISTENERS:
            requests = self._follow_listeners()
        else:
            requests = []
        self._first_update(type_url)
        self._check_settled()
        await self.on_update()
        return [*requests, self.state.ack(type_url, response.version_info, response.nonce)]

    def _first_update(self, type_url: str) -> None:
        if type_url in self.first_update:
            self.first_update[type_url].set()

    def _follow_clusters(self) -> list[DiscoveryRequest]:
        """After a CDS version: subscribe the EDS clusters it added or changed, drop the ones it removed, and
        ask for the assignment names if they changed."""
        wanted = {name: r.config for name, r in self.dynamic.clusters.items() if r.config.type == "EDS"}
        started = sorted(name for name, config in wanted.items() if self.eds_clusters.get(name) != config)
        self.eds_clusters = wanted
        self.dynamic.count(ENDPOINTS, started, "update_attempt")  # a (new) subscription's start
        services = self.dynamic.eds_services()
        for service in set(self.eds_timers) - set(services):
            self.eds_timers.pop(service).cancel()
        for service, names in services.items():
            timeouts = [float(wanted[n].eds_cluster_config.eds_config.initial_fetch_timeout) for n in names]
            timeout = 0.0 if 0.0 in timeouts else max(timeouts)  # one cluster waiting for ever keeps it waiting
            if not self.dynamic.eds_warm(service) and service not in self.eds_timers and timeout:
                self.eds_timers[service] = asyncio.get_running_loop().create_task(self._expire(service, timeout))
        request = self.state.resubscribe(ENDPOINTS.type_url, sorted(services))
        return [request] if request is not None else []

    def _follow_listeners(self) -> list[DiscoveryRequest]:
        """After an LDS version: ask for the route configurations its listeners name (before the LDS ACK, as
        Envoy), each new one with its HCM's initial_fetch_timeout."""
        subscription = self.state.subscription(ROUTE_CONFIGURATIONS.type_url)
        asked = set(subscription.names or ()) if subscription is not None else set()
        names = self.route_names
        started = [name for name in names if name not in asked]
        self.dynamic.count(ROUTE_CONFIGURATIONS, started, "update_attempt")  # a (new) subscription's start
        for name in set(self.rds_timers) - set(names):
            self.rds_timers.pop(name).cancel()
        for subscriber in self.dynamic.rds_subscribers:
            name, timeout = subscriber.route_name, float(subscriber.source.initial_fetch_timeout)
            if (name in started and subscriber.source.ads is not None and name not in self.dynamic.routes
                    and name not in self.rds_timers and timeout):
                self.rds_timers[name] = asyncio.get_running_loop().create_task(self._expire_routes(name, timeout))
        request = self.state.resubscribe(ROUTE_CONFIGURATIONS.type_url, names)
        return [request] if request is not None else []

    async def _expire_routes(self, name: str, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self.rds_timers.pop(name, None)
        if self.dynamic.expire_rds(name):
            log.warning("no route configuration %r within initial_fetch_timeout %.3gs; its listeners serve "
                        "without it (404)", name, timeout)
            self._check_settled()
            await self.on_update()

    async def _expire(self, service: str, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self.eds_timers.pop(service, None)
        if self.dynamic.expire_eds(service):
            log.warning("no endpoints of %r within initial_fetch_timeout %.3gs; its clusters serve without hosts",
                        service, timeout)
            self._check_settled()
            await self.on_update()

    def _check_settled(self) -> None:
        """Stop the timers of services now warm; set or clear `eds_settled` by whether every one is."""
        for service in [s for s in self.eds_timers if self.dynamic.eds_warm(s)]:
            self.eds_timers.pop(service).cancel()
        if all(self.dynamic.eds_warm(service) for service in self.dynamic.eds_services()):
            self.eds_settled.set()
        else:
            self.eds_settled.clear()
        for name in [n for n in self.rds_timers if n in self.dynamic.routes]:
            self.rds_timers.pop(name).cancel()
        if all(self.dynamic.listener_warm(r.config) for r in self.dynamic.listeners.values()):
            self.listeners_settled.set()
        else:
            self.listeners_settled.clear()
