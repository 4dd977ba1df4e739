"""What is reused from one snapshot to the next (snapshot Services, generated pieces, a key's generation after an
endpoint change) is exactly what a fresh generation would give, and a changed input is never served stale."""

from __future__ import annotations

from typing import Any

from pylon.pilot.gen import SharedGenerations, generator_for
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, ROUTE
from pylon.pilot.istio.resources import Resource
from pylon.pilot.pieces import Pieces
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot, build_snapshot, changed_hostnames, endpoints_only_change
from tests.pilot.builders import doc, gateway, gateway_proxy, resources, service_entry, subsets_rule
from tests.pilot.gen.test_shared import sidecar

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.default.svc.cluster.local"


def reviews(address: str = "10.0.0.1") -> dict[str, Any]:
    return service_entry(REVIEWS, [(address, 9080, {"version": "v1"}), ("10.0.0.2", 9080, {"version": "v2"})],
                         port=9080, name="reviews")  # fmt: skip


def ratings(address: str = "10.0.1.1") -> dict[str, Any]:
    return service_entry(RATINGS, [(address, 9080, {"version": "v1"})], port=9080, name="ratings")


def workload_group_docs(address: str) -> list[dict[str, Any]]:
    """A ServiceEntry selecting WorkloadEntries, and one entry at `address`."""
    return [doc("ServiceEntry", "details", {"hosts": ["details.default.svc.cluster.local"], "resolution": "STATIC",
                                            "workloadSelector": {"labels": {"app": "details"}},
                                            "ports": [{"number": 9080, "name": "http", "protocol": "HTTP"}]}),
            doc("WorkloadEntry", "details-1", {"address": address, "labels": {"app": "details"}})]  # fmt: skip


def replace(config: list[Resource], *docs: dict[str, Any]) -> list[Resource]:
    """`config` with the resources of `docs` swapped in (new objects, as a re-read file gives), the others kept."""
    new = {r.key: r for r in resources(*docs)}
    return [new.get(r.key, r) for r in config]


def proxies() -> list[Proxy]:
    return [sidecar("a-1", "10.1.0.1", {"app": "a"}), sidecar("b-1", "10.1.0.2", {"app": "b"}, namespace="other"),
            gateway_proxy()]  # fmt: skip


def fresh(proxy: Proxy, snapshot: Snapshot) -> dict[str, Any]:
    return generator_for(proxy).generate(proxy, snapshot)


def test_pieces_hit_by_identity_and_miss_on_a_new_object() -> None:
    pieces, built = Pieces(), []
    one, two = {"a": 1}, {"a": 1}  # equal, not the same
    assert pieces.get("k", (one,), (80,), lambda: built.append(1) or ["x"]) == ["x"]
    assert pieces.get("k", (one,), (80,), lambda: built.append(2) or ["y"]) == ["x"]
    assert pieces.get("k", (two,), (80,), lambda: built.append(3) or ["z"]) == ["z"]
    assert pieces.get("k", (one,), (81,), lambda: built.append(4) or ["w"]) == ["w"]
    assert built == [1, 3, 4]


def test_pieces_keep_what_the_last_round_used_only() -> None:
    pieces, kept, dropped = Pieces(), {"kept": 1}, {"dropped": 1}
    pieces.get("k", (kept,), (), lambda: "kept")
    pieces.get("k", (dropped,), (), lambda: "dropped")
    following = pieces.successor()
    assert following.get("k", (kept,), (), lambda: "rebuilt") == "kept"
    last = following.successor()
    assert last.get("k", (kept,), (), lambda: "rebuilt") == "kept"
    assert last.get("k", (dropped,), (), lambda: "rebuilt") == "rebuilt"


def test_unchanged_service_entries_keep_their_services_and_changed_ones_get_new() -> None:
    config = resources(reviews(), ratings(), *workload_group_docs("10.2.0.1"))
    old = build_snapshot(config)
    new = build_snapshot(replace(config, ratings("10.0.1.9")), previous=old)
    assert new.services[REVIEWS][0] is old.services[REVIEWS][0]
    assert new.services[RATINGS][0] is not old.services[RATINGS][0]
    assert new.services[RATINGS][0].endpoints[0].address == "10.0.1.9"
    details = "details.default.svc.cluster.local"
    assert new.services[details][0] is not old.services[details][0]  # WorkloadEntries may have changed: rebuilt
    assert changed_hostnames(old, new) == {RATINGS, details}
    assert new.services == build_snapshot(replace(config, ratings("10.0.1.9"))).services


def test_a_changed_mesh_rebuilds_every_service() -> None:
    config = resources(reviews())
    old = build_snapshot(config)
    new = build_snapshot(config, mesh=old.mesh.__class__(default_service_export_to=["."]), previous=old)
    assert new.services[REVIEWS][0] is not old.services[REVIEWS][0]
    assert new.services[REVIEWS][0].export_to == (".",)


def test_reused_clusters_and_routes_equal_a_fresh_generation_after_a_change() -> None:
    config = resources(reviews(), ratings(), subsets_rule(REVIEWS, ["v1", "v2"]), gateway(8080))
    old = build_snapshot(config)
    for proxy in proxies():
        fresh(proxy, old)
    changed_rule = subsets_rule(REVIEWS, ["v1"], {"connectionPool": {"tcp": {"connectTimeout": "7s"}}})
    new = build_snapshot(replace(config, changed_rule), previous=old)
    for proxy in proxies():
        generated = fresh(proxy, new)
        assert generated == fresh(proxy, build_snapshot(replace(config, changed_rule)))  # no pieces carried
        assert f"outbound|9080|v2|{REVIEWS}" not in generated[CLUSTER]  # the removed subset is gone
        assert generated[CLUSTER][f"outbound|9080|v1|{REVIEWS}"]["connect_timeout"] == "7s"


def test_endpoint_change_builds_only_eds_and_equals_a_fresh_generation() -> None:
    config = resources(reviews(), ratings(), subsets_rule(REVIEWS, ["v1", "v2"]), gateway(8080),
                       *workload_group_docs("10.2.0.1"))  # fmt: skip
    snapshots = [build_snapshot(config)]
    shared = SharedGenerations()
    first = {proxy.node_id: shared.generate(proxy, snapshots[0]) for proxy in proxies()}
    changes = [replace(config, reviews("10.0.0.7")), replace(config, ratings("10.0.1.7"), reviews("10.0.0.7")),
               replace(config, workload_group_docs("10.2.0.9")[1], ratings("10.0.1.7"), reviews("10.0.0.7"))]
    for step, changed in enumerate(changes):
        snapshots.append(build_snapshot(changed, previous=snapshots[-1]))
        assert endpoints_only_change(snapshots[-2], snapshots[-1])
        shared.advance(snapshots[-1], endpoints_only=True)
        if step == 0:
            continue  # nothing generated for this one: the next must add up both changes
        for proxy in proxies():
            generated = shared.generate(proxy, snapshots[-1])
            expected = fresh(proxy, build_snapshot(changed))
            assert generated == expected
            for type_url in (CLUSTER, ROUTE):
                assert generated[type_url] is first[proxy.node_id][type_url]  # kept, not built again
    last = shared.generate(proxies()[0], snapshots[-1])[ENDPOINT]
    addresses = {lb["endpoint"]["address"]["socket_address"]["address"]
                 for cla in last.values() for group in cla["endpoints"] for lb in group["lb_endpoints"]}  # fmt: skip
    assert {"10.0.0.7", "10.0.1.7", "10.2.0.9"} <= addresses
    assert not {"10.0.0.1", "10.0.1.1", "10.2.0.1"} & addresses


def test_a_routing_change_after_an_endpoint_change_is_generated_afresh() -> None:
    config = resources(reviews(), subsets_rule(REVIEWS, ["v1", "v2"]))
    shared, proxy = SharedGenerations(), proxies()[0]
    old = build_snapshot(config)
    shared.generate(proxy, old)
    moved = build_snapshot(replace(config, reviews("10.0.0.7")), previous=old)
    shared.advance(moved, endpoints_only=True)
    rerouted = build_snapshot(replace(config, reviews("10.0.0.7"), subsets_rule(REVIEWS, ["v1"])), previous=moved)
    shared.advance(rerouted, endpoints_only=False)
    generated = shared.generate(proxy, rerouted)
    assert f"outbound|9080|v2|{REVIEWS}" not in generated[CLUSTER]
    assert f"outbound|9080|v2|{REVIEWS}" not in generated[ENDPOINT]
    assert generated == fresh(proxy, build_snapshot(replace(config, reviews("10.0.0.7"), subsets_rule(REVIEWS, ["v1"]))))
