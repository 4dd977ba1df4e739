"""Integration: a route's `hash_policy` places requests on a RING_HASH or MAGLEV cluster as Envoy 1.40 does (pylon and
Envoy).

Three upstreams behind one ring; a request's host is the upstream whose request count grew. The same key must
always land on the same host; requests without a key (or whose policies find nothing) spread over the ring.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, http_listener, static_cluster

SOURCES = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


class Ring:
    def __init__(self, launcher: ProxyLauncher, implementation: str, upstreams: Any, policies: list[dict[str, Any]],
                 lb_policy: str = "RING_HASH", **hcm: Any) -> None:
        self.servers = upstreams(3)
        route = {"match": {"prefix": "/"}, "route": {"cluster": "ring", "hash_policy": policies}}
        self.proxy = launcher.start([http_listener("web", free_port(), [route], **hcm)],
                                    [static_cluster("ring", [s.port for s in self.servers], lb_policy=lb_policy)],
                                    implementation=implementation)  # fmt: skip

    def hosts(self, count: int, path: str = "/", source: str = "127.0.0.1", **headers: str) -> set[int]:
        """Which upstreams served `count` requests sent alike."""
        before = [len(s.requests) for s in self.servers]
        with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=5) as client:
            for _ in range(count):
                assert client.get(f"http://127.0.0.1:{self.proxy.ports['web']}{path}", headers=headers).status_code == 200
        return {i for i, server in enumerate(self.servers) if len(server.requests) > before[i]}


def test_source_ip_keeps_each_client_on_one_host(launcher: ProxyLauncher, implementation: str, upstreams: Any) -> None:
    ring = Ring(launcher, implementation, upstreams, [{"connection_properties": {"source_ip": True}}])
    assert all(len(ring.hosts(6, source=source)) == 1 for source in SOURCES)


def test_a_header_key_sticks_and_a_missing_header_spreads(launcher: ProxyLauncher, implementation: str,
                                                          upstreams: Any) -> None:
    ring = Ring(launcher, implementation, upstreams, [{"header": {"header_name": "x-user"}}])
    assert all(len(ring.hosts(6, **{"x-user": user})) == 1 for user in ("ann", "bob", "cid"))
    assert len(ring.hosts(12)) > 1  # no key: a random point per request (all 12 on one of 3 hosts: p = 3^-11)


def test_a_query_parameter_key_sticks(launcher: ProxyLauncher, implementation: str, upstreams: Any) -> None:
    ring = Ring(launcher, implementation, upstreams, [{"query_parameter": {"name": "session"}}])
    assert all(len(ring.hosts(6, path=f"/cart?x=1&session={sid}")) == 1 for sid in ("a1", "b2", "c3"))


def test_a_terminal_policy_that_finds_its_value_ends_the_list(launcher: ProxyLauncher, implementation: str,
                                                              upstreams: Any) -> None:
    """With the header present and terminal, the client's address no longer counts: one host for every source;
    without the header the source IP decides, one host per source."""
    ring = Ring(launcher, implementation, upstreams, [{"header": {"header_name": "x-user"}, "terminal": True},
                                                      {"connection_properties": {"source_ip": True}}])
    served = set()
    for source in SOURCES:
        served |= ring.hosts(3, source=source, **{"x-user": "ann"})
    assert len(served) == 1
    assert all(len(ring.hosts(4, source=source)) == 1 for source in SOURCES)


@pytest.mark.parametrize("policy", [{"cookie": {"name": "s", "attributes": [{"name": "a"}]}},
                                    {"filter_state": {"key": "k"}}])
def test_unsupported_policies_are_refused_by_name(launcher: ProxyLauncher, policy: dict[str, Any], upstreams: Any,
                                                  tmp_path: Any) -> None:
    name = "cookie.attributes" if "cookie" in policy else next(iter(policy))
    with pytest.raises(Exception, match=rf"hash_policy\[0\]\.{name}"):
        Ring(launcher, "pylon", upstreams, [policy])


def test_the_client_address_is_the_one_the_connection_manager_trusts(launcher: ProxyLauncher, implementation: str,
                                                                     upstreams: Any) -> None:
    """Behind another proxy (use_remote_address off) the client is the last x-forwarded-for entry, so ten clients
    behind one peer spread; at the edge (use_remote_address on) the peer is the client, whatever XFF says."""
    behind = Ring(launcher, implementation, upstreams, [{"connection_properties": {"source_ip": True}}])
    spread: set[int] = set()
    for i in range(2, 12):
        spread |= behind.hosts(1, **{"x-forwarded-for": f"10.0.0.{i}"})
    assert len(spread) > 1  # all ten on one of three hosts: p = 3^-9
    edge = Ring(launcher, implementation, upstreams, [{"connection_properties": {"source_ip": True}}],
                use_remote_address=True)
    pinned: set[int] = set()
    for i in range(2, 12):
        pinned |= edge.hosts(1, **{"x-forwarded-for": f"10.0.0.{i}"})
    assert len(pinned) == 1


def test_maglev_keeps_a_key_on_one_host_and_spreads_without_one(launcher: ProxyLauncher, implementation: str,
                                                                 upstreams: Any) -> None:
    ring = Ring(launcher, implementation, upstreams, [{"header": {"header_name": "x-user"}}], lb_policy="MAGLEV")
    assert all(len(ring.hosts(6, **{"x-user": user})) == 1 for user in ("ann", "bob", "cid"))
    assert len(ring.hosts(12)) > 1


def test_a_cookie_key_sticks_and_a_missing_cookie_is_made_as_envoy_makes_it(launcher: ProxyLauncher,
                                                                           implementation: str,
                                                                           upstreams: Any) -> None:
    """With a ttl, a request without the cookie gets one (`name="<16 hex>"; Max-Age=<ttl>; Path=...; HttpOnly`,
    the same for one connection) and is placed by it; a request that brings it is placed by it and gets none."""
    ring = Ring(launcher, implementation, upstreams, [{"cookie": {"name": "sess", "ttl": "60s", "path": "/"}}])
    url = f"http://127.0.0.1:{ring.proxy.ports['web']}/a"
    made = []
    with httpx.Client(timeout=5) as client:
        for _ in range(3):  # one connection; the client's jar forgets the cookie each time
            made.append(client.get(url).headers.get_list("set-cookie"))
            client.cookies.clear()
    assert made[0] == made[1] == made[2] and len(made[0]) == 1
    assert re.fullmatch(r'sess="[0-9a-f]{16}"; Max-Age=60; Path=/; HttpOnly', made[0][0]), made[0]
    assert all(len(ring.hosts(6, cookie=f"sess={sid}")) == 1 for sid in ("a1", "b2", "c3"))
    with httpx.Client(timeout=5) as client:
        assert client.get(url, headers={"cookie": "sess=a1"}).headers.get_list("set-cookie") == []


def test_a_cookie_policy_without_ttl_makes_no_cookie_and_no_key(launcher: ProxyLauncher, implementation: str,
                                                                upstreams: Any) -> None:
    ring = Ring(launcher, implementation, upstreams, [{"cookie": {"name": "sess"}}])
    with httpx.Client(timeout=5) as client:
        assert client.get(f"http://127.0.0.1:{ring.proxy.ports['web']}/").headers.get_list("set-cookie") == []
    assert len(ring.hosts(12)) > 1
    session = Ring(launcher, implementation, upstreams, [{"cookie": {"name": "sess", "ttl": "0s"}}])
    with httpx.Client(timeout=5) as client:
        cookie = client.get(f"http://127.0.0.1:{session.proxy.ports['web']}/").headers.get_list("set-cookie")
    assert len(cookie) == 1 and re.fullmatch(r'sess="[0-9a-f]{16}"; HttpOnly', cookie[0])  # a session cookie
