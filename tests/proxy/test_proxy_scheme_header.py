"""Integration: the HCM's scheme_header_transformation (Envoy's configs/envoyproxy_io_proxy.yaml sets
`scheme_to_overwrite: https` on a plaintext listener), through pylon and Envoy 1.40 alike: the upstream's
x-forwarded-proto, what the access log and header rules read as :scheme, and a redirect's scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener, json_access_log, read_json_lines


def listener(log: Path, transformation: dict[str, Any]) -> Any:
    routes = [{"match": {"prefix": "/redirect"}, "redirect": {"path_redirect": "/there"}},
              {"match": {"prefix": "/"}, "route": {"cluster": "up"},
               "request_headers_to_add": [{"header": {"key": "x-scheme", "value": "%REQ(:SCHEME)%"}}]}]
    return lambda port: http_listener("main", port, routes, scheme_header_transformation=transformation,
                                      access_log=json_access_log(log, scheme="%REQ(:SCHEME)%"))


@pytest.mark.parametrize(("transformation", "scheme"), [
    ({"scheme_to_overwrite": "https"}, "https"),
    ({"match_upstream": True}, "http"),
    ({}, "http"),
])
def test_scheme_to_overwrite(implementation: str, tmp_path: Path, transformation: dict[str, Any], scheme: str) -> None:
    log = tmp_path / "access.json"
    with gateway_in_front_of_upstream(implementation, tmp_path, listener(log, transformation)) as gateway:
        base = f"http://127.0.0.1:{gateway.port}"
        assert httpx.get(f"{base}/plain", timeout=10).status_code == 200
        assert httpx.get(f"{base}/claimed", headers={"x-forwarded-proto": "http"}, timeout=10).status_code == 200
        redirect = httpx.get(f"{base}/redirect", timeout=10)
        plain, claimed = gateway.upstream.requests
        assert plain["headers"]["x-forwarded-proto"] == scheme and plain["headers"]["x-scheme"] == scheme
        assert claimed["headers"]["x-forwarded-proto"] == "http" if not transformation.get("scheme_to_overwrite") \
            else claimed["headers"]["x-forwarded-proto"] == scheme
        assert (redirect.status_code, redirect.headers["location"]) == (301, f"{scheme}://127.0.0.1:{gateway.port}/there")
        assert [line["scheme"] for line in read_json_lines(log, 3, timeout=10)] == [scheme] * 3
