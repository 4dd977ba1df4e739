"""A scripted ADS management server for tests (grpcio + xds-protos, state of the world).

The test sets each type's resources (`set`); every open stream that asked for
that type gets them at once, and a stream opening later gets the current ones.
Every request is recorded, so a test can read the ACKs and NACKs a proxy sent.
`stop()` and `start()` take the server away and bring it back on the same port.
"""

from __future__ import annotations

import queue
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.protobuf import any_pb2, json_format

import envoy.extensions.filters.http.router.v3.router_pb2  # noqa: F401  (descriptors for Any)
import envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2  # noqa: F401
import envoy.extensions.upstreams.http.v3.http_protocol_options_pb2  # noqa: F401

LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
_MESSAGES = {LDS: Listener, CDS: Cluster, RDS: RouteConfiguration, EDS: ClusterLoadAssignment}


def to_any(type_url: str, resource: dict[str, Any]) -> any_pb2.Any:
    message = json_format.ParseDict(resource, _MESSAGES[type_url]())
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


@dataclass
class _Stream:
    outbox: queue.Queue[DiscoveryResponse | None] = field(default_factory=queue.Queue)
    types: set[str] = field(default_factory=set)


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.current: dict[str, DiscoveryResponse] = {}
        self.streams: list[_Stream] = []
        self.requests: list[DiscoveryRequest] = []
        self.nonce = 0
        self.server: grpc.Server | None = None

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

    def requests_for(self, type_url: str) -> list[DiscoveryRequest]:
        with self.lock:
            return [r for r in self.requests if r.type_url == type_url]

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(8))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
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

    # ------------------------------------------------------------------ gRPC
    def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> Any:
        stream = _Stream()
        with self.lock:
            self.streams.append(stream)

        def read() -> None:
            try:
                for request in request_iterator:
                    with self.lock:
                        self.requests.append(request)
                        first = request.type_url not in stream.types
                        stream.types.add(request.type_url)
                        if first and request.type_url in self.current:
                            stream.outbox.put(self.current[request.type_url])
            except grpc.RpcError:
                pass
            stream.outbox.put(None)

        threading.Thread(target=read, daemon=True).start()
        while (response := stream.outbox.get()) is not None:
            yield response
        with self.lock:
            if stream in self.streams:
                self.streams.remove(stream)
