"""Per-type ADS state of the world, as Envoy keeps it (sans-IO): what to ask for, what to ACK or NACK.

On every new stream the client asks for each type in subscription order (CDS,
then RDS, then EDS once CDS named clusters that need it) with the version it
last accepted, so a management server that already sent it need not resend.
A type whose names change (EDS after a CDS update) is asked for again. Every response is answered: an ACK carries
the response's version and nonce; a NACK carries the nonce, the version still
in force and `error_detail` (google.rpc.Status code INTERNAL, as Envoy) with
the reason. The node goes on the first request of a stream only when
`set_node_on_first_message_only`, else on every request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from google.rpc.status_pb2 import Status

#: google.rpc.Code INTERNAL: what Envoy puts in a NACK's error_detail.
INTERNAL = 13


@dataclass
class Subscription:
    """One resource type on the stream: its names (None: wildcard) and what was last accepted and seen."""

    type_url: str
    names: Sequence[str] | None = None
    version_info: str = ""  # the last accepted version
    nonce: str = ""  # the nonce of the last response


@dataclass
class AdsState:
    """Every subscription of one ADS client, and whether the node was sent on the current stream."""

    node: Node
    node_on_first_message_only: bool
    subscriptions: list[Subscription] = field(default_factory=list)
    node_sent: bool = False

    def on_connect(self) -> list[DiscoveryRequest]:
        """The opening requests of a new stream; nonces belong to the old stream and are forgotten."""
        self.node_sent = False
        requests = []
        for subscription in self.subscriptions:
            subscription.nonce = ""
            if subscription.names is None or subscription.names:  # nothing to ask for a type with no names
                requests.append(self._request(subscription))
        return requests

    def resubscribe(self, type_url: str, names: Sequence[str]) -> DiscoveryRequest | None:
        """Ask for these names of `type_url` from now on (subscribing on first use); the request, if one is due.

        No names sends nothing: a request without names would read as a wildcard.
        """
        subscription = self.subscription(type_url)
        if subscription is None:
            subscription = Subscription(type_url, [])
            self.subscriptions.append(subscription)
        if list(names) == list(subscription.names or ()):
            return None
        subscription.names = list(names)
        return self._request(subscription) if names else None

    def subscription(self, type_url: str) -> Subscription | None:
        return next((s for s in self.subscriptions if s.type_url == type_url), None)

    def subscribe_wildcard(self, type_url: str) -> None:
        """Subscribe to every resource of `type_url` (CDS, LDS)."""
        self.subscriptions.append(Subscription(type_url))

    def accept(self, response: DiscoveryResponse, kept: Iterable[str]) -> DiscoveryRequest:
        """The ACK of `response` (the interface the client shares with DeltaState; SotW needs no names)."""
        return self.ack(response.type_url, response.version_info, response.nonce)

    def reject(self, response: DiscoveryResponse, reason: str) -> DiscoveryRequest:
        """The NACK of `response`."""
        return self.nack(response.type_url, response.nonce, reason)

    def ack(self, type_url: str, version_info: str, nonce: str) -> DiscoveryRequest:
        """The request that accepts the response (version_info, nonce)."""
        subscription = self._must(type_url)
        subscription.version_info, subscription.nonce = version_info, nonce
        return self._request(subscription)

    def nack(self, type_url: str, nonce: str, reason: str) -> DiscoveryRequest:
        """The request that rejects the response `nonce`; the accepted version stays what it was."""
        subscription = self._must(type_url)
        subscription.nonce = nonce
        request = self._request(subscription)
        request.error_detail.CopyFrom(Status(code=INTERNAL, message=reason))
        return request

    def _must(self, type_url: str) -> Subscription:
        subscription = self.subscription(type_url)
        if subscription is None:
            raise KeyError(f"not subscribed to {type_url}")
        return subscription

    def _request(self, subscription: Subscription) -> DiscoveryRequest:
        request = DiscoveryRequest(version_info=subscription.version_info, response_nonce=subscription.nonce,
                                   type_url=subscription.type_url, resource_names=list(subscription.names or ()))
        if not (self.node_on_first_message_only and self.node_sent):
            request.node.CopyFrom(self.node)
            self.node_sent = True
        return request
