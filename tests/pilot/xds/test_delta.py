"""The delta ADS stream protocol without gRPC: wildcard and named subscriptions, changed-only pushes, removals,
ACK/NACK, reconnection with initial_resource_versions."""

from __future__ import annotations

from google.protobuf import struct_pb2
from google.rpc.status_pb2 import Status

from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryRequest
from pylon.pilot.gen.types import CLUSTER, ENDPOINT
from pylon.pilot.xds.delta import DeltaStream, resource_version
from tests.pilot.builders import GATEWAY_NODE
from tests.pilot.xds.test_stream import Config, cla


def request(type_url: str, subscribe: list[str] = (), unsubscribe: list[str] = (), nonce: str = "", error: str = "",
            first: bool = False, initial: dict[str, str] | None = None) -> DeltaDiscoveryRequest:
    req = DeltaDiscoveryRequest(type_url=type_url, resource_names_subscribe=list(subscribe),
                                resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
                                initial_resource_versions=initial or {})  # fmt: skip
    if first:
        metadata = struct_pb2.Struct()
        metadata.update({"LABELS": {"istio": "ingressgateway"}})
        req.node.CopyFrom(Node(id=GATEWAY_NODE, metadata=metadata))
    if error:
        req.error_detail.CopyFrom(Status(code=3, message=error))
    return req


def test_subscriptions_changes_and_removals() -> None:
    config = Config()
    nacks: list[str] = []
    stream = DeltaStream(generate=config.generate, on_nack=lambda p, t, m: nacks.append(m))
    [cds] = stream.on_request(request(CLUSTER, first=True))
    assert [r.name for r in cds.resources] == ["a"] and cds.system_version_info == "v1"
    [eds] = stream.on_request(request(ENDPOINT, ["a"]))
    assert [r.name for r in eds.resources] == ["a"]
    assert stream.on_request(request(CLUSTER, nonce=cds.nonce)) == []  # ACK
    [more] = stream.on_request(request(ENDPOINT, ["b"], nonce=eds.nonce))  # ACK and a new name: only that one
    assert [r.name for r in more.resources] == ["b"] and stream.status()["eds"]["acked"] == "v1"

    config.version = "v2"
    config.resources[ENDPOINT]["a"] = {"cluster_name": "a", "endpoints": [{"lb_endpoints": []}]}
    del config.resources[ENDPOINT]["b"]
    [pushed] = stream.push()  # clusters unchanged: nothing for CDS
    assert pushed.type_url == ENDPOINT and [r.name for r in pushed.resources] == ["a"]
    assert list(pushed.removed_resources) == ["b"]
    assert stream.push() == []  # nothing changed since
    assert stream.on_request(request(ENDPOINT, nonce=pushed.nonce, error="bad endpoints")) == []
    assert nacks == ["bad endpoints"] and stream.status()["eds"]["nack"] == "bad endpoints"
    assert stream.on_request(request(ENDPOINT, unsubscribe=["a"])) == []
    config.resources[ENDPOINT]["a"] = cla("a")
    assert stream.push(frozenset({ENDPOINT})) == []  # no longer subscribed


def test_reconnect_sends_only_what_the_proxy_lacks() -> None:
    config = Config()
    known = {"a": resource_version(config.resources[CLUSTER]["a"])}
    [cds] = DeltaStream(generate=config.generate).on_request(request(CLUSTER, first=True, initial=known))
    assert list(cds.resources) == [] and list(cds.removed_resources) == []
    stale = {"a": "old", "gone": "x"}
    [cds] = DeltaStream(generate=config.generate).on_request(request(CLUSTER, first=True, initial=stale))
    assert [r.name for r in cds.resources] == ["a"] and list(cds.removed_resources) == ["gone"]
