"""Integration: RBAC metadata matchers over the dynamic metadata a filter before it set (header_to_metadata), through
pylon and Envoy 1.40 alike: a policy allows the user the header names, denies others and a request without it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener

H2M_TYPE = "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def _matcher(path: list[str], value: dict[str, Any], invert: bool = False) -> dict[str, Any]:
    return {"metadata": {"filter": "authz", "path": [{"key": key} for key in path], "value": value, "invert": invert}}


def listener(port: int) -> dict[str, Any]:
    policy = {"permissions": [{"and_rules": {"rules": [
        _matcher(["user"], {"string_match": {"prefix": "ali"}}),
        _matcher(["level"], {"double_match": {"range": {"start": 2, "end": 10}}}),
        _matcher(["banned"], {"present_match": True}, invert=True),
    ]}}], "principals": [{"any": True}]}
    return http_listener("main", port, [{"match": {"prefix": "/"}, "route": {"cluster": "up"}}], http_filters=[
        {"name": "h2m", "typed_config": {"@type": H2M_TYPE, "request_rules": [
            {"header": "x-user", "on_header_present": {"metadata_namespace": "authz", "key": "user"}},
            {"header": "x-level", "on_header_present": {"metadata_namespace": "authz", "key": "level", "type": "NUMBER"}},
            {"header": "x-banned", "on_header_present": {"metadata_namespace": "authz", "key": "banned"}},
        ]}},
        {"name": "rbac", "typed_config": {"@type": RBAC_TYPE, "rules": {"action": "ALLOW", "policies": {"p": policy}}}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ])


@pytest.mark.parametrize(("headers", "status"), [
    ({"x-user": "alice", "x-level": "3"}, 200),
    ({"x-user": "alicia", "x-level": "9.5"}, 200),
    ({"x-user": "bob", "x-level": "3"}, 403),
    ({"x-user": "alice", "x-level": "10"}, 403),
    ({"x-user": "alice", "x-level": "3", "x-banned": "yes"}, 403),
    ({"x-user": "alice"}, 403),
    ({}, 403),
])
def test_rbac_reads_metadata_set_by_a_filter(implementation: str, tmp_path: Path, headers: dict[str, str],
                                            status: int) -> None:
    with gateway_in_front_of_upstream(implementation, tmp_path, listener) as gateway:
        assert httpx.get(f"http://127.0.0.1:{gateway.port}/", headers=headers, timeout=10).status_code == status
