"""The upstream proxy_protocol transport socket's config: what it accepts, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from pylon.proxy.upstream.proxy_protocol import socket_proxy_protocol

SOCKET_TYPE = ("type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3."
               "ProxyProtocolUpstreamTransport")
RAW_BUFFER = {"name": "raw", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}


def bootstrap(socket_config: dict[str, Any], endpoint_metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                                            "port_value": 80}}}}
    if endpoint_metadata is not None:
        endpoint["metadata"] = {"typed_filter_metadata": {"envoy.transport_sockets.proxy_protocol": {
            "@type": "type.googleapis.com/envoy.config.core.v3.PerHostConfig", **endpoint_metadata}}}
    return {"static_resources": {"clusters": [{
        "name": "c", "type": "STATIC",
        "load_assignment": {"cluster_name": "c", "endpoints": [{"lb_endpoints": [endpoint]}]},
        "transport_socket": {"name": "envoy.transport_sockets.upstream_proxy_protocol",
                             "typed_config": {"@type": SOCKET_TYPE, "transport_socket": RAW_BUFFER,
                                              **socket_config}}}]}}


def test_the_config_becomes_the_cluster_s_header() -> None:
    config = parse_bootstrap(bootstrap({"config": {"version": "V2", "added_tlvs": [{"type": 238, "value": "eA=="}]},
                                        "tlv_as_pool_key": True}), "b.yaml")
    proxy_protocol = socket_proxy_protocol(config.static_resources.clusters[0].transport_socket)
    assert proxy_protocol is not None
    assert (proxy_protocol.version, proxy_protocol.added_tlvs) == (2, [(238, b"x")])
    assert socket_proxy_protocol(None) is None


def test_v1_is_the_default() -> None:
    config = parse_bootstrap(bootstrap({}), "b.yaml")
    proxy_protocol = socket_proxy_protocol(config.static_resources.clusters[0].transport_socket)
    assert proxy_protocol is not None and proxy_protocol.version == 1


@pytest.mark.parametrize(("socket_config", "metadata", "path", "message"), [
    ({"config": {"pass_through_tlvs": {}}}, None, "typed_config.config.pass_through_tlvs", "not supported"),
    ({"config": {"added_tlvs": [{"type": 1, "format_string": {}}]}}, None,
     "typed_config.config.added_tlvs[0].format_string", "not supported"),
    ({"config": {"added_tlvs": [{"type": 256, "value": "eA=="}]}}, None, "added_tlvs[0].type", "must be a byte"),
    ({"config": {"added_tlvs": [{"type": 1}]}}, None, "added_tlvs[0].value", "at least one byte"),
    ({"allow_unspecified_address": True}, None, "typed_config.allow_unspecified_address", "not supported"),
    ({}, {"added_tlvs": [{"type": 1, "value": ""}]}, "added_tlvs[0].value", "at least one byte"),
])  # fmt: skip
def test_refusals_name_the_field(socket_config: dict[str, Any], metadata: dict[str, Any] | None, path: str,
                                 message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(bootstrap(socket_config, metadata), "b.yaml")
    assert path in str(info.value) and message in str(info.value), str(info.value)
