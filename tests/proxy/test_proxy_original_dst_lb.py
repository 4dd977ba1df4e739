"""Integration: an ORIGINAL_DST cluster's `original_dst_lb_config` on loopback, through pylon and Envoy 1.40 alike.

With `use_http_header` a request names its upstream in a header (x-envoy-original-dst-host by default, or e.g.
`:authority` as Envoy's terminate_http1_connect example does); `upstream_port_override` replaces the port. A
request whose connection no listener filter restored an original destination for, and that names none (or an
invalid one, counted in `original_dst_host_invalid`), has no host: 503, as Envoy - never a connection to the
proxy's own listener.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route
from tests.proxy.upstreams import Upstream


@pytest.fixture
def ups() -> Iterator[dict[str, Upstream]]:
    servers = {"a": Upstream(), "b": Upstream()}
    yield servers
    for server in servers.values():
        server.close()


def start(run_proxy: Callable[..., RunningProxy], implementation: str, **lb_config: Any) -> RunningProxy:
    cluster = {"name": "dst", "connect_timeout": "1s", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
               "original_dst_lb_config": lb_config}
    return run_proxy([http_listener("main", free_port(), [route("/", "dst")])], [cluster],
                     implementation=implementation)


def test_the_default_header_names_the_upstream(implementation: str, run_proxy: Callable[..., RunningProxy],
                                               ups: dict[str, Upstream]) -> None:
    proxy = start(run_proxy, implementation, use_http_header=True)
    for name in ("a", "b", "a"):
        header = {"x-envoy-original-dst-host": f"127.0.0.1:{ups[name].port}"}
        assert httpx.get(proxy.url("main", f"/{name}"), headers=header).status_code == 200
    assert [r["path"] for r in ups["a"].requests] == ["/a", "/a"] and [r["path"] for r in ups["b"].requests] == ["/b"]
    assert proxy.stats()["cluster.dst.original_dst_host_invalid"] == 0


def test_authority_and_port_override(implementation: str, run_proxy: Callable[..., RunningProxy],
                                     ups: dict[str, Upstream]) -> None:
    proxy = start(run_proxy, implementation, use_http_header=True, http_header_name=":authority",
                  upstream_port_override=ups["b"].port)
    reply = httpx.get(proxy.url("main", "/x"), headers={"host": f"127.0.0.1:{ups['a'].port}"})
    assert reply.status_code == 200 and len(ups["b"].requests) == 1 and not ups["a"].requests


@pytest.mark.parametrize("value", ["localhost:80", "127.0.0.1", "::1:80", "127.0.0.1:99999", None])
def test_no_usable_destination_is_503(implementation: str, run_proxy: Callable[..., RunningProxy],
                                      ups: dict[str, Upstream], value: str | None) -> None:
    proxy = start(run_proxy, implementation, use_http_header=True)
    headers = {"x-envoy-original-dst-host": value} if value is not None else {}
    reply = httpx.get(proxy.url("main", "/x"), headers=headers)
    assert reply.status_code == 503 and not ups["a"].requests
    assert proxy.stats()["cluster.dst.original_dst_host_invalid"] == (0 if value is None else 1)


def test_without_use_http_header_the_header_is_not_read(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                        ups: dict[str, Upstream]) -> None:
    proxy = start(run_proxy, implementation, upstream_port_override=ups["a"].port)
    reply = httpx.get(proxy.url("main", "/x"), headers={"x-envoy-original-dst-host": f"127.0.0.1:{ups['a'].port}"})
    assert reply.status_code == 503 and not ups["a"].requests
