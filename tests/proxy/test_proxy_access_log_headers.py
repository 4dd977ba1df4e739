"""Integration: the access log's header operators under both of Envoy's names, through pylon and Envoy alike.

Envoy's formatter takes `%REQUEST_HEADER(X)%` / `%RESPONSE_HEADER(X)%` as the same operators as `%REQ(X)%` /
`%RESP(X)%` (its docs' JSON access log example uses the long names). One request with a request header the
upstream answers with a response header of its own; the JSON log line must be the same in both proxies.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.proxy.conftest import gateway_in_front_of_upstream, http_listener, json_access_log, read_json_lines, route

FIELDS = {
    "req": "%REQ(X-A)%", "request_header": "%REQUEST_HEADER(X-A)%",
    "fallback_truncated": "%REQUEST_HEADER(X-NONE?X-A):3%", "pseudo": "%REQUEST_HEADER(:METHOD)%",
    "resp": "%RESP(X-UP)%", "response_header": "%RESPONSE_HEADER(X-UP)%", "missing": "%RESPONSE_HEADER(X-NONE)%",
}


def test_long_and_short_header_operator_names_log_alike(implementation: str, tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    def listener(port: int) -> dict:
        return http_listener("main", port, [route("/", "up")], access_log=json_access_log(log, **FIELDS))

    with gateway_in_front_of_upstream(implementation, tmp_path, listener) as gateway:
        reply = httpx.get(f"http://127.0.0.1:{gateway.port}/respond?x-up=from-upstream", headers={"x-a": "alpha"},
                          timeout=10)
        assert reply.status_code == 200 and reply.headers["x-up"] == "from-upstream"
        entries = read_json_lines(log, 1, timeout=15)

    assert [{name: entry[name] for name in FIELDS} for entry in entries] == [{
        "req": "alpha", "request_header": "alpha", "fallback_truncated": "alp", "pseudo": "GET",
        "resp": "from-upstream", "response_header": "from-upstream", "missing": None,
    }]
