"""Decoding DiscoveryResponses into pylon's config model, and the NACK text (no sockets)."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryResponse

from pylon.config.envoy import Cluster, RouteConfiguration
from pylon.config.errors import ConfigError
from pylon.xds.resources import ResponseDecoder, rejection_detail
from tests.xds.management import CDS, RDS, to_any

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def decode_response(response: DiscoveryResponse, source: str):  # type: ignore[no-untyped-def]
    return ResponseDecoder().decode(response, source)


def cluster(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1.5s", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": 8080}}}}]}]}, **extra}


def response(type_url: str, *resources: dict[str, object], version: str = "7") -> DiscoveryResponse:
    return DiscoveryResponse(version_info=version, type_url=type_url, nonce="n",
                             resources=[to_any(type_url, r) for r in resources])


def test_clusters_decode_with_nested_any_and_durations() -> None:
    options = {HTTP_OPTIONS: {"@type": f"type.googleapis.com/{HTTP_OPTIONS}",
                              "explicit_http_config": {"http_protocol_options": {}}}}
    discovered = decode_response(response(CDS, cluster("a", typed_extension_protocol_options=options)), "ads")
    decoded = discovered.resources["a"]
    assert discovered.version_info == "7" and isinstance(decoded, Cluster)
    assert decoded.connect_timeout == 1.5 and decoded.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address \
        .socket_address.port_value == 8080
    assert list(decoded.typed_extension_protocol_options) == [HTTP_OPTIONS]


def test_route_configurations_decode() -> None:
    routes = {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "a"}}]}]}
    assert isinstance(decode_response(response(RDS, routes), "ads").resources["r"], RouteConfiguration)


def test_invalid_resource_names_its_path_and_the_nack_names_the_resource() -> None:
    bad = response(CDS, cluster("ok"), cluster("a", connect_timeout="-1s"))
    with pytest.raises(ConfigError) as info:
        decode_response(bad, "ads")
    assert info.value.path == "resources[1].connect_timeout"
    assert rejection_detail(bad, info.value).startswith("cluster 'a': config error in ads: resources[1].connect_timeout:")


def test_an_eds_cluster_with_inline_endpoints_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        decode_response(response(CDS, cluster("a", type="EDS", eds_cluster_config={"service_name": "a"})), "ads")
    assert info.value.path.startswith("resources[0].")


def test_an_unchanged_resource_decodes_to_the_same_config() -> None:
    """A state-of-the-world response resends every resource: one whose bytes did not change is not decoded
    again (the same object comes back), one that changed is."""
    decoder = ResponseDecoder()
    first = decoder.decode(response(CDS, cluster("a"), cluster("b")), "ads").resources
    second = decoder.decode(response(CDS, cluster("a"), cluster("b", connect_timeout="2s"), version="8"), "ads").resources
    assert second["a"] is first["a"]
    assert second["b"] is not first["b"] and second["b"].connect_timeout == 2.0
    with pytest.raises(ConfigError, match="duplicate cluster name 'a'"):
        decoder.decode(response(CDS, cluster("a"), cluster("a")), "ads")
