"""Config model: the fields Istio's generated gateway config always carries (pilot's shapes)."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import to_envoy_dict
from tests.config.builders import HCM_PATH, ROUTES_PATH, cluster, http_bootstrap, load, the_hcm

PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}
LB_ENDPOINT = "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]"


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load(data)
    return str(info.value)


def with_lb_endpoint(**fields: Any) -> dict[str, Any]:
    svc = cluster()
    svc["load_assignment"]["endpoints"][0]["lb_endpoints"][0].update(fields)
    return http_bootstrap(clusters=[svc])


def one_route(**fields: Any) -> dict[str, Any]:
    return http_bootstrap([{"match": {"prefix": "/"}, **fields}])


def test_metadata_and_decorator_ride_along() -> None:
    meta = {"filter_metadata": {"istio": {"config": "/apis/networking.istio.io/v1/x", "n": [1, {"a": True}]}}}
    boot = load(http_bootstrap(
        [{"match": {"prefix": "/"}, "route": {"cluster": "svc"}, "metadata": meta,
          "decorator": {"operation": "svc.default.svc.cluster.local:80/*"}}],
        clusters=[cluster(metadata=meta)]))
    route = the_hcm(boot).route_config.virtual_hosts[0].routes[0]
    assert route.metadata.filter_metadata == meta["filter_metadata"]
    assert route.decorator.operation == "svc.default.svc.cluster.local:80/*" and route.decorator.propagate is None
    assert to_envoy_dict(boot.static_resources.clusters[0])["metadata"] == meta


def test_decorator_needs_an_operation() -> None:
    assert error(one_route(route={"cluster": "svc"}, decorator={"operation": ""})).startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].decorator.operation: ")


def test_health_status_values() -> None:
    for status in ("UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT"):
        lb = load(with_lb_endpoint(health_status=status)).static_resources.clusters[0].load_assignment
        assert lb.endpoints[0].lb_endpoints[0].health_status == status
    assert error(with_lb_endpoint(health_status="DEGRADED")).startswith(
        f"config error in test.yaml: {LB_ENDPOINT}.health_status: DEGRADED is not supported yet")
    assert error(with_lb_endpoint(health_status="SICK")).startswith(
        f"config error in test.yaml: {LB_ENDPOINT}.health_status: ")


def test_track_remaining_defaults_to_false() -> None:
    boot = load(http_bootstrap(clusters=[cluster(circuit_breakers={"thresholds": [
        {"max_retries": 7}, {"priority": "HIGH", "track_remaining": True}]})]))
    default, high = boot.static_resources.clusters[0].circuit_breakers.thresholds
    assert (default.track_remaining, high.track_remaining) == (False, True)


def test_retry_policy_istio_shape() -> None:
    policy = {"retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
              "num_retries": 2, "retriable_status_codes": [503], "host_selection_retry_max_attempts": "5",
              "retry_host_predicate": [PREVIOUS_HOSTS]}
    boot = load(one_route(route={"cluster": "svc", "retry_policy": policy}))
    retry = the_hcm(boot).route_config.virtual_hosts[0].routes[0].route.retry_policy
    assert retry.host_selection_retry_max_attempts == 5 and retry.retry_host_predicate[0].name == PREVIOUS_HOSTS["name"]
    for condition in ("deadline-exceeded", "resource-exhausted", "internal"):
        load(one_route(route={"cluster": "svc", "retry_policy": {"retry_on": condition}}))


@pytest.mark.parametrize(("predicate", "where", "message"), [
    ({"name": "x", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.other.v3.Other"}},
     "typed_config.@type", "unsupported retry host predicate"),
    ({**PREVIOUS_HOSTS, "typed_config": {**PREVIOUS_HOSTS["typed_config"], "x": 1}}, "typed_config.x", "unknown field"),
    ({"name": "m", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig",
        "metadata_match": {"filter": {}}}}, "typed_config.metadata_match.filter", "unknown field"),
])  # fmt: skip
def test_other_retry_host_predicates_are_errors(predicate: dict[str, Any], where: str, message: str) -> None:
    data = one_route(route={"cluster": "svc", "retry_policy": {"retry_host_predicate": [predicate]}})
    assert error(data).startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].route.retry_policy.retry_host_predicate[0].{where}: {message}")


PRIORITY_TYPE = "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"


def test_retry_priority_previous_priorities() -> None:
    policy = {"retry_priority": {"name": "envoy.retry_priorities.previous_priorities",
                                 "typed_config": {"@type": PRIORITY_TYPE, "update_frequency": 3}}}
    retry = the_hcm(load(one_route(route={"cluster": "svc", "retry_policy": policy}))).route_config.virtual_hosts[0]
    assert retry.routes[0].route.retry_policy.retry_priority.decoded().update_frequency == 3


@pytest.mark.parametrize(("typed_config", "where", "message"), [
    ({"@type": PRIORITY_TYPE, "update_frequency": 0}, "typed_config.update_frequency", "Expected `int` >= 1"),
    ({"@type": PRIORITY_TYPE, "frequency": 2}, "typed_config.frequency", "unknown field"),
    ({"@type": "type.googleapis.com/envoy.extensions.retry.priority.other.v3.Other"}, "typed_config.@type",
     "unsupported retry priority"),
])  # fmt: skip
def test_retry_priority_errors(typed_config: dict[str, Any], where: str, message: str) -> None:
    data = one_route(route={"cluster": "svc", "retry_policy": {"retry_priority": {"name": "p", "typed_config": typed_config}}})
    assert error(data).startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].route.retry_policy.retry_priority.{where}: {message}")


def test_host_selection_retry_max_attempts_is_not_negative() -> None:
    data = one_route(route={"cluster": "svc", "retry_policy": {"host_selection_retry_max_attempts": -1}})
    assert error(data).startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].route.retry_policy.host_selection_retry_max_attempts: ")


def test_grpc_timeouts_attempt_count_and_validate_clusters() -> None:
    boot = load(one_route(route={"cluster": "svc", "max_grpc_timeout": "0s", "grpc_timeout_offset": "0.05s"}))
    action = the_hcm(boot).route_config.virtual_hosts[0].routes[0].route
    assert (action.max_grpc_timeout, action.grpc_timeout_offset) == (0.0, 0.05)
    assert the_hcm(boot).route_config.validate_clusters is None
    assert the_hcm(boot).route_config.virtual_hosts[0].include_request_attempt_count is False
    data = http_bootstrap()
    config = data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    config["route_config"]["virtual_hosts"][0].update(include_request_attempt_count=True)
    assert the_hcm(load(data)).route_config.virtual_hosts[0].include_request_attempt_count is True
    config["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "nowhere"
    assert error(data) == (f"config error in test.yaml: {ROUTES_PATH}[0].route.cluster: unknown cluster 'nowhere'")
    config["route_config"].update(validate_clusters=False)  # Envoy: then a route may name an unknown cluster
    assert the_hcm(load(data)).route_config.validate_clusters is False
    assert error(one_route(route={"cluster": "svc", "max_grpc_timeout": "-1s"})).startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].route.max_grpc_timeout: ")

