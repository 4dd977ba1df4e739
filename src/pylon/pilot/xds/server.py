"""The AggregatedDiscoveryService on grpcio (aio): moves requests and responses between sockets and each
stream's sans-IO protocol state (`Stream` for state of the world, `DeltaStream` for delta), and pushes to
every connected proxy when the config changes.

A push goes proxy by proxy, yielding to the event loop after each: ACKs (and
new connections) are handled while it goes on, as istiod's push queue does,
instead of waiting for the last proxy. A change that comes while a push is
under way merges into it: a proxy not yet pushed gets both at once, one already
pushed is queued again. The streams share one `EncodeCache`, so what many
proxies get alike is packed once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import (DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
                                                      DiscoveryResponse)  # fmt: skip
from pylon.identity.authn import AuthenticationError
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen.types import SHORT_NAMES, Resources
from pylon.pilot.metrics import PilotMetrics
from pylon.pilot.proxy import Proxy
from pylon.pilot.xds.delta import DeltaStream
from pylon.pilot.xds.encode import EncodeCache, EncodeError
from pylon.pilot.xds.stream import Stream, StreamError, StreamForbidden

log = logging.getLogger("pylon.pilot.xds")

_connection_ids = itertools.count(1)

AnyStream = Stream | DeltaStream


@dataclass
class Connection:
    """A connected ADS stream (state of the world or delta): its protocol state and the queue its responses
    (or the error ending it, or None at its end) leave through."""

    id: str
    peer: str
    stream: AnyStream
    outbox: asyncio.Queue[Any]


class AdsServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS, state of the world and delta; `generate(proxy)` gives a proxy's resources and the config version."""

    def __init__(self, generate: Callable[[Proxy], tuple[Resources, str]], metrics: PilotMetrics,
                 on_connect: Callable[[Proxy], None] = lambda proxy: None,
                 on_disconnect: Callable[[Proxy], None] = lambda proxy: None) -> None:  # fmt: skip
        self.generate = generate
        self.metrics = metrics
        self.on_connect = on_connect  # after a proxy's first request was answered (e.g. auto-registration)
        self.on_disconnect = on_disconnect
        self.connections: dict[str, Connection] = {}
        self.encoder = EncodeCache()
        self._pending: dict[str, tuple[frozenset[str] | None, float]] = {}  # connection id -> (types, started)
        self._pusher: asyncio.Task[None] | None = None

    def push_all(self, types: frozenset[str] | None = None) -> None:
        """Send the current config to every connected proxy after a config change: every type, or only `types`
        (what changed for the proxy: see `Stream.push`). Queued, and sent by a task of the running loop."""
        started = time.monotonic()
        for connection_id in self.connections:
            queued = self._pending.get(connection_id)
            if queued is not None:
                merged = None if queued[0] is None or types is None else queued[0] | types
                self._pending[connection_id] = (merged, queued[1])  # converging is timed from the first change
            else:
                self._pending[connection_id] = (types, started)
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._push_pending())

    async def _push_pending(self) -> None:
        while self._pending:
            connection_id = next(iter(self._pending))
            types, started = self._pending.pop(connection_id)
            connection = self.connections.get(connection_id)
            if connection is None:
                continue  # gone since the change
            try:
                responses = connection.stream.push(types, started)
            except ValueError as exc:  # a generation or encoding bug: keep the proxy's last good config
                log.error("push to %s failed: %s", connection.id, exc)
                responses = []
            for response in responses:
                connection.outbox.put_nowait(response)
            await asyncio.sleep(0)

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext,
        identity: SpiffeId | None = None,
    ) -> AsyncIterator[DiscoveryResponse]:
        stream = Stream(generate=self.generate, on_nack=self._count_nack, on_push=self._count_push,
                        on_converged=self._count_convergence, identity=identity, encoder=self.encoder,
                        changed_only=True)  # fmt: skip
        async for response in self._serve(stream, request_iterator, context):
            yield response

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext,
        identity: SpiffeId | None = None,
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        stream = DeltaStream(generate=self.generate, on_nack=self._count_nack, on_push=self._count_push,
                             on_converged=self._count_convergence, identity=identity,
                             encoder=self.encoder)  # fmt: skip
        async for response in self._serve(stream, request_iterator, context):
            yield response

    async def _serve(self, stream: AnyStream, request_iterator: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:  # fmt: skip
        """Feed requests to `stream` and yield its responses (and pushes) until either side ends."""
        outbox: asyncio.Queue[Any] = asyncio.Queue()
        connection = Connection(id="", peer=context.peer(), stream=stream, outbox=outbox)
        reader = asyncio.create_task(self._read(request_iterator, connection))
        try:
            while True:
                item = await outbox.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    code = (grpc.StatusCode.PERMISSION_DENIED if isinstance(item, StreamForbidden)
                            else grpc.StatusCode.INVALID_ARGUMENT if isinstance(item, StreamError)
                            else grpc.StatusCode.INTERNAL)  # fmt: skip
                    await context.abort(code, str(item))
                    return
                yield item
        finally:
            reader.cancel()
            if self.connections.pop(connection.id, None) is not None:
                self.metrics.xds.dec()
                log.info("ADS stream %s closed", connection.id)
                assert connection.stream.proxy is not None
                self.on_disconnect(connection.stream.proxy)

    async def _read(self, requests: AsyncIterator[Any], connection: Connection) -> None:
        try:
            async for request in requests:
                first = connection.stream.proxy is None
                for response in connection.stream.on_request(request):
                    connection.outbox.put_nowait(response)
                if first and connection.stream.proxy is not None:
                    connection.id = f"{connection.stream.proxy.node_id}-{next(_connection_ids)}"
                    self.connections[connection.id] = connection
                    self.metrics.xds.inc()
                    log.info("ADS stream %s connected from %s", connection.id, connection.peer)
                    self.on_connect(connection.stream.proxy)
        except StreamError as exc:
            log.warning("refusing ADS stream from %s: %s", connection.peer, exc)
            connection.outbox.put_nowait(exc)
            return
        except EncodeError as exc:  # a generator bug: say so to the proxy and in the log rather than hang
            log.error("ADS stream %s: %s", connection.id or connection.peer, exc)
            connection.outbox.put_nowait(exc)
            return
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError:
            pass  # the peer went away
        connection.outbox.put_nowait(None)

    def _count_push(self, type_url: str, seconds: float) -> None:
        self.metrics.pushes.labels(type=SHORT_NAMES[type_url]).inc()
        self.metrics.push_time.labels(type=SHORT_NAMES[type_url]).observe(seconds)

    def _count_convergence(self, type_url: str, seconds: float) -> None:
        self.metrics.convergence_time.observe(seconds)

    def _count_nack(self, proxy: Proxy, type_url: str, message: str) -> None:
        self.metrics.rejects.labels(type=SHORT_NAMES[type_url]).inc()


class AuthenticatedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """ADS on the TLS port (istiod's :15012): each stream's caller is authenticated first (client certificate
    or token) and its identity goes with the stream: the proxy must belong to that namespace, and only such
    streams receive gateway secrets. The streams join the same server, so pushes reach them as any other."""

    def __init__(self, ads: AdsServer, identify: Callable[[grpc.aio.ServicerContext], SpiffeId]) -> None:
        self.ads = ads
        self.identify = identify

    async def _identity(self, context: grpc.aio.ServicerContext) -> SpiffeId:
        try:
            return self.identify(context)
        except AuthenticationError as exc:
            log.info("refusing ADS stream from %s: %s", context.peer(), exc)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"authentication failure: {exc}")
            raise  # abort raises; this line is not reached

    async def StreamAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[DiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DiscoveryResponse]:
        identity = await self._identity(context)
        async for response in self.ads.StreamAggregatedResources(request_iterator, context, identity):
            yield response

    async def DeltaAggregatedResources(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[DeltaDiscoveryRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[DeltaDiscoveryResponse]:
        identity = await self._identity(context)
        async for response in self.ads.DeltaAggregatedResources(request_iterator, context, identity):
            yield response
