"""WorkloadGroup auto-registration, sans-IO: who may register, what the entry holds, when it goes."""

from __future__ import annotations

import dataclasses
from typing import Any

from pylon.identity.spiffe import SpiffeId
from pylon.pilot.autoregistration import GROUP_ANNOTATION, AutoRegistration
from pylon.pilot.proxy import Proxy, parse_node
from pylon.pilot.snapshot import build_snapshot
from tests.pilot.builders import doc, resources

NODE = "sidecar~10.0.0.7~vm-1.default~default.svc.cluster.local"


def group(service_account: str = "vm-sa", **template: Any) -> dict[str, Any]:
    return doc("WorkloadGroup", "vms", {"metadata": {"labels": {"app": "vm", "tier": "group"}},
                                        "template": {"serviceAccount": service_account, "ports": {"http": 8080},
                                                     "labels": {"tier": "template", "zone": "a"}, **template}})


def vm(account: str | None = "vm-sa", **metadata: Any) -> Proxy:
    proxy = parse_node(NODE, {"NAMESPACE": "default", "AUTO_REGISTER_GROUP": "vms", "LABELS": {"tier": "node"},
                              **metadata})
    identity = SpiffeId("cluster.local", "default", account) if account else None
    return dataclasses.replace(proxy, identity=identity)


def test_a_verified_workload_registers_with_istios_name_and_labels() -> None:
    config = resources(group())
    registry = AutoRegistration()
    assert registry.connect(vm(), config)
    [entry] = registry.resources(config)
    assert (entry.namespace, entry.name) == ("default", "vms-10.0.0.7")
    assert entry.spec.address == "10.0.0.7" and entry.spec.ports == {"http": 8080}
    # template < group metadata < node labels
    assert entry.spec.labels == {"tier": "node", "zone": "a", "app": "vm"}
    assert entry.meta.annotations[GROUP_ANNOTATION] == "vms"
    assert not registry.connect(vm(), config)  # a second stream of the same workload changes nothing


def test_a_service_entry_selects_the_registered_workload() -> None:
    config = resources(group(), doc("ServiceEntry", "vm-svc", {
        "hosts": ["vm.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8080}],
        "resolution": "STATIC", "workloadSelector": {"labels": {"app": "vm"}}}))  # fmt: skip
    registry = AutoRegistration()
    registry.connect(vm(), config)
    snapshot = build_snapshot(config + registry.resources(config), version="v")
    [service] = snapshot.services["vm.example.com"]
    assert [(e.address, e.ports) for e in service.endpoints] == [("10.0.0.7", {"http": 8080})]


def test_only_a_verified_identity_of_the_groups_service_account_registers() -> None:
    config = resources(group())
    registry = AutoRegistration()
    assert not registry.connect(vm(account=None), config)  # plaintext port: nobody vouches for the workload
    assert not registry.connect(vm(account="other"), config)  # cannot register as another service account
    assert registry.resources(config) == []


def test_no_group_no_metadata_or_an_entry_in_the_config_means_no_registration() -> None:
    registry = AutoRegistration()
    assert not registry.connect(vm(), [])
    plain = dataclasses.replace(vm(), metadata={"NAMESPACE": "default"})
    assert not registry.connect(plain, resources(group()))
    defined = resources(group(), doc("WorkloadEntry", "vms-10.0.0.7", {"address": "10.0.0.9"}))
    assert not registry.connect(vm(), defined)


def test_the_entry_outlives_a_disconnection_by_the_grace_period() -> None:
    config = resources(group())
    registry = AutoRegistration(grace_period=10)
    registry.connect(vm(), config)
    registry.connect(vm(), config)  # two streams
    registry.disconnect(vm(), now=100)
    assert not registry.expire(200, config)  # one stream is left
    registry.disconnect(vm(), now=200)
    assert not registry.expire(209, config)
    registry.connect(vm(), config)  # back within the grace period: kept
    assert not registry.expire(300, config)
    registry.disconnect(vm(), now=300)
    assert registry.expire(310, config) and registry.resources(config) == []


def test_entries_of_a_deleted_group_go() -> None:
    registry = AutoRegistration()
    registry.connect(vm(), resources(group()))
    assert registry.expire(0, []) and registry.resources([]) == []
