"""The Envoy v3 subset: each field family loads with Envoy's values and defaults, and fails at its path."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import (
    AccessLog,
    Cluster,
    FileAccessLog,
    HttpConnectionManager,
    Router,
    StderrAccessLog,
    StdoutAccessLog,
    TcpProxy,
    UpstreamHttpProtocolOptions,
    UpstreamTlsContext,
    convert,
)
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap, to_envoy_dict
from tests.config.builders import (
    DOWNSTREAM_TLS_TYPE,
    FILE_LOG_TYPE,
    HCM_PATH,
    HTTP_INSPECTOR_TYPE,
    ORIGINAL_DST_TYPE,
    HTTP_OPTIONS_TYPE,
    ROUTES_PATH,
    STDERR_LOG_TYPE,
    STDOUT_LOG_TYPE,
    TCP_PROXY_TYPE,
    TLS_INSPECTOR_TYPE,
    UPSTREAM_TLS_TYPE,
    bootstrap,
    cluster,
    hcm,
    http_bootstrap,
    listener,
    load,
    the_hcm,
    y,
)
from tests.config.envoy_cases import CASES, Case

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load(data)
    return str(info.value)


def routes(text: str) -> list[dict[str, Any]]:
    return y(text)


# --------------------------------------------------------------------------- durations


def test_bad_duration_is_an_error_at_its_field() -> None:
    data = http_bootstrap(routes(r"""
      - match: {prefix: "/"}
        route: {cluster: svc, timeout: 15}
    """))  # fmt: skip
    assert error(data) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].route.timeout: "
        "invalid duration 15: expected a string like \"1s\" or {seconds, nanos}"
    )


# --------------------------------------------------------------------------- HTTP connection manager


def test_hcm_defaults_are_envoys() -> None:
    manager = the_hcm(load(http_bootstrap()))
    assert isinstance(manager, HttpConnectionManager)
    assert manager.codec_type == "AUTO"
    assert manager.common_http_protocol_options.idle_timeout == 3600
    assert manager.common_http_protocol_options.max_headers_count == 100
    assert manager.common_http_protocol_options.max_connection_duration is None
    assert manager.common_http_protocol_options.headers_with_underscores_action == "ALLOW"
    assert manager.max_request_headers_kb == 60
    assert manager.request_timeout == 0
    assert manager.stream_idle_timeout == 300
    assert manager.drain_timeout == 5
    assert manager.delayed_close_timeout == 1
    assert manager.use_remote_address is False
    assert manager.xff_num_trusted_hops == 0
    assert manager.generate_request_id is True
    assert manager.server_name == "envoy"
    assert manager.server_header_transformation == "OVERWRITE"
    assert manager.normalize_path is False and manager.merge_slashes is False
    assert isinstance(manager.http_filters[0].typed_config, Router)
    assert manager.http_filters[0].typed_config.suppress_envoy_headers is False


def test_hcm_explicit_values() -> None:
    fields = y("""
      codec_type: HTTP1
      common_http_protocol_options:
        idle_timeout: 30s
        max_headers_count: 50
        max_connection_duration: 600s
        max_stream_duration: {seconds: 10}
        headers_with_underscores_action: REJECT_REQUEST
      max_request_headers_kb: 96
      request_timeout: 2s
      stream_idle_timeout: 0.5s
      drain_timeout: 1s
      delayed_close_timeout: 0s
      use_remote_address: true
      xff_num_trusted_hops: 2
      generate_request_id: false
      preserve_external_request_id: true
      always_set_request_id_in_response: true
      server_name: pylon
      server_header_transformation: PASS_THROUGH
      normalize_path: true
      merge_slashes: true
      via: pylon-1
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          suppress_envoy_headers: true
    """)
    manager = the_hcm(load(http_bootstrap(**fields)))
    options = manager.common_http_protocol_options
    assert (options.idle_timeout, options.max_headers_count, options.max_connection_duration) == (30, 50, 600)
    assert options.max_stream_duration == 10 and options.headers_with_underscores_action == "REJECT_REQUEST"
    assert manager.codec_type == "HTTP1" and manager.max_request_headers_kb == 96
    assert (manager.request_timeout, manager.stream_idle_timeout, manager.drain_timeout) == (2, 0.5, 1)
    assert manager.delayed_close_timeout == 0
    assert manager.use_remote_address and manager.xff_num_trusted_hops == 2 and not manager.generate_request_id
    assert manager.preserve_external_request_id and manager.always_set_request_id_in_response
    assert manager.server_name == "pylon" and manager.server_header_transformation == "PASS_THROUGH"
    assert manager.normalize_path and manager.merge_slashes and manager.via == "pylon-1"
    assert manager.http_filters[0].typed_config.suppress_envoy_headers is True


def test_cluster_manager_settings_are_not_supported_yet() -> None:
    """Only an empty cluster_manager loads (envoy_cases: `cluster-manager-empty`, beside Envoy)."""
    assert error({**bootstrap(), "cluster_manager": {"local_cluster_name": "svc"}}) == (
        "config error in test.yaml: cluster_manager.local_cluster_name: not supported yet")


def test_http3_codec_is_not_supported_yet() -> None:
    assert error(http_bootstrap(codec_type="HTTP3")) == (
        f"config error in test.yaml: {HCM_PATH}.codec_type: HTTP3 is not supported yet"
    )


def test_hcm_http2_protocol_options_map_onto_the_codec_settings() -> None:
    from pylon.proxy.h2_connection import h2_settings
    from pylon.proxy.http.h2_session import H2Settings

    manager = the_hcm(load(http_bootstrap(codec_type="HTTP2")))
    assert h2_settings(manager) == H2Settings()  # unset: Envoy 1.40's defaults
    options = {"max_concurrent_streams": 7, "initial_stream_window_size": 65535,
               "initial_connection_window_size": 1 << 20, "hpack_table_size": 0,
               "max_outbound_frames": 50, "max_outbound_control_frames": 20,
               "max_consecutive_inbound_frames_with_empty_payload": 3, "max_inbound_priority_frames_per_stream": 4,
               "max_inbound_window_update_frames_per_data_frame_sent": 5, "allow_connect": True}
    manager = the_hcm(load(http_bootstrap(http2_protocol_options=options, max_request_headers_kb=8,
                                          common_http_protocol_options={"max_headers_count": 30})))
    assert h2_settings(manager) == H2Settings(**options, max_header_bytes=8192, max_headers_count=30)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("allow_metadata", True, "not supported yet (HTTP/2 METADATA frames)"),
    ("stream_error_on_invalid_http_messaging", True, "not supported yet: an invalid message ends the HTTP/2 "
                                                     "connection, as Envoy's default does"),
    ("override_stream_error_on_invalid_http_message", True, "not supported yet: an invalid message ends the HTTP/2 "
                                                            "connection, as Envoy's default does"),
    ("use_oghttp2_codec", True, "not supported: pylon's HTTP/2 codec is libnghttp2"),
    ("custom_settings_parameters", [{"identifier": 8, "value": 1}], "not supported yet"),
    ("max_metadata_size", 1024, "not supported yet"),
    ("initial_stream_window_size", 1000, "Expected `int` >= 65535"),
    ("max_concurrent_streams", 0, "Expected `int` >= 1"),
])  # fmt: skip
def test_hcm_http2_protocol_options_refused_by_name(field: str, value: Any, message: str) -> None:
    found = error(http_bootstrap(http2_protocol_options={field: value}))
    assert found.startswith(f"config error in test.yaml: {HCM_PATH}.http2_protocol_options.{field}: {message}"), found


def test_rds_over_ads_needs_ads_config() -> None:
    data = http_bootstrap(rds={"route_config_name": "r", "config_source": {"ads": {}}})
    del data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
    assert error(data) == f"config error in test.yaml: {HCM_PATH}.rds.config_source.ads: needs dynamic_resources.ads_config"


def test_route_config_or_rds_exactly_one() -> None:
    data = http_bootstrap(rds={"route_config_name": "r", "config_source": {"path": "/tmp/r.yaml"}})
    assert error(data) == (f"config error in test.yaml: {HCM_PATH}.route_config: exactly one of route_config, rds and "
                           "scoped_routes is required")


def test_max_request_headers_kb_is_bounded() -> None:
    assert f"{HCM_PATH}.max_request_headers_kb: Expected `int` <= 8192" in error(http_bootstrap(max_request_headers_kb=8193))


def test_router_must_be_the_last_http_filter() -> None:
    router = {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
    assert error(http_bootstrap(http_filters=[router, router])) == (
        f"config error in test.yaml: {HCM_PATH}.http_filters[0]: "
        "envoy.filters.http.router is terminal and must be the last filter"
    )
    cors = {"name": "envoy.filters.http.cors", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
    assert error(http_bootstrap(http_filters=[cors])) == (
        f"config error in test.yaml: {HCM_PATH}.http_filters[0]: the last filter must be the router filter "
        "(envoy.filters.http.router), got envoy.filters.http.cors"
    )
    # none at all is accepted, as Envoy: then nothing answers (tests/proxy/test_proxy_hcm_no_filters.py)
    load(http_bootstrap(http_filters=[]))


def test_missing_stat_prefix_is_a_missing_required_field() -> None:
    data = http_bootstrap()
    del data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["stat_prefix"]
    assert error(data) == f"config error in test.yaml: {HCM_PATH}.stat_prefix: missing required field"


# --------------------------------------------------------------------------- routes


def test_route_matchers() -> None:
    config = load(http_bootstrap(routes(r"""
      - name: exact
        match:
          path: /healthz
          case_sensitive: false
          headers:
          - {name: x-exact, exact_match: "1"}
          - {name: x-present, present_match: true, invert_match: true}
          - {name: x-re, safe_regex_match: {regex: "^v[0-9]+$"}}
          - {name: x-pre, prefix_match: a}
          - {name: x-suf, suffix_match: z}
          - {name: x-has, contains_match: m}
          - {name: x-sm, string_match: {prefix: ab, ignore_case: true}, treat_missing_header_as_empty: true}
          - {name: x-any}
          query_parameters:
          - {name: debug, string_match: {exact: "1"}}
          - {name: trace, present_match: true}
          - {name: plain}
        route: {cluster: svc}
      - match: {safe_regex: {google_re2: {}, regex: "/api/v[12]/.*"}}
        route: {cluster: svc}
      - match: {prefix: "/"}
        route: {cluster: svc}
    """)))  # fmt: skip
    first, second, third = the_hcm(config).route_config.virtual_hosts[0].routes
    assert first.name == "exact" and first.match.path == "/healthz" and first.match.case_sensitive is False
    headers = first.match.headers
    assert headers[0].exact_match == "1" and headers[1].present_match is True and headers[1].invert_match
    assert headers[2].safe_regex_match.regex == "^v[0-9]+$"
    assert (headers[3].prefix_match, headers[4].suffix_match, headers[5].contains_match) == ("a", "z", "m")
    assert headers[6].string_match.prefix == "ab" and headers[6].string_match.ignore_case
    assert headers[6].treat_missing_header_as_empty
    assert headers[7].exact_match is None and headers[7].present_match is None
    params = first.match.query_parameters
    assert params[0].string_match.exact == "1" and params[1].present_match and params[2].string_match is None
    assert second.match.safe_regex.regex == "/api/v[12]/.*" and second.match.case_sensitive is True
    assert third.match.prefix == "/" and third.match.headers == []


def test_route_action_fields_and_defaults() -> None:
    config = load(http_bootstrap(routes(r"""
      - match: {prefix: "/a"}
        route: {cluster: svc}
      - match: {prefix: "/b"}
        route:
          weighted_clusters:
            clusters:
            - {name: svc, weight: 80, request_headers_to_add: [{header: {key: x-w, value: a}}]}
            - {name: other, weight: 20, response_headers_to_remove: [x-internal]}
          prefix_rewrite: /v2/
          host_rewrite_literal: backend.internal
          timeout: 0s
          idle_timeout: 30s
          hash_policy:
          - header: {header_name: x-user}
            terminal: true
          retry_policy:
            retry_on: "5xx, connect-failure,retriable-status-codes"
            num_retries: 3
            per_try_timeout: 0.25s
            retriable_status_codes: [503]
            retry_back_off: {base_interval: 0.025s, max_interval: 0.250s}
      - match: {prefix: "/c"}
        route:
          cluster: svc
          regex_rewrite:
            pattern: {regex: "^/c/(.*)$"}
            substitution: /\1
    """), clusters=[cluster("svc"), cluster("other")]))  # fmt: skip
    plain, weighted, rewritten = (r.route for r in the_hcm(config).route_config.virtual_hosts[0].routes)
    assert plain.cluster == "svc" and plain.timeout == 15 and plain.retry_policy is None
    assert plain.prefix_rewrite is None and plain.idle_timeout is None and plain.hash_policy == []
    assert [(c.name, c.weight) for c in weighted.weighted_clusters.clusters] == [("svc", 80), ("other", 20)]
    assert weighted.weighted_clusters.clusters[0].request_headers_to_add[0].header.value == "a"
    assert weighted.weighted_clusters.clusters[1].response_headers_to_remove == ["x-internal"]
    assert weighted.prefix_rewrite == "/v2/" and weighted.host_rewrite_literal == "backend.internal"
    assert weighted.timeout == 0 and weighted.idle_timeout == 30
    assert weighted.hash_policy[0].header.header_name == "x-user" and weighted.hash_policy[0].terminal
    retry = weighted.retry_policy
    assert retry.conditions == {"5xx", "connect-failure", "retriable-status-codes"}
    assert (retry.num_retries, retry.per_try_timeout, retry.retriable_status_codes) == (3, 0.25, [503])
    assert (retry.retry_back_off.base_interval, retry.retry_back_off.max_interval) == (0.025, 0.25)
    assert rewritten.regex_rewrite.pattern.regex == "^/c/(.*)$" and rewritten.regex_rewrite.substitution == "/\\1"


def test_retry_policy_defaults() -> None:
    config = load(http_bootstrap(routes("""
      - match: {prefix: "/"}
        route: {cluster: svc, retry_policy: {retry_on: 5xx}}
    """)))  # fmt: skip
    retry = the_hcm(config).route_config.virtual_hosts[0].routes[0].route.retry_policy
    assert retry.num_retries == 1 and retry.per_try_timeout is None and retry.retry_back_off is None


def test_unsupported_retry_condition_is_an_error_at_retry_on() -> None:
    data = http_bootstrap(routes("""
      - match: {prefix: "/"}
        route: {cluster: svc, retry_policy: {retry_on: "5xx,reset-before-request"}}
    """))  # fmt: skip
    message = error(data)
    assert message.startswith(
        f"config error in test.yaml: {ROUTES_PATH}[0].route.retry_policy.retry_on: "
        "unsupported retry condition 'reset-before-request'; supported: 5xx, cancelled, connect-failure,"
    )


def test_redirect_and_direct_response() -> None:
    config = load(http_bootstrap(routes("""
      - match: {prefix: "/old"}
        redirect: {https_redirect: true, host_redirect: example.com, port_redirect: 8443, prefix_rewrite: /new, response_code: PERMANENT_REDIRECT, strip_query: true}
      - match: {prefix: "/plain"}
        redirect: {path_redirect: /elsewhere}
      - match: {path: "/teapot"}
        direct_response: {status: 418, body: {inline_string: "short and stout"}}
      - match: {path: "/empty"}
        direct_response: {status: 204}
    """)))  # fmt: skip
    redirect, plain, teapot, empty = the_hcm(config).route_config.virtual_hosts[0].routes
    assert redirect.redirect.https_redirect and redirect.redirect.host_redirect == "example.com"
    assert redirect.redirect.port_redirect == 8443 and redirect.redirect.prefix_rewrite == "/new"
    assert redirect.redirect.response_code == "PERMANENT_REDIRECT" and redirect.redirect.strip_query
    assert plain.redirect.response_code == "MOVED_PERMANENTLY" and plain.redirect.path_redirect == "/elsewhere"
    assert teapot.direct_response.status == 418 and teapot.direct_response.body.inline_string == "short and stout"
    assert empty.direct_response.body is None


def test_header_mutations_at_every_level() -> None:
    fields = y("""
      route_config:
        request_headers_to_add: [{header: {key: x-rc, value: "1"}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
        response_headers_to_remove: [server]
        virtual_hosts:
        - name: backend
          domains: ["example.com", "*.example.com"]
          request_headers_to_remove: [x-debug]
          response_headers_to_add: [{header: {key: x-vh, value: ""}, keep_empty_value: true}]
          retry_policy: {retry_on: gateway-error}
          routes:
          - match: {prefix: "/"}
            route: {cluster: svc}
            request_headers_to_add: [{header: {key: x-r, value: v}, append: false}]
            response_headers_to_add: [{header: {key: x-r2, value: v}, append_action: ADD_IF_ABSENT}]
    """)
    route_config = the_hcm(load(http_bootstrap(**fields))).route_config
    assert route_config.name == "" and route_config.request_headers_to_add[0].effective_action == "OVERWRITE_IF_EXISTS_OR_ADD"
    assert route_config.response_headers_to_remove == ["server"]
    vhost = route_config.virtual_hosts[0]
    assert vhost.domains == ["example.com", "*.example.com"] and vhost.request_headers_to_remove == ["x-debug"]
    assert vhost.response_headers_to_add[0].keep_empty_value and vhost.retry_policy.conditions == {"gateway-error"}
    route = vhost.routes[0]
    assert route.request_headers_to_add[0].append is False
    assert route.request_headers_to_add[0].effective_action == "OVERWRITE_IF_EXISTS_OR_ADD"
    assert route.response_headers_to_add[0].effective_action == "ADD_IF_ABSENT"


def test_append_and_append_action_together_is_an_error() -> None:
    data = http_bootstrap(routes("""
      - match: {prefix: "/"}
        route: {cluster: svc}
        request_headers_to_add: [{header: {key: x, value: v}, append: true, append_action: ADD_IF_ABSENT}]
    """))  # fmt: skip
    assert error(data) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].request_headers_to_add[0]: "
        "append and append_action cannot both be set"
    )


@pytest.mark.parametrize(
    ("route", "path", "message"),
    [
        ({"match": {"prefix": "/"}, "route": {"cluster": "svc"}, "redirect": {"path_redirect": "/x"}},
         "[0]", "exactly one of route, redirect, direct_response must be set (got route, redirect)"),
        ({"match": {"prefix": "/"}},
         "[0]", "exactly one of route, redirect, direct_response must be set"),
        ({"match": {"prefix": "/", "path": "/x"}, "route": {"cluster": "svc"}},
         "[0].match", "exactly one of prefix, path, safe_regex, connect_matcher must be set (got prefix, path)"),
        ({"match": {}, "route": {"cluster": "svc"}},
         "[0].match", "exactly one of prefix, path, safe_regex, connect_matcher must be set"),
        ({"match": {"prefix": "/", "headers": [{"name": "a", "exact_match": "x", "prefix_match": "y"}]},
          "route": {"cluster": "svc"}},
         "[0].match.headers[0]", "at most one of exact_match, safe_regex_match, present_match, prefix_match, "
         "suffix_match, contains_match, string_match may be set (got exact_match, prefix_match)"),
        ({"match": {"prefix": "/", "headers": [{"name": "a", "string_match": {"ignore_case": True}}]},
          "route": {"cluster": "svc"}},
         "[0].match.headers[0].string_match", "exactly one of exact, prefix, suffix, safe_regex, contains must be set"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "svc", "prefix_rewrite": "/a",
                                               "regex_rewrite": {"pattern": {"regex": "a"}, "substitution": "b"}}},
         "[0].route", "at most one of prefix_rewrite, regex_rewrite may be set (got prefix_rewrite, regex_rewrite)"),
        ({"match": {"prefix": "/"}, "redirect": {"https_redirect": True, "scheme_redirect": "http"}},
         "[0].redirect", "at most one of https_redirect, scheme_redirect may be set (got https_redirect, scheme_redirect)"),
        ({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "a", "filename": "/b"}}},
         "[0].direct_response.body",
         "exactly one of filename, inline_bytes, inline_string, environment_variable must be set (got filename, inline_string)"),
        ({"match": {"prefix": "/"}, "route": {}},
         "[0].route", "exactly one of cluster, cluster_header, weighted_clusters, cluster_specifier_plugin, "
         "inline_cluster_specifier_plugin must be set"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "svc", "cluster_header": "x-cluster"}},
         "[0].route", "exactly one of cluster, cluster_header, weighted_clusters, cluster_specifier_plugin, "
         "inline_cluster_specifier_plugin must be set (got cluster, cluster_header)"),
    ],
)  # fmt: skip
def test_oneof_violations_name_the_message(route: dict[str, Any], path: str, message: str) -> None:
    assert error(http_bootstrap([route])) == f"config error in test.yaml: {ROUTES_PATH}{path}: {message}"


def test_bad_regex_is_an_error_at_its_path() -> None:
    data = http_bootstrap(routes("""
      - match: {safe_regex: {regex: "/(?=lookahead)"}}
        route: {cluster: svc}
    """))  # fmt: skip
    assert error(data) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].match.safe_regex.regex: "
        "invalid regex '/(?=lookahead)': invalid perl operator: (?="
    )


def test_weighted_clusters_need_a_positive_total() -> None:
    data = http_bootstrap(routes("""
      - match: {prefix: "/"}
        route: {weighted_clusters: {clusters: [{name: svc, weight: 0}, {name: svc}]}}
    """))  # fmt: skip
    assert error(data) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].route.weighted_clusters.clusters: "
        "the sum of weights must be greater than 0"
    )


def test_duplicate_domains_across_virtual_hosts() -> None:
    fields = y("""
      route_config:
        virtual_hosts:
        - {name: a, domains: ["example.com"], routes: []}
        - {name: b, domains: ["Example.com"], routes: []}
    """)
    assert error(http_bootstrap(**fields)) == (
        f"config error in test.yaml: {HCM_PATH}.route_config.virtual_hosts[1].domains[0]: "
        "duplicate domain 'Example.com' (already in virtual host 'a')"
    )


# --------------------------------------------------------------------------- access logs


def test_access_loggers() -> None:
    logs = y("""
      - name: envoy.access_loggers.file
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
          path: /dev/stdout
          log_format:
            text_format_source: {inline_string: "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE%\\n"}
      - name: envoy.access_loggers.stdout
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
          log_format:
            json_format: {status: "%RESPONSE_CODE%", upstream: {host: "%UPSTREAM_HOST%"}, version: 1}
            omit_empty_values: true
            content_type: application/json
      - typed_config:
          "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
    """)
    manager = the_hcm(load(http_bootstrap(access_log=logs)))
    file_log, stdout_log, stderr_log = manager.access_log
    assert isinstance(file_log, AccessLog) and isinstance(file_log.typed_config, FileAccessLog)
    assert file_log.typed_config.path == "/dev/stdout"
    assert file_log.typed_config.log_format.text_format_source.inline_string.endswith("%RESPONSE_CODE%\n")
    assert isinstance(stdout_log.typed_config, StdoutAccessLog)
    fmt = stdout_log.typed_config.log_format
    assert fmt.json_format == {"status": "%RESPONSE_CODE%", "upstream": {"host": "%UPSTREAM_HOST%"}, "version": 1}
    assert fmt.omit_empty_values and fmt.content_type == "application/json"
    assert isinstance(stderr_log.typed_config, StderrAccessLog) and stderr_log.typed_config.log_format is None
    assert stderr_log.name == ""


@pytest.mark.parametrize("kind", ["traceable_filter", "runtime_filter", "grpc_status_filter", "extension_filter",
                                  "metadata_filter", "log_type_filter"])
def test_access_log_filter_kinds_not_supported_yet_are_named(kind: str) -> None:
    logs = [{"name": "x", "filter": {kind: {}}, "typed_config": {"@type": STDOUT_LOG_TYPE}}]
    assert error(http_bootstrap(access_log=logs)) == (
        f"config error in test.yaml: {HCM_PATH}.access_log[0].filter.{kind}: not supported yet"
    )


def test_access_log_status_code_filter_needs_its_comparison() -> None:
    logs = [{"name": "x", "filter": {"status_code_filter": {}}, "typed_config": {"@type": STDOUT_LOG_TYPE}}]
    assert error(http_bootstrap(access_log=logs)) == (
        f"config error in test.yaml: {HCM_PATH}.access_log[0].filter.status_code_filter.comparison: missing required field"
    )


def test_json_format_values_must_be_strings_numbers_or_objects() -> None:
    logs = [{"typed_config": {"@type": STDOUT_LOG_TYPE, "log_format": {"json_format": {"a": {"b": ["x"]}}}}}]
    assert error(http_bootstrap(access_log=logs)) == (
        f"config error in test.yaml: {HCM_PATH}.access_log[0].typed_config.log_format.json_format.a.b: "
        "values must be strings, numbers or nested objects, got list"
    )


def test_unknown_field_inside_a_typed_config_inside_a_typed_config() -> None:
    logs = [{"typed_config": {"@type": FILE_LOG_TYPE, "path": "/tmp/x", "format": "%START_TIME%"}}]
    assert error(http_bootstrap(access_log=logs)) == (
        f"config error in test.yaml: {HCM_PATH}.access_log[0].typed_config.format: unknown field"
    )


# --------------------------------------------------------------------------- tcp proxy


def test_tcp_proxy() -> None:
    proxy = {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": "svc"}
    config = load(bootstrap([listener(proxy)]))
    tcp = the_hcm(config)
    assert isinstance(tcp, TcpProxy)
    assert (tcp.stat_prefix, tcp.cluster, tcp.idle_timeout, tcp.max_connect_attempts) == ("tcp", "svc", 3600, 1)
    proxy.update(idle_timeout="10s", max_connect_attempts=3, access_log=[{"typed_config": {"@type": STDERR_LOG_TYPE}}])
    tcp = the_hcm(load(bootstrap([listener(proxy)])))
    assert (tcp.idle_timeout, tcp.max_connect_attempts, len(tcp.access_log)) == (10, 3, 1)


def tcp_error(**fields: Any) -> str:
    return error(bootstrap([listener({"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", **fields})]))


def test_tcp_proxy_weighted_clusters_hash_policy_and_max_duration() -> None:
    proxy = {"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "hash_policy": [{"source_ip": {}}],
             "weighted_clusters": {"clusters": [{"name": "svc", "weight": 1}, {"name": "svc", "weight": 3}]},
             "max_downstream_connection_duration": "1.5s",
             "max_downstream_connection_duration_jitter_percentage": {"value": 10}}
    tcp = the_hcm(load(bootstrap([listener(proxy)])))
    assert tcp.cluster is None and [c.weight for c in tcp.weighted_clusters.clusters] == [1, 3]
    assert tcp.max_downstream_connection_duration == 1.5 and tcp.hash_policy[0].source_ip is not None
    assert list(tcp.cluster_references()) == [("weighted_clusters.clusters[0].name", "svc"),
                                              ("weighted_clusters.clusters[1].name", "svc")]
    assert to_envoy_dict(tcp)["weighted_clusters"] == proxy["weighted_clusters"]  # what /config_dump shows


def test_tcp_proxy_field_errors_name_the_field() -> None:
    base = f"config error in test.yaml: {HCM_PATH}"
    assert tcp_error() == f"{base}: exactly one of cluster, weighted_clusters must be set"
    assert tcp_error(cluster="svc", weighted_clusters={"clusters": [{"name": "svc", "weight": 1}]}) == (
        f"{base}: exactly one of cluster, weighted_clusters must be set (got cluster, weighted_clusters)")
    assert tcp_error(weighted_clusters={"clusters": []}) == (
        f"{base}.weighted_clusters.clusters: Expected `array` of length >= 1")
    assert tcp_error(weighted_clusters={"clusters": [{"name": "svc", "weight": 0}]}) == (
        f"{base}.weighted_clusters.clusters[0].weight: Expected `int` >= 1")
    assert tcp_error(weighted_clusters={"clusters": [{"name": "svc", "weight": 1}, {"name": "db", "weight": 1}]}) == (
        f"{base}.weighted_clusters.clusters[1].name: unknown cluster 'db'")
    assert tcp_error(weighted_clusters={"clusters": [{"name": "svc", "weight": 1, "metadata_match": {}}]}).startswith(
        f"{base}.weighted_clusters.clusters[0].metadata_match: tcp_proxy's metadata_match (subset load balancing per connection) is not "
        "supported yet")
    assert tcp_error(cluster="svc", metadata_match={}).startswith(f"{base}.metadata_match: tcp_proxy's metadata_match")
    assert tcp_error(cluster="svc", hash_policy=[{"filter_state": {"key": "k"}}]).startswith(
        f"{base}.hash_policy[0].filter_state: hashing a filter state object is not supported")
    assert tcp_error(cluster="svc", hash_policy=[{}]) == (
        f"{base}.hash_policy[0]: exactly one of source_ip, filter_state must be set")
    assert tcp_error(cluster="svc", hash_policy=[{"source_ip": {}}, {"source_ip": {}}]) == (
        f"{base}.hash_policy: Expected `array` of length <= 1")
    assert tcp_error(cluster="svc", max_downstream_connection_duration="0.0001s") == (
        f"{base}.max_downstream_connection_duration: must be at least 0.001s")
    assert tcp_error(cluster="svc", tunneling_config={"hostname": "h", "post_path": "/p"}) == (
        f"{base}.tunneling_config.post_path: Can't set a post path when POST method isn't used")  # Envoy's words
    assert tcp_error(cluster="svc", tunneling_config={}) == f"{base}.tunneling_config.hostname: missing required field"
    for field in ("propagate_response_headers", "propagate_response_trailers"):
        assert tcp_error(cluster="svc", tunneling_config={"hostname": "h", field: True}).startswith(
            f"{base}.tunneling_config.{field}: not supported yet")
    assert tcp_error(cluster="svc", tunneling_config={"hostname": "h", "request_id_extension": {}}).startswith(
        f"{base}.tunneling_config.request_id_extension: not supported yet")


def test_tcp_proxy_tunneling_config() -> None:
    tunneling = {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%", "use_post": True, "post_path": "/up",
                 "headers_to_add": [{"header": {"key": "x-a", "value": "b"}}]}
    tcp = the_hcm(load(bootstrap([listener({"@type": TCP_PROXY_TYPE, "stat_prefix": "t", "cluster": "svc",
                                            "tunneling_config": tunneling})])))
    config = tcp.tunneling_config
    assert (config.hostname, config.use_post, config.post_path) == ("%DOWNSTREAM_LOCAL_ADDRESS%", True, "/up")


def test_tcp_tunneling_over_an_http2_cluster_loads() -> None:
    """Each connection is one HTTP/2 CONNECT stream on the cluster's pool (tcp_tunneling_h2.py), as in Envoy."""
    data = bootstrap([listener({"@type": TCP_PROXY_TYPE, "stat_prefix": "t", "cluster": "svc",
                                "tunneling_config": {"hostname": "h:1"}})],
                     [cluster("svc", http2_protocol_options={})])
    assert load(data).static_resources.clusters[0].upstream_protocol[0] == "http2"


# --------------------------------------------------------------------------- listeners


def test_listener_defaults_and_fields() -> None:
    plain = load(bootstrap()).static_resources.listeners[0]
    assert plain.per_connection_buffer_limit_bytes == 1024 * 1024 and plain.enable_reuse_port is True
    assert plain.connection_balance_config is None and plain.listener_filters == []
    tuned = listener(
        hcm(),
        per_connection_buffer_limit_bytes=32768,
        enable_reuse_port=False,
        connection_balance_config={"exact_balance": {}},
        listener_filters=[{"name": "envoy.filters.listener.tls_inspector", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}],
    )
    loaded = load(bootstrap([tuned])).static_resources.listeners[0]
    assert loaded.per_connection_buffer_limit_bytes == 32768 and loaded.enable_reuse_port is False
    assert loaded.connection_balance_config.exact_balance is not None
    assert loaded.listener_filters[0].name == "envoy.filters.listener.tls_inspector"
    assert loaded.address.socket_address.port_value == 10000 and loaded.address.socket_address.protocol == "TCP"


def test_extend_balance_names_the_unregistered_type() -> None:
    url = "type.googleapis.com/example.connection_balance.v1.RoundRobin"
    balance = {"extend_balance": {"name": "example.round_robin", "typed_config": {"@type": url}}}
    assert error(bootstrap([listener(hcm(), connection_balance_config=balance)])) == (
        "config error in test.yaml: static_resources.listeners[0].connection_balance_config.extend_balance."
        f"typed_config.@type: unknown connection balancer type {url}; accepted here: "
        "type.googleapis.com/envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb, "
        "type.googleapis.com/pylon.connection_balance.v1.Dispatcher"
    )


def test_an_unknown_listener_filter_is_refused_naming_those_accepted() -> None:
    url = "type.googleapis.com/envoy.extensions.filters.listener.original_src.v3.OriginalSrc"
    filters = [{"name": "envoy.filters.listener.original_src", "typed_config": {"@type": url}}]
    proxy_protocol = "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol"
    assert error(bootstrap([listener(hcm(), listener_filters=filters)])) == (
        "config error in test.yaml: static_resources.listeners[0].listener_filters[0].typed_config.@type: "
        f"unknown listener filter type {url}; accepted here: {HTTP_INSPECTOR_TYPE}, {ORIGINAL_DST_TYPE}, "
        f"{proxy_protocol}, {TLS_INSPECTOR_TYPE}"
    )


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"address": {"socket_address": {"address": "localhost", "port_value": 80}}},
         "address.socket_address.address", "a listener address must be an IP address"),
        ({"address": {"socket_address": {"address": "127.0.0.1"}}},
         "address.socket_address.port_value", "missing required field"),
        ({"address": {"pipe": {"path": "/tmp/s"}}}, "address.pipe", "pylon listeners bind IP addresses only (socket_address)"),
        ({"address": {"socket_address": {"address": "::1", "port_value": 80, "protocol": "UDP"}}},
         "listener_filters", "a UDP listener in pylon takes exactly one UDP listener filter "
                             "(envoy.filters.udp_listener.udp_proxy)"),
        ({"address": {"socket_address": {"address": "::1", "port_value": 70000}}},
         "address.socket_address.port_value", "Expected `int` <= 65535"),
        ({"filter_chains": []}, "filter_chains", "a listener needs a filter chain (or a default_filter_chain)"),
        ({"filter_chains": [{"filter_chain_match": {"server_names": ["a.example", "www.*.example"]},
                             "filters": [{"name": "a", "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "t",
                                                                        "cluster": "svc"}}]}]},
         "filter_chains[0].filter_chain_match.server_names[1]",
         "'www.*.example': partial wildcards are not supported (only a leading '*.', as in '*.example.com')"),
        ({"filter_chains": [{"filter_chain_match": {"prefix_ranges": [{"address_prefix": "10.0.0.0.1"}]},
                             "filters": [{"name": "a", "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "t",
                                                                        "cluster": "svc"}}]}]},
         "filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix", "malformed IP address: 10.0.0.0.1"),
        ({"connection_balance_config": {}}, "connection_balance_config",
         "exactly one of exact_balance, extend_balance must be set"),
    ],
)  # fmt: skip
def test_listener_errors(change: dict[str, Any], path: str, message: str) -> None:
    assert error(bootstrap([listener(hcm(), **change)])) == (
        f"config error in test.yaml: static_resources.listeners[0].{path}: {message}"
    )


def test_network_filter_before_the_terminal_one_is_rejected() -> None:
    chain = {"filters": [{"name": "hcm", "typed_config": hcm()}, {"name": "tcp", "typed_config": {"@type": TCP_PROXY_TYPE, "stat_prefix": "t", "cluster": "svc"}}]}
    assert error(bootstrap([listener(hcm(), filter_chains=[chain])])) == (
        "config error in test.yaml: static_resources.listeners[0].filter_chains[0].filters[0]: "
        "hcm is terminal and must be the last filter"
    )


# --------------------------------------------------------------------------- TLS


def downstream_tls(**common: Any) -> dict[str, Any]:
    context = {"tls_certificates": [{"certificate_chain": {"inline_string": PEM}, "private_key": {"inline_string": "k"}}]}
    context.update(common)
    return {"name": "envoy.transport_sockets.tls", "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": context}}


def test_downstream_tls_context() -> None:
    socket = downstream_tls(
        tls_params={"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3",
                    "cipher_suites": ["ECDHE-RSA-AES128-GCM-SHA256"], "ecdh_curves": ["X25519", "P-256"]},
        validation_context={"trusted_ca": {"inline_string": PEM},
                            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}],
                            "match_subject_alt_names": [{"exact": "client.example.com"}]},
        alpn_protocols=["http/1.1"],
    )  # fmt: skip
    socket["typed_config"].update(require_client_certificate=True, session_timeout="300s",
                                  disable_stateless_session_resumption=True)  # fmt: skip
    chain = {"filters": [{"name": "hcm", "typed_config": hcm()}], "transport_socket": socket}
    tls = load(bootstrap([listener(hcm(), filter_chains=[chain])])).static_resources.listeners[0].filter_chains[0]
    context = tls.transport_socket.typed_config
    assert context.require_client_certificate and context.session_timeout == 300
    assert context.disable_stateless_session_resumption and not context.disable_stateful_session_resumption
    common = context.common_tls_context
    assert common.tls_params.tls_minimum_protocol_version == "TLSv1_2"
    assert common.tls_params.ecdh_curves == ["X25519", "P-256"] and common.alpn_protocols == ["http/1.1"]
    assert common.tls_certificates[0].certificate_chain.inline_string == PEM
    san = common.validation_context.match_typed_subject_alt_names[0]
    assert san.san_type == "URI" and san.matcher.prefix == "spiffe://cluster.local/"
    assert common.validation_context.match_subject_alt_names[0].exact == "client.example.com"


@pytest.mark.parametrize(
    ("common", "path", "message"),
    [
        ({"tls_certificates": []}, "common_tls_context.tls_certificates", "a server TLS context needs a certificate"),
        ({"tls_certificates": [{"certificate_chain": {"inline_string": PEM}, "private_key_provider": {
            "provider_name": "hsm", "typed_config": {
                "@type": "type.googleapis.com/example.private_key_providers.hsm.v1.Hsm", "key_label": "k"}}}]},
         "common_tls_context.tls_certificates[0].private_key_provider.typed_config.@type",
         "unknown private key provider type type.googleapis.com/example.private_key_providers.hsm.v1.Hsm; "
         "accepted here: type.googleapis.com/envoy.extensions."
         "private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig, type.googleapis.com/envoy.extensions."
         "private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig, type.googleapis.com/envoy.extensions."
         "private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig, "
         "type.googleapis.com/pylon.key_providers.keyd.v1.Keyd, type.googleapis.com/pylon.key_providers.offload.v1.Offload"),
        ({"tls_certificates": [{"certificate_chain": {"inline_string": PEM}}]},
         "common_tls_context.tls_certificates[0]", "exactly one of private_key, private_key_provider must be set"),
        ({"tls_certificates": [], "tls_certificate_sds_secret_configs": [{"name": "default"}]},
         "common_tls_context.tls_certificate_sds_secret_configs[0].name",
         "unknown static secret 'default' (no static_resources.secrets of that name; give sds_config to fetch it over SDS)"),
        ({"validation_context_sds_secret_config": {"name": "ROOTCA"}},
         "common_tls_context.validation_context_sds_secret_config.name",
         "unknown static secret 'ROOTCA' (no static_resources.secrets of that name; give sds_config to fetch it over SDS)"),
        ({"tls_certificates": [{"certificate_chain": {"inline_string": PEM}, "private_key": {"inline_string": PEM}}],
          "tls_certificate_sds_secret_configs": [{"name": "default"}]},
         "common_tls_context.tls_certificate_sds_secret_configs",
         "only one of tls_certificates and tls_certificate_sds_secret_configs may be set"),
        ({"validation_context": {"trusted_ca": {"inline_string": PEM}}, "validation_context_sds_secret_config": {"name": "R"}},
         "common_tls_context", "at most one of validation_context, validation_context_sds_secret_config, "
                               "combined_validation_context may be set (got validation_context, validation_context_sds_secret_config)"),
        ({"tls_params": {"tls_minimum_protocol_version": "TLSv1_3", "tls_maximum_protocol_version": "TLSv1_2"}},
         "common_tls_context.tls_params.tls_minimum_protocol_version", "must not be above tls_maximum_protocol_version"),
        ({"tls_params": {"tls_minimum_protocol_version": "SSLv3"}},
         "common_tls_context.tls_params.tls_minimum_protocol_version", "Invalid enum value 'SSLv3'; accepted: TLS_AUTO, TLSv1_0, TLSv1_1, TLSv1_2, TLSv1_3 (in any letter case)"),
        ({"validation_context": {"match_subject_alt_names": [{"exact": "a"}]}},
         "common_tls_context.validation_context.trusted_ca", "SAN matching without a trusted CA is insecure and not allowed"),
    ],
)  # fmt: skip
def test_downstream_tls_errors(common: dict[str, Any], path: str, message: str) -> None:
    chain = {"filters": [{"name": "hcm", "typed_config": hcm()}], "transport_socket": downstream_tls(**common)}
    assert error(bootstrap([listener(hcm(), filter_chains=[chain])])) == (
        "config error in test.yaml: static_resources.listeners[0].filter_chains[0].transport_socket.typed_config."
        f"{path}: {message}"
    )


@pytest.mark.parametrize(("timeout", "message"), [
    ("4294967295s", None), ("4294967296s", "must be less than 4294967296s"), ("-1s", "invalid duration '-1s'")
])  # fmt: skip
def test_session_timeout_bounds(timeout: str, message: str | None) -> None:
    """PGV `lt: {seconds: 4294967296}`, `gte: {}` on DownstreamTlsContext.session_timeout."""
    socket = downstream_tls()
    socket["typed_config"]["session_timeout"] = timeout
    data = bootstrap([listener(hcm(), filter_chains=[{"filters": [{"name": "hcm", "typed_config": hcm()}],
                                                      "transport_socket": socket}])])  # fmt: skip
    if message is None:
        load(data)
    else:
        assert error(data).startswith(
            "config error in test.yaml: static_resources.listeners[0].filter_chains[0].transport_socket.typed_config."
            f"session_timeout: {message}"
        )


def test_auto_sni_options_in_the_typed_protocol_options_or_the_deprecated_field() -> None:
    options = {"auto_sni": True, "auto_san_validation": True, "override_auto_sni_header": "x-sni"}
    typed = {"@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http_protocol_options": {}},
             "upstream_http_protocol_options": options}
    loaded = load(bootstrap(clusters=[cluster(typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed})])).static_resources.clusters[0]
    assert loaded.auto_sni_options is not None and loaded.auto_sni_options.override_auto_sni_header == "x-sni"
    assert to_envoy_dict(loaded)["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]["upstream_http_protocol_options"] == options
    deprecated = load(bootstrap(clusters=[cluster(upstream_http_protocol_options=options)])).static_resources.clusters[0]
    assert deprecated.auto_sni_options == loaded.auto_sni_options
    both = cluster(upstream_http_protocol_options=options, typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": typed})
    assert error(bootstrap(clusters=[both])).startswith(
        "config error in test.yaml: static_resources.clusters[0].upstream_http_protocol_options: Envoy ignores this "
        "deprecated field")
    bad = cluster(upstream_http_protocol_options={"override_auto_sni_header": "x\nsni"})
    assert error(bootstrap(clusters=[bad])).startswith(
        "config error in test.yaml: static_resources.clusters[0].upstream_http_protocol_options."
        "override_auto_sni_header: must not contain")


def test_crl_needs_a_trusted_ca_and_loads_as_pem_crls() -> None:
    upstream = {"name": "tls", "typed_config": {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": {
        "validation_context": {"crl": {"inline_string": "x"}}}}}
    assert error(bootstrap(clusters=[cluster(transport_socket=upstream)])).startswith(
        "config error in test.yaml: static_resources.clusters[0].transport_socket.typed_config.common_tls_context."
        "validation_context.crl: a CRL without a trusted CA")
    validation = upstream["typed_config"]["common_tls_context"]["validation_context"]
    validation.update(trusted_ca={"inline_string": PEM}, only_verify_leaf_cert_crl=True)
    context = load(bootstrap(clusters=[cluster(transport_socket=upstream)])).static_resources.clusters[0].transport_socket
    assert context.typed_config.common_tls_context.validation_context.only_verify_leaf_cert_crl is True
    assert to_envoy_dict(context)["typed_config"]["common_tls_context"]["validation_context"]["crl"] == {
        "inline_string": "x"}  # what /config_dump shows


def test_upstream_tls_context_and_wrong_direction() -> None:
    upstream = {"name": "tls", "typed_config": {"@type": UPSTREAM_TLS_TYPE, "sni": "backend.example.com",
                                                "common_tls_context": {"validation_context": {"trusted_ca": {"inline_string": PEM}}}}}  # fmt: skip
    context = load(bootstrap(clusters=[cluster(transport_socket=upstream)])).static_resources.clusters[0].transport_socket.typed_config
    assert isinstance(context, UpstreamTlsContext) and context.sni == "backend.example.com"
    assert context.allow_renegotiation is False and context.common_tls_context.tls_certificates == []
    assert context.common_tls_context.tls_params.tls_minimum_protocol_version == "TLS_AUTO"
    upstream["typed_config"]["@type"] = DOWNSTREAM_TLS_TYPE
    assert error(bootstrap(clusters=[cluster(transport_socket=upstream)])) == (
        "config error in test.yaml: static_resources.clusters[0].transport_socket.typed_config.@type: "
        f"{DOWNSTREAM_TLS_TYPE} is registered as downstream transport socket, but this position takes "
        "upstream transport sockets; accepted here: type.googleapis.com/envoy.extensions.transport_sockets."
        "proxy_protocol.v3.ProxyProtocolUpstreamTransport, type.googleapis.com/envoy.extensions.transport_sockets."
        "raw_buffer.v3.RawBuffer, type.googleapis.com/envoy.extensions.transport_sockets.tap.v3.Tap, "
        f"{UPSTREAM_TLS_TYPE}"
    )


# --------------------------------------------------------------------------- clusters


def test_cluster_defaults_are_envoys() -> None:
    svc = load(bootstrap()).static_resources.clusters[0]
    assert (svc.type, svc.lb_policy, svc.connect_timeout, svc.dns_lookup_family) == ("STATIC", "ROUND_ROBIN", 5, "AUTO")
    assert svc.dns_refresh_rate == 5 and svc.common_lb_config.healthy_panic_threshold.value == 50
    assert (svc.ring_hash_lb_config.minimum_ring_size, svc.ring_hash_lb_config.maximum_ring_size) == (1024, 8388608)
    assert svc.least_request_lb_config.choice_count == 2 and svc.per_connection_buffer_limit_bytes == 1048576
    assert svc.circuit_breakers is None and svc.outlier_detection is None and svc.health_checks == []
    assert svc.max_requests_per_connection is None and svc.typed_extension_protocol_options == {}
    lb_endpoint = svc.load_assignment.endpoints[0].lb_endpoints[0]
    assert lb_endpoint.load_balancing_weight == 1 and lb_endpoint.endpoint.hostname == ""
    assert svc.load_assignment.endpoints[0].priority == 0 and svc.load_assignment.endpoints[0].locality is None


def test_cluster_fields() -> None:
    data = y(f"""
      name: web
      type: STRICT_DNS
      connect_timeout: 0.25s
      lb_policy: RING_HASH
      dns_lookup_family: V4_ONLY
      dns_refresh_rate: 30s
      per_connection_buffer_limit_bytes: 65536
      max_requests_per_connection: 100
      common_lb_config: {{healthy_panic_threshold: {{value: 25.5}}}}
      ring_hash_lb_config: {{minimum_ring_size: 128, maximum_ring_size: 4096}}
      least_request_lb_config: {{choice_count: 3}}
      load_assignment:
        cluster_name: web
        endpoints:
        - locality: {{region: eu, zone: eu-1a, sub_zone: rack9}}
          load_balancing_weight: 10
          lb_endpoints:
          - endpoint: {{address: {{socket_address: {{address: web.internal, port_value: 80}}}}, hostname: web-1}}
            load_balancing_weight: 3
      circuit_breakers:
        thresholds:
        - {{max_connections: 10, max_pending_requests: 20, max_requests: 30, max_retries: 1}}
        - {{priority: HIGH}}
      health_checks:
      - timeout: 1s
        interval: 5s
        interval_jitter: 0.5s
        unhealthy_threshold: 3
        healthy_threshold: 2
        http_health_check: {{path: /healthz, host: web.internal, expected_statuses: [{{start: 200, end: 300}}]}}
      outlier_detection: {{consecutive_5xx: 3, interval: 5s, base_ejection_time: 10s, max_ejection_percent: 50,
                          consecutive_gateway_failure: 2, enforcing_consecutive_gateway_failure: 100}}
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": {HTTP_OPTIONS_TYPE}
          explicit_http_config: {{http_protocol_options: {{}}}}
    """)  # fmt: skip
    web = load(bootstrap(clusters=[data], listeners=[listener(hcm(routes=[{"match": {"prefix": "/"}, "route": {"cluster": "web"}}]))])).static_resources.clusters[0]
    assert (web.type, web.connect_timeout, web.lb_policy, web.dns_lookup_family) == ("STRICT_DNS", 0.25, "RING_HASH", "V4_ONLY")
    assert web.dns_refresh_rate == 30 and web.per_connection_buffer_limit_bytes == 65536
    assert web.max_requests_per_connection == 100 and web.common_lb_config.healthy_panic_threshold.value == 25.5
    assert web.ring_hash_lb_config.minimum_ring_size == 128 and web.least_request_lb_config.choice_count == 3
    locality = web.load_assignment.endpoints[0]
    assert (locality.locality.region, locality.locality.zone, locality.locality.sub_zone) == ("eu", "eu-1a", "rack9")
    assert locality.load_balancing_weight == 10
    endpoint = locality.lb_endpoints[0]
    assert endpoint.load_balancing_weight == 3 and endpoint.endpoint.hostname == "web-1"
    assert endpoint.endpoint.address.socket_address.address == "web.internal"
    default, high = web.circuit_breakers.thresholds
    assert (default.priority, default.max_connections, default.max_pending_requests) == ("DEFAULT", 10, 20)
    assert (default.max_requests, default.max_retries) == (30, 1)
    assert (high.priority, high.max_connections, high.max_retries) == ("HIGH", 1024, 3)
    (http_check,) = web.health_checks
    assert (http_check.timeout, http_check.interval, http_check.interval_jitter) == (1, 5, 0.5)
    assert http_check.http_health_check.path == "/healthz" and http_check.no_traffic_interval == 60
    assert (http_check.http_health_check.expected_statuses[0].start, http_check.http_health_check.expected_statuses[0].end) == (200, 300)
    outlier = web.outlier_detection
    assert (outlier.consecutive_5xx, outlier.interval, outlier.base_ejection_time, outlier.max_ejection_percent) == (3, 5, 10, 50)
    assert outlier.enforcing_consecutive_5xx == 100 and outlier.enforcing_consecutive_gateway_failure == 100
    options = web.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert isinstance(options, UpstreamHttpProtocolOptions) and options.explicit_http_config.http_protocol_options is not None


def test_outlier_detection_defaults() -> None:
    outlier = load(bootstrap(clusters=[cluster(outlier_detection={})])).static_resources.clusters[0].outlier_detection
    assert (outlier.consecutive_5xx, outlier.interval, outlier.base_ejection_time) == (5, 10, 30)
    assert (outlier.max_ejection_percent, outlier.enforcing_consecutive_5xx) == (10, 100)
    assert (outlier.consecutive_gateway_failure, outlier.enforcing_consecutive_gateway_failure) == (5, 0)


OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def _common_options(**common: Any) -> dict[str, Any]:
    """Cluster fields: the typed HttpProtocolOptions with these common_http_protocol_options."""
    return {"typed_extension_protocol_options": {OPTIONS_KEY: {
        "@type": HTTP_OPTIONS_TYPE, "common_http_protocol_options": common,
        "explicit_http_config": {"http_protocol_options": {}}}}}


@pytest.mark.parametrize(
    ("fields", "idle_timeout", "max_duration", "max_requests", "max_headers"),
    [
        ({}, 3600, None, 0, 100),  # Envoy's defaults for upstream connections
        (_common_options(idle_timeout="0.5s", max_connection_duration="60s", max_requests_per_connection=7,
                         max_headers_count=20), 0.5, 60, 7, 20),
        (_common_options(idle_timeout="0s"), 0, None, 0, 100),  # 0: never
        ({"common_http_protocol_options": {"idle_timeout": "2s", "max_requests_per_connection": 3}}, 2, None, 3, 100),
        ({"max_requests_per_connection": 4, **_common_options(idle_timeout="1s")}, 1, None, 4, 100),
        ({"max_requests_per_connection": 5}, 3600, None, 5, 100),
        (_common_options(headers_with_underscores_action="REJECT_REQUEST"), 3600, None, 0, 100),
    ],
)  # fmt: skip
def test_cluster_connection_options_in_force(fields: dict[str, Any], idle_timeout: float, max_duration: float | None,
                                             max_requests: int, max_headers: int) -> None:
    """Wherever Envoy lets a cluster say them (typed options, deprecated fields), one set of options is in force."""
    svc = load(bootstrap(clusters=[cluster(**fields)])).static_resources.clusters[0]
    options = svc.http_protocol_options
    assert (options.idle_timeout, options.max_connection_duration) == (idle_timeout, max_duration)
    assert (svc.requests_per_connection_limit, options.max_headers_count) == (max_requests, max_headers)
    assert convert(to_envoy_dict(svc), Cluster) == svc  # and it travels to the workers unchanged


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"type": "EDS"}, "eds_cluster_config", "missing required field (an EDS cluster needs its EDS source)"),
        ({"type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}}}, "load_assignment",
         "an EDS cluster takes its endpoints from EDS, not inline"),
        ({"eds_cluster_config": {"eds_config": {"ads": {}}}}, "eds_cluster_config", "only for type EDS, not STATIC"),
        ({"type": "EDS", "eds_cluster_config": {"eds_config": {"path_config_source": {"path": "/e.yaml"}}}},
         "eds_cluster_config.eds_config.path_config_source", "EDS from a file is not supported yet; use ads: {} or an api_config_source"),
        ({"lb_policy": "LOAD_BALANCING_POLICY_CONFIG"}, "lb_policy",
         "Invalid enum value 'LOAD_BALANCING_POLICY_CONFIG'; accepted: CLUSTER_PROVIDED, LEAST_REQUEST, MAGLEV, RANDOM, "
         "RING_HASH, ROUND_ROBIN (in any letter case)"),
        ({"connect_timeout": "0s"}, "connect_timeout", "must be greater than 0s"),
        ({"typed_extension_protocol_options": {OPTIONS_KEY: {"@type": HTTP_OPTIONS_TYPE, "auto_config": {}}}},
         f"typed_extension_protocol_options[{OPTIONS_KEY}].auto_config", "ALPN configured for cluster svc which has a "
         "non-ALPN transport socket (auto_config needs a TLS transport_socket, as in Envoy 1.40)"),
        ({"typed_extension_protocol_options": {OPTIONS_KEY: {"@type": HTTP_OPTIONS_TYPE}}},
         f"typed_extension_protocol_options[{OPTIONS_KEY}]",
         "exactly one of explicit_http_config, use_downstream_protocol_config, auto_config must be set"),
        ({"http2_protocol_options": {}, "typed_extension_protocol_options": {OPTIONS_KEY: {
            "@type": HTTP_OPTIONS_TYPE, "explicit_http_config": {"http_protocol_options": {}}}}},
         "http2_protocol_options", f"Envoy ignores this deprecated field when typed_extension_protocol_options["
         f"{OPTIONS_KEY}] is set; move it to that extension's explicit_http_config"),
        ({"http2_protocol_options": {"allow_metadata": True}}, "http2_protocol_options.allow_metadata",
         "not supported yet (HTTP/2 METADATA frames)"),
        ({"typed_extension_protocol_options": {"http": {"@type": HTTP_OPTIONS_TYPE,
                                                        "explicit_http_config": {"http_protocol_options": {}}}}},
         "typed_extension_protocol_options[http]", f"the key must be the extension name {OPTIONS_KEY}"),
        ({"health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1}]},
         "health_checks[0]", "exactly one of http_health_check, tcp_health_check must be set"),
        ({"health_checks": [{"timeout": "1s", "interval": "1s", "healthy_threshold": 1, "tcp_health_check": {}}]},
         "health_checks[0].unhealthy_threshold", "missing required field"),
        ({"ring_hash_lb_config": {"minimum_ring_size": 4096, "maximum_ring_size": 1024}},
         "ring_hash_lb_config.minimum_ring_size", "must not exceed maximum_ring_size"),
        ({"least_request_lb_config": {"choice_count": 1}}, "least_request_lb_config.choice_count", "Expected `int` >= 2"),
        ({"common_lb_config": {"healthy_panic_threshold": {"value": 101}}},
         "common_lb_config.healthy_panic_threshold.value", "Expected `float` <= 100.0"),
        ({"circuit_breakers": {"thresholds": [{"priority": "LOW"}]}}, "circuit_breakers.thresholds[0].priority",
         "Invalid enum value 'LOW'; accepted: DEFAULT, HIGH (in any letter case)"),
        ({"common_lb_config": {"zone_aware_lb_config": {}}}, "common_lb_config.zone_aware_lb_config",
         "not supported yet"),
        ({"lb_policy": "MAGLEV", "common_lb_config": {"locality_weighted_lb_config": {}}},
         "common_lb_config.locality_weighted_lb_config",
         "locality weights with MAGLEV are not supported yet (ROUND_ROBIN, LEAST_REQUEST and RANDOM take them)"),
        ({"load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
            "health_check_config": {"port_value": 81}}}]}]}},
         "load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config.port_value",
         "health checks on another port than the endpoint's are not supported yet"),
        ({"load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
            "health_check_config": {"hostname": "h"}}}]}]}},
         "load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config.hostname", "not supported yet"),
        ({"load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "db.local", "port_value": 1}}}}]}]}},
         "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address",
         "'db.local' is not an IP address (STATIC clusters need IPs; use STRICT_DNS for names)"),
        ({"type": "LOGICAL_DNS", "load_assignment": {"cluster_name": "svc", "endpoints": []}},
         "load_assignment", "a LOGICAL_DNS cluster needs exactly one endpoint, got 0"),
        ({"load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "::1", "port_value": 1}}}, "load_balancing_weight": 0}]}]}},
         "load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight", "Expected `int` >= 1"),
        ({"http2_protocol_options": {"max_concurrent_streams": 0}}, "http2_protocol_options.max_concurrent_streams",
         "Expected `int` >= 1"),
        (_common_options(max_response_headers_kb=10),
         f"typed_extension_protocol_options[{OPTIONS_KEY}].common_http_protocol_options.max_response_headers_kb",
         "not supported yet"),
        (_common_options(max_headers_count=0),
         f"typed_extension_protocol_options[{OPTIONS_KEY}].common_http_protocol_options.max_headers_count",
         "Expected `int` >= 1"),
        ({"common_http_protocol_options": {"idle_timeout": "1s"}, **_common_options()},
         "common_http_protocol_options",
         f"Envoy ignores this deprecated field when typed_extension_protocol_options[{OPTIONS_KEY}] is set; move it "
         "to that extension's common_http_protocol_options"),
        ({"max_requests_per_connection": 3, **_common_options(max_requests_per_connection=2)},
         "max_requests_per_connection",
         "only one of max_requests_per_connection from Cluster or HttpProtocolOptions can be specified"),
    ],
)  # fmt: skip
def test_cluster_errors(change: dict[str, Any], path: str, message: str) -> None:
    assert error(bootstrap(clusters=[cluster(**change)])) == (
        f"config error in test.yaml: static_resources.clusters[0].{path}: {message}"
    )


@pytest.mark.parametrize("h2", [
    {"http2_protocol_options": {}},
    {"typed_extension_protocol_options": {OPTIONS_KEY: {"@type": HTTP_OPTIONS_TYPE,
                                                        "explicit_http_config": {"http2_protocol_options": {}}}}},
])  # fmt: skip
def test_a_route_to_an_http2_cluster_validates(h2: dict[str, Any]) -> None:
    """An HTTP/2 cluster with IP endpoints is the data plane's (upstream HTTP/2): routes may use it."""
    parse_bootstrap(bootstrap(clusters=[cluster(**h2)]), "test.yaml")


def test_static_eds_cluster_needs_its_source() -> None:
    eds = {"name": "e", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": "svc-e"}}
    assert error(bootstrap(clusters=[eds])) == ("config error in test.yaml: static_resources.clusters[0]."
                                               "eds_cluster_config.eds_config.ads: needs dynamic_resources.ads_config")


# --------------------------------------------------------------------------- bootstrap, unknown fields, @type


def test_node_and_admin() -> None:
    data = bootstrap()
    data["node"] = {"id": "front-proxy-1", "cluster": "front", "metadata": {"team": "edge", "n": 1}}
    data["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9901}},
                     "access_log": [{"name": "a", "typed_config": {"@type": FILE_LOG_TYPE, "path": "/dev/null"}}]}  # fmt: skip
    loaded = load(data)
    assert (loaded.node.id, loaded.node.cluster, loaded.node.metadata) == ("front-proxy-1", "front", {"team": "edge", "n": 1})
    assert loaded.admin.address.socket_address.port_value == 9901
    assert loaded.admin.access_log[0].typed_config.path == "/dev/null"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda d: d.update(overload_manager={"resource_monitors": [], "loadshed": []}), "overload_manager.loadshed"),
        (lambda d: d["static_resources"]["listeners"][0].update(filter_chain_match={}), "static_resources.listeners[0].filter_chain_match"),
        (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0].update(filter_chain_match={"sni": "a"}),
         "static_resources.listeners[0].filter_chains[0].filter_chain_match.sni"),
        (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"].update(http3_protocol_options={}),
         f"{HCM_PATH}.http3_protocol_options"),
        (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0].update(require_tls="ALL"),
         f"{HCM_PATH}.route_config.virtual_hosts[0].require_tls"),
        (lambda d: d["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"][0]["typed_config"].update(strict_check_headers=["x-envoy-max-retries"]),
         f"{HCM_PATH}.http_filters[0].typed_config.strict_check_headers"),
    ],
)  # fmt: skip
def test_unknown_fields_at_several_depths(mutate: Any, path: str) -> None:
    data = bootstrap()
    mutate(data)
    assert error(data) == f"config error in test.yaml: {path}: unknown field"


def test_typed_filter_metadata_takes_the_types_a_reader_knows() -> None:
    audience = "type.googleapis.com/envoy.extensions.filters.http.gcp_authn.v3.Audience"
    data = bootstrap()
    data["static_resources"]["clusters"][0]["metadata"] = {
        "typed_filter_metadata": {"envoy.filters.http.gcp_authn": {"@type": audience, "url": "http://svc"}}}
    loaded = load(data).static_resources.clusters[0].metadata.typed_filter_metadata
    assert loaded["envoy.filters.http.gcp_authn"].url == "http://svc"
    other = "type.googleapis.com/google.protobuf.Struct"
    data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"] = {
        "typed_filter_metadata": {"x": {"@type": other}}}
    assert error(data).startswith(
        "config error in test.yaml: static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0]."
        f"metadata.typed_filter_metadata[x].@type: unknown typed filter metadata type {other}")


def test_missing_or_unknown_type_urls() -> None:
    data = bootstrap([listener({"stat_prefix": "x"})])
    assert error(data) == f"config error in test.yaml: {HCM_PATH}.@type: missing required field"
    url = "type.googleapis.com/envoy.extensions.filters.network.mongo_proxy.v3.MongoProxy"
    assert error(bootstrap([listener({"@type": url})])) == (
        f"config error in test.yaml: {HCM_PATH}.@type: unknown network filter type {url}; accepted here: "
        f"type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager, "
        f"type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, "
        f"type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy, "
        f"type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig, "
        f"{TCP_PROXY_TYPE}"
    )
    data = bootstrap()
    del data["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert error(data) == f"config error in test.yaml: {HCM_PATH}: missing required field"


def test_type_url_prefix_is_not_significant() -> None:
    manager = hcm()
    manager["@type"] = "example.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    assert isinstance(the_hcm(load(bootstrap([listener(manager)]))), HttpConnectionManager)


def test_hyperscan_input_matcher_in_a_route_matcher() -> None:
    """Envoy's contrib Hyperscan input matcher loads in a virtual host's matcher (run on pylon's regex engine);
    a Route action without its typed_config is refused at its path."""
    single = {"input": {"name": "request-headers", "typed_config": {
        "@type": "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput", "header_name": ":path"}},
        "custom_match": {"name": "hyperscan", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.matching.input_matchers.hyperscan.v3alpha.Hyperscan",
            "regexes": [{"regex": "^/api/.*"}]}}}
    action = {"name": "route", "typed_config": {"@type": "type.googleapis.com/envoy.config.route.v3.Route",
                                                "match": {"prefix": "/"}, "route": {"cluster": "backend"}}}
    matcher = {"matcher_list": {"matchers": [{"predicate": {"single_predicate": single}, "on_match": {"action": action}}]}}
    route_config = {"virtual_hosts": [{"name": "vh", "domains": ["*"], "matcher": matcher}]}
    loaded = the_hcm(load(bootstrap([listener(hcm(route_config=route_config))])))
    decoded = loaded.route_config.virtual_hosts[0].matcher.matcher_list.matchers[0]
    assert decoded.predicate.single_predicate.custom_match.typed_config.regexes[0].regex == "^/api/.*"
    assert decoded.on_match.action.typed_config.route.cluster == "backend"
    del action["typed_config"]
    message = error(bootstrap([listener(hcm(route_config=route_config))]))
    assert "route_config.virtual_hosts[0].matcher.matcher_list.matchers[0].on_match.action.typed_config: " \
           "missing required field" in message


# --------------------------------------------------------------------------- Envoy's rules at their edges


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_envoys_rules(case: Case) -> None:
    """Each PGV rule and cross-check pylon applies, at the value where Envoy starts refusing (or still accepts)."""
    if case.error is None:
        load(case.data)
    else:
        assert error(case.data).startswith(f"config error in test.yaml: {case.error}")


def test_a_second_health_check_is_refused_at_load_not_at_serve() -> None:
    """`--mode validate` said OK and `serve` then failed in the worker: the rule is the config model's now."""
    check = {"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1, "tcp_health_check": {}}
    data = bootstrap(clusters=[cluster(health_checks=[check, check])])
    assert error(data) == ("config error in test.yaml: static_resources.clusters[0].health_checks[1]: "
                           "more than one health check per cluster is not supported yet")


def test_a_filter_config_and_a_per_route_config_are_not_interchangeable() -> None:
    """Envoy refuses both ("Unable to unpack as RBAC"): each place decodes its own category."""
    per_route_url = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
    rbac_url = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
    manager = hcm()
    manager["http_filters"].insert(0, {"name": "rbac", "typed_config": {"@type": per_route_url}})
    assert (f"http_filters[0].typed_config.@type: {per_route_url} is registered as per-route HTTP filter config, but "
            "this position takes HTTP filters") in error(bootstrap([listener(manager)]))
    manager = hcm()
    manager["route_config"]["virtual_hosts"][0]["typed_per_filter_config"] = {"rbac": {"@type": rbac_url}}
    assert (f"typed_per_filter_config[rbac].@type: {rbac_url} is registered as HTTP filter and upstream HTTP filter, "
            "but this position takes per-route HTTP filter configs") in error(bootstrap([listener(manager)]))


@pytest.mark.parametrize(
    ("fields", "path", "message"),
    [
        ({"type": "ORIGINAL_DST"}, "lb_policy", "LB policy ROUND_ROBIN is not valid for cluster type ORIGINAL_DST"),
        ({"lb_policy": "CLUSTER_PROVIDED"}, "lb_policy", "LB policy CLUSTER_PROVIDED is not valid for cluster type STATIC"),
        ({"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED"}, "load_assignment",
         "an ORIGINAL_DST cluster has no endpoints"),
    ],
)
def test_original_dst_clusters_pair_with_cluster_provided(fields: dict[str, Any], path: str, message: str) -> None:
    assert error(bootstrap(clusters=[cluster(**fields)])).startswith(
        f"config error in test.yaml: static_resources.clusters[0].{path}: {message}")


def test_bootstrap_extensions_are_refused_naming_their_type() -> None:
    wasm = "type.googleapis.com/envoy.extensions.wasm.v3.WasmService"
    data = {**bootstrap(), "bootstrap_extensions": [{"name": "envoy.bootstrap.wasm", "typed_config": {"@type": wasm}}]}
    assert error(data) == (f"config error in test.yaml: bootstrap_extensions[0].typed_config.@type: bootstrap "
                           f"extension {wasm} is not supported: pylon runs no Wasm")
    data["bootstrap_extensions"][0]["typed_config"]["@type"] = "type.googleapis.com/acme.Thing"
    assert error(data).endswith("bootstrap extension type.googleapis.com/acme.Thing is not supported: not a bootstrap "
                                "extension pylon knows")


def test_stats_sinks_statsd_and_dog_statsd_only() -> None:
    statsd = {"name": "envoy.stat_sinks.statsd", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", "prefix": "edge",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125}}}}
    loaded = load({**bootstrap(), "stats_sinks": [statsd]})
    assert loaded.stats_sinks[0].typed_config.prefix == "edge"
    dog = {"name": "envoy.stat_sinks.dog_statsd", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink", "max_bytes_per_datagram": 1400,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 8125}}}}
    assert error({**bootstrap(), "stats_sinks": [dog]}) == (
        "config error in test.yaml: stats_sinks[0].typed_config.max_bytes_per_datagram: not supported yet")
    hystrix = {"name": "envoy.stat_sinks.hystrix", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.HystrixSink"}}
    assert error({**bootstrap(), "stats_sinks": [hystrix]}).startswith(
        "config error in test.yaml: stats_sinks[0].typed_config.@type: unknown stats sink type "
        "type.googleapis.com/envoy.config.metrics.v3.HystrixSink")
    tcp = {"name": "envoy.stat_sinks.statsd", "typed_config": {
        "@type": "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", "tcp_cluster_name": "svc"}}
    assert error({**bootstrap(), "stats_sinks": [tcp]}) == (
        "config error in test.yaml: stats_sinks[0].typed_config.tcp_cluster_name: not supported yet")


@pytest.mark.parametrize(("cluster", "message"), [
    ({"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
      "original_dst_lb_config": {"metadata_key": {"key": "k", "path": [{"key": "p"}]}}},
     "original_dst_lb_config.metadata_key: not supported yet"),
    # Envoy accepts it here and never reads it: pylon says so rather than carry a field that does nothing.
    ({"type": "STATIC", "original_dst_lb_config": {"use_http_header": True}},
     "original_dst_lb_config: only an ORIGINAL_DST cluster reads it"),
])  # fmt: skip
def test_original_dst_lb_config_refusals(cluster: dict[str, Any], message: str) -> None:
    data = bootstrap(clusters=[{"name": "svc", **cluster}])
    assert error(data).startswith(f"config error in test.yaml: static_resources.clusters[0].{message}")


def test_protobuf_json_names_are_field_names() -> None:
    """Envoy reads `connectTimeout` as `connect_timeout`; a key that is a field's own name wins, and the same
    field under both names leaves the camel one unknown."""
    data = bootstrap(clusters=[{"name": "svc", "connectTimeout": "2s", "perConnectionBufferLimitBytes": 5}])
    loaded = load(data).static_resources.clusters[0]
    assert (loaded.connect_timeout, loaded.per_connection_buffer_limit_bytes) == (2.0, 5)
    both = bootstrap(clusters=[{"name": "svc", "connect_timeout": "1s", "connectTimeout": "2s"}])
    assert "connectTimeout: unknown field" in error(both)


def test_default_socket_interface_with_io_uring_options_loads() -> None:
    """Envoy uses io_uring only where its build and kernel have it and falls back to the kernel's sockets; pylon
    always takes the fallback (proxy/server.py says so at start)."""
    data = bootstrap()
    data["bootstrap_extensions"] = [{"name": "s", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.network.socket_interface.v3.DefaultSocketInterface",
        "io_uring_options": {"io_uring_size": 300}}}]
    assert load(data).asks_io_uring
    data["bootstrap_extensions"][0]["typed_config"]["io_uring_options"] = {"io_uring_size": -1}
    assert "io_uring_options.io_uring_size" in error(data)
