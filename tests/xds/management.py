"""A scripted xDS management server for tests (grpcio + xds-protos, state of the world).

The test sets each type's resources (`set`); every open stream that asked for
that type gets them at once, and a stream opening later gets the current ones.
Every request is recorded, so a test can read the ACKs and NACKs a proxy sent.
`stop()` and `start()` take the server away and bring it back on the same port
(or Unix socket: `unix_path`, as Istio's agent serves SDS). It serves ADS and
the per-type discovery services (`StreamClusters` ... `StreamSecrets`, for
config sources with their own `api_config_source`) from the same script.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from envoy.service.secret.v3 import sds_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import any_pb2, json_format

import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401  (descriptors for Any)
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.transport_sockets.tls.v3.tls_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
SDS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
_MESSAGES = {LDS: Listener, CDS: Cluster, RDS: RouteConfiguration, EDS: ClusterLoadAssignment, SDS: Secret}


def to_any(type_url: str, resource: dict[str, Any]) -> any_pb2.Any:
    message = json_format.ParseDict(resource, _MESSAGES[type_url]())
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class _Stream:
    outbox: queue.Queue[DiscoveryResponse | None] = field(default_factory=queue.Queue)
    types: set[str] = field(default_factory=set)


class ScriptedServer:
    """What the scripted servers share: a grpcio server on a port or Unix socket, its streams (each with an
    `outbox`, None to end it) and the requests they sent."""

    def __init__(self, port: int = 0, unix_path: str = "") -> None:
        self.port = port
        self.unix_path = unix_path
        self.lock = threading.Lock()
        self.streams: list[Any] = []
        self.requests: list[Any] = []
        self.nonce = 0
        self.server: grpc.Server | None = None

    def register(self, server: grpc.Server) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(16))
        self.register(self.server)
        self.server.add_insecure_port(f"unix:{self.unix_path}" if self.unix_path else f"127.0.0.1:{self.port}")
        self.server.start()

    def stop(self) -> None:
        with self.lock:
            for stream in self.streams:
                stream.outbox.put(None)
            self.streams.clear()
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None

    @property
    def stream_count(self) -> int:
        with self.lock:
            return len(self.streams)

    def requests_for(self, type_url: str) -> list[Any]:
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url]

    def run_stream(self, stream: Any, request_iterator: Any, on_request: Callable[[Any, Any], None]) -> Iterator[Any]:
        """Serve one gRPC stream: requests recorded and handed to `on_request` (under the lock) on a thread, the
        stream's outbox sent until None."""
        with self.lock:
            self.streams.append(stream)

        def read() -> None:
            try:
                for request in request_iterator:
                    with self.lock:
                        self.requests.append(request)
                        on_request(stream, request)
            except grpc.RpcError:
                pass
            stream.outbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (response := stream.outbox.get()) is not None:
            yield response
        with self.lock:
            if stream in self.streams:
                self.streams.remove(stream)


class ScriptedAds(ScriptedServer, ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, port: int = 0, unix_path: str = "") -> None:
        super().__init__(port, unix_path)
        self.current: dict[str, DiscoveryResponse] = {}

    # ------------------------------------------------------------------ script
    def set(self, type_url: str, version: str, resources: list[dict[str, Any]]) -> str:
        """Serve these resources from now on; returns the nonce of the response pushed."""
        with self.lock:
            self.nonce += 1
            response = DiscoveryResponse(version_info=version, type_url=type_url, nonce=str(self.nonce),
                                         resources=[to_any(type_url, r) for r in resources])
            self.current[type_url] = response
            for stream in self.streams:
                if type_url in stream.types:
                    stream.outbox.put(response)
            return response.nonce

    def register(self, server: grpc.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server(_Clusters(self), server)
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server(_Listeners(self), server)
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server(_Routes(self), server)
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server(_Endpoints(self), server)
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(_Secrets(self), server)

    # ------------------------------------------------------------------ gRPC
    def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Any:
        return self.serve(request_iterator)

    def serve(self, request_iterator: Any) -> Any:
        return self.run_stream(_Stream(), request_iterator, self._on_request)

    def _on_request(self, stream: _Stream, request: DiscoveryRequest) -> None:
        first = request.type_url not in stream.types
        stream.types.add(request.type_url)
        if first and request.type_url in self.current:
            stream.outbox.put(self.current[request.type_url])


class _Clusters(cds_pb2_grpc.ClusterDiscoveryServiceServicer):
    """CDS on its own stream (an `api_config_source`), served like ADS by the same script."""

    def __init__(self, script: ScriptedAds) -> None:
        self.script = script

    def StreamClusters(self, request_iterator: Any, context: Any) -> Any:
        return self.script.serve(request_iterator)


class _Listeners(lds_pb2_grpc.ListenerDiscoveryServiceServicer):
    def __init__(self, script: ScriptedAds) -> None:
        self.script = script

    def StreamListeners(self, request_iterator: Any, context: Any) -> Any:
        return self.script.serve(request_iterator)


class _Routes(rds_pb2_grpc.RouteDiscoveryServiceServicer):
    def __init__(self, script: ScriptedAds) -> None:
        self.script = script

    def StreamRoutes(self, request_iterator: Any, context: Any) -> Any:
        return self.script.serve(request_iterator)


class _Endpoints(eds_pb2_grpc.EndpointDiscoveryServiceServicer):
    def __init__(self, script: ScriptedAds) -> None:
        self.script = script

    def StreamEndpoints(self, request_iterator: Any, context: Any) -> Any:
        return self.script.serve(request_iterator)


class _Secrets(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, script: ScriptedAds) -> None:
        self.script = script

    def StreamSecrets(self, request_iterator: Any, context: Any) -> Any:
        return self.script.serve(request_iterator)
