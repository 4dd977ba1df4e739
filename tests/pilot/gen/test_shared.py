"""Generation shared between proxies: only proxies whose config cannot differ share one, and a new snapshot is
generated afresh."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.pilot.gen import SharedGenerations, generation_key, generator_for
from pylon.pilot.gen.types import ROUTE
from pylon.pilot.proxy import Proxy, parse_node
from pylon.pilot.snapshot import Snapshot
from tests.pilot.builders import doc, service_entry, snapshot

SECURITY = "security.istio.io/v1"
REVIEWS = "reviews.default.svc.cluster.local"


def sidecar(pod: str, ip: str, labels: dict[str, str], namespace: str = "default", **metadata: Any) -> Proxy:
    return parse_node(f"sidecar~{ip}~{pod}.{namespace}~{namespace}.svc.cluster.local",
                      {"NAMESPACE": namespace, "LABELS": labels, "POD_NAME": pod, **metadata})  # fmt: skip


def base_docs() -> list[dict[str, Any]]:
    return [service_entry(REVIEWS, [("10.0.0.1", 9080, {"version": "v1"})], port=9080, name="reviews")]


# One config per place a generator looks at a proxy's labels; each selects `tier: a`.
SELECTING = {
    "Sidecar": doc("Sidecar", "a", {"workloadSelector": {"labels": {"tier": "a"}}, "egress": [{"hosts": ["./*"]}],
                                    "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
    "AuthorizationPolicy": doc("AuthorizationPolicy", "a", {"selector": {"matchLabels": {"tier": "a"}}},
                               api_version=SECURITY),
    "PeerAuthentication": doc("PeerAuthentication", "a", {"selector": {"matchLabels": {"tier": "a"}},
                                                         "mtls": {"mode": "STRICT"}}, api_version=SECURITY),
    "ServiceEntry workloadSelector": doc("ServiceEntry", "own", {
        "hosts": ["own.default.svc.cluster.local"], "resolution": "STATIC", "workloadSelector": {"labels": {"tier": "a"}},
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]}),
    "VirtualService sourceLabels": doc("VirtualService", "a", {"hosts": [REVIEWS], "http": [
        {"match": [{"sourceLabels": {"tier": "a"}}], "route": [{"destination": {"host": REVIEWS}}], "timeout": "3s"},
        {"route": [{"destination": {"host": REVIEWS}}]}]}),
    "EnvoyFilter": doc("EnvoyFilter", "a", {"workloadSelector": {"labels": {"tier": "a"}}, "configPatches": [
        {"applyTo": "CLUSTER", "match": {"context": "SIDECAR_OUTBOUND"},
         "patch": {"operation": "MERGE", "value": {"connectTimeout": "7s"}}}]}, namespace="default",
        api_version="networking.istio.io/v1alpha3"),
}  # fmt: skip


def test_replicas_share_one_generation_identical_to_their_own() -> None:
    snap = snapshot(*base_docs(), SELECTING["Sidecar"])
    shared = SharedGenerations()
    one = sidecar("web-1", "10.1.0.1", {"tier": "a", "pod-template-hash": "x1"})
    two = sidecar("web-2", "10.1.0.2", {"tier": "a", "pod-template-hash": "x2"}, INSTANCE_IPS="10.1.0.2")
    assert generation_key(one, snap) == generation_key(two, snap)
    assert shared.generate(one, snap) is shared.generate(two, snap)
    for proxy in (one, two):
        assert shared.generate(proxy, snap) == generator_for(proxy).generate(proxy, snap)


@pytest.mark.parametrize("kind", sorted(SELECTING))
def test_a_label_any_selector_names_keeps_proxies_apart(kind: str) -> None:
    snap = snapshot(*base_docs(), SELECTING[kind])
    assert "tier" in snap.selector_label_keys
    selected, other = sidecar("a-1", "10.1.0.1", {"tier": "a"}), sidecar("b-1", "10.1.0.2", {"tier": "b"})
    assert generation_key(selected, snap) != generation_key(other, snap)
    shared = SharedGenerations()
    for proxy in (selected, other):
        assert shared.generate(proxy, snap) == generator_for(proxy).generate(proxy, snap)
    assert shared.generate(selected, snap) != shared.generate(other, snap)  # the selector made a difference


def test_namespace_type_and_interception_mode_keep_proxies_apart() -> None:
    snap = snapshot(*base_docs())
    base = sidecar("a-1", "10.1.0.1", {})
    for different in (sidecar("a-1", "10.1.0.1", {}, namespace="other"),
                      sidecar("a-1", "10.1.0.1", {}, INTERCEPTION_MODE="NONE")):  # fmt: skip
        assert generation_key(base, snap) != generation_key(different, snap)
        assert SharedGenerations().generate(different, snap) == generator_for(different).generate(different, snap)


def test_a_new_snapshot_is_generated_afresh() -> None:
    shared = SharedGenerations()
    proxy = sidecar("a-1", "10.1.0.1", {})

    def routes(snap: Snapshot) -> str:
        return str(shared.generate(proxy, snap)[ROUTE])

    before = snapshot(*base_docs(), doc("VirtualService", "r", {"hosts": [REVIEWS], "http": [
        {"route": [{"destination": {"host": REVIEWS}}], "timeout": "3s"}]}))  # fmt: skip
    after = snapshot(*base_docs(), doc("VirtualService", "r", {"hosts": [REVIEWS], "http": [
        {"route": [{"destination": {"host": REVIEWS}}], "timeout": "4s"}]}))  # fmt: skip
    assert "'3s'" in routes(before) and "'4s'" in routes(after)


def test_unsupported_proxies_are_still_refused() -> None:
    waypoint = parse_node("waypoint~10.0.0.1~w.default~default.svc.cluster.local", {})
    with pytest.raises(ValueError, match="waypoint proxies are not supported"):
        SharedGenerations().generate(waypoint, snapshot(*base_docs()))


def test_the_verified_identity_and_proxy_config_are_part_of_the_key() -> None:
    """Gateway secrets go only to verified proxies, with their own key provider: two gateways that differ only
    there must not share a generation (a plaintext one would otherwise get a verified one's keys)."""
    import dataclasses

    from pylon.identity.spiffe import SpiffeId

    config = snapshot(*base_docs())
    plain = parse_node("router~10.0.0.1~gw-1.istio-system~istio-system.svc.cluster.local", {"NAMESPACE": "istio-system"})
    verified = dataclasses.replace(plain, identity=SpiffeId("cluster.local", "istio-system", "gw"))
    with_provider = dataclasses.replace(verified, metadata={
        "NAMESPACE": "istio-system", "PROXY_CONFIG": {"privateKeyProvider": {"qat": {"pollDelay": "2ms"}}}})
    keys = {generation_key(p, config) for p in (plain, verified, with_provider)}
    assert len(keys) == 3


def test_node_metadata_an_envoy_filter_matches_on_is_part_of_the_key() -> None:
    """An EnvoyFilter for proxies of one ISTIO_VERSION, or with one metadata value, must reach only them."""
    patch = {"applyTo": "CLUSTER", "match": {"proxy": {"proxyVersion": "^1\\.2[0-9]", "metadata": {"ROLE": "edge"}},
                                              "cluster": {"name": "PassthroughCluster"}},
             "patch": {"operation": "MERGE", "value": {"connect_timeout": "3s"}}}
    config = snapshot(*base_docs(), doc("EnvoyFilter", "ef", {"configPatches": [patch]},
                                        api_version="networking.istio.io/v1alpha3"))  # fmt: skip
    old = sidecar("a-1", "10.0.0.1", {"app": "a"}, ISTIO_VERSION="1.19.0", ROLE="edge")
    new = sidecar("a-2", "10.0.0.2", {"app": "a"}, ISTIO_VERSION="1.24.1", ROLE="edge")
    other = sidecar("a-3", "10.0.0.3", {"app": "a"}, ISTIO_VERSION="1.24.1", ROLE="core")
    assert len({generation_key(p, config) for p in (old, new, other)}) == 3
    shared = SharedGenerations()
    from pylon.pilot.gen.types import CLUSTER

    timeouts = [shared.generate(p, config)[CLUSTER]["PassthroughCluster"]["connect_timeout"] for p in (old, new, other)]
    assert timeouts[1] == "3s" and timeouts[0] != "3s" and timeouts[2] != "3s"
