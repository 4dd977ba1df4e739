"""The DNS name table pilot sends sidecars' agents (NDS): Istio's rules for which services get names and which
addresses, scoped as the sidecar's services are."""

from __future__ import annotations

from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import NAME_TABLE
from pylon.pilot.xds.encode import to_message
from tests.pilot.builders import doc, sidecar_proxy, snapshot


def _entry(name: str, hosts: list[str], namespace: str = "default", **spec: object) -> dict:
    return doc("ServiceEntry", name, {"hosts": hosts, "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                      **spec}, namespace=namespace)  # fmt: skip


def _table(*docs: dict) -> dict:
    resources = SidecarGenerator().generate(sidecar_proxy(), snapshot(*docs))[NAME_TABLE]
    assert list(resources) == [""]  # one unnamed table
    to_message(NAME_TABLE, resources[""])  # valid istio.networking.nds.v1.NameTable
    return resources[""]["table"]


def test_services_with_addresses_are_named_by_their_ip_addresses_only() -> None:
    table = _table(_entry("api", ["api.example.test", "api2.example.test"], addresses=["10.9.9.9", "10.8.0.0/16"],
                          resolution="STATIC", endpoints=[{"address": "10.0.0.1"}]))  # fmt: skip
    assert table == {"api.example.test": {"ips": ["10.9.9.9"], "registry": "External"},
                     "api2.example.test": {"ips": ["10.9.9.9"], "registry": "External"}}  # the CIDR is no answer


def test_headless_services_are_named_by_their_endpoints_and_other_addressless_ones_not_at_all() -> None:
    table = _table(
        _entry("db", ["db.example.test"], resolution="NONE", endpoints=[{"address": "10.1.1.1"},
                                                                        {"address": "10.1.1.1"}, {"address": "10.1.1.2"}]),
        _entry("static", ["static.example.test"], resolution="STATIC", endpoints=[{"address": "10.2.2.2"}]),
        _entry("dns", ["dns.example.test"], resolution="DNS", endpoints=[{"address": "backend.example.test"}]),
    )  # fmt: skip
    assert table == {"db.example.test": {"ips": ["10.1.1.1", "10.1.1.2"], "registry": "External"}}


def test_the_table_holds_only_what_the_sidecar_may_reach() -> None:
    exported = _entry("hidden", ["hidden.example.test"], addresses=["10.0.0.3"], exportTo=["."], namespace="other")
    scoped = doc("Sidecar", "default", {"egress": [{"hosts": ["./*"]}]})
    elsewhere = _entry("far", ["far.example.test"], addresses=["10.0.0.4"], namespace="other")
    assert "hidden.example.test" not in _table(exported)  # not exported to the proxy's namespace
    assert "far.example.test" in _table(elsewhere)
    assert "far.example.test" not in _table(elsewhere, scoped)  # outside the Sidecar's egress hosts
