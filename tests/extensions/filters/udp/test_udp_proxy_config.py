"""The UDP listener's and the UDP proxy's config: Envoy's defaults, and what pylon refuses by field (Envoy 1.40
accepts these; the verdicts both share are cases in tests/config/envoy_cases.py, run through Envoy's validate)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pylon.config.envoy import GRO_RX_LIMIT, UdpSocketConfig
from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap, to_envoy_dict
from pylon.extensions.filters.udp.udp_proxy import UdpProxyConfig
from tests.config.builders import TLS_INSPECTOR_TYPE, bootstrap, cluster, hcm, listener
from tests.proxy.conftest import ENVOY_BIN

UDP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig"
FILTER = "static_resources.listeners[0].listener_filters[0]"
CAPSULE_TYPE = "envoy.extensions.filters.udp.udp_proxy.session.http_capsule.v3.FilterConfig"
CAPSULE = {"name": "envoy.filters.udp.session.http_capsule",
           "typed_config": {"@type": f"type.googleapis.com/{CAPSULE_TYPE}"}}
DFP_SESSION_TYPE = ("type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.session.dynamic_forward_proxy.v3."
                    "FilterConfig")
TUNNEL = {"proxy_host": "proxy.example", "target_host": "target.example", "default_target_port": 443}


def udp_listener(**fields: Any) -> dict[str, Any]:
    proxy = {"@type": UDP_PROXY_TYPE, "stat_prefix": "u", "cluster": "svc", **fields.pop("proxy", {})}
    return {"name": "udp", "address": {"socket_address": {"protocol": "UDP", "address": "127.0.0.1",
                                                          "port_value": 1234}},
            "listener_filters": [{"name": "envoy.filters.udp_listener.udp_proxy", "typed_config": proxy}], **fields}


def error(*listeners: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(bootstrap(list(listeners), [cluster()]), "test.yaml")
    return str(info.value).removeprefix("config error in test.yaml: ")


def test_defaults_are_envoys_and_round_trip() -> None:
    boot = parse_bootstrap(bootstrap([udp_listener()], [cluster()]), "test.yaml")
    udp = boot.static_resources.listeners[0]
    assert udp.is_udp and udp.udp_config.downstream_socket_config.rx_limit(gro_by_default=False) == 1500
    proxy = udp.listener_filters[0].typed_config
    assert isinstance(proxy, UdpProxyConfig)
    assert proxy.idle_timeout == 60 and not proxy.use_per_packet_load_balancing and proxy.hash_policies == []
    assert proxy.upstream_socket_config.rx_limit(gro_by_default=True) == GRO_RX_LIMIT  # Envoy's upstream GRO
    assert parse_bootstrap(to_envoy_dict(boot), "again") == boot


def test_gro_decides_the_longest_datagram() -> None:
    assert UdpSocketConfig(max_rx_datagram_size=9000).rx_limit(gro_by_default=False) == 9000
    assert UdpSocketConfig(max_rx_datagram_size=9000, prefer_gro=True).rx_limit(gro_by_default=False) == GRO_RX_LIMIT
    assert UdpSocketConfig(max_rx_datagram_size=9000, prefer_gro=False).rx_limit(gro_by_default=True) == 9000


@pytest.mark.parametrize(("proxy", "path", "message"), [
    ({"cluster": None, "matcher": {"on_no_match": {"action": {"name": "route", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route"}}}}},
     "matcher.on_no_match.action.typed_config.cluster", "missing required field"),
    ({"use_original_src_ip": True}, "use_original_src_ip",
     "not supported (it needs transparent sockets: IP_TRANSPARENT and CAP_NET_ADMIN)"),
    ({"session_filters": [CAPSULE]}, "session_filters",
     "the http_capsule session filter without tunneling_config is not supported yet"),
    ({"session_filters": [{"name": "dfp", "typed_config": {"@type": DFP_SESSION_TYPE}}], "tunneling_config": TUNNEL},
     "session_filters[0].typed_config", f"session filter {DFP_SESSION_TYPE!r} is not supported yet (pylon has "
                                        f"type.googleapis.com/{CAPSULE_TYPE} only)"),
    ({"session_filters": [{**CAPSULE, "typed_config": {"@type": CAPSULE["typed_config"]["@type"], "x": 1}}],
      "tunneling_config": TUNNEL}, "session_filters[0].typed_config",
     "the http_capsule session filter has no settings"),
    ({"tunneling_config": TUNNEL}, "tunneling_config",
     "tunnelling without the envoy.filters.udp.session.http_capsule session filter is not supported yet"),
    ({"tunneling_config": {**TUNNEL, "use_post": True}, "session_filters": [CAPSULE]}, "tunneling_config.use_post",
     "UDP tunnelling over POST is not supported yet (CONNECT-UDP is)"),
    ({"tunneling_config": {**TUNNEL, "propagate_response_headers": True}, "session_filters": [CAPSULE]},
     "tunneling_config.propagate_response_headers",
     "not supported yet: pylon has no filter state for the response's headers"),
    ({"tunneling_config": {**TUNNEL, "retry_options": {"backoff_options": {"base_interval": "1s"}}},
      "session_filters": [CAPSULE]},
     "tunneling_config.retry_options.backoff_options", "not supported yet"),
    ({"proxy_access_log": [{"name": "log"}]}, "proxy_access_log", "not supported yet"),
])  # fmt: skip
def test_udp_proxy_fields_pylon_refuses(proxy: dict[str, Any], path: str, message: str) -> None:
    assert error(udp_listener(proxy=proxy)) == f"{FILTER}.typed_config.{path}: {message}"


@pytest.mark.parametrize(("fields", "path", "message"), [
    ({"udp_listener_config": {"quic_options": {}}}, "udp_listener_config.quic_options", "not supported yet"),
    ({"filter_chains": [{"filters": [{"name": "h", "typed_config": hcm()}]}]}, "filter_chains",
     "a UDP listener has no connections: its datagrams go to its UDP listener filter (filter chains on a UDP "
     "listener are QUIC's, which pylon lacks)"),
    ({"connection_balance_config": {"exact_balance": {}}}, "connection_balance_config",
     "a UDP listener has no connections: its datagrams go to its UDP listener filter (filter chains on a UDP "
     "listener are QUIC's, which pylon lacks)"),
    ({"listener_filters": []}, "listener_filters",
     "a UDP listener in pylon takes exactly one UDP listener filter (envoy.filters.udp_listener.udp_proxy)"),
    ({"listener_filters": [{"name": "tls", "typed_config": {"@type": TLS_INSPECTOR_TYPE}}]}, "listener_filters[0]",
     "tls is a TCP listener filter; a UDP listener takes UDP listener filters only"),
])  # fmt: skip
def test_udp_listener_fields_pylon_refuses(fields: dict[str, Any], path: str, message: str) -> None:
    assert error(udp_listener(**fields)) == f"static_resources.listeners[0].{path}: {message}"


def test_udp_listener_config_on_a_tcp_listener_is_refused() -> None:
    assert error(listener(hcm(), udp_listener_config={})) == (
        "static_resources.listeners[0].udp_listener_config: a TCP listener has no UDP socket (its address says "
        "protocol: TCP)")


def test_udp_is_a_listeners_protocol_only() -> None:
    data = bootstrap([listener(hcm())], [cluster()])
    endpoint = data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    endpoint["endpoint"]["address"]["socket_address"]["protocol"] = "UDP"
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "test.yaml")
    message = "socket_address.protocol: UDP is not supported yet (only a listener's address may say UDP)"
    assert message in str(info.value)


def test_two_udp_listeners_on_one_address_are_refused() -> None:
    assert "two listeners cannot bind one address and port" in error(udp_listener(), {**udp_listener(), "name": "b"})


def test_tunneling_defaults_are_envoys() -> None:
    boot = parse_bootstrap(bootstrap([udp_listener(proxy={"tunneling_config": TUNNEL, "session_filters": [CAPSULE]})],
                                     [cluster()]), "test.yaml")
    tunneling = boot.static_resources.listeners[0].listener_filters[0].typed_config.tunneling_config
    assert tunneling.retry_options.max_connect_attempts == 1 and tunneling.buffer_options is None
    assert tunneling.proxy_port is None and tunneling.headers_to_add == []


@pytest.mark.parametrize(("proxy", "path"), [
    ({"tunneling_config": {**TUNNEL, "proxy_host": "%NOPE%"}, "session_filters": [CAPSULE]}, "typed_config"),
    ({"access_log": [{"name": "log", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        "log_format": {"text_format_source": {"inline_string": "%NOPE%"}}}}]},
     "typed_config.access_log[0].typed_config.log_format"),
])  # fmt: skip
def test_validate_refuses_unknown_operators_as_envoy_does(proxy: dict[str, Any], path: str, tmp_path: Path) -> None:
    """Format strings are compiled by the validation that runs before anything binds, as a worker compiles them."""
    config = tmp_path / "udp.yaml"
    config.write_text(yaml.safe_dump(bootstrap([udp_listener(proxy=proxy)], [cluster()])))
    run = subprocess.run([sys.executable, "-m", "pylon.cli", "proxy", "-c", str(config), "--mode", "validate"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"{FILTER}.{path}: unsupported access log command operator %NOPE%" in run.stderr + run.stdout
    if ENVOY_BIN.exists():
        envoy = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(config), "-l", "critical"],
                               capture_output=True, text=True, timeout=60)
        assert envoy.returncode != 0 and "NOPE" in envoy.stdout + envoy.stderr


def test_cluster_and_matcher_are_one_of() -> None:
    route = {"on_no_match": {"action": {"name": "route", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route", "cluster": "svc"}}}}
    assert error(udp_listener(proxy={"matcher": route})).endswith(": exactly one of cluster, matcher must be set")
