"""DiscoveryResponse files (filesystem xDS) parsed without sockets: resources, versions, errors with paths."""

from __future__ import annotations

import pytest
import yaml

from pylon.config.discovery import CLUSTER_TYPE, CLUSTERS, ROUTE_CONFIGURATIONS, parse_discovery_response
from pylon.config.errors import ConfigError


def cluster(name: str, **extra: object) -> dict[str, object]:
    return {"@type": CLUSTER_TYPE, "name": name, "connect_timeout": "1s", **extra}


def parse(document: object, kind=CLUSTERS):  # type: ignore[no-untyped-def]
    return parse_discovery_response(yaml.safe_dump(document), "cds.yaml", kind)


def message(document: object, kind=CLUSTERS) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        parse(document, kind)
    return str(info.value)


def test_resources_by_name_with_the_version() -> None:
    found = parse({"version_info": "7", "resources": [cluster("a"), cluster("b", type="STRICT_DNS")]})
    assert found.version_info == "7"
    assert list(found.resources) == ["a", "b"] and found.resources["b"].type == "STRICT_DNS"


def test_an_empty_file_response_means_no_resources() -> None:
    assert parse({"version_info": "0"}).resources == {}


def test_errors_name_the_resource_and_field() -> None:
    assert message({"resources": [cluster("a"), cluster("b", connect_timeout="-1s")]}).startswith(
        "config error in cds.yaml: resources[1].connect_timeout:")
    assert message({"resources": [cluster("a", colour="blue")]}) == (
        "config error in cds.yaml: resources[0].colour: unknown field")


def test_wrong_type_duplicate_names_and_unknown_top_level_fields() -> None:
    routes = {"@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration", "name": "r"}
    assert "resources[0].@type: expected type.googleapis.com/envoy.config.cluster.v3.Cluster" in message(
        {"resources": [routes]})
    assert "resources[1].name: duplicate cluster name 'a'" in message({"resources": [cluster("a"), cluster("a")]})
    assert "config error in cds.yaml: resourcez: unknown field" in message({"resourcez": []})
    assert "resources[0].name: a dynamic route configuration needs a name" in message(
        {"resources": [{**routes, "name": ""}]}, ROUTE_CONFIGURATIONS)
