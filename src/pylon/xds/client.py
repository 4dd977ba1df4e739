"""The xDS client (state of the world) on grpcio aio, run in the supervisor's loop (grpcio aio runs on uvloop).

Resources come over gRPC streams: the bootstrap's ADS stream (`ads: {}`
config sources), and one stream per resource type for config sources with an
`api_config_source` (Istio's SDS from the agent over `sds-grpc`: the Secret
Discovery Service, `StreamSecrets`). Each `XdsStream` moves messages only:
its requests come from its `AdsState`, responses are decoded by
`resources.ResponseDecoder` and offered to the supervisor's `DynamicConfig`
(the same accept/reject/version path as filesystem xDS); an accepted version is
ACKed and pushed to the workers, a rejected one is NACKed with the
ConfigError's text while the last good version keeps serving. A stream that
ends or cannot be opened counts `update_failure` for its subscriptions, sets
`control_plane.connected_state` to 0 and is retried after a jittered backoff;
nothing served changes meanwhile.

CDS and LDS are wildcard subscriptions. The other types are asked for by name,
and the names follow what is accepted, as in Envoy: after every accepted
version `XdsClient.refresh` works out the route configurations the listeners'
HCMs take (RDS), the ClusterLoadAssignments the EDS clusters need (EDS) and
the secrets listeners and clusters name (SDS), and asks each stream for the
names of its source — before the ACK of the version that named them. Each new
name gets its source's `initial_fetch_timeout`; when that passes first, its
users serve without it (routes: 404; endpoints: no hosts; secrets: the TLS
refuses connections).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
)
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import json_format

from pylon import __version__
from pylon.config.discovery import (
    CLUSTERS, ENDPOINTS, LISTENERS, ROUTE_CONFIGURATIONS, SECRETS, Discovered, ResourceKind, Update,
)
from pylon.config.errors import ConfigError
from pylon.xds.backoff import Backoff
from pylon.xds.delta import DeltaState
from pylon.xds.resources import KINDS, ResponseDecoder, rejection_detail
from pylon.xds.subscription import AdsState

log = logging.getLogger("pylon.xds")

SOURCE = "ads"  # how errors name where a resource came from

#: Each type's own discovery service (an `api_config_source` stream): its stub, and its state-of-the-world and
#: delta methods; then the aggregated one (ADS).
_SERVICES: dict[str, tuple[Any, str, str]] = {
    CLUSTERS.type_url: (cds_pb2_grpc.ClusterDiscoveryServiceStub, "StreamClusters", "DeltaClusters"),
    LISTENERS.type_url: (lds_pb2_grpc.ListenerDiscoveryServiceStub, "StreamListeners", "DeltaListeners"),
    ROUTE_CONFIGURATIONS.type_url: (rds_pb2_grpc.RouteDiscoveryServiceStub, "StreamRoutes", "DeltaRoutes"),
    ENDPOINTS.type_url: (eds_pb2_grpc.EndpointDiscoveryServiceStub, "StreamEndpoints", "DeltaEndpoints"),
    SECRETS.type_url: (sds_pb2_grpc.SecretDiscoveryServiceStub, "StreamSecrets", "DeltaSecrets"),
}
_ADS = (ads_pb2_grpc.AggregatedDiscoveryServiceStub, "StreamAggregatedResources", "DeltaAggregatedResources")


def _rpc(service: tuple[Any, str, str], delta: bool) -> Callable[[grpc.aio.Channel], Any]:
    """The streaming method of `service` on a channel (delta or state of the world)."""
    stub, state_of_the_world, incremental = service
    return lambda channel: getattr(stub(channel), incremental if delta else state_of_the_world)


#: The types asked for by name, in the order Envoy follows them (RDS after LDS, EDS after CDS).
NAMED_KINDS = (ROUTE_CONFIGURATIONS, ENDPOINTS, SECRETS)


class ResourceSink(Protocol):
    """What the client needs from the config owner (the supervisor's DynamicConfig): the subscriptions the
    config asks for, a place to offer updates (validated, versioned, or refused with a ConfigError), and
    the stats. A protocol, so this package depends on the config model only, never on the proxy."""

    ads_config: Any
    lds_source: Any
    cds_source: Any
    static_cluster_configs: Mapping[str, Any]
    listeners: Mapping[str, Any]
    clusters: Mapping[str, Any]
    routes: Mapping[str, Any]
    rds_expired: set[str]
    stats: Any

    @property
    def rds_subscribers(self) -> Sequence[Any]: ...

    def listener_warm(self, listener: Any) -> bool: ...

    def cluster_warm(self, config: Any) -> bool: ...

    def expire_rds(self, route_name: str) -> bool: ...

    def eds_warm(self, service: str) -> bool: ...

    def expire_eds(self, service: str) -> bool: ...

    def secret_sources(self) -> dict[str, Any]: ...

    def eds_clusters(self) -> dict[str, Any]: ...

    def secret_warm(self, name: str) -> bool: ...

    def expire_secret(self, name: str) -> bool: ...

    def offer(self, kind: ResourceKind[Any], stat_names: Sequence[str], make: Callable[[], Update]) -> Update: ...

    def count(self, kind: ResourceKind[Any], stat_names: Sequence[str], name: str) -> None: ...


def node_message(node: Any) -> Node:
    """The bootstrap's node as the management server sees it (id, cluster, metadata, who we are)."""
    message = Node(id=node.id, cluster=node.cluster, user_agent_name="pylon", user_agent_version=__version__)
    json_format.ParseDict(node.metadata, message.metadata)
    return message


def grpc_target(clusters: Mapping[str, Any], cluster_name: str) -> tuple[str, float, list[tuple[str, Any]]]:
    """(grpc target, connect timeout, channel options) of the static cluster a stream goes to: its first endpoint
    (loader checked); the options carry the cluster's HTTP/2 connection_keepalive, if it has one."""
    cluster = clusters[cluster_name]
    endpoint = next(e for locality in cluster.load_assignment.endpoints for e in locality.lb_endpoints)
    options: list[tuple[str, Any]] = [("grpc.enable_http_proxy", 0)]
    http2 = cluster.upstream_protocol[1]
    if http2 is not None and http2.connection_keepalive is not None:
        options += http2.connection_keepalive.grpc_channel_options()
    return endpoint.endpoint.address.grpc_target, float(cluster.connect_timeout), options


@dataclass(frozen=True)
class Wanted:
    """A name asked for by one type: where it comes from and how long start-up waits for it."""

    source: Any  # its ConfigSource
    stat_name: str  # whose `update_*` counters count it (a route name, an EDS cluster, a secret)


class XdsStream:
    """One gRPC stream: the ADS stream, or a per-type discovery service of one `api_config_source`."""

    def __init__(self, client: "XdsClient", label: str, target: tuple[str, float, list[tuple[str, Any]]],
                 rpc: Callable[[grpc.aio.Channel], Any], state: AdsState | DeltaState, backoff: Backoff) -> None:
        self.client = client
        self.label = label
        self.target, connect_timeout, self.channel_options = target
        self.connect_timeout = connect_timeout
        self.rpc = rpc
        self.state = state
        self.backoff = backoff
        self.connected = False
        self._call: Any = None
        self._writing = asyncio.Lock()  # grpcio takes one write at a time; other streams' handlers write here too

    async def send(self, requests: Sequence[DiscoveryRequest | DeltaDiscoveryRequest]) -> None:
        """Write `requests` if the stream is open (else they go out with the next stream's opening ones)."""
        call = self._call
        if call is None:
            return
        async with self._writing:
            for request in requests:
                await call.write(request)

    async def run(self) -> None:
        """Keep a stream open for ever (cancel to stop): reconnect after a jittered backoff."""
        while True:
            try:
                await self._stream()
                reason = "the management server closed the stream"
            except (grpc.aio.AioRpcError, asyncio.TimeoutError) as exc:
                reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "connect timeout"
            self._call = None
            self.connected = False
            self.client.connection_changed()
            self.client.count_failure(self)
            delay = self.backoff.next_delay()
            log.warning("xDS stream %s to %s: %s; retrying in %.2fs (the last good config keeps serving)",
                        self.label, self.target, reason, delay)
            await asyncio.sleep(delay)

    async def _stream(self) -> None:
        async with grpc.aio.insecure_channel(self.target, options=self.channel_options) as channel:
            await asyncio.wait_for(channel.channel_ready(), self.connect_timeout)
            call = self.rpc(channel)()
            self.connected = True
            self.client.connection_changed()
            self.backoff.reset()
            self._call = call
            await self.send(self.state.on_connect())
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                for stream, requests in await self.client.handle(self, response):
                    await stream.send(requests)


class XdsClient:
    """Every xDS stream of the proxy, and what they ask for: CDS and LDS (wildcard), and the RDS, EDS and SDS
    names the accepted config needs."""

    def __init__(self, bootstrap: Any, dynamic: ResourceSink, on_update: Callable[[], Awaitable[None]],
                 backoff: Callable[[], Backoff] = Backoff) -> None:
        self.dynamic = dynamic
        self.on_update = on_update
        self.make_backoff = backoff
        self.node = node_message(bootstrap.node) if bootstrap.node is not None else Node()
        self.decoder = ResponseDecoder()
        self.streams: dict[Any, XdsStream] = {}  # "ads", or (cluster, api type, node once, type URL) of an api source
        self.tasks: list[asyncio.Task[None]] = []
        self.running = False
        self.timeouts: dict[str, float] = {}  # initial_fetch_timeout of the wildcard types (0: wait for ever)
        for kind, source in ((CLUSTERS, dynamic.cds_source), (LISTENERS, dynamic.lds_source)):
            stream = self._stream_for(source, kind)
            if stream is not None:
                stream.state.subscribe_wildcard(kind.type_url)
                self.timeouts[kind.type_url] = float(source.initial_fetch_timeout)
                dynamic.count(kind, [], "update_attempt")  # Envoy counts a subscription's start as an attempt
        self.first_update = {type_url: asyncio.Event() for type_url in self.timeouts}
        self.asked: dict[str, dict[str, Wanted]] = {kind.type_url: {} for kind in NAMED_KINDS}
        self.eds_clusters: dict[str, Any] = {}  # the EDS clusters subscribed, by name, as configured
        self.eds_names: dict[XdsStream, list[str]] = {}  # on each stream, the EDS clusters whose counters count
        self.timers: dict[tuple[str, str], asyncio.Task[None]] = {}  # initial_fetch_timeout of names not warm
        self.settled = asyncio.Event()  # every name asked for is warm (start-up waits for it)
        self.refresh()

    # ------------------------------------------------------------------ streams
    def _stream_for(self, source: Any, kind: ResourceKind[Any]) -> XdsStream | None:
        """The stream resources of `source` come over (made on first use); None for a file source."""
        if source is None:
            return None
        if source.ads is not None:
            key: Any = SOURCE
            api = self.dynamic.ads_config
            delta = api.api_type == "DELTA_GRPC"
            rpc, label = _rpc(_ADS, delta), "ADS"
        elif source.api_config_source is not None:
            api = source.api_config_source
            delta = api.api_type == "DELTA_GRPC"
            key = (api.cluster_name, api.api_type, api.set_node_on_first_message_only, kind.type_url)
            rpc = _rpc(_SERVICES[kind.type_url], delta)
            label = f"{kind.what}s ({api.cluster_name})"
        else:
            return None
        stream = self.streams.get(key)
        if stream is None:
            target = grpc_target(self.dynamic.static_cluster_configs, api.cluster_name)
            state: AdsState | DeltaState = (DeltaState if delta else AdsState)(
                self.node, api.set_node_on_first_message_only)
            stream = self.streams[key] = XdsStream(self, label, target, rpc, state, self.make_backoff())
            self.connection_changed()  # not connected yet: 0 until it is
            if self.running:
                self.tasks.append(asyncio.get_running_loop().create_task(stream.run()))
        return stream

    def connection_changed(self) -> None:
        """`control_plane.connected_state`: 1 while every stream is connected."""
        connected = bool(self.streams) and all(stream.connected for stream in self.streams.values())
        self.dynamic.stats.gauge("control_plane.connected_state").set(int(connected))

    def count_failure(self, stream: XdsStream) -> None:
        """A stream ended: its subscriptions count an attempt and a failure (Envoy), then re-count on reconnect."""
        for subscription in stream.state.subscriptions:
            kind = KINDS[subscription.type_url]
            names = self._stat_names(kind, stream)
            self.dynamic.count(kind, names, "update_attempt")
            self.dynamic.count(kind, names, "update_failure")

    def _stat_names(self, kind: ResourceKind[Any], stream: XdsStream) -> list[str]:
        """Whose `update_*` counters a response of `kind` on `stream` counts (none for CDS and LDS)."""
        if kind is ENDPOINTS:
            return self.eds_names.get(stream, [])
        asked = self.asked.get(kind.type_url, {})
        return sorted(w.stat_name for w in asked.values() if self._stream_for(w.source, kind) is stream)

    async def follow(self) -> None:
        """The config changed from elsewhere (a watched file): ask the streams for what it names now."""
        for stream, requests in self.refresh().items():
            await stream.send(requests)

    async def run(self) -> None:
        """Run every stream for ever (cancel to stop); streams made later (new api_config_sources) start too."""
        self.running = True
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(stream.run()) for stream in self.streams.values()]
        try:
            while True:
                await asyncio.sleep(3600)
        finally:
            for task in self.tasks:
                task.cancel()

    async def wait_initialized(self) -> None:
        """Envoy's start-up: wait for each wildcard type's first update, or its initial_fetch_timeout (then serve
        without), then for every name asked for to come or time out."""
        async def one(type_url: str) -> None:
            timeout = self.timeouts[type_url]
            try:
                await asyncio.wait_for(self.first_update[type_url].wait(), timeout or None)
            except asyncio.TimeoutError:
                log.warning("no %s within initial_fetch_timeout %.3gs; starting without", type_url, timeout)
                self.dynamic.count(KINDS[type_url], [], "init_fetch_timeout")

        await asyncio.gather(*(one(type_url) for type_url in self.timeouts))
        await self.settled.wait()

    # ------------------------------------------------------------------ responses
    async def handle(self, stream: XdsStream, response: DiscoveryResponse | DeltaDiscoveryResponse
                     ) -> list[tuple[XdsStream, Sequence[DiscoveryRequest | DeltaDiscoveryRequest]]]:
        """Offer one response to the DynamicConfig; the requests to send back, by stream: the names the new
        version needs (on whichever stream carries them), then this response's ACK or NACK."""
        type_url = response.type_url
        if stream.state.subscription(type_url) is None:
            log.warning("ignoring a response of %s, which was not asked for", type_url)
            return []
        kind = KINDS[type_url]
        delta = isinstance(response, DeltaDiscoveryResponse)
        version = response.system_version_info if delta else response.version_info
        sent: list[str] = []

        def make() -> Update:
            discovered = self.decoder.decode(response, SOURCE)
            sent.extend(discovered.resources)
            if kind not in (CLUSTERS, LISTENERS):
                return Update(kind, discovered, frozenset(), SOURCE)  # named types only add or change
            # LDS and CDS are the state of the world (absent means removed); a delta response is applied to the
            # resources held, so both reach DynamicConfig as the whole new state.
            current = self.dynamic.clusters if kind is CLUSTERS else self.dynamic.listeners
            if delta:
                gone = set(response.removed_resources)
                kept = {name: r.config for name, r in current.items() if name not in gone}
                versions = {name: r.version_info for name, r in current.items()}
                discovered = Discovered(version, {**kept, **discovered.resources},
                                        {**versions, **discovered.resource_versions})
            return Update(kind, discovered, frozenset(current), SOURCE)

        try:
            self.dynamic.offer(kind, self._stat_names(kind, stream), make)
        except ConfigError as exc:
            detail = rejection_detail(response, exc)
            log.error("%s version %r rejected, the last good version keeps serving: %s", type_url, version, detail)
            self._first_update(type_url)
            return [(stream, [stream.state.reject(response, detail)])]
        requests = self.refresh() if kind in (CLUSTERS, LISTENERS) else {}
        self._first_update(type_url)
        self._check_settled()
        await self.on_update()
        ack = stream.state.accept(response, sent)
        return [*((s, r) for s, r in requests.items() if s is not stream),
                (stream, [*requests.get(stream, []), ack])]

    def _first_update(self, type_url: str) -> None:
        if type_url in self.first_update:
            self.first_update[type_url].set()

    # ------------------------------------------------------------------ names
    def wanted(self) -> dict[str, dict[str, Wanted]]:
        """The names each named type needs now, from the config accepted so far."""
        routes = {s.route_name: Wanted(s.source, s.route_name) for s in self.dynamic.rds_subscribers}
        endpoints: dict[str, Wanted] = {}
        for name, config in self.dynamic.eds_clusters().items():
            endpoints.setdefault(config.eds_service_name, Wanted(config.eds_cluster_config.eds_config, name))
        secrets = {name: Wanted(source, name) for name, source in self.dynamic.secret_sources().items()}
        return {ROUTE_CONFIGURATIONS.type_url: routes, ENDPOINTS.type_url: endpoints, SECRETS.type_url: secrets}

    def refresh(self) -> dict[XdsStream, list[DiscoveryRequest | DeltaDiscoveryRequest]]:
        """Ask every stream for the names its types need now (new subscriptions counted and timed); the
        requests that changes, by stream."""
        requests: dict[XdsStream, list[DiscoveryRequest | DeltaDiscoveryRequest]] = {}
        self._count_new_eds_clusters()
        for kind in NAMED_KINDS:
            wanted = {name: w for name, w in self.wanted()[kind.type_url].items()
                      if self._stream_for(w.source, kind) is not None}
            asked = self.asked[kind.type_url]
            started = [w.stat_name for name, w in wanted.items() if name not in asked]
            if kind is not ENDPOINTS:
                self.dynamic.count(kind, started, "update_attempt")  # a (new) subscription's start
            self.asked[kind.type_url] = wanted
            for name in [n for (t, n) in self.timers if t == kind.type_url and n not in wanted]:
                self.timers.pop((kind.type_url, name)).cancel()
            by_stream: dict[XdsStream, list[str]] = {}
            for name, w in wanted.items():
                stream = self._stream_for(w.source, kind)
                assert stream is not None
                by_stream.setdefault(stream, []).append(name)
                self._start_timer(kind, name, wanted)
            for stream in {*by_stream, *(s for s in self.streams.values() if s.state.subscription(kind.type_url))}:
                request = stream.state.resubscribe(kind.type_url, sorted(by_stream.get(stream, [])))
                if request is not None:
                    requests.setdefault(stream, []).append(request)
        self._check_settled()
        return requests

    def _count_new_eds_clusters(self) -> None:
        """EDS counts per cluster: a cluster added or changed starts a subscription (Envoy's update_attempt)."""
        wanted = self.dynamic.eds_clusters()
        started = sorted(name for name, config in wanted.items() if self.eds_clusters.get(name) != config)
        self.eds_clusters = wanted
        self.eds_names = {}
        for name, config in sorted(wanted.items()):
            stream = self._stream_for(config.eds_cluster_config.eds_config, ENDPOINTS)
            if stream is not None:
                self.eds_names.setdefault(stream, []).append(name)
        self.dynamic.count(ENDPOINTS, started, "update_attempt")

    def _start_timer(self, kind: ResourceKind[Any], name: str, wanted: dict[str, Wanted]) -> None:
        """initial_fetch_timeout for a name not warm: the longest of its users' (0 for any: wait for ever)."""
        if (kind.type_url, name) in self.timers or self._warm(kind, name):
            return
        timeouts = [float(w.source.initial_fetch_timeout) for n, w in wanted.items() if n == name]
        if kind is ENDPOINTS:
            timeouts = [float(config.eds_cluster_config.eds_config.initial_fetch_timeout)
                        for config in self.dynamic.eds_clusters().values() if config.eds_service_name == name]
        timeout = 0.0 if 0.0 in timeouts else max(timeouts)
        if timeout:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # constructed outside the loop (never in the supervisor)
            self.timers[(kind.type_url, name)] = loop.create_task(self._expire(kind, name, timeout))

    def _warm(self, kind: ResourceKind[Any], name: str) -> bool:
        if kind is ROUTE_CONFIGURATIONS:
            return name in self.dynamic.routes or name in self.dynamic.rds_expired
        if kind is ENDPOINTS:
            return self.dynamic.eds_warm(name)
        return self.dynamic.secret_warm(name)

    async def _expire(self, kind: ResourceKind[Any], name: str, timeout: float) -> None:
        await asyncio.sleep(timeout)
        self.timers.pop((kind.type_url, name), None)
        expire = {ROUTE_CONFIGURATIONS.type_url: self.dynamic.expire_rds, ENDPOINTS.type_url: self.dynamic.expire_eds,
                  SECRETS.type_url: self.dynamic.expire_secret}[kind.type_url]
        if expire(name):
            log.warning("no %s %r within initial_fetch_timeout %.3gs; its users serve without it", kind.what, name,
                        timeout)
            self._check_settled()
            await self.on_update()

    def _check_settled(self) -> None:
        """Stop the timers of names now warm; set or clear `settled` by whether every name asked for is warm."""
        for key in [k for k in self.timers if self._warm(KINDS[k[0]], k[1])]:
            self.timers.pop(key).cancel()
        warm = all(self._warm(KINDS[type_url], name) for type_url, asked in self.asked.items() for name in asked)
        if warm:
            self.settled.set()
        else:
            self.settled.clear()
