"""Integration: the rarer local replies and the trusted-client address.

- An upstream that answers with bytes that are not HTTP gets the client Envoy's
  502 with response flag UPE (upstream protocol error), never a hang.
- `xff_num_trusted_hops` decides which x-forwarded-for entry the access log
  reports as %DOWNSTREAM_REMOTE_ADDRESS%.
"""

from __future__ import annotations

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import http_listener, json_access_log, read_json_lines, route, static_cluster
from tests.proxy.upstreams import TcpEcho


def test_non_http_upstream_reply_is_502_upe(run_proxy, tmp_path):
    echo = TcpEcho()  # echoes the request back: "GET / HTTP/1.1" is not a status line
    try:
        log = tmp_path / "access.log"
        listener = http_listener("main", free_port(), [route("/", "bad")], access_log=json_access_log(log))
        proxy = run_proxy([listener], [static_cluster("bad", [echo.port])])
        response = httpx.get(proxy.url("main", "/x"), timeout=5)
        assert response.status_code == 502
        assert b"protocol error" in response.content
        (line,) = read_json_lines(log, 1)
        assert line["code"] == 502 and line["flags"] == "UPE"
    finally:
        echo.close()


def test_xff_num_trusted_hops_picks_the_trusted_client(run_proxy, upstreams, tmp_path):
    (up,) = upstreams(1)
    log_edge = tmp_path / "edge.log"
    log_inner = tmp_path / "inner.log"
    # Edge: use_remote_address with one trusted hop in front -> the last XFF entry is the client.
    edge = http_listener("edge", free_port(), [route("/", "u")], use_remote_address=True, xff_num_trusted_hops=1,
                         access_log=json_access_log(log_edge))
    # Inner: XFF is trusted as sent, one hop trusted -> the second entry from the right.
    inner = http_listener("inner", free_port(), [route("/", "u")], xff_num_trusted_hops=1,
                          access_log=json_access_log(log_inner))
    proxy = run_proxy([edge, inner], [static_cluster("u", [up.port])])
    xff = {"x-forwarded-for": "198.51.100.1, 203.0.113.9"}
    assert httpx.get(proxy.url("edge", "/a"), headers=xff, timeout=5).status_code == 200
    assert httpx.get(proxy.url("inner", "/b"), headers=xff, timeout=5).status_code == 200
    (edge_line,) = read_json_lines(log_edge, 1)
    (inner_line,) = read_json_lines(log_inner, 1)
    assert edge_line["downstream"] == "203.0.113.9"
    assert inner_line["downstream"] == "198.51.100.1"

