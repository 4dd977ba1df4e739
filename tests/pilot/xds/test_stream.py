"""The ADS stream protocol without gRPC: subscriptions, ACK, NACK, stale nonces and pushes."""

from __future__ import annotations

from google.protobuf import struct_pb2

import pytest

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from google.rpc.status_pb2 import Status
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, Resources
from pylon.pilot.proxy import Proxy
from pylon.pilot.xds.stream import Stream, StreamError
from tests.pilot.builders import GATEWAY_NODE


def cla(name: str) -> dict:
    return {"cluster_name": name, "endpoints": []}


class Config:
    def __init__(self) -> None:
        self.version = "v1"
        self.resources: Resources = {CLUSTER: {"a": {"name": "a", "type": "EDS"}},
                                     ENDPOINT: {"a": cla("a"), "b": cla("b")}}  # fmt: skip

    def generate(self, proxy: Proxy) -> tuple[Resources, str]:
        return self.resources, self.version


def request(type_url: str, names: list[str] = (), nonce: str = "", version: str = "", error: str = "",
            first: bool = False) -> DiscoveryRequest:
    req = DiscoveryRequest(type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version)
    if first:
        metadata = struct_pb2.Struct()
        metadata.update({"LABELS": {"istio": "ingressgateway"}})
        req.node.CopyFrom(Node(id=GATEWAY_NODE, metadata=metadata))
    if error:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


def test_subscribe_ack_nack_and_push() -> None:
    config = Config()
    nacks: list[tuple[str, str]] = []
    stream = Stream(generate=config.generate, on_nack=lambda p, t, m: nacks.append((p.node_id, m)))
    [cds] = stream.on_request(request(CLUSTER, first=True))
    assert (cds.version_info, len(cds.resources)) == ("v1", 1) and stream.proxy.labels == {"istio": "ingressgateway"}
    [eds] = stream.on_request(request(ENDPOINT, ["a"]))
    assert len(eds.resources) == 1  # only the subscribed name
    assert stream.on_request(request(CLUSTER, nonce=cds.nonce, version="v1")) == []  # ACK
    assert stream.status()["cds"]["acked"] == "v1"
    [eds2] = stream.on_request(request(ENDPOINT, ["a", "b"], nonce=eds.nonce, version="v1"))  # ACK + new names
    assert len(eds2.resources) == 2

    config.version = "v2"
    pushed = stream.push()
    assert [r.type_url for r in pushed] == [CLUSTER, ENDPOINT] and {r.version_info for r in pushed} == {"v2"}
    assert stream.on_request(request(ENDPOINT, ["a", "b"], nonce=eds2.nonce, version="v1")) == []  # stale nonce
    assert stream.on_request(request(CLUSTER, nonce=pushed[0].nonce, version="v1", error="bad cluster")) == []
    assert nacks == [(GATEWAY_NODE, "bad cluster")]
    assert stream.status()["cds"] == {"sent": "v2", "acked": "v1", "nonce": pushed[0].nonce, "nack": "bad cluster"}


def test_bad_node_id_and_waypoint_are_refused() -> None:
    with pytest.raises(StreamError, match="must have 4 parts"):
        Stream(generate=Config().generate).on_request(
            DiscoveryRequest(type_url=CLUSTER, node=Node(id="just-a-name")))
    from pylon.pilot.gen import generator_for

    def generate(proxy: Proxy) -> tuple[Resources, str]:
        return generator_for(proxy).generate(proxy, None), "v"  # type: ignore[arg-type]

    with pytest.raises(StreamError, match="waypoint proxies are not supported"):
        Stream(generate=generate).on_request(
            DiscoveryRequest(type_url=CLUSTER, node=Node(id="waypoint~10.0.0.1~a.default~default.svc.cluster.local")))


def test_a_verified_identity_speaks_only_for_its_own_namespace() -> None:
    """istiod's checkConnectionIdentity: on the TLS port the node's namespace must be the caller's."""
    from pylon.identity.spiffe import SpiffeId

    seen: list[Proxy] = []

    def generate(proxy: Proxy) -> tuple[Resources, str]:
        seen.append(proxy)
        return Config().resources, "v1"

    other = SpiffeId("cluster.local", "other", "gw")
    with pytest.raises(StreamError, match="may not connect a proxy of namespace 'istio-system'"):
        Stream(generate=generate, identity=other).on_request(request(CLUSTER, first=True))
    assert seen == []  # nothing was generated for it
    own = SpiffeId("cluster.local", "istio-system", "gw")
    Stream(generate=generate, identity=own).on_request(request(CLUSTER, first=True))
    assert seen[-1].identity == own
