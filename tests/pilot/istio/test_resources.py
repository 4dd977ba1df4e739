"""Decoding Istio YAML documents: kinds, versions, and errors that name file, document and field."""

from __future__ import annotations

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.istio.common import parse_go_duration
from pylon.pilot.istio.resources import decode_resource
from tests.pilot.builders import doc


def error_of(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        decode_resource(data, "mesh.yaml", 1)
    return info.value


def test_virtual_service_decodes_in_every_networking_version() -> None:
    for version in ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"):
        vs = decode_resource(doc("VirtualService", "r", {"hosts": ["a"], "http": [
            {"route": [{"destination": {"host": "a"}}], "timeout": "1m30s"}]}, api_version=version), "f.yaml", 0)
        assert vs.kind == "VirtualService" and vs.spec.http[0].timeout == 90.0


def test_error_names_file_document_resource_and_field_path() -> None:
    error = error_of(doc("VirtualService", "reviews", {"hosts": ["a"], "http": [
        {"route": [{"destination": {"host": "a"}, "weight": "ten"}]}]}))
    assert error.source == "mesh.yaml (document 2, VirtualService default/reviews)"
    assert error.path == "spec.http[0].route[0].weight"
    assert str(error).startswith("config error in mesh.yaml (document 2, VirtualService default/reviews): spec.http")


def test_unknown_field_is_an_error_at_its_path() -> None:
    error = error_of(doc("DestinationRule", "d", {"host": "a", "trafficPolicy": {"loadBalancer": {"simpel": "RANDOM"}}}))
    assert (error.path, error.message) == ("spec.trafficPolicy.loadBalancer.simpel", "unknown field")


def test_istio_field_not_implemented_says_so() -> None:
    error = error_of(doc("VirtualService", "v", {"hosts": ["a"], "http": [
        {"route": [{"destination": {"host": "a"}}], "fault": {"delay": {"fixedDelay": "1s", "exponentialDelay": "1s"}}}]}))
    assert (error.path, error.message) == ("spec.http[0].fault.delay.exponentialDelay", "not supported by pylon pilot yet")


def test_oneof_and_validation_errors_point_at_the_field() -> None:
    error = error_of(doc("VirtualService", "v", {"hosts": ["a"], "http": [{"route": [{"destination": {"host": "a"}}],
                                                                          "match": [{"headers": {"X-User": {"exact": "x"}}}]}]}))
    assert error.path == "spec.http[0].match[0].headers.X-User"
    assert "lowercase" in error.message
    error = error_of(doc("VirtualService", "v", {"hosts": ["a"], "http": [
        {"route": [{"destination": {"host": "a"}}], "match": [{"uri": {"exact": "/a", "prefix": "/"}}]}]}))
    assert error.path == "spec.http[0].match[0].uri" and "at most one of exact, prefix, regex" in error.message
    error = error_of(doc("VirtualService", "v", {"hosts": ["a"], "http": [
        {"route": [{"destination": {"host": "a"}}], "match": [{"uri": {"regex": "(unclosed"}}]}]}))
    assert "invalid regex" in error.message


def test_kinds_and_versions() -> None:
    assert error_of(doc("Telemetry", "s", {}, api_version="telemetry.istio.io/v1")).message == (
        "Telemetry is not supported by pylon pilot yet")
    assert "unknown kind 'Gatway'" in error_of(doc("Gatway", "g", {})).message
    error = error_of(doc("Gateway", "g", {"servers": []}, api_version="networking.istio.io/v2"))
    assert error.path == "apiVersion"
    assert error_of({"apiVersion": "networking.istio.io/v1", "kind": "Gateway", "metadata": {}}).path == "metadata.name"


def test_service_entry_resolution_rules() -> None:
    error = error_of(doc("ServiceEntry", "s", {"hosts": ["a.example.com"], "resolution": "DYNAMIC_DNS"}))
    assert error.path == "spec.hosts[0]" and "host must be wildcarded for resolution mode DYNAMIC_DNS" in error.message
    error = error_of(doc("ServiceEntry", "s", {"hosts": ["a.example.com"], "resolution": "STATIC",
                                               "endpoints": [{"address": "db.example.com"}]}))  # fmt: skip
    assert error.path == "spec.endpoints[0].address" and "STATIC resolution needs IP addresses" in error.message
    error = error_of(doc("ServiceEntry", "s", {"hosts": ["a.example.com"], "resolution": "DNS",
                                               "endpoints": [{"address": "not a name"}]}))  # fmt: skip
    assert error.path == "spec.endpoints[0].address" and "neither an IP address nor a DNS name" in error.message


def test_go_durations() -> None:
    assert parse_go_duration("250ms") == pytest.approx(0.25)
    assert parse_go_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_go_duration("0") == 0.0
    for bad in ("10", "-1s", "1x", "", 5):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_connection_pool_checks_are_istios() -> None:
    def pool_error(pool: dict) -> ConfigError:
        return error_of(doc("DestinationRule", "d", {"host": "a", "trafficPolicy": {"connectionPool": pool}}))

    assert pool_error({}).path == "spec.trafficPolicy.connectionPool"
    assert pool_error({"tcp": {"maxConnections": -1}}).path == "spec.trafficPolicy.connectionPool.tcp.maxConnections"
    error = pool_error({"http": {"useClientProtocol": True, "h2UpgradePolicy": "UPGRADE"}})
    assert error.path == "spec.trafficPolicy.connectionPool.http.useClientProtocol"
