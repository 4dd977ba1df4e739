"""Per-type incremental (delta) xDS state, as Envoy keeps it (sans-IO): what to subscribe to, what to ACK or NACK.

Delta xDS (`api_type: DELTA_GRPC`) sends only what changed: a response
carries the resources added or changed, each with its own version, and the
names of those removed; requests subscribe to and unsubscribe from names
rather than repeating the whole list. CDS and LDS are wildcard subscriptions
(an empty first subscription, the legacy wildcard every server understands).
On a new stream the client tells the server the versions it holds
(`initial_resource_versions`), so an unchanged resource need not be sent again
and one removed meanwhile comes back in `removed_resources`. An ACK carries
the response's nonce; a NACK adds `error_detail`, and the versions held stay
those of the last accepted response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest, DeltaDiscoveryResponse
from google.rpc.status_pb2 import Status

from pylon.xds.subscription import INTERNAL


@dataclass
class DeltaSubscription:
    """One resource type on a delta stream: its names (None: wildcard) and the versions it holds."""

    type_url: str
    names: list[str] | None = None
    versions: dict[str, str] = field(default_factory=dict)  # accepted resources, by name


@dataclass
class DeltaState:
    """Every subscription of one delta stream, and whether the node was sent on the current stream."""

    node: Node
    node_on_first_message_only: bool
    subscriptions: list[DeltaSubscription] = field(default_factory=list)
    node_sent: bool = False

    def on_connect(self) -> list[DeltaDiscoveryRequest]:
        """The opening requests of a new stream: each subscription, with the versions already held."""
        self.node_sent = False
        requests = []
        for subscription in self.subscriptions:
            if subscription.names is None or subscription.names:  # nothing to ask for a type with no names
                requests.append(self._request(subscription.type_url, subscribe=subscription.names or (),
                                              initial=subscription.versions))
        return requests

    def subscription(self, type_url: str) -> DeltaSubscription | None:
        return next((s for s in self.subscriptions if s.type_url == type_url), None)

    def subscribe_wildcard(self, type_url: str) -> None:
        """Subscribe to every resource of `type_url` (CDS, LDS)."""
        self.subscriptions.append(DeltaSubscription(type_url))

    def resubscribe(self, type_url: str, names: Sequence[str]) -> DeltaDiscoveryRequest | None:
        """Ask for these names of `type_url` from now on: the request that subscribes the new ones and
        unsubscribes the dropped ones, if anything changed. Dropped names are forgotten (a later subscription to
        one gets it sent again)."""
        subscription = self.subscription(type_url)
        if subscription is None:
            subscription = DeltaSubscription(type_url, [])
            self.subscriptions.append(subscription)
        old = set(subscription.names or ())
        added = [name for name in names if name not in old]
        dropped = sorted(old - set(names))
        if not added and not dropped:
            return None
        subscription.names = list(names)
        for name in dropped:
            subscription.versions.pop(name, None)
        return self._request(type_url, subscribe=added, unsubscribe=dropped)

    def accept(self, response: DeltaDiscoveryResponse, kept: Iterable[str]) -> DeltaDiscoveryRequest:
        """The ACK of `response`: the resources named `kept` (those of the response the client kept) are held at
        their versions, the removed ones are no longer."""
        subscription = self._must(response.type_url)
        names = set(kept)
        for resource in response.resources:
            if resource.name in names:
                subscription.versions[resource.name] = resource.version
        for name in response.removed_resources:
            subscription.versions.pop(name, None)
        return self._request(response.type_url, nonce=response.nonce)

    def reject(self, response: DeltaDiscoveryResponse, reason: str) -> DeltaDiscoveryRequest:
        """The NACK of `response`: nothing it held is taken."""
        request = self._request(response.type_url, nonce=response.nonce)
        request.error_detail.CopyFrom(Status(code=INTERNAL, message=reason))
        return request

    def _must(self, type_url: str) -> DeltaSubscription:
        subscription = self.subscription(type_url)
        if subscription is None:
            raise KeyError(f"not subscribed to {type_url}")
        return subscription

    def _request(self, type_url: str, *, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = (),
                 initial: dict[str, str] | None = None, nonce: str = "") -> DeltaDiscoveryRequest:
        request = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe),
                                        resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce)
        if initial:
            request.initial_resource_versions.update(initial)
        if not (self.node_on_first_message_only and self.node_sent):
            request.node.CopyFrom(self.node)
            self.node_sent = True
        return request
