"""A scripted incremental (delta) ADS management server for tests (grpcio + xds-protos).

`set(type_url, version, resources)` makes those the current resources of a type, each at `version`; every open
stream gets what changed for it — the resources it subscribes to whose version it does not hold, and the names
it held that are gone (`removed_resources`). A stream tells what it holds on connecting
(`initial_resource_versions`), so an unchanged resource is not sent again. Every request is recorded.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource
from google.protobuf import any_pb2

from tests.xds.management import ScriptedServer, to_any


@dataclass
class _Stream:
    outbox: queue.Queue[DeltaDiscoveryResponse | None] = field(default_factory=queue.Queue)
    subscribed: dict[str, set[str] | None] = field(default_factory=dict)  # by type: names, or None (wildcard)
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # by type: what the client holds, name -> version


class ScriptedDeltaAds(ScriptedServer, ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, port: int) -> None:
        super().__init__(port)
        self.current: dict[str, dict[str, tuple[str, any_pb2.Any]]] = {}  # type -> name -> (version, resource)

    # ------------------------------------------------------------------ script
    def set(self, type_url: str, version: str, resources: list[dict[str, Any]]) -> list[str]:
        """Serve exactly these resources of `type_url` from now on; the nonces of the responses pushed."""
        with self.lock:
            self.current[type_url] = {
                r.get("name") or r["cluster_name"]: (version, to_any(type_url, r)) for r in resources}
            return [nonce for stream in self.streams if (nonce := self._push(stream, type_url))]

    def register(self, server: grpc.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    # ------------------------------------------------------------------ protocol
    def _push(self, stream: _Stream, type_url: str) -> str:
        """Send `stream` what changed for it in `type_url` (nothing: no response); the nonce, or ""."""
        if type_url not in stream.subscribed:
            return ""
        wanted = stream.subscribed[type_url]
        held = stream.held.setdefault(type_url, {})
        current = self.current.get(type_url, {})
        changed = [(name, version, resource) for name, (version, resource) in current.items()
                   if (wanted is None or name in wanted) and held.get(name) != version]
        removed = [name for name in held if name not in current]
        if not changed and not removed:
            return ""
        self.nonce += 1
        response = DeltaDiscoveryResponse(type_url=type_url, nonce=str(self.nonce), removed_resources=removed,
                                          resources=[Resource(name=n, version=v, resource=r) for n, v, r in changed])
        for name, version, _ in changed:
            held[name] = version
        for name in removed:
            del held[name]
        stream.outbox.put(response)
        return response.nonce

    def _on_request(self, stream: _Stream, request: DeltaDiscoveryRequest) -> None:
        type_url = request.type_url
        subscribe, unsubscribe = set(request.resource_names_subscribe), set(request.resource_names_unsubscribe)
        if type_url not in stream.subscribed:
            stream.subscribed[type_url] = None if not subscribe or "*" in subscribe else set(subscribe)
            stream.held[type_url] = dict(request.initial_resource_versions)
        elif subscribe or unsubscribe:
            names = stream.subscribed[type_url]
            if names is not None:
                names |= subscribe
                names -= unsubscribe
            for name in unsubscribe:
                stream.held[type_url].pop(name, None)
        else:
            return  # an ACK or a NACK
        self._push(stream, type_url)

    def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> Any:
        return self.run_stream(_Stream(), request_iterator, self._on_request)
