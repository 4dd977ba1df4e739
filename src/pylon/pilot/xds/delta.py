"""One incremental (delta) ADS stream, sans-IO: DeltaDiscoveryRequests in, DeltaDiscoveryResponses out.

Istio's agent asks for delta by default (`ISTIO_DELTA_XDS`). Per type URL the
stream keeps the proxy's subscription (wildcard, or names it subscribed and
unsubscribed) and the version of every resource the proxy was sent, so a
response carries only resources whose content changed and names the ones that
went away in `removed_resources`. A resource's version is a digest of its
content: identical config is never re-sent, whatever the config version.

- The first request of a type is answered at once (possibly empty), after
  `initial_resource_versions` tells what a reconnecting proxy already has;
  an empty first subscription on LDS/CDS is the legacy wildcard.
- A request answering the latest nonce is an ACK, or a NACK with `error_detail`
  (recorded, logged, counted; nothing re-sent until the config changes).
- Subscribe/unsubscribe in any request are applied; newly subscribed names are
  sent if they exist.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource
from pylon.pilot.gen.types import PUSH_ORDER, SHORT_NAMES, Json
from pylon.pilot.xds.encode import content_key, content_version
from pylon.pilot.xds.stream import StreamBase, next_nonce

log = logging.getLogger("pylon.pilot.xds")


@dataclass
class DeltaWatch:
    """One type's subscription (`names` None: wildcard) and what the proxy was sent."""

    names: set[str] | None
    sent: dict[str, str] = field(default_factory=dict)  # resource name -> version
    nonce: str = ""
    version_sent: str = ""
    version_acked: str = ""
    last_nack: str = ""
    push_started: float | None = None


def resource_version(resource: Json) -> str:
    """A digest of a resource's content: equal content, equal version (what `EncodeCache` gives each resource)."""
    return content_version(content_key(resource))


@dataclass
class DeltaStream(StreamBase):
    """The protocol state of one delta ADS stream."""

    watches: dict[str, DeltaWatch] = field(default_factory=dict)

    def on_request(self, request: DeltaDiscoveryRequest) -> list[DeltaDiscoveryResponse]:
        type_url = request.type_url
        if not self._serves(request.node, type_url):
            return []
        subscribe, unsubscribe = set(request.resource_names_subscribe), set(request.resource_names_unsubscribe)
        watch = self.watches.get(type_url)
        if watch is None:
            wildcard = not subscribe or "*" in subscribe
            watch = self.watches[type_url] = DeltaWatch(names=None if wildcard else subscribe,
                                                        sent=dict(request.initial_resource_versions))  # fmt: skip
            response = self._respond(type_url, watch, always=True)
            return [response] if response is not None else []
        if request.response_nonce and request.response_nonce == watch.nonce:
            self._ack_or_nack(type_url, watch, request)
        if "*" in unsubscribe:
            watch.names = set()
        if watch.names is not None:
            watch.names -= unsubscribe
        for name in unsubscribe:
            watch.sent.pop(name, None)
        new = subscribe - (watch.names or set())
        if "*" in subscribe:
            watch.names = None
        elif watch.names is not None:
            watch.names |= subscribe
        if not new:
            return []
        for name in new:
            watch.sent.pop(name, None)  # subscribing again asks for the resource again
        response = self._respond(type_url, watch)
        return [response] if response is not None else []

    def push(self, types: frozenset[str] | None = None, started: float | None = None) -> list[DeltaDiscoveryResponse]:
        """Regenerate and send what changed, per subscribed type (or only `types`), clusters first."""
        if self.proxy is None:
            return []
        started = time.monotonic() if started is None else started
        self._resources, self._version = self.generate(self.proxy)
        out = []
        for type_url in PUSH_ORDER:
            watch = self.watches.get(type_url)
            if watch is None or (types is not None and type_url not in types):
                continue
            response = self._respond(type_url, watch)
            if response is not None:
                watch.push_started = started
                out.append(response)
        return out

    def _ack_or_nack(self, type_url: str, watch: DeltaWatch, request: DeltaDiscoveryRequest) -> None:
        assert self.proxy is not None
        if request.HasField("error_detail"):
            message = request.error_detail.message
            watch.last_nack = message
            log.warning("%s rejected %s version %s: %s", self.proxy.node_id, SHORT_NAMES[type_url], watch.version_sent,
                        message)  # fmt: skip
            self.on_nack(self.proxy, type_url, message)
            return
        watch.version_acked = watch.version_sent
        watch.last_nack = ""
        if watch.push_started is not None:
            self.on_converged(type_url, time.monotonic() - watch.push_started)
            watch.push_started = None

    def _respond(self, type_url: str, watch: DeltaWatch, always: bool = False) -> DeltaDiscoveryResponse | None:
        begun = time.perf_counter()
        available = self._resources.get(type_url, {})
        names = None if watch.names is None else frozenset(watch.names)
        selection = self.encoder.select(type_url, available, names, self._version)
        changed = [(name, e) for name, e in selection.encoded.items() if watch.sent.get(name) != e.version]
        in_scope = watch.sent if watch.names is None else {n: v for n, v in watch.sent.items() if n in watch.names}
        removed = sorted(name for name in in_scope if name not in available)
        if not changed and not removed and not always:
            return None
        for name, encoded in changed:
            watch.sent[name] = encoded.version
        for name in removed:
            del watch.sent[name]
        watch.nonce = next_nonce()
        watch.version_sent = self._version
        response = DeltaDiscoveryResponse(
            system_version_info=self._version,
            type_url=type_url,
            nonce=watch.nonce,
            resources=[Resource(name=name, version=encoded.version, resource=encoded.packed)
                       for name, encoded in changed],  # fmt: skip
            removed_resources=removed,
        )
        self.on_push(type_url, time.perf_counter() - begun)
        return response
