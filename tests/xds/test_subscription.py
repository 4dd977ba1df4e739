"""AdsState: opening requests, ACK and NACK as Envoy sends them (no sockets)."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import Node

from pylon.xds.subscription import INTERNAL, AdsState, Subscription

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def state(first_only: bool = True) -> AdsState:
    return AdsState(Node(id="router~1.2.3.4~gw.ns~ns.svc.cluster.local", cluster="gw"), first_only,
                    [Subscription(CDS), Subscription(RDS, ["http.8080"])])


def test_opening_requests_cds_then_rds_node_only_on_the_first() -> None:
    cds, rds = state().on_connect()
    assert (cds.type_url, list(cds.resource_names), cds.node.id) == (CDS, [], "router~1.2.3.4~gw.ns~ns.svc.cluster.local")
    assert (rds.type_url, list(rds.resource_names), rds.HasField("node")) == (RDS, ["http.8080"], False)


def test_node_on_every_request_unless_first_only() -> None:
    ads = state(first_only=False)
    assert all(r.HasField("node") for r in ads.on_connect())
    assert ads.ack(CDS, "1", "n1").HasField("node")


def test_ack_carries_version_and_nonce_and_reconnect_asks_from_the_accepted_version() -> None:
    ads = state()
    ads.on_connect()
    ack = ads.ack(CDS, "v1", "n1")
    assert (ack.version_info, ack.response_nonce, ack.HasField("error_detail")) == ("v1", "n1", False)
    cds, _ = ads.on_connect()
    assert (cds.version_info, cds.response_nonce, cds.node.cluster) == ("v1", "", "gw")


def test_nack_keeps_the_accepted_version_and_says_why() -> None:
    ads = state()
    ads.on_connect()
    ads.ack(CDS, "v1", "n1")
    nack = ads.nack(CDS, "n2", "cluster 'a': bad")
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")
    assert (nack.error_detail.code, nack.error_detail.message) == (INTERNAL, "cluster 'a': bad")
    assert ads.ack(RDS, "r1", "n3").version_info == "r1"


EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def test_eds_is_asked_for_when_names_change_and_never_as_a_wildcard() -> None:
    ads = state()
    ads.on_connect()
    assert ads.resubscribe(EDS, []) is None  # no names: nothing to ask (an empty request would be a wildcard)
    assert [r.type_url for r in ads.on_connect()] == [CDS, RDS]
    first = ads.resubscribe(EDS, ["svc-a", "svc-b"])
    assert first is not None and list(first.resource_names) == ["svc-a", "svc-b"]
    assert ads.resubscribe(EDS, ["svc-a", "svc-b"]) is None  # unchanged
    ads.ack(EDS, "e1", "n1")
    again = ads.resubscribe(EDS, ["svc-a"])
    assert again is not None and (list(again.resource_names), again.version_info, again.response_nonce) == (
        ["svc-a"], "e1", "n1")
    assert [list(r.resource_names) for r in ads.on_connect()][-1] == ["svc-a"]
