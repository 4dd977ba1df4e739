"""EnvoyFilter as istiod applies it: every applyTo x operation x match kind on a gateway's and a sidecar's
resources, ordering and proxy matches, the refusals (each naming its field), and the patched configs passing
`envoy --mode validate` and `pylon proxy --mode validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.errors import ConfigError
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.types import CLUSTER, LISTENER, ROUTE, Json
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.xds.encode import to_message
from tests.conftest import free_port
from tests.pilot.builders import (GATEWAY_NODE, SIDECAR_NODE, doc, gateway, gateway_proxy, resources, service_entry,
                                  sidecar_proxy, snapshot, virtual_service)  # fmt: skip
from tests.pilot.gen.test_sidecar import REVIEWS, mesh_docs
from tests.pilot.harness import ENVOY, bootstrap, needs_envoy

HOST = "echo.example.com"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
FAULT = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
LUA_LIKE = {"name": "envoy.filters.http.fault", "typed_config": {"@type": FAULT, "max_active_faults": 7}}
BALANCE = {"applyTo": "LISTENER", "match": {"context": "GATEWAY", "listener": {"portNumber": 8080}},
           "patch": {"operation": "MERGE", "value": {"connectionBalanceConfig": {"exactBalance": {}}}}}  # fmt: skip
RBAC_DENY = {"name": "envoy.filters.network.rbac", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC", "stat_prefix": "ef.",
    "rules": {"action": "DENY", "policies": {"all": {"permissions": [{"any": True}], "principals": [{"any": True}]}}}}}
HTTP_INSPECTOR = {"name": "envoy.filters.listener.http_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"}}
TLS_INSPECTOR = "envoy.filters.listener.tls_inspector"
HEADER = {"responseHeadersToAdd": [{"header": {"key": "x-ef", "value": "1"}}]}


def envoy_filter(name: str, patches: list[dict[str, Any]], namespace: str = "istio-system", **spec: Any) -> Json:
    return doc("EnvoyFilter", name, {"configPatches": patches, **spec}, namespace=namespace,
               api_version="networking.istio.io/v1alpha3")  # fmt: skip


def patch(apply_to: str, operation: str, value: Any = None, **match: Any) -> Json:
    """One configPatch; `match` as in YAML (context, listener, routeConfiguration, cluster, proxy)."""
    return {"applyTo": apply_to, "match": match,
            "patch": {"operation": operation, **({} if value is None else {"value": value})}}  # fmt: skip


def gateway_docs() -> list[Json]:
    """Gateway gw: HTTP on 8080 and two HTTPS servers (by SNI) on 8443; gateway other: HTTP on 9090. Routes
    named to-echo (route) and moved (redirect) for *.example.com."""
    servers = [{"port": {"number": 8080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}] + [
        {"port": {"number": 8443, "name": f"https-{x}", "protocol": "HTTPS"}, "hosts": [f"{x}.example.com"],
         "tls": {"mode": "SIMPLE", "credentialName": x}} for x in ("a", "b")]  # fmt: skip
    gw = doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": servers}, namespace="istio-system")
    http = [{"name": "moved", "match": [{"uri": {"prefix": "/old"}}], "redirect": {"uri": "/new"}},
            {"name": "to-echo", "route": [{"destination": {"host": HOST}}]}]  # fmt: skip
    vs = virtual_service(http, hosts=["*.example.com"], gateways=["istio-system/gw", "istio-system/other"])
    return [gw, gateway(9090, name="other"), vs, service_entry(HOST, [("127.0.0.1", 80, {})])]


def checked(proxy: Proxy, docs: list[Json]) -> dict[str, Any]:
    out = generator_for(proxy).generate(proxy, build_snapshot(resources(*docs), version="v"))
    for type_url, items in out.items():
        for item in items.values():
            to_message(type_url, item)  # still valid Envoy API
    return out


def gw(*patches: Json, **spec: Any) -> dict[str, Any]:
    """The gateway's resources with one EnvoyFilter of `patches`."""
    return checked(gateway_proxy(), [*gateway_docs(), envoy_filter("ef", list(patches), **spec)])


def sc(*patches: Json, **metadata: Any) -> dict[str, Any]:
    """The sidecar's (test_sidecar's mesh: reviews on 9080, its own ports 80->8080 and 5432) with `patches`."""
    return checked(sidecar_proxy(**metadata), [*mesh_docs(), envoy_filter("ef", list(patches))])


def names(items: list[Json]) -> list[str | None]:
    return [item.get("name") for item in items]


def http_filters(out: dict[str, Any], listener: str = "0.0.0.0_8080", chain: int = 0) -> list[Any]:
    hcm = out[LISTENER][listener]["filter_chains"][chain]["filters"][-1]["typed_config"]
    return [(f["name"], f["typed_config"].get("max_active_faults")) for f in hcm["http_filters"]]


def routes(out: dict[str, Any], rc: str = "http.8080", vhost: int = 0) -> list[Json]:
    return out[ROUTE][rc]["virtual_hosts"][vhost]["routes"]


def chain_with(out: dict[str, Any], sni: str) -> Json:
    return next(c for c in out[LISTENER]["0.0.0.0_8443"]["filter_chains"] if sni in c["filter_chain_match"]["server_names"])


# --------------------------------------------------------------------------- LISTENER


def test_listener_merge_on_the_matching_port_only() -> None:
    out = gw(BALANCE)
    assert out[LISTENER]["0.0.0.0_8080"]["connection_balance_config"] == {"exact_balance": {}}
    assert "connection_balance_config" not in out[LISTENER]["0.0.0.0_9090"]
    assert "connection_balance_config" not in gw({**BALANCE, "match": {"context": "SIDECAR_INBOUND"}})[LISTENER]["0.0.0.0_8080"]
    selector = {"workloadSelector": {"labels": {"istio": "egressgateway"}}}
    assert "connection_balance_config" not in gw(BALANCE, **selector)[LISTENER]["0.0.0.0_8080"]


def test_listener_add_remove_and_insert_as_add() -> None:
    added = {"name": "ef-listener", "address": {"socket_address": {"address": "0.0.0.0", "port_value": 7000}},
             "filter_chains": [{"filters": [RBAC_DENY]}]}  # fmt: skip
    out = gw(patch("LISTENER", "REMOVE", listener={"name": "0.0.0.0_9090"}),
             patch("LISTENER", "INSERT_FIRST", added, context="GATEWAY"))  # istiod: an ADD
    assert sorted(out[LISTENER]) == ["0.0.0.0_8080", "0.0.0.0_8443", "ef-listener"]
    # context ANY adds for gateways and sidecar outbound once; SIDECAR_INBOUND adds never reach a gateway
    assert "ef-listener" in sc(patch("LISTENER", "ADD", added))[LISTENER]
    assert "ef-listener" not in gw(patch("LISTENER", "ADD", added, context="SIDECAR_INBOUND"))[LISTENER]


def test_listener_merge_and_replace_list() -> None:
    value = {"listenerFilters": [HTTP_INSPECTOR]}
    merged = gw(patch("LISTENER", "MERGE", value, listener={"portNumber": 8443}))[LISTENER]["0.0.0.0_8443"]
    replaced = gw(patch("LISTENER", "MERGE_AND_REPLACE_LIST", value, listener={"portNumber": 8443}))[LISTENER]["0.0.0.0_8443"]
    assert names(merged["listener_filters"]) == [TLS_INSPECTOR, HTTP_INSPECTOR["name"]]
    assert names(replaced["listener_filters"]) == [HTTP_INSPECTOR["name"]]


# --------------------------------------------------------------------------- LISTENER_FILTER


@pytest.mark.parametrize(("operation", "named", "expected"), [
    ("ADD", False, [TLS_INSPECTOR, "http"]),
    ("INSERT_FIRST", False, ["http", TLS_INSPECTOR]),
    ("INSERT_BEFORE", True, ["http", TLS_INSPECTOR]),
    ("INSERT_AFTER", True, [TLS_INSPECTOR, "http"]),
    ("INSERT_BEFORE", False, ["http", TLS_INSPECTOR]),
    ("REPLACE", True, ["http"]),
    ("REMOVE", True, []),
])  # fmt: skip
def test_listener_filter_operations(operation: str, named: bool, expected: list[str]) -> None:
    listener = {"portNumber": 8443, **({"listenerFilter": TLS_INSPECTOR} if named else {})}
    value = None if operation == "REMOVE" else HTTP_INSPECTOR
    out = gw(patch("LISTENER_FILTER", operation, value, context="GATEWAY", listener=listener))
    got = names(out[LISTENER]["0.0.0.0_8443"].get("listener_filters", []))
    assert [n if n == TLS_INSPECTOR else "http" for n in got] == expected
    assert "listener_filters" not in out[LISTENER]["0.0.0.0_9090"]


def test_listener_filter_merge_keeps_the_name_as_istiod() -> None:
    value = {"name": "renamed", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}
    out = sc(patch("LISTENER_FILTER", "MERGE", value,
                   listener={"name": "virtualInbound", "listenerFilter": "envoy.filters.listener.original_dst"}))
    assert names(out[LISTENER]["virtualInbound"]["listener_filters"])[0] == "envoy.filters.listener.original_dst"


# --------------------------------------------------------------------------- FILTER_CHAIN


def test_filter_chain_merge_and_remove_by_sni() -> None:
    out = gw(patch("FILTER_CHAIN", "MERGE", {"transportSocketConnectTimeout": "2s"},
                   listener={"portNumber": 8443, "filterChain": {"sni": "a.example.com"}}))
    assert chain_with(out, "a.example.com")["transport_socket_connect_timeout"] == "2s"
    assert "transport_socket_connect_timeout" not in chain_with(out, "b.example.com")
    out = gw(patch("FILTER_CHAIN", "REMOVE", listener={"portNumber": 8443, "filterChain": {"sni": "b.example.com"}}))
    assert [c["filter_chain_match"]["server_names"] for c in out[LISTENER]["0.0.0.0_8443"]["filter_chains"]] == [
        ["a.example.com"]]


def test_filter_chain_transport_socket_merges_into_the_socket_of_its_name() -> None:
    socket = {"transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "requireClientCertificate": True}}}
    out = gw(patch("FILTER_CHAIN", "MERGE", socket, listener={"portNumber": 8443, "filterChain": {"sni": "a.example.com"}}))
    tls = chain_with(out, "a.example.com")["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True and "common_tls_context" in tls
    assert not chain_with(out, "b.example.com")["transport_socket"]["typed_config"].get("require_client_certificate")


def test_filter_chain_add() -> None:
    chain = {"filterChainMatch": {"destinationPort": 9999}, "filters": [RBAC_DENY]}
    out = gw(patch("FILTER_CHAIN", "ADD", chain, listener={"portNumber": 9090}))
    assert [c.get("filter_chain_match") for c in out[LISTENER]["0.0.0.0_9090"]["filter_chains"]] == [
        None, {"destination_port": 9999}]
    assert len(out[LISTENER]["0.0.0.0_8080"]["filter_chains"]) == 1


@pytest.mark.parametrize(("chain_match", "expected"), [
    ({"transportProtocol": "tls"}, ["0.0.0.0_8080/tls"]),
    ({"applicationProtocols": "istio-http/1.1,istio"}, ["0.0.0.0_8080/tls"]),
    ({"name": "0.0.0.0_8080"}, ["0.0.0.0_8080/tls", "0.0.0.0_8080/raw_buffer"]),
    ({"destinationPort": 8080, "transportProtocol": "raw_buffer"}, ["0.0.0.0_8080/raw_buffer"]),
    ({}, ["0.0.0.0_8080/tls", "0.0.0.0_8080/raw_buffer"]),  # portNumber is the chains' destination_port
])  # fmt: skip
def test_filter_chain_matches_on_the_sidecars_virtual_inbound(chain_match: Json, expected: list[str]) -> None:
    listener = {"portNumber": 8080, **({"filterChain": chain_match} if chain_match else {})}
    out = sc(patch("FILTER_CHAIN", "MERGE", {"transportSocketConnectTimeout": "2s"}, context="SIDECAR_INBOUND",
                   listener=listener))  # fmt: skip
    chains = out[LISTENER]["virtualInbound"]["filter_chains"]
    assert [f"{c['name']}/{c['filter_chain_match']['transport_protocol']}" for c in chains
            if "transport_socket_connect_timeout" in c] == expected  # fmt: skip


# --------------------------------------------------------------------------- NETWORK_FILTER


@pytest.mark.parametrize(("operation", "filter_name", "expected"), [
    ("INSERT_BEFORE", HCM, ["rbac", HCM]),
    ("INSERT_AFTER", HCM, [HCM, "rbac"]),
    ("INSERT_FIRST", None, ["rbac", HCM]),
    ("ADD", None, [HCM, "rbac"]),
    ("INSERT_BEFORE", None, ["rbac", HCM]),
    ("INSERT_AFTER", "envoy.filters.network.absent", [HCM]),
    ("REPLACE", HCM, ["rbac"]),
    ("REMOVE", HCM, []),
])  # fmt: skip
def test_network_filter_operations(operation: str, filter_name: str | None, expected: list[str]) -> None:
    listener: Json = {"portNumber": 8080}
    if filter_name:
        listener["filterChain"] = {"filter": {"name": filter_name}}
    out = gw(patch("NETWORK_FILTER", operation, None if operation == "REMOVE" else RBAC_DENY, listener=listener))
    chains = out[LISTENER]["0.0.0.0_8080"]["filter_chains"]
    got = [f["name"].replace("envoy.filters.network.rbac", "rbac") for f in chains[0]["filters"]] if chains else []
    assert got == expected
    assert names(out[LISTENER]["0.0.0.0_9090"]["filter_chains"][0]["filters"]) == [HCM]


def test_network_filter_merge_merges_the_typed_config() -> None:
    tcp = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
    value = {"typedConfig": {"@type": tcp, "idleTimeout": "30s"}}
    out = sc(patch("NETWORK_FILTER", "MERGE", value, context="SIDECAR_INBOUND",
                   listener={"portNumber": 5432, "filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy"}}}))
    tcp_chains = [c for c in out[LISTENER]["virtualInbound"]["filter_chains"] if "cluster" in c["filters"][-1]["typed_config"]]
    assert [c["name"] for c in tcp_chains if "idle_timeout" in c["filters"][-1]["typed_config"]] == ["0.0.0.0_5432"] * 2
    # HCM merge: a field set, the http_filters list kept
    hcm = {"name": HCM, "typedConfig": {"@type": HCM_TYPE, "streamIdleTimeout": "7s"}}
    out = gw(patch("NETWORK_FILTER", "MERGE", hcm, listener={"portNumber": 8080, "filterChain": {"filter": {"name": HCM}}}))
    config = out[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert config["stream_idle_timeout"] == "7s" and len(config["http_filters"]) == 3 and "rds" in config


def test_filter_merge_of_another_type_keeps_the_filter() -> None:
    out = gw(patch("NETWORK_FILTER", "MERGE", RBAC_DENY, listener={"portNumber": 8080, "filterChain": {"filter": {"name": HCM}}}))
    assert names(out[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"]) == ["envoy.filters.network.rbac"]
    assert "http_filters" in out[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]


# --------------------------------------------------------------------------- HTTP_FILTER


C = ("envoy.filters.http.cors", None)  # istiod's cors filter, after fault in every connection manager


@pytest.mark.parametrize(("operation", "expected"), [
    ("INSERT_BEFORE", [("envoy.filters.http.fault", 7), ("envoy.filters.http.fault", None), C, ("envoy.filters.http.router", None)]),
    ("INSERT_AFTER", [("envoy.filters.http.fault", None), ("envoy.filters.http.fault", 7), C, ("envoy.filters.http.router", None)]),
    ("REPLACE", [("envoy.filters.http.fault", 7), C, ("envoy.filters.http.router", None)]),
    ("MERGE", [("envoy.filters.http.fault", 7), C, ("envoy.filters.http.router", None)]),
    ("REMOVE", [C, ("envoy.filters.http.router", None)]),
])  # fmt: skip
def test_http_filter_operations_relative_to_the_sub_filter(operation: str, expected: list[Any]) -> None:
    out = gw(patch("HTTP_FILTER", operation, None if operation == "REMOVE" else LUA_LIKE,
                   listener={"portNumber": 8080, "filterChain": {"filter": {"name": HCM, "subFilter": {
                       "name": "envoy.filters.http.fault"}}}}))  # fmt: skip
    assert http_filters(out) == expected
    assert http_filters(out, "0.0.0.0_9090") == [("envoy.filters.http.fault", None), C, ("envoy.filters.http.router", None)]


def test_http_filter_without_a_filter_match_patches_every_connection_manager() -> None:
    lua = {"name": "envoy.filters.http.lua", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",  # a type pilot never generates
        "defaultSourceCode": {"inlineString": "function envoy_on_request(h) end"}}}
    out = sc(patch("HTTP_FILTER", "INSERT_FIRST", lua, context="SIDECAR_INBOUND"))
    inbound = [c for c in out[LISTENER]["virtualInbound"]["filter_chains"] if c["name"] == "0.0.0.0_8080"]
    assert [http_filters({LISTENER: {"l": {"filter_chains": [c]}}}, "l")[0][0] for c in inbound] == [
        "envoy.filters.http.lua"] * 2
    assert http_filters(out, "0.0.0.0_9080")[0][0] == "envoy.filters.http.fault"  # outbound untouched


# --------------------------------------------------------------------------- ROUTE_CONFIGURATION


@pytest.mark.parametrize(("match", "patched"), [
    ({"portNumber": 8080}, ["http.8080"]),
    ({"portNumber": 8443}, ["https.8443.https-a.gw.istio-system", "https.8443.https-b.gw.istio-system"]),
    ({"portNumber": 8443, "portName": "https-b"}, ["https.8443.https-b.gw.istio-system"]),
    ({"gateway": "istio-system/gw"}, ["https.8443.https-a.gw.istio-system", "https.8443.https-b.gw.istio-system"]),
    ({"name": "http.9090"}, ["http.9090"]),
])  # fmt: skip
def test_route_configuration_merge_on_gateway_routes(match: Json, patched: list[str]) -> None:
    out = gw(patch("ROUTE_CONFIGURATION", "MERGE", HEADER, context="GATEWAY", routeConfiguration=match))
    assert sorted(n for n, rc in out[ROUTE].items() if "response_headers_to_add" in rc) == patched


def test_route_configuration_merge_on_sidecar_routes_rds_and_inbound() -> None:
    out = sc(patch("ROUTE_CONFIGURATION", "MERGE", HEADER, routeConfiguration={"portNumber": 9080}),
             patch("ROUTE_CONFIGURATION", "MERGE", {"maxDirectResponseBodySizeBytes": 4096}, context="SIDECAR_INBOUND",
                   routeConfiguration={"portNumber": 8080}))  # fmt: skip
    assert [n for n, rc in out[ROUTE].items() if "response_headers_to_add" in rc] == ["9080"]
    for chain in out[LISTENER]["virtualInbound"]["filter_chains"]:
        rc = chain["filters"][-1]["typed_config"].get("route_config")
        if rc is not None:  # inline in the inbound HCM, named inbound|8080||
            assert rc["max_direct_response_body_size_bytes"] == 4096 and "response_headers_to_add" not in rc


# --------------------------------------------------------------------------- VIRTUAL_HOST


def test_virtual_host_add_remove_merge_replace() -> None:
    added = {"name": "ef", "domains": ["ef.example.com"],
             "routes": [{"match": {"prefix": "/"}, "directResponse": {"status": 200}}]}  # fmt: skip
    rc = {"portNumber": 8080}
    out = gw(patch("VIRTUAL_HOST", "ADD", added, context="GATEWAY", routeConfiguration=rc))
    assert names(out[ROUTE]["http.8080"]["virtual_hosts"]) == ["*.example.com:8080", "ef"]
    assert names(out[ROUTE]["http.9090"]["virtual_hosts"]) == ["*.example.com:9090"]
    out = gw(patch("VIRTUAL_HOST", "REMOVE", context="GATEWAY", routeConfiguration={**rc, "vhost": {"name": "*.example.com:8080"}}))
    assert out[ROUTE]["http.8080"]["virtual_hosts"] == []
    by_domain = {**rc, "vhost": {"domainName": "*.example.com"}}
    out = gw(patch("VIRTUAL_HOST", "MERGE", {"domains": ["extra.example.org"]}, context="GATEWAY", routeConfiguration=by_domain))
    assert out[ROUTE]["http.8080"]["virtual_hosts"][0]["domains"][-1] == "extra.example.org"
    out = gw(patch("VIRTUAL_HOST", "MERGE_AND_REPLACE_LIST", {"domains": ["only.example.org"]}, context="GATEWAY",
                   routeConfiguration=by_domain))  # fmt: skip
    assert out[ROUTE]["http.8080"]["virtual_hosts"][0]["domains"] == ["only.example.org"]
    out = gw(patch("VIRTUAL_HOST", "REPLACE", added, context="GATEWAY", routeConfiguration=by_domain))
    assert names(out[ROUTE]["http.8080"]["virtual_hosts"]) == ["ef"]


# --------------------------------------------------------------------------- HTTP_ROUTE


def test_http_route_merge_by_name_and_action() -> None:
    value = {**HEADER, "route": {"timeout": "5s"}}
    out = gw(patch("HTTP_ROUTE", "MERGE", value, context="GATEWAY",
                   routeConfiguration={"portNumber": 8080, "vhost": {"route": {"action": "ROUTE"}}}))
    moved, echo = routes(out)
    assert "response_headers_to_add" not in moved and echo["response_headers_to_add"][0]["header"]["key"] == "x-ef"
    assert echo["route"]["timeout"] == "5s" and echo["route"]["cluster"] == f"outbound|80||{HOST}"  # Duration replaced
    assert "response_headers_to_add" not in routes(out, "http.9090")[1]
    out = gw(patch("HTTP_ROUTE", "REMOVE", context="GATEWAY",
                   routeConfiguration={"vhost": {"route": {"name": "moved", "action": "REDIRECT"}}}))
    assert names(routes(out)) == ["to-echo"] and names(routes(out, "http.9090")) == ["to-echo"]


@pytest.mark.parametrize(("operation", "route_name", "expected"), [
    ("ADD", None, ["moved", "to-echo", "ef"]),
    ("INSERT_BEFORE", "to-echo", ["moved", "ef", "to-echo"]),
    ("INSERT_AFTER", "moved", ["moved", "ef", "to-echo"]),
    ("INSERT_BEFORE", None, ["ef", "moved", "to-echo"]),
    ("INSERT_AFTER", None, ["moved", "to-echo", "ef"]),
    ("INSERT_FIRST", "to-echo", ["ef", "moved", "to-echo"]),
    ("INSERT_FIRST", "absent", ["moved", "to-echo"]),  # istiod: only if the named route is there
    ("INSERT_BEFORE", "absent", ["moved", "to-echo"]),
])  # fmt: skip
def test_http_route_inserts(operation: str, route_name: str | None, expected: list[str]) -> None:
    vhost: Json = {"name": "*.example.com:8080"}
    if route_name:
        vhost["route"] = {"name": route_name}
    value = {"name": "ef", "match": {"prefix": "/ef"}, "directResponse": {"status": 204}}
    out = gw(patch("HTTP_ROUTE", operation, value, context="GATEWAY", routeConfiguration={"vhost": vhost}))
    assert names(routes(out)) == expected
    assert names(routes(out, "http.9090")) == ["moved", "to-echo"]


def test_http_route_on_sidecar_outbound_route_by_port_in_its_name() -> None:
    value = {"name": "ef", "match": {"prefix": "/ef"}, "directResponse": {"status": 204}}
    out = sc(patch("HTTP_ROUTE", "INSERT_FIRST", value, context="SIDECAR_OUTBOUND",
                   routeConfiguration={"portNumber": 9080, "vhost": {"name": f"{REVIEWS}:9080"}}))
    assert names(routes(out, "9080"))[0] == "ef" and names(routes(out, "9080", vhost=1)) == ["allow_any"]


# --------------------------------------------------------------------------- CLUSTER


def test_cluster_patches_and_priority_order() -> None:
    cluster = f"outbound|80||{HOST}"
    first = envoy_filter("a", [patch("CLUSTER", "MERGE", {"connectTimeout": "3s"}, cluster={"service": HOST, "portNumber": 80})],
                         priority=10)  # fmt: skip
    second = envoy_filter("b", [patch("CLUSTER", "MERGE", {"connectTimeout": "0.5s"}, cluster={"name": cluster})], priority=-1)
    out = checked(gateway_proxy(), [*gateway_docs(), first, second])
    assert out[CLUSTER][cluster]["connect_timeout"] == "3s"  # priority -1 ran first; a Duration is replaced whole
    assert cluster not in gw(patch("CLUSTER", "REMOVE", cluster={"name": cluster}))[CLUSTER]
    added = {"name": "ef-cluster", "type": "STATIC", "connectTimeout": "1s"}
    assert "ef-cluster" in gw(patch("CLUSTER", "INSERT_AFTER", added))[CLUSTER]  # istiod: INSERT_* is ADD here
    assert "ef-cluster" not in gw(patch("CLUSTER", "ADD", added, context="SIDECAR_OUTBOUND"))[CLUSTER]


def test_cluster_contexts_and_inbound_services() -> None:
    out = sc(patch("CLUSTER", "MERGE", {"connectTimeout": "2s"}, context="SIDECAR_INBOUND",
                   cluster={"service": "client.default.svc.cluster.local", "portNumber": 8080}),
             patch("CLUSTER", "REMOVE", context="SIDECAR_INBOUND", cluster={"name": "InboundPassthroughCluster"}),
             patch("CLUSTER", "REMOVE", context="SIDECAR_INBOUND", cluster={"name": "PassthroughCluster"}),  # outbound
             patch("CLUSTER", "MERGE", {"connectTimeout": "4s"}, context="SIDECAR_OUTBOUND", cluster={"subset": "v2"}))
    assert out[CLUSTER]["inbound|8080||"]["connect_timeout"] == "2s"
    assert "InboundPassthroughCluster" not in out[CLUSTER] and "PassthroughCluster" in out[CLUSTER]
    assert out[CLUSTER][f"outbound|9080|v2|{REVIEWS}"]["connect_timeout"] == "4s"
    assert out[CLUSTER][f"outbound|9080|v1|{REVIEWS}"]["connect_timeout"] == "10s"


def test_cluster_transport_socket_replaces_a_missing_socket() -> None:
    socket = {"transportSocket": {"name": "envoy.transport_sockets.tls", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": HOST}}}
    out = gw(patch("CLUSTER", "MERGE", socket, cluster={"service": HOST}))
    assert out[CLUSTER][f"outbound|80||{HOST}"]["transport_socket"]["typed_config"]["sni"] == HOST


# --------------------------------------------------------------------------- which patches, in which order


def test_proxy_version_and_metadata_matches() -> None:
    by_version = patch("CLUSTER", "MERGE", {"connectTimeout": "2s"}, cluster={"name": "BlackHoleCluster"},
                       proxy={"proxyVersion": r"^1\.2[0-9]", "metadata": {"ROLE": "edge"}})  # fmt: skip
    timeout = "connect_timeout"
    assert sc(by_version, ISTIO_VERSION="1.24.0", ROLE="edge")[CLUSTER]["BlackHoleCluster"][timeout] == "2s"
    assert sc(by_version, ISTIO_VERSION="1.19.0", ROLE="edge")[CLUSTER]["BlackHoleCluster"][timeout] == "10s"
    assert sc(by_version, ISTIO_VERSION="1.24.0", ROLE="core")[CLUSTER]["BlackHoleCluster"][timeout] == "10s"
    assert sc(by_version, ROLE="edge")[CLUSTER]["BlackHoleCluster"][timeout] == "10s"  # no version: no match


def test_order_priority_then_root_namespace_then_creation_then_name() -> None:
    def merge(name: str, seconds: int, namespace: str = "istio-system", **spec: Any) -> Json:
        return envoy_filter(name, [patch("CLUSTER", "MERGE", {"connectTimeout": f"{seconds}s"},
                                         cluster={"name": "BlackHoleCluster"})], namespace=namespace, **spec)  # fmt: skip

    def result(*filters: Json) -> str:
        return str(checked(sidecar_proxy(), [*mesh_docs(), *filters])[CLUSTER]["BlackHoleCluster"]["connect_timeout"])

    assert result(merge("b", 1), merge("a", 2)) == "1s"  # by name: b last
    assert result(merge("a", 1, namespace="default"), merge("z", 2)) == "1s"  # root namespace first
    assert result(merge("a", 1, namespace="default", priority=-1), merge("z", 2)) == "2s"  # priority first
    late, early = merge("a", 1), merge("b", 2)
    late["metadata"]["creationTimestamp"], early["metadata"]["creationTimestamp"] = "2024-02-01T00:00:00Z", "2024-01-01T00:00:00Z"
    assert result(late, early) == "1s"


# --------------------------------------------------------------------------- refusals


LISTENER_HCM = {"portNumber": 8080, "filterChain": {"filter": {"name": HCM}}}


@pytest.mark.parametrize(("bad", "path", "message"), [
    (patch("BOOTSTRAP", "MERGE", {"default_regex_engine": {}}), "applyTo", "bootstrap override"),
    (patch("EXTENSION_CONFIG", "ADD", {"name": "x"}), "applyTo", "ECDS"),
    (patch("SOMETHING", "ADD", {"name": "x"}), "applyTo", "unknown applyTo"),
    (patch("LISTENER", "REPLACE", {"name": "x"}), "patch.operation", "nothing with REPLACE on LISTENER"),
    (patch("ROUTE_CONFIGURATION", "ADD", {"name": "x"}), "patch.operation", "nothing with ADD on ROUTE_CONFIGURATION"),
    (patch("HTTP_ROUTE", "REPLACE", {"name": "x"}), "patch.operation", "REPLACE on HTTP_ROUTE"),
    (patch("HTTP_FILTER", "MERGE_AND_REPLACE_LIST", LUA_LIKE), "patch.operation", "HTTP_FILTER"),
    (patch("CLUSTER", "MERGE", {}, listener={"portNumber": 80}), "match.listener", "takes a cluster match"),
    (patch("VIRTUAL_HOST", "MERGE", {}, cluster={"name": "x"}), "match.cluster", "routeConfiguration match"),
    (patch("HTTP_FILTER", "ADD", LUA_LIKE, routeConfiguration={"portNumber": 80}), "match.routeConfiguration",
     "listener match"),
    (patch("LISTENER", "ADD", {"name": "x"}, listener={"portNumber": 80}), "match.listener", "context alone"),
    (patch("CLUSTER", "ADD", {"name": "x"}, cluster={"service": HOST}), "match.cluster", "context alone"),
    (patch("LISTENER", "MERGE", {}, listener=LISTENER_HCM), "match.listener.filterChain", "LISTENER"),
    (patch("FILTER_CHAIN", "MERGE", {}, listener=LISTENER_HCM), "match.listener.filterChain.filter", "FILTER_CHAIN"),
    (patch("FILTER_CHAIN", "ADD", {}, listener={"filterChain": {"sni": "a"}}), "match.listener.filterChain", "ADD"),
    (patch("NETWORK_FILTER", "ADD", RBAC_DENY, listener=LISTENER_HCM), "match.listener.filterChain.filter", "ignores"),
    (patch("NETWORK_FILTER", "REMOVE", listener={"portNumber": 80}), "match.listener.filterChain.filter", "names none"),
    (patch("NETWORK_FILTER", "MERGE", RBAC_DENY, listener={"filterChain": {"filter": {"name": HCM, "subFilter": {
        "name": "x"}}}}), "match.listener.filterChain.filter.subFilter", "HTTP_FILTER only"),
    (patch("HTTP_FILTER", "ADD", LUA_LIKE, listener={"filterChain": {"filter": {"name": "envoy.filters.network.tcp_proxy",
     "subFilter": {"name": "x"}}}}), "match.listener.filterChain.filter.subFilter", "requires filter match"),
    (patch("HTTP_FILTER", "INSERT_FIRST", LUA_LIKE, listener={"filterChain": {"filter": {"name": HCM, "subFilter": {
        "name": "x"}}}}), "match.listener.filterChain.filter.subFilter", "ignores it for HTTP_FILTER INSERT_FIRST"),
    (patch("HTTP_FILTER", "REMOVE", listener=LISTENER_HCM), "match.listener.filterChain.filter.subFilter", "names none"),
    (patch("LISTENER_FILTER", "REMOVE", listener={"portNumber": 80}), "match.listener.listenerFilter", "names none"),
    (patch("LISTENER_FILTER", "ADD", HTTP_INSPECTOR, listener={"listenerFilter": TLS_INSPECTOR}),
     "match.listener.listenerFilter", "ignores it for ADD"),
    (patch("LISTENER_FILTER", "ADD", HTTP_INSPECTOR, listener=LISTENER_HCM), "match.listener.filterChain",
     "LISTENER_FILTER"),
    (patch("NETWORK_FILTER", "MERGE", RBAC_DENY, listener={"listenerFilter": TLS_INSPECTOR}),
     "match.listener.listenerFilter", "only LISTENER_FILTER"),
    (patch("LISTENER", "MERGE", {}, listener={"portName": "http"}), "match.listener.portName", "does not implement"),
    (patch("FILTER_CHAIN", "MERGE", {}, listener={"filterChain": {"transportSocket": "tls"}}),
     "match.listener.filterChain.transportSocket", "does not match on it"),
    (patch("ROUTE_CONFIGURATION", "MERGE", HEADER, routeConfiguration={"gateway": "istio-system/gw"}),
     "match.routeConfiguration.gateway", "set context GATEWAY"),
    (patch("ROUTE_CONFIGURATION", "MERGE", HEADER, context="GATEWAY", routeConfiguration={"gateway": "gw"}),
     "match.routeConfiguration.gateway", "namespace/name"),
    (patch("ROUTE_CONFIGURATION", "MERGE", HEADER, routeConfiguration={"vhost": {"name": "x"}}),
     "match.routeConfiguration.vhost", "ROUTE_CONFIGURATION"),
    (patch("VIRTUAL_HOST", "ADD", {"name": "v"}, routeConfiguration={"vhost": {"name": "x"}}),
     "match.routeConfiguration.vhost", "VIRTUAL_HOST ADD"),
    (patch("VIRTUAL_HOST", "MERGE", {}, routeConfiguration={"vhost": {"route": {"name": "x"}}}),
     "match.routeConfiguration.vhost.route", "VIRTUAL_HOST"),
    (patch("HTTP_ROUTE", "ADD", {}, routeConfiguration={"vhost": {"route": {"name": "x"}}}),
     "match.routeConfiguration.vhost.route", "HTTP_ROUTE ADD"),
    (patch("CLUSTER", "MERGE", {}, cluster={"name": "x", "subset": "v1"}), "match.cluster.subset", "beside `name`"),
    (patch("CLUSTER", "MERGE", {}, proxy={"proxyVersion": "1.2("}), "match.proxy.proxyVersion", "invalid regex"),
    (patch("CLUSTER", "MERGE", {}, context="WAYPOINT"), "match.context", "waypoint"),
    (patch("CLUSTER", "MERGE", {}, waypoint={"portNumber": 80}), "match.waypoint", "not supported"),
    (patch("CLUSTER", "MERGE", {}, listener={}, cluster={}), "match.cluster", "one of"),
    (patch("CLUSTER", "REMOVE", {"name": "x"}), "patch.value", "REMOVE takes no value"),
    (patch("CLUSTER", "MERGE"), "patch.value", "needs a value"),
    (patch("CLUSTER", "ADD", {"type": "STATIC"}), "patch.value.name", "needs its name"),
    (patch("CLUSTER", "MERGE", {"connectTimeout": "1s", "transportSocket": {"name": "t"}}), "patch.value.connect_timeout",
     "only the transportSocket"),
    (patch("CLUSTER", "MERGE", {"connectTimeot": "1s"}), "patch.value", "connectTimeot"),
    (patch("CLUSTER", "MERGE", {"connectTimeout": "soon"}), "patch.value", "connectTimeout"),
    (patch("HTTP_FILTER", "ADD", {"name": "x", "typedConfig": {"@type": "type.googleapis.com/envoy.nope.v3.Nope"}}),
     "patch.value", "referenced type unknown"),
    ({**patch("HTTP_FILTER", "ADD", LUA_LIKE), "patch": {"operation": "ADD", "value": LUA_LIKE, "filterClass": "AUTHZ"}},
     "patch.filterClass", "ignores it"),
])  # fmt: skip
def test_refusals_name_the_field(bad: Json, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resources(envoy_filter("bad", [patch("CLUSTER", "MERGE", {}), bad]))
    assert caught.value.source == "test.yaml (document 1, EnvoyFilter istio-system/bad)"
    assert caught.value.path == f"spec.configPatches[1].{path}", caught.value
    assert message in caught.value.message, caught.value


def test_target_refs_are_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        resources(envoy_filter("bad", [], targetRefs=[{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "g"}]))
    assert caught.value.path == "spec.targetRefs"


# --------------------------------------------------------------------------- the result loads in Envoy and pylon


EVERYTHING = [
    BALANCE,
    patch("LISTENER_FILTER", "INSERT_AFTER", HTTP_INSPECTOR, context="GATEWAY",
          listener={"portNumber": 8443, "listenerFilter": TLS_INSPECTOR}),
    patch("NETWORK_FILTER", "INSERT_BEFORE", RBAC_DENY, context="GATEWAY",
          listener={"portNumber": 9090, "filterChain": {"filter": {"name": HCM}}}),
    patch("HTTP_FILTER", "INSERT_BEFORE", LUA_LIKE, context="GATEWAY", listener={"filterChain": {"filter": {
        "name": HCM, "subFilter": {"name": "envoy.filters.http.router"}}}}),
    patch("HTTP_ROUTE", "MERGE", HEADER, context="GATEWAY", routeConfiguration={"vhost": {"route": {"name": "to-echo"}}}),
    patch("VIRTUAL_HOST", "ADD", {"name": "ef", "domains": ["ef.example.com"], "routes": [
        {"match": {"prefix": "/"}, "directResponse": {"status": 200, "body": {"inlineString": "ef"}}}]}, context="GATEWAY"),
    patch("CLUSTER", "MERGE", {"connectTimeout": "2s"}, context="GATEWAY", cluster={"service": HOST}),
]


@pytest.mark.parametrize("implementation", ["envoy", "pylon"])
def test_patched_gateway_passes_validation(tmp_path: Path, implementation: str) -> None:
    if implementation == "envoy" and not ENVOY.exists():
        pytest.skip(f"real Envoy not found at {ENVOY}")
    out = gw(*EVERYTHING)
    config = bootstrap(GATEWAY_NODE, "gw", {}, free_port(), free_port())
    listeners = [l for n, l in out[LISTENER].items() if n != "0.0.0.0_8443"]  # its secrets come over SDS only
    for listener in listeners:
        hcm = next(f for f in listener["filter_chains"][0]["filters"] if f["name"] == HCM)["typed_config"]
        hcm["route_config"] = out[ROUTE][hcm.pop("rds")["route_config_name"]]  # RDS has no server under validate
    config["static_resources"]["listeners"] = listeners
    config["static_resources"]["clusters"] += [{**c, "type": "STATIC"} if c.get("type") == "EDS" else c
                                               for c in out[CLUSTER].values()]  # fmt: skip
    for cluster in config["static_resources"]["clusters"]:
        cluster.pop("eds_cluster_config", None)
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [str(ENVOY)] if implementation == "envoy" else [sys.executable, "-m", "pylon.cli", "proxy"]
    result = subprocess.run([*command, "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@needs_envoy
def test_patched_sidecar_passes_envoy_validation(tmp_path: Path) -> None:
    out = sc(patch("HTTP_FILTER", "INSERT_FIRST", LUA_LIKE, context="SIDECAR_INBOUND"),
             patch("FILTER_CHAIN", "MERGE", {"transportSocketConnectTimeout": "2s"}, context="SIDECAR_INBOUND",
                   listener={"portNumber": 8080, "filterChain": {"transportProtocol": "tls"}}),
             patch("ROUTE_CONFIGURATION", "MERGE", HEADER, context="SIDECAR_INBOUND", routeConfiguration={"portNumber": 8080}),
             patch("NETWORK_FILTER", "INSERT_FIRST", RBAC_DENY, context="SIDECAR_INBOUND", listener={"portNumber": 5432}))
    config = bootstrap(SIDECAR_NODE, "client.default", {"NAMESPACE": "default"}, free_port(), free_port())
    config["static_resources"]["listeners"] = [out[LISTENER]["virtualInbound"]]
    config["static_resources"]["clusters"] += [c for n, c in out[CLUSTER].items() if n.startswith("inbound|")
                                               or n == "InboundPassthroughCluster" or n == "BlackHoleCluster"]  # fmt: skip
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
