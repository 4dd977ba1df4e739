"""The DNS proxy's own rules, without pilot: SERVFAIL before the first table and when no resolver answers (at
once when the resolver is not there), truncation over UDP, and a query that is no DNS message dropped."""

from __future__ import annotations

import asyncio
import time

import dns.flags
import dns.message
import dns.rcode
from prometheus_client import CollectorRegistry

from pylon.agent.dns_proxy import DnsProxy, Resolvers
from pylon.agent.dns_table import NameInfo
from tests.conftest import free_port


def _proxy() -> DnsProxy:
    nobody = Resolvers(servers=("127.0.0.1",), port=free_port(), search=())  # nothing listens there
    return DnsProxy("default", "default.svc.cluster.local", nobody, CollectorRegistry())


def _count(proxy: DnsProxy, name: str) -> float:
    return proxy.registry.get_sample_value(f"istio_agent_dns_{name}_total") or 0.0


def _reply(proxy: DnsProxy, name: str, tcp: bool = False, payload: int | None = None) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=payload is not None, payload=payload or 512)
    wire = asyncio.run(proxy.reply(query.to_wire(), tcp=tcp))
    assert wire is not None
    return dns.message.from_wire(wire)


def test_before_the_first_table_every_name_fails_without_being_forwarded() -> None:
    proxy = _proxy()
    assert not proxy.ready
    assert _reply(proxy, "anything.test").rcode() == dns.rcode.SERVFAIL
    assert _count(proxy, "requests") == 1 and _count(proxy, "upstream_requests") == 0


def test_a_resolver_that_is_not_there_fails_at_once() -> None:
    proxy = _proxy()
    proxy.update({})
    started = time.monotonic()
    assert _reply(proxy, "outside.test").rcode() == dns.rcode.SERVFAIL
    assert time.monotonic() - started < 1  # ICMP port unreachable, not the 5 s timeout
    assert _count(proxy, "upstream_failures") == 1


def test_a_long_answer_is_truncated_over_udp_and_whole_over_tcp() -> None:
    proxy = _proxy()
    proxy.update({"many.example.test": NameInfo(tuple(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(100)))})
    short = _reply(proxy, "many.example.test")
    assert short.flags & dns.flags.TC and not short.answer
    assert len(_reply(proxy, "many.example.test", payload=4096).answer[0]) == 100  # EDNS allows more
    assert len(_reply(proxy, "many.example.test", tcp=True).answer[0]) == 100


def test_bytes_that_are_no_dns_message_get_no_answer() -> None:
    assert asyncio.run(_proxy().reply(b"\x00\x01garbage", tcp=False)) is None
