"""One ADS stream's state-of-the-world protocol, sans-IO: requests in, responses out.

Per type URL the stream remembers what the proxy subscribed to (wildcard for
LDS/CDS, names for RDS/EDS), the last version and nonce sent, the last version
the proxy ACKed and its last NACK. The rules are xDS's:

- a request whose `response_nonce` is not the latest one sent for its type is
  stale (it answers a response the proxy had not seen yet) and is ignored;
- a request with `error_detail` is a NACK: recorded and logged with the proxy
  and the error, and answered with nothing (the proxy keeps its last good config);
- a request with the latest nonce is an ACK, and if its resource names differ
  from the subscription (a new cluster's endpoints, a new listener's routes) it
  is also a new subscription, answered with those resources;
- `push` (config changed) sends every subscribed type again, clusters first, or
  only the given types (EDS alone when only endpoints changed); a stream made
  with `changed_only` (the server's) sends only types whose content changed for
  this proxy, EDS with only the assignments that changed.

The ACK of a pushed response is the proxy's convergence: `on_converged` gets the
seconds from the push's start to that ACK (`pilot_proxy_convergence_time`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen.types import ENDPOINT, PUSH_ORDER, SHORT_NAMES, Resources
from pylon.pilot.proxy import Proxy, parse_node
from pylon.pilot.xds.encode import EncodeCache

log = logging.getLogger("pylon.pilot.xds")

_nonces = itertools.count(1)


def next_nonce() -> str:
    """A nonce unique within this process (shared by SotW and delta streams)."""
    return str(next(_nonces))


class StreamError(Exception):
    """The stream cannot be served (bad node id, unsupported proxy type); the message says why."""


class StreamForbidden(StreamError):
    """The caller is authenticated but may not speak for this proxy (istiod answers PermissionDenied)."""


@dataclass
class Watch:
    """One subscribed type's state; `names` None means wildcard."""

    names: frozenset[str] | None
    nonce: str = ""
    version_sent: str = ""
    version_acked: str = ""
    last_nack: str = ""
    sent_at: float = 0.0
    push_started: float | None = None  # monotonic start of the push the unacknowledged response belongs to
    sent: dict[str, str] = field(default_factory=dict)  # what the proxy was sent: name -> content version


@dataclass
class StreamBase:
    """What state-of-the-world and delta streams share: who the proxy is, its resources, the callbacks.

    `generate(proxy)` returns the proxy's resources for the current config and
    its version; the callbacks let the server count NACKs, pushes and convergence;
    `encoder` packs resources (the server shares one between its streams).
    """

    generate: Callable[[Proxy], tuple[Resources, str]]
    on_nack: Callable[[Proxy, str, str], None] = lambda proxy, type_url, message: None
    on_push: Callable[[str, float], None] = lambda type_url, seconds: None
    on_converged: Callable[[str, float], None] = lambda type_url, seconds: None
    encoder: EncodeCache = field(default_factory=EncodeCache)
    proxy: Proxy | None = None
    identity: SpiffeId | None = None  # the caller verified on the TLS port; None on the plaintext port
    watches: dict[str, Any] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)
    _resources: Resources = field(default_factory=dict)
    _version: str = ""

    def _serves(self, node: Any, type_url: str) -> bool:
        """Identify the proxy on its first request; whether `type_url` is one pilot serves (else ignored)."""
        if self.proxy is None:
            self._connect(node)
        assert self.proxy is not None
        if type_url not in PUSH_ORDER:
            log.warning("%s asked for unsupported type %s; ignored", self.proxy.node_id, type_url)
            return False
        return True

    def _connect(self, node: Any) -> None:
        metadata = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
        try:
            proxy = parse_node(node.id, metadata)
        except ValueError as exc:
            raise StreamError(str(exc)) from None
        if self.identity is not None:
            # istiod's checkConnectionIdentity: a proxy speaks only for its verified namespace.
            if self.identity.namespace != proxy.namespace:
                raise StreamForbidden(f"{proxy.node_id}: authenticated as {self.identity}, which may not connect a proxy "
                                  f"of namespace {proxy.namespace!r}")  # fmt: skip
            proxy = dataclasses.replace(proxy, identity=self.identity)
        self.proxy = proxy
        try:
            self._resources, self._version = self.generate(self.proxy)
        except ValueError as exc:
            raise StreamError(f"{self.proxy.node_id}: {exc}") from None

    def status(self) -> dict[str, dict[str, str]]:
        """Per type, what was sent and what the proxy ACKed or NACKed (for /debug/syncz)."""
        return {
            SHORT_NAMES[type_url]: {"sent": w.version_sent, "acked": w.version_acked, "nonce": w.nonce,
                                    "nack": w.last_nack}  # fmt: skip
            for type_url, w in self.watches.items()
        }


@dataclass
class Stream(StreamBase):
    """The protocol state of one ADS stream.

    `generate(proxy)` returns the proxy's resources for the current config and
    its version; `on_nack(proxy, type_url, message)` lets the server count and
    show rejections; `on_push(type_url, seconds)` counts responses sent and the
    time spent building each; `on_converged(type_url, seconds)` times pushes to their ACK.

    `changed_only`: a push leaves out a type whose resources are all as the proxy last got them (a full push
    after a route change need not send a thousand unchanged clusters to every proxy), and sends EDS with only
    the assignments that changed: a state-of-the-world EDS response may hold a subset (Envoy keeps the ones
    left out), which is how istiod sends endpoint changes.
    """

    watches: dict[str, Watch] = field(default_factory=dict)
    changed_only: bool = False

    def on_request(self, request: DiscoveryRequest) -> list[DiscoveryResponse]:
        """The responses one request calls for (often none)."""
        type_url = request.type_url
        if not self._serves(request.node, type_url):
            return []
        names = _subscription(request)
        watch = self.watches.get(type_url)
        if watch is not None and request.response_nonce != watch.nonce:
            return []  # stale: answers an older response, a newer one is on its way
        if request.HasField("error_detail"):
            message = request.error_detail.message
            if watch is not None:
                watch.last_nack = message
            log.warning("%s rejected %s version %s: %s", self.proxy.node_id, SHORT_NAMES[type_url],
                        watch.version_sent if watch else "?", message)  # fmt: skip
            self.on_nack(self.proxy, type_url, message)
            if watch is not None and names != watch.names:
                watch.names = names  # the proxy's next request may still change its subscription
            return []
        if watch is None:
            watch = self.watches[type_url] = Watch(names=names)
        else:
            watch.version_acked = request.version_info
            if watch.push_started is not None:
                self.on_converged(type_url, time.monotonic() - watch.push_started)
                watch.push_started = None
            if watch.last_nack and request.version_info == watch.version_sent:
                watch.last_nack = ""
            if names == watch.names:
                return []
            watch.names = names
        response = self._respond(type_url, watch)
        assert response is not None  # only pushes leave a response out
        return [response]

    def push(self, types: frozenset[str] | None = None, started: float | None = None) -> list[DiscoveryResponse]:
        """Regenerate for the current config and send every subscribed type (or only `types`, and with
        `changed_only` only what changed), clusters first. `started` (monotonic) is when the change that causes
        the push was seen."""
        if self.proxy is None:
            return []
        started = time.monotonic() if started is None else started
        self._resources, self._version = self.generate(self.proxy)
        out = []
        for type_url in PUSH_ORDER:
            if type_url in self.watches and (types is None or type_url in types):
                response = self._respond(type_url, self.watches[type_url], self.changed_only)
                if response is not None:
                    out.append(response)
                    self.watches[type_url].push_started = started
        return out

    def _respond(self, type_url: str, watch: Watch, changed_only: bool = False) -> DiscoveryResponse | None:
        begun = time.perf_counter()
        selection = self.encoder.select(type_url, self._resources.get(type_url, {}), watch.names, self._version)
        chosen = selection.encoded
        if changed_only and selection.versions == watch.sent:
            return None
        if changed_only and type_url == ENDPOINT:
            chosen = {name: e for name, e in chosen.items() if watch.sent.get(name) != e.version}
        watch.sent = selection.versions
        if not chosen and changed_only and type_url == ENDPOINT:
            return None  # assignments only went away: their clusters' removal (CDS) says so
        watch.nonce = next_nonce()
        watch.version_sent = self._version
        watch.sent_at = time.time()
        watch.push_started = None
        response = DiscoveryResponse(
            version_info=self._version,
            type_url=type_url,
            nonce=watch.nonce,
            resources=[encoded.packed for encoded in chosen.values()],
        )
        self.on_push(type_url, time.perf_counter() - begun)
        return response


def _subscription(request: DiscoveryRequest) -> frozenset[str] | None:
    names = frozenset(request.resource_names)
    return None if not names or "*" in names else names
