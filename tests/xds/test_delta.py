"""DeltaState: subscribe/unsubscribe, versions held across streams, ACK and NACK (no sockets)."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, Resource

from pylon.xds.delta import DeltaState
from pylon.xds.subscription import INTERNAL

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def state() -> DeltaState:
    delta = DeltaState(Node(id="sidecar~10.0.0.1~app.ns~ns.svc.cluster.local", cluster="app"), True)
    delta.subscribe_wildcard(CDS)
    return delta


def response(type_url: str, nonce: str, *resources: tuple[str, str], removed: tuple[str, ...] = ()
             ) -> DeltaDiscoveryResponse:
    return DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, removed_resources=list(removed),
                                  resources=[Resource(name=n, version=v) for n, v in resources])


def test_wildcard_first_then_names_subscribed_and_unsubscribed() -> None:
    delta = state()
    (cds,) = delta.on_connect()
    assert (cds.type_url, list(cds.resource_names_subscribe), cds.node.id) == (
        CDS, [], "sidecar~10.0.0.1~app.ns~ns.svc.cluster.local")
    assert delta.resubscribe(EDS, []) is None  # no names: nothing to ask (an empty first request is a wildcard)
    first = delta.resubscribe(EDS, ["a", "b"])
    assert (list(first.resource_names_subscribe), list(first.resource_names_unsubscribe)) == (["a", "b"], [])
    assert not first.HasField("node")  # set_node_on_first_message_only
    assert delta.resubscribe(EDS, ["a", "b"]) is None
    change = delta.resubscribe(EDS, ["b", "c"])
    assert (list(change.resource_names_subscribe), list(change.resource_names_unsubscribe)) == (["c"], ["a"])


def test_versions_held_go_to_the_next_stream_and_a_nack_takes_nothing() -> None:
    delta = state()
    delta.on_connect()
    ack = delta.accept(response(CDS, "1", ("a", "v1"), ("b", "v1")), ["a", "b"])
    assert (ack.response_nonce, ack.HasField("error_detail")) == ("1", False)
    nack = delta.reject(response(CDS, "2", ("a", "v2")), "cluster 'a': bad")
    assert (nack.response_nonce, nack.error_detail.code, nack.error_detail.message) == ("2", INTERNAL, "cluster 'a': bad")
    delta.accept(response(CDS, "3", ("c", "v3"), removed=("b",)), ["c"])
    (cds,) = delta.on_connect()
    assert dict(cds.initial_resource_versions) == {"a": "v1", "c": "v3"}
    assert cds.node.id  # a new stream sends the node again


def test_an_unsubscribed_name_is_forgotten() -> None:
    delta = state()
    delta.on_connect()
    delta.resubscribe(EDS, ["a", "b"])
    delta.accept(response(EDS, "1", ("a", "1"), ("b", "1")), ["a", "b"])
    delta.resubscribe(EDS, ["b"])
    cds, eds = delta.on_connect()
    assert (list(eds.resource_names_subscribe), dict(eds.initial_resource_versions)) == (["b"], {"b": "1"})
