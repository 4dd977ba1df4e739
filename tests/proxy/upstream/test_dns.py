"""DNS discovery: lookup-family selection (sans-IO) and refresh against "localhost"."""

from __future__ import annotations

import asyncio
import socket

import pytest

from pylon.proxy.upstream.dns import DnsRefresher, DnsTarget, select_addresses

V4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 80))
V4B = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 80))
V6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", 80, 0, 0))


@pytest.mark.parametrize(("family", "infos", "expected"), [
    ("V4_ONLY", [V6, V4, V4B], ["10.0.0.1", "10.0.0.2"]),
    ("V6_ONLY", [V6, V4], ["fd00::1"]),
    ("AUTO", [V4, V6], ["fd00::1"]),
    ("AUTO", [V4, V4B], ["10.0.0.1", "10.0.0.2"]),
    ("V4_PREFERRED", [V6, V4], ["10.0.0.1"]),
    ("V4_PREFERRED", [V6], ["fd00::1"]),
    ("ALL", [V6, V4, V4], ["fd00::1", "10.0.0.1"]),
    ("V4_ONLY", [V6], []),
])
def test_select_addresses(family, infos, expected):
    assert select_addresses(infos, family) == expected


def test_unknown_family_is_rejected():
    with pytest.raises(ValueError, match="dns_lookup_family"):
        select_addresses([V4], "IPV4")


def test_localhost_resolves_and_failures_keep_previous_addresses():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        updates: list[list] = []
        refresher = DnsRefresher(
            "c", [DnsTarget("localhost", 8080, weight=3)], updates.append, lookup_family="V4_ONLY",
        )
        first = await refresher.resolve_once(loop)
        assert [(e.address, e.weight, e.hostname) for e in first] == [(("127.0.0.1", 8080), 3, "localhost")]

        async def broken(*args, **kwargs):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        loop.getaddrinfo = broken  # a resolver outage, without touching any network
        try:
            second = await refresher.resolve_once(loop)
        finally:
            del loop.getaddrinfo
        assert second == first
        assert updates == [first, second]

    asyncio.run(main())


def test_refresh_loop_reresolves_until_stopped():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        updates: list[list] = []
        refresher = DnsRefresher(
            "c", [DnsTarget("localhost", 80)], updates.append, lookup_family="V4_ONLY", refresh_rate=0.01,
        )
        refresher.start(loop)
        while len(updates) < 3:
            await asyncio.sleep(0.01)
        await refresher.stop()
        seen = len(updates)
        await asyncio.sleep(0.05)
        assert len(updates) == seen

    asyncio.run(main())


def test_respect_dns_ttl_refreshes_at_the_answers_ttl():
    """c-ares tells each address's TTL: the next refresh comes when the smallest runs out; a hosts-file answer
    (TTL 0) keeps dns_refresh_rate, as Envoy."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        refresher = DnsRefresher("c", [DnsTarget("localhost", 80)], lambda _: None, lookup_family="V4_ONLY",
                                 refresh_rate=5.0, respect_ttl=True)
        answer = await refresher.resolve_once(loop)  # the real c-ares, from /etc/hosts
        assert [e.address for e in answer] == [("127.0.0.1", 80)] and refresher.next_refresh == 5.0

        class Node:
            def __init__(self, address: str, ttl: int) -> None:
                self.family, self.socktype, self.protocol = socket.AF_INET, socket.SOCK_STREAM, 6
                self.addr, self.ttl = (address.encode(), 80), ttl

        class Answer:
            nodes = [Node("10.0.0.1", 30), Node("10.0.0.2", 12)]

        class Resolver:  # a DNS server's answer with TTLs, without sending a query anywhere
            async def getaddrinfo(self, *args, **kwargs):
                return Answer()

        refresher._cares._channel = Resolver()  # the c-ares channel the first answer made
        answer = await refresher.resolve_once(loop)
        assert [e.address[0] for e in answer] == ["10.0.0.1", "10.0.0.2"] and refresher.next_refresh == 12

    asyncio.run(main())
