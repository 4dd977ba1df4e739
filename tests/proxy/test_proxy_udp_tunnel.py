"""Integration: the UDP proxy's tunneling_config (UDP in CONNECT-UDP over HTTP/2, RFC 9298), pylon and Envoy 1.40
as the initiator, stock Envoy 1.40 as the terminator each time.

The terminator is an Envoy HTTP connection manager on HTTP/2 whose route terminates CONNECT-UDP (`upgrade_type:
CONNECT-UDP` with `connect_config`) and sends the payloads to a UDP echo server; its access log shows what each
initiator asked for (method, path, authority, headers) and the bytes of capsules both ways. Both initiators must
open the same request, carry the same capsules, and count the same stats.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.proxy.conftest import (
    FILE_LOG_TYPE, ProxyLauncher, http_listener, read_json_lines, static_cluster, wait_until,
)
from tests.proxy.test_proxy_udp import UdpEcho, clients, echoes, exchange, udp_listener  # noqa: F401 (fixtures)

CAPSULE_FILTER = {"name": "envoy.filters.udp.session.http_capsule", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.session.http_capsule.v3.FilterConfig"}}
HTTP2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}
#: what the terminator logs of each CONNECT-UDP request (Envoy shows an extended CONNECT as an upgrade: GET)
TERMINATOR_LOG = {"method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%", "authority": "%REQ(:AUTHORITY)%",
                  "upgrade": "%REQ(UPGRADE)%", "capsule_protocol": "%REQ(CAPSULE-PROTOCOL)%",
                  "original_dst_port": "%REQ(ORIGINAL_DST_PORT)%", "code": "%RESPONSE_CODE%",
                  "received": "%BYTES_RECEIVED%", "sent": "%BYTES_SENT%"}
COMPARED = ("udp.u.downstream_sess_total", "udp.u.downstream_sess_rx_datagrams", "udp.u.downstream_sess_tx_datagrams",
            "udp.u.downstream_sess_rx_bytes", "udp.u.downstream_sess_tx_bytes", "cluster.tunnel.udp.sess_rx_datagrams",
            "cluster.tunnel.udp.sess_tx_datagrams", "cluster.tunnel.udp.sess_tunnel_success",
            "cluster.tunnel.udp.sess_tunnel_failure", "cluster.tunnel.udp.sess_tunnel_buffer_overflow",
            "cluster.tunnel.upstream_rq_total")


def terminator(launcher: ProxyLauncher, echo: UdpEcho, log: Path, terminate: bool = True, delay: str = "") -> int:
    """Stock Envoy terminating CONNECT-UDP over HTTP/2 to `echo` (with terminate=False its route has no such upgrade,
    so every tunnel is refused; with a `delay`, its fault filter holds each request that long); returns its port."""
    port = free_port()
    route: dict[str, Any] = {"match": {"connect_matcher": {}}, "route": {"cluster": "echo"}}
    if terminate:
        route["route"]["upgrade_configs"] = [{"upgrade_type": "CONNECT-UDP", "connect_config": {}}]
    access_log = [{"name": "log", "typed_config": {"@type": FILE_LOG_TYPE, "path": str(log),
                                                   "log_format": {"json_format": TERMINATOR_LOG}}}]
    listener = http_listener("h2", port, [route], codec_type="HTTP2", access_log=access_log,
                             http2_protocol_options={"allow_connect": True})
    if delay:
        fault = {"name": "envoy.filters.http.fault", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
            "delay": {"fixed_delay": delay, "percentage": {"numerator": 100}}}}
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"].insert(0, fault)
    launcher.start([listener], [static_cluster("echo", [echo.port])], implementation="envoy")
    return port


def initiator(launcher: ProxyLauncher, implementation: str, terminator_port: int, **tunneling: Any) -> tuple[Any, int]:
    port = free_port()
    options = {key: tunneling.pop(key) for key in ("session_filters", "idle_timeout") if key in tunneling}
    config = {"proxy_host": "proxy.example", "target_host": "target.example", "default_target_port": 443,
              **tunneling}
    listener = udp_listener(port, cluster="tunnel", tunneling_config=config,
                            **{"session_filters": [CAPSULE_FILTER], **options})
    cluster = static_cluster("tunnel", [terminator_port], typed_extension_protocol_options=HTTP2_OPTIONS)
    return launcher.start([listener], [cluster], implementation=implementation), port


def compared(stats: dict[str, int]) -> dict[str, int]:
    return {name: stats.get(name, 0) for name in COMPARED}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_datagrams_ride_one_connect_udp_stream_as_capsules(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                           tmp_path: Path) -> None:
    log = tmp_path / "terminator.json"
    launcher = ProxyLauncher(tmp_path)
    try:
        upstream = terminator(launcher, echoes[0], log)
        proxy, port = initiator(launcher, implementation, upstream, proxy_port=8443, buffer_options={}, headers_to_add=[
            {"header": {"key": "original_dst_port", "value": "%DOWNSTREAM_LOCAL_PORT%"}}])
        client = clients()
        assert exchange(client, port, b"hello") == b"a:hello"
        assert exchange(client, port, b"world!") == b"a:world!"
        stats = proxy.stats()
        proxy.proc.terminate()  # the initiator goes: the terminator's stream ends and is logged
        [line] = read_json_lines(log, 1, timeout=20)
    finally:
        launcher.close()
    # the terminator's echo server saw the two payloads from one socket: one session, one stream
    assert [data for _, data in echoes[0].seen] == [b"hello", b"world!"] and len(echoes[0].sources()) == 1
    # Envoy shows the terminated request's authority as the target it reached
    assert line == {"method": "GET", "path": "/.well-known/masque/udp/target.example/443/",
                    "authority": "target.example:443", "upgrade": "connect-udp", "capsule_protocol": "?1",
                    "original_dst_port": str(port), "code": 200,
                    "received": (1 + 1 + 1 + 5) + (1 + 1 + 1 + 6),  # type, length, context ID, payload
                    "sent": (3 + 7) + (3 + 8)}
    assert compared(stats) == {**dict.fromkeys(COMPARED, 0),
                               "udp.u.downstream_sess_total": 1, "udp.u.downstream_sess_rx_datagrams": 2,
                               "udp.u.downstream_sess_tx_datagrams": 2, "udp.u.downstream_sess_rx_bytes": 11,
                               "udp.u.downstream_sess_tx_bytes": 15, "cluster.tunnel.udp.sess_rx_datagrams": 2,
                               "cluster.tunnel.udp.sess_tunnel_success": 1, "cluster.tunnel.upstream_rq_total": 1}


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_datagrams_before_the_answer_wait_within_buffer_options(implementation: str, echoes: list[UdpEcho],
                                                                clients: Any, tmp_path: Path) -> None:
    """Three datagrams back to back: the terminator holds the tunnel's answer for a second, so the first waits and
    the other two overflow a buffer of one datagram."""
    launcher = ProxyLauncher(tmp_path)
    try:
        upstream = terminator(launcher, echoes[0], tmp_path / "terminator.json", delay="1s")
        proxy, port = initiator(launcher, implementation, upstream,
                                buffer_options={"max_buffered_datagrams": 1, "max_buffered_bytes": 1000})
        client = clients()
        for data in (b"one", b"two", b"three"):
            client.sendto(data, ("127.0.0.1", port))
        assert client.recvfrom(100)[0] == b"a:one"
        assert exchange(client, port, b"four") == b"a:four"  # once answered, nothing waits
        stats = proxy.stats()
    finally:
        launcher.close()
    assert [data for _, data in echoes[0].seen] == [b"one", b"four"]
    assert stats["cluster.tunnel.udp.sess_tunnel_buffer_overflow"] == 2
    assert stats["udp.u.downstream_sess_rx_datagrams"] == 4 and stats["udp.u.downstream_sess_tx_datagrams"] == 2


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_without_buffer_options_datagrams_before_the_answer_are_dropped(implementation: str, echoes: list[UdpEcho],
                                                                       clients: Any, tmp_path: Path) -> None:
    launcher = ProxyLauncher(tmp_path)
    try:
        upstream = terminator(launcher, echoes[0], tmp_path / "terminator.json")
        proxy, port = initiator(launcher, implementation, upstream)
        client = clients()
        client.sendto(b"early", ("127.0.0.1", port))
        assert wait_until(lambda: proxy.stats().get("cluster.tunnel.udp.sess_tunnel_success") == 1, timeout=20)
        assert exchange(client, port, b"late") == b"a:late"
        stats = proxy.stats()
    finally:
        launcher.close()
    assert [data for _, data in echoes[0].seen] == [b"late"]
    assert stats["cluster.tunnel.udp.sess_tunnel_buffer_overflow"] == 0  # dropped, not counted (as Envoy)
    assert stats["udp.u.downstream_sess_rx_datagrams"] == 2


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_a_refused_tunnel_is_retried_then_fails_the_session(implementation: str, echoes: list[UdpEcho],
                                                            clients: Any, tmp_path: Path) -> None:
    log = tmp_path / "terminator.json"
    launcher = ProxyLauncher(tmp_path)
    try:
        upstream = terminator(launcher, echoes[0], log, terminate=False)
        proxy, port = initiator(launcher, implementation, upstream, retry_options={"max_connect_attempts": 2},
                                buffer_options={})
        clients().sendto(b"lost", ("127.0.0.1", port))
        assert wait_until(lambda: proxy.stats().get("cluster.tunnel.udp.sess_tunnel_failure") == 1, timeout=20)
        stats = proxy.stats()
        lines = read_json_lines(log, 2, timeout=20)
    finally:
        launcher.close()
    assert echoes[0].seen == []
    assert [line["code"] for line in lines] == [403, 403]  # two attempts, each refused by the terminator's route
    assert stats["cluster.tunnel.upstream_rq_total"] == 2 and stats["udp.u.downstream_sess_active"] == 0
    assert stats["cluster.tunnel.udp.sess_tunnel_success"] == 0


@pytest.mark.parametrize("implementation", ["pylon", "envoy"])
def test_an_idle_tunnelled_session_resets_its_stream(implementation: str, echoes: list[UdpEcho], clients: Any,
                                                     tmp_path: Path) -> None:
    log = tmp_path / "terminator.json"
    launcher = ProxyLauncher(tmp_path)
    try:
        upstream = terminator(launcher, echoes[0], log)
        proxy, port = initiator(launcher, implementation, upstream, idle_timeout="0.5s", buffer_options={})
        client = clients()
        assert exchange(client, port, b"ping") == b"a:ping"
        [line] = read_json_lines(log, 1, timeout=20)  # logged when the stream ends: the initiator reset it
        assert exchange(client, port, b"again") == b"a:again"  # a new session, a new stream
        stats = proxy.stats()
    finally:
        launcher.close()
    assert line["code"] == 200 and line["received"] == 1 + 1 + 1 + 4
    assert stats["udp.u.idle_timeout"] == 1 and stats["cluster.tunnel.udp.sess_tunnel_success"] == 2
    assert len(echoes[0].sources()) == 2
