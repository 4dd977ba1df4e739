"""Snapshot building and lookups: duplicates, short names, exportTo, DestinationRule choice; node ids."""

from __future__ import annotations

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.hosts import intersection, is_visible, matches, resolve_short_name
from pylon.pilot.proxy import parse_node
from pylon.pilot.snapshot import build_snapshot, endpoints_only_change
from tests.pilot.builders import doc, resources, service_entry, snapshot


def test_duplicate_resource_names_are_an_error() -> None:
    route = [{"route": [{"destination": {"host": "a"}}]}]
    found = resources(doc("VirtualService", "v", {"hosts": ["a"], "http": route}),
                      doc("VirtualService", "v", {"hosts": ["b"], "http": route}))
    with pytest.raises(ConfigError, match="VirtualService default/v is also defined in test.yaml \\(document 1"):
        build_snapshot(found)


def test_destination_rule_lookup_prefers_exact_host_then_proxy_namespace() -> None:
    snap = snapshot(
        doc("DestinationRule", "wild", {"host": "*.default.svc.cluster.local"}),
        doc("DestinationRule", "short", {"host": "reviews"}),
        doc("DestinationRule", "mine", {"host": "reviews.default.svc.cluster.local"}, namespace="gw"),
        doc("DestinationRule", "hidden", {"host": "ratings.default.svc.cluster.local", "exportTo": ["."]}),
    )
    assert snap.destination_rule("reviews.default.svc.cluster.local", "gw", "default").name == "mine"
    assert snap.destination_rule("reviews.default.svc.cluster.local", "other", "default").name == "short"
    assert snap.destination_rule("details.default.svc.cluster.local", "other", "default").name == "wild"
    assert snap.destination_rule("ratings.default.svc.cluster.local", "other", "default").name == "wild"


def test_host_rules() -> None:
    assert resolve_short_name("reviews", "prod") == "reviews.prod.svc.cluster.local"
    assert resolve_short_name("a.example.com", "prod") == "a.example.com"
    assert matches("*.example.com", "a.b.example.com") and not matches("*.example.com", "example.com")
    assert intersection(["*.example.com"], ["a.example.com", "b.other.com"]) == ["a.example.com"]
    assert intersection(["a.example.com"], ["*"]) == ["a.example.com"]
    assert is_visible([], "a", "b") and is_visible(["."], "a", "a") and not is_visible(["."], "a", "b")
    assert is_visible(["b"], "a", "b") and not is_visible(["~"], "a", "a")


def test_node_ids() -> None:
    proxy = parse_node("router~10.1.2.3~gw-7f.istio-system~istio-system.svc.cluster.local", {"LABELS": {"app": "gw"}})
    assert (proxy.type, proxy.ip_addresses, proxy.namespace, proxy.labels) == ("router", ("10.1.2.3",), "istio-system",
                                                                                {"app": "gw"})  # fmt: skip
    with pytest.raises(ValueError, match="unknown proxy type 'gateway'"):
        parse_node("gateway~10.1.2.3~a.b~b.svc.cluster.local")
    with pytest.raises(ValueError, match="is not an IP address"):
        parse_node("router~not-an-ip~a.b~b.svc.cluster.local")


def test_endpoints_only_change_with_durations_in_the_config() -> None:
    """A VirtualService timeout (a GoDuration) once made the comparison raise, which stopped config reloads."""
    vs = doc("VirtualService", "r", {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                                                     "timeout": "3s"}]})  # fmt: skip
    before = snapshot(vs, service_entry("reviews.default.svc.cluster.local", [("10.0.0.1", 80, {})]))
    moved = snapshot(vs, service_entry("reviews.default.svc.cluster.local", [("10.0.0.2", 80, {})]))
    assert endpoints_only_change(before, moved)
    slower = doc("VirtualService", "r", {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                                                         "timeout": "4s"}]})  # fmt: skip
    assert not endpoints_only_change(before, snapshot(slower, service_entry("reviews.default.svc.cluster.local",
                                                                            [("10.0.0.1", 80, {})])))  # fmt: skip
