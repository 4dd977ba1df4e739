"""A gRPC client to a cluster of the worker (Envoy's `envoy_grpc`), on grpcio's asyncio API.

pylon's own upstream pool speaks HTTP/1.1; gRPC needs HTTP/2, which grpcio
brings. `GrpcClusterClient` is what data-plane extensions use to call a gRPC
service behind a cluster (the OpenTelemetry tracer's OTLP/gRPC export, the
SkyWalking tracer's client-streaming segment report, ext_authz's gRPC checks):
each call picks a host with the cluster's own load balancer (so its health checks
and outlier ejections count) and goes on one grpc.aio channel per
host address, kept while the host is in the cluster. The channel runs in the
worker's event loop: workers are fresh interpreters started with subprocess
(no fork after grpcio started its threads), so grpcio's fork caveats do not arise.

What Envoy's GrpcService says, and what this client does with it:
- `envoy_grpc.cluster_name`: the cluster; `authority`: the :authority sent
  (default the cluster's name, as Envoy's async client);
- `timeout`: each call's deadline (none when unset); `initial_metadata`: sent
  with every call, after Envoy's own x-envoy-internal and x-forwarded-for
  (left out with `skip_envoy_headers`);
- `max_receive_message_length`: grpcio's limit of the same name.
A cluster with a TLS transport socket is refused at load (config/loader.py):
grpcio would need the context's certificates as its own credentials, not mapped
yet. Calls carry messages as bytes: callers bring their own protobuf classes.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator, Callable

import grpc
import grpc.aio

from pylon.proxy.local_address import envoy_local_address

if TYPE_CHECKING:
    from pylon.config.services import GrpcClientService
    from pylon.proxy.upstream.cluster import Cluster
    from pylon.proxy.worker import Worker


class NoHost(Exception):
    """The cluster is unknown to the worker or has no host to pick (Envoy: the call fails, UNAVAILABLE)."""


def _identity(data: bytes) -> bytes:
    return data


class GrpcClusterClient:
    """Unary gRPC calls to the hosts of one cluster, as one GrpcService config says (see the module docstring)."""

    def __init__(self, worker: "Worker", service: "GrpcClientService", user_agent: str = "") -> None:
        target = service.envoy_grpc
        assert target is not None  # the config refuses a GrpcService without it
        self.worker = worker
        self.cluster_name = target.cluster_name
        self.timeout = float(service.timeout) if service.timeout is not None else None
        metadata: list[tuple[str, str]] = []
        if not target.skip_envoy_headers:
            metadata += [("x-envoy-internal", "true"), ("x-forwarded-for", envoy_local_address())]
        metadata += [(header.key.lower(), header.value) for header in service.initial_metadata]
        self.metadata = tuple(metadata)
        options: list[tuple[str, object]] = [("grpc.default_authority", target.authority or target.cluster_name)]
        if user_agent:
            options.append(("grpc.primary_user_agent", user_agent))
        if target.max_receive_message_length is not None:
            options.append(("grpc.max_receive_message_length", target.max_receive_message_length))
        self.options = tuple(options)
        self.channels: dict[tuple[str, int], grpc.aio.Channel] = {}

    def _channel(self, cluster: "Cluster") -> grpc.aio.Channel:
        host = cluster.choose_host(None)
        if host is None:
            raise NoHost(self.cluster_name)
        address = host.address
        channel = self.channels.get(address)
        if channel is None:
            if len(self.channels) >= len(cluster.hosts):
                self._forget_gone(cluster)
            ip, port = address
            target = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            options = list(self.options)
            http2 = cluster.config.upstream_protocol[1]
            if http2 is not None and http2.connection_keepalive is not None:
                options += http2.connection_keepalive.grpc_channel_options()  # the cluster's PINGs, as Envoy's
            channel = self.channels[address] = grpc.aio.insecure_channel(target, options=options)
        return channel

    def _forget_gone(self, cluster: "Cluster") -> None:
        """Close the channels of hosts the cluster no longer has (EDS or DNS changed it)."""
        live = {host.address for host in cluster.hosts}
        for address in [a for a in self.channels if a not in live]:
            self.worker.loop.create_task(self.channels.pop(address).close())

    async def unary(self, method: str, request: bytes) -> bytes:
        """Call `method` ("/package.Service/Method") with a serialized request; the serialized response.

        Raises NoHost, or grpc.aio.AioRpcError with the call's status.
        """
        cluster = self.worker.clusters.get(self.cluster_name)
        if cluster is None:
            raise NoHost(self.cluster_name)
        call = self._channel(cluster).unary_unary(method, request_serializer=_identity,
                                                  response_deserializer=_identity)
        return await call(request, timeout=self.timeout, metadata=self.metadata)

    def open_stream(self, method: str, requests: AsyncIterator[bytes], metadata: tuple[tuple[str, str], ...] = ()
                    ) -> grpc.aio.StreamUnaryCall:
        """Start a client-streaming call of `method` on a host of the cluster, sending what `requests` yields,
        with `metadata` after the service's. No deadline: such a stream (SkyWalking's segment report) lives
        until either side ends it, as Envoy's async streams. Raises NoHost."""
        cluster = self.worker.clusters.get(self.cluster_name)
        if cluster is None:
            raise NoHost(self.cluster_name)
        call = self._channel(cluster).stream_unary(method, request_serializer=_identity,
                                                   response_deserializer=_identity)
        return call(requests, metadata=self.metadata + metadata)

    def call_soon(self, method: str, request: bytes, done: Callable[[bytes | None, BaseException | None], None]
                  ) -> None:
        """Start a call without waiting for it; `done(response, error)` hears how it ended."""
        task = self.worker.loop.create_task(self.unary(method, request))

        def finished(task: asyncio.Task[bytes]) -> None:
            error = task.exception()
            done(None if error is not None else task.result(), error)
        task.add_done_callback(finished)

    async def close(self) -> None:
        """Close every channel (a worker that stops)."""
        channels, self.channels = self.channels, {}
        for channel in channels.values():
            await channel.close()
