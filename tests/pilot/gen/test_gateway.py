"""Gateway generation, sans-IO: Istio's names and the VirtualService/DestinationRule translations."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.pilot.gen import generator_for
from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from pylon.pilot.proxy import parse_node
from pylon.pilot.snapshot import Snapshot
from pylon.pilot.xds.encode import to_any
from tests.pilot.builders import gateway, gateway_proxy, service_entry, snapshot, subsets_rule, virtual_service

HOST = "echo.example.com"
ENDPOINTS = [("127.0.0.1", 9001, {"version": "v1"}), ("127.0.0.2", 9002, {"version": "v2"})]


def generate(snap: Snapshot) -> Resources:
    proxy = gateway_proxy()
    out = generator_for(proxy).generate(proxy, snap)
    for type_url, items in out.items():  # every generated resource is valid Envoy API
        for item in items.values():
            to_any(type_url, item)
    return out


def only_route(out: Resources, route_name: str = "http.8080") -> list[dict[str, Any]]:
    [vhost] = out[ROUTE][route_name]["virtual_hosts"]
    return vhost["routes"]


def test_names_follow_istio() -> None:
    out = generate(snapshot(gateway(8080), gateway(9090, bind="127.0.0.1", name="gw2"),
                            service_entry(HOST, ENDPOINTS), subsets_rule(HOST, ["v1", "v2"]),
                            virtual_service([{"route": [{"destination": {"host": HOST}}]}], hosts=["echo.example.com"])))
    assert sorted(out[LISTENER]) == ["0.0.0.0_8080", "127.0.0.1_9090"]
    assert sorted(out[ROUTE]) == ["http.8080", "http.9090.127.0.0.1"]
    assert set(out[CLUSTER]) == {"BlackHoleCluster", f"outbound|80||{HOST}", f"outbound|80|v1|{HOST}",
                                 f"outbound|80|v2|{HOST}"}
    hcm = out[LISTENER]["0.0.0.0_8080"]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "http.8080"
    [vhost] = out[ROUTE]["http.8080"]["virtual_hosts"]
    assert vhost["name"] == f"{HOST}:8080" and vhost["domains"] == [HOST, f"{HOST}:*"]
    # gw2 has no VirtualService bound: a 404 virtual host
    assert out[ROUTE]["http.9090.127.0.0.1"]["virtual_hosts"] == [{"name": "blackhole:9090", "domains": ["*"], "routes": []}]


def test_endpoints_by_subset_labels_and_named_port() -> None:
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), subsets_rule(HOST, ["v1", "v2"])))

    def addresses(name: str) -> list[tuple[str, int]]:
        return [(e["endpoint"]["address"]["socket_address"]["address"], e["endpoint"]["address"]["socket_address"]["port_value"])
                for group in out[ENDPOINT][name]["endpoints"] for e in group["lb_endpoints"]]

    assert addresses(f"outbound|80||{HOST}") == [("127.0.0.1", 9001), ("127.0.0.2", 9002)]
    assert addresses(f"outbound|80|v2|{HOST}") == [("127.0.0.2", 9002)]
    assert out[CLUSTER][f"outbound|80|v1|{HOST}"]["eds_cluster_config"]["service_name"] == f"outbound|80|v1|{HOST}"


def test_workload_entries_selected_by_labels() -> None:
    from tests.pilot.builders import doc

    entry = doc("ServiceEntry", "se", {"hosts": [HOST], "ports": [{"number": 80, "name": "http", "targetPort": 8000}],
                                       "resolution": "STATIC", "workloadSelector": {"labels": {"app": "echo"}}})
    workloads = [doc("WorkloadEntry", f"we{i}", {"address": f"127.0.0.{i}", "labels": {"app": app}})
                 for i, app in ((1, "echo"), (2, "other"), (3, "echo"))]
    out = generate(snapshot(gateway(8080), entry, *workloads))
    lb = out[ENDPOINT][f"outbound|80||{HOST}"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in lb] == [
        {"address": "127.0.0.1", "port_value": 8000}, {"address": "127.0.0.3", "port_value": 8000}]


def test_route_translation() -> None:
    http = [
        {"name": "by-header", "match": [{"headers": {"x-version": {"exact": "v2"}}, "uri": {"prefix": "/api"}}],
         "route": [{"destination": {"host": HOST, "subset": "v2"}}],
         "headers": {"request": {"set": {"x-a": "1"}, "add": {"x-b": "2"}, "remove": ["x-c"]}}},
        {"match": [{"uri": {"regex": "/r/[0-9]+"}, "ignoreUriCase": True}],
         "route": [{"destination": {"host": HOST, "subset": "v1"}, "weight": 75},
                   {"destination": {"host": HOST, "subset": "v2"}, "weight": 25},
                   {"destination": {"host": HOST}, "weight": 0}],
         "rewrite": {"uri": "/", "authority": "backend"}, "timeout": "2s",
         "retries": {"attempts": 3, "retryOn": "gateway-error,503", "perTryTimeout": "500ms"}},
        {"match": [{"uri": {"exact": "/old"}}], "redirect": {"uri": "/new", "redirectCode": 308, "port": 80}},
        {"fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 12.5}}, "abort": {"httpStatus": 503}},
         "route": [{"destination": {"host": HOST}}], "retries": {"attempts": 0}},
        {"route": [{"destination": {"host": HOST}}]},  # never reached: the route before is a catch-all
    ]
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), subsets_rule(HOST, ["v1", "v2"]),
                            virtual_service(http)))
    first, second, third, fourth = only_route(out)
    assert first["name"] == "by-header"
    assert first["match"] == {"prefix": "/api", "case_sensitive": True,
                              "headers": [{"name": "x-version", "string_match": {"exact": "v2"}}]}
    assert first["request_headers_to_add"] == [
        {"header": {"key": "x-a", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"},
        {"header": {"key": "x-b", "value": "2"}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}]
    assert first["request_headers_to_remove"] == ["x-c"]
    assert first["route"]["cluster"] == f"outbound|80|v2|{HOST}"
    assert first["route"]["timeout"] == "0s"  # Istio: no timeout unless the VirtualService sets one
    assert first["route"]["retry_policy"]["num_retries"] == 2  # Istio's default retry policy

    assert second["match"] == {"safe_regex": {"regex": "/r/[0-9]+"}, "case_sensitive": False}
    action = second["route"]
    assert action["weighted_clusters"] == {"clusters": [{"name": f"outbound|80|v1|{HOST}", "weight": 75},
                                                        {"name": f"outbound|80|v2|{HOST}", "weight": 25}]}
    assert (action["prefix_rewrite"], action["host_rewrite_literal"], action["timeout"]) == ("/", "backend", "2s")
    retry = action["retry_policy"]
    assert (retry["retry_on"], retry["retriable_status_codes"], retry["num_retries"], retry["per_try_timeout"]) == (
        "gateway-error,retriable-status-codes", [503], 3, "0.5s")

    assert third["redirect"] == {"path_redirect": "/new", "response_code": "PERMANENT_REDIRECT"}  # :80 dropped for http

    fault = fourth["typed_per_filter_config"]["envoy.filters.http.fault"]
    assert fault["delay"] == {"fixed_delay": "1s", "percentage": {"numerator": 125000, "denominator": "MILLION"}}
    assert fault["abort"] == {"http_status": 503}
    assert "retry_policy" not in fourth["route"]  # attempts: 0 disables retries


def test_gateway_and_virtual_service_binding_rules() -> None:
    other_gateway = virtual_service([{"route": [{"destination": {"host": HOST}}]}], gateways=["istio-system/other"])
    assert only_route(generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), other_gateway))) == []
    # hosts: a server exposing only foo.example.com does not take a VirtualService for bar.example.com
    vs = virtual_service([{"route": [{"destination": {"host": HOST}}]}], hosts=["bar.example.com", "foo.example.com"])
    out = generate(snapshot(gateway(8080, hosts=["*.example.com"]), vs))
    assert [v["name"] for v in out[ROUTE]["http.8080"]["virtual_hosts"]] == ["bar.example.com:8080", "foo.example.com:8080"]
    out = generate(snapshot(gateway(8080, hosts=["foo.example.com"]), vs))
    assert [v["name"] for v in out[ROUTE]["http.8080"]["virtual_hosts"]] == ["foo.example.com:8080"]
    # a gateway that does not select this proxy's labels yields nothing
    proxy = parse_node("router~127.0.0.1~gw.ns~ns.svc.cluster.local", {"LABELS": {"istio": "egressgateway"}})
    assert generator_for(proxy).generate(proxy, snapshot(gateway(8080)))[LISTENER] == {}


def test_destination_rule_traffic_policy() -> None:
    policy = {"loadBalancer": {"simple": "ROUND_ROBIN"},
              "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "2s"},
                                 "http": {"http1MaxPendingRequests": 5, "idleTimeout": "30s"}},
              "outlierDetection": {"consecutive5xxErrors": 3, "interval": "10s", "baseEjectionTime": "1m"},
              "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]}
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), subsets_rule(HOST, ["v1"], policy)))
    cluster = out[CLUSTER][f"outbound|80|v1|{HOST}"]
    assert cluster["lb_policy"] == "RANDOM"  # port level wins over the rule's top level
    assert cluster["connect_timeout"] == "2s"
    thresholds = cluster["circuit_breakers"]["thresholds"][0]
    assert (thresholds["max_connections"], thresholds["max_pending_requests"], thresholds["max_requests"]) == (
        10, 5, 2**32 - 1)
    assert cluster["outlier_detection"] == {"enforcing_success_rate": 0, "consecutive_5xx": 3,
                                            "enforcing_consecutive_5xx": 100, "interval": "10s", "base_ejection_time": "60s"}
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"idle_timeout": "30s"}
    default = out[CLUSTER]["outbound|80||echo.example.com"]
    assert default["lb_policy"] == "RANDOM"


def test_default_cluster_without_destination_rule() -> None:
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS)))
    cluster = out[CLUSTER][f"outbound|80||{HOST}"]
    assert (cluster["type"], cluster["lb_policy"], cluster["connect_timeout"]) == ("EDS", "LEAST_REQUEST", "10s")


def test_waypoints_are_refused_clearly() -> None:
    proxy = parse_node("waypoint~10.0.0.1~app.default~default.svc.cluster.local")
    with pytest.raises(ValueError, match="waypoint proxies are not supported by pylon pilot yet"):
        generator_for(proxy)


def test_upstream_http_version() -> None:
    grpc_entry = service_entry(HOST, ENDPOINTS)
    grpc_entry["spec"]["ports"][0]["protocol"] = "GRPC"
    options_key = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    out = generate(snapshot(gateway(8080), grpc_entry))
    assert out[CLUSTER][f"outbound|80||{HOST}"]["typed_extension_protocol_options"][options_key]["explicit_http_config"] == {
        "http2_protocol_options": {}}
    upgrade = {"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 7}}}
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS), subsets_rule(HOST, [], upgrade)))
    options = out[CLUSTER][f"outbound|80||{HOST}"]["typed_extension_protocol_options"][options_key]
    assert options["explicit_http_config"] == {"http2_protocol_options": {"max_concurrent_streams": 7}}
    out = generate(snapshot(gateway(8080), service_entry(HOST, ENDPOINTS)))
    assert "typed_extension_protocol_options" not in out[CLUSTER][f"outbound|80||{HOST}"]  # HTTP/1.1, Envoy's default
