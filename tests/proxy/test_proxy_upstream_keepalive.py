"""A cluster's upstream_connection_options.tcp_keepalive: set on every upstream socket, as Envoy sets it."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from pylon.config.envoy import TcpKeepalive
from pylon.config.errors import ConfigError
from pylon.config.loader import load_bootstrap
from pylon.proxy.upstream.connect import open_upstream
from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, dump, http_listener, route, static_cluster, wait_until


def _options_after_connect(keepalive: TcpKeepalive | None) -> tuple[int, int, int, int]:
    listener = socket.create_server(("127.0.0.1", 0))

    async def run() -> tuple[int, int, int, int]:
        transport, _ = await open_upstream(listener.getsockname()[:2], None, 5.0, asyncio.Protocol, None, keepalive)
        sock = transport.get_extra_info("socket")
        try:
            return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT))
        finally:
            transport.close()

    try:
        return asyncio.run(run())
    finally:
        listener.close()


def test_the_settings_given_are_set_and_the_others_stay_the_systems() -> None:
    plain = _options_after_connect(None)
    assert plain[0] == 0
    assert _options_after_connect(TcpKeepalive(keepalive_time=77, keepalive_interval=9, keepalive_probes=4)) == \
        (1, 77, 9, 4)
    assert _options_after_connect(TcpKeepalive()) == (1, *plain[1:])  # `tcp_keepalive: {}` as in Envoy's ads.yaml


@pytest.mark.parametrize("field, value", [("keepalive_time", 0), ("keepalive_interval", 40000),
                                          ("keepalive_probes", 128)])
def test_a_setting_linux_refuses_is_a_config_error_naming_it(field: str, value: int) -> None:
    config = {"static_resources": {"clusters": [
        static_cluster("up", [1], upstream_connection_options={"tcp_keepalive": {field: value}})]}}
    with pytest.raises(ConfigError, match=rf"clusters\[0\]\.upstream_connection_options\.tcp_keepalive\.{field}"):
        load_bootstrap(config_yaml=dump(config))


def _keepalive_timer_seconds(upstream_port: int) -> float | None:
    """The keepalive timer `ss` shows on the established connection to `upstream_port` (None: no keepalive)."""
    out = subprocess.run(["ss", "-tnoH", "state", "established", f"dport = :{upstream_port}"],
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"timer:\(keepalive,(?:(\d+)min)?(?:([\d.]+)sec)?", out)
    if match is None:
        return None
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_upstream_connections_carry_the_keepalive(implementation: str, launcher: ProxyLauncher,
                                                  upstreams: Callable[..., list[Any]]) -> None:
    (upstream,) = upstreams()
    port = free_port()
    launcher.start([http_listener("main", port, [route("/", "up")])],
                   [static_cluster("up", [upstream.port], upstream_connection_options={
                       "tcp_keepalive": {"keepalive_time": 77, "keepalive_interval": 9, "keepalive_probes": 4}})],
                   implementation=implementation)
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200  # the pooled connection stays open
    timer = wait_until(lambda: _keepalive_timer_seconds(upstream.port))
    assert 60 < timer <= 77
