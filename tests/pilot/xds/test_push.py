"""Pushes as the server makes them: only what changed for the proxy, and proxy by proxy with changes merged."""

from __future__ import annotations

import asyncio

from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from pylon.pilot.gen.types import CLUSTER, ENDPOINT
from pylon.pilot.metrics import PilotMetrics
from pylon.pilot.xds.server import AdsServer, Connection
from pylon.pilot.xds.stream import Stream
from tests.pilot.xds.test_stream import Config, request


def cla(name: str, address: str) -> dict:
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": address, "port_value": 80}}}}]}]}  # fmt: skip


def connected(config: Config, changed_only: bool = True) -> Stream:
    """A stream that got CDS and the EDS of clusters a and b, and ACKed both."""
    stream = Stream(generate=config.generate, changed_only=changed_only)
    [cds] = stream.on_request(request(CLUSTER, first=True))
    [eds] = stream.on_request(request(ENDPOINT, ["a", "b"]))
    stream.on_request(request(CLUSTER, nonce=cds.nonce, version=cds.version_info))
    stream.on_request(request(ENDPOINT, ["a", "b"], nonce=eds.nonce, version=eds.version_info))
    return stream


def test_unchanged_types_are_left_out_and_eds_carries_only_changed_assignments() -> None:
    config = Config()
    config.resources[ENDPOINT] = {"a": cla("a", "10.0.0.1"), "b": cla("b", "10.0.0.2")}
    converged: list[str] = []
    stream = connected(config)
    stream.on_converged = lambda type_url, seconds: converged.append(type_url)
    config.version, config.resources = "v2", {CLUSTER: dict(config.resources[CLUSTER]),
                                              ENDPOINT: {"a": cla("a", "10.0.0.1"), "b": cla("b", "10.0.0.2")}}
    assert stream.push() == []  # a new version with the same content: nothing to send

    config.version, config.resources[ENDPOINT] = "v3", {"a": cla("a", "10.0.0.1"), "b": cla("b", "10.9.9.9")}
    [eds] = stream.push()
    assert eds.type_url == ENDPOINT and eds.version_info == "v3"
    [only] = eds.resources
    assignment = ClusterLoadAssignment()
    only.Unpack(assignment)
    assert assignment.cluster_name == "b"
    assert assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address == "10.9.9.9"
    stream.on_request(request(ENDPOINT, ["a", "b"], nonce=eds.nonce, version="v3"))
    assert converged == [ENDPOINT]  # the ACK of the push is its convergence

    config.version, config.resources[CLUSTER] = "v4", {}
    [cds] = stream.push()  # every cluster gone: an empty CDS response still has to say so
    assert cds.type_url == CLUSTER and len(cds.resources) == 0


def test_a_stream_without_changed_only_sends_everything_as_before() -> None:
    config = Config()
    stream = connected(config, changed_only=False)
    config.version = "v2"
    assert [(r.type_url, len(r.resources)) for r in stream.push()] == [(CLUSTER, 1), (ENDPOINT, 2)]


def test_a_push_goes_proxy_by_proxy_and_merges_changes_that_come_meanwhile() -> None:
    config = Config()
    server = AdsServer(config.generate, PilotMetrics())
    streams = [connected(config) for _ in range(3)]

    async def scenario() -> list[list[str]]:
        outboxes: list[asyncio.Queue] = []
        for i, stream in enumerate(streams):
            outboxes.append(asyncio.Queue())
            server.connections[str(i)] = Connection(id=str(i), peer="test", stream=stream, outbox=outboxes[-1])
        config.version, config.resources = "v2", {CLUSTER: {"a": {"name": "a", "type": "EDS", "connect_timeout": "2s"}},
                                                  ENDPOINT: {"a": cla("a", "10.0.0.3"), "b": cla("b", "10.0.0.4")}}
        server.push_all(frozenset({ENDPOINT}))
        server.push_all(None)  # before the first push ran: merged into it, each proxy pushed once
        assert all(q.empty() for q in outboxes)  # nothing sent inline: the pushing task sends
        await asyncio.sleep(0)
        assert [q.qsize() for q in outboxes] == [2, 0, 0]  # one proxy, then the loop's turn
        await server._pusher
        return [[q.get_nowait().type_url for _ in range(q.qsize())] for q in outboxes]

    assert asyncio.run(scenario()) == [[CLUSTER, ENDPOINT]] * 3
