"""The agent's DNS proxy (Istio's on :15053): answers the pod's queries for mesh names from pilot's name table,
forwards the rest to the pod's own resolvers.

With DNS capture on, the pod's capture rules redirect every DNS query (UDP and TCP port 53) of its processes to
here, except the proxy's and the agent's own (uid/gid 1337): so the forwarding below reaches the real resolvers.
Bound to 127.0.0.1 (and ::1 when resolv.conf names an IPv6 resolver) as Istio binds it: a redirected query's
answer must come from the address the redirect sent it to, or conntrack cannot map it back (mesh-facts A4).
Until the first table arrives it answers SERVFAIL (Istio's agent on :15053, which also keeps the pod unready
meanwhile: `ready`). Counters carry Istio's names: `istio_agent_dns_requests_total`,
`istio_agent_dns_upstream_requests_total`, `istio_agent_dns_upstream_failures_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.resolver
from prometheus_client import CollectorRegistry, Counter

from pylon.agent.dns_table import LookupTable, NameInfo, answer, build_lookup_table

log = logging.getLogger("pylon.agent.dns")

UPSTREAM_TIMEOUT = 5.0  # seconds per resolver tried, Istio's DefaultUpstreamTimeout
_MIN_UDP = 512  # a UDP answer may always be this long; EDNS lets the asker allow more
_TCP_MAX = 65535


class DnsConfigError(Exception):
    """The pod's resolver configuration cannot be read."""


@dataclass(frozen=True)
class Resolvers:
    """The pod's own resolvers and search list (resolv.conf), where names not of the mesh go."""

    servers: tuple[str, ...]
    port: int
    search: tuple[str, ...]

    @classmethod
    def read(cls, path: Path) -> Resolvers:
        try:
            conf = dns.resolver.Resolver(filename=str(path))
        except (OSError, dns.resolver.NoResolverConfiguration) as exc:
            raise DnsConfigError(f"cannot read the pod's resolvers from {path}: {exc}") from None
        return cls(tuple(str(s) for s in conf.nameservers), conf.port,
                   tuple(name.to_text(omit_final_dot=True) for name in conf.search))  # fmt: skip


class DnsProxy:
    """Answers from the latest table (`update`), forwards the rest to `resolvers`."""

    def __init__(self, namespace: str, domain: str, resolvers: Resolvers, registry: CollectorRegistry,
                 upstream_timeout: float = UPSTREAM_TIMEOUT) -> None:  # fmt: skip
        self.namespace, self.domain, self.resolvers = namespace, domain, resolvers
        self.upstream_timeout = upstream_timeout
        self.registry = registry
        self.lookup: LookupTable | None = None
        self.requests = Counter("istio_agent_dns_requests", "DNS requests.", registry=registry)
        self.upstream_requests = Counter("istio_agent_dns_upstream_requests", "DNS requests forwarded to the pod's "
                                         "resolvers.", registry=registry)  # fmt: skip
        self.upstream_failures = Counter("istio_agent_dns_upstream_failures", "Forwarded DNS requests no resolver "
                                         "answered.", registry=registry)  # fmt: skip
        self._servers: list[Any] = []

    @property
    def ready(self) -> bool:
        return self.lookup is not None

    def update(self, table: dict[str, NameInfo]) -> None:
        """A new name table from pilot; answers from it at once."""
        self.lookup = build_lookup_table(table, self.namespace, self.domain, self.resolvers.search)
        log.info("DNS table: %d hosts", len(table))

    async def start(self, host: str, port: int) -> None:
        """Serve UDP and TCP on host:port (and on ::1 too when host is 127.0.0.1 and a resolver is IPv6)."""
        loop = asyncio.get_running_loop()
        hosts = [host]
        if host == "127.0.0.1" and any(":" in server for server in self.resolvers.servers):
            hosts.append("::1")
        for address in hosts:
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), local_addr=(address, port))
            self._servers.append(transport)
            self._servers.append(await asyncio.start_server(self._serve_tcp, address, port))
        log.info("DNS proxy on %s port %d (UDP, TCP), forwarding to %s", ", ".join(hosts), port,
                 ", ".join(self.resolvers.servers) or "no resolver")  # fmt: skip

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        self._servers = []

    async def reply(self, wire: bytes, tcp: bool) -> bytes | None:
        """The answer to one query's bytes (None: not a DNS message, nothing to answer)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        self.requests.inc()
        if self.lookup is None:
            return _to_wire(_failure(query), query, tcp)
        response = answer(self.lookup, query)
        if response is not None:
            return _to_wire(response, query, tcp)
        return await self._forward(wire, query, tcp)

    async def _forward(self, wire: bytes, query: dns.message.Message, tcp: bool) -> bytes:
        """The first answer of the pod's resolvers to the query as it came, tried in random order (SERVFAIL if
        none answers)."""
        self.upstream_requests.inc()
        servers = list(self.resolvers.servers)
        random.shuffle(servers)
        for server in servers:
            try:
                if tcp:
                    reply = await dns.asyncquery.tcp(query, server, timeout=self.upstream_timeout,
                                                     port=self.resolvers.port)  # fmt: skip
                    return reply.to_wire(max_size=_TCP_MAX)
                return await _udp_exchange(wire, query.id, server, self.resolvers.port, self.upstream_timeout)
            except (dns.exception.DNSException, OSError, EOFError, asyncio.TimeoutError) as exc:
                log.info("resolver %s did not answer %s: %r", server, query.question[0].name if query.question else "?",
                         exc)  # fmt: skip
        self.upstream_failures.inc()
        return _to_wire(_failure(query), query, tcp)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Length-prefixed queries on one connection, answered in turn until the client closes."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                wire = await self.reply(await reader.readexactly(length), tcp=True)
                if wire is None:
                    break
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        writer.close()


async def _udp_exchange(wire: bytes, query_id: int, server: str, port: int, timeout: float) -> bytes:
    """One UDP query to `server` and its answer. The socket is connected, so a resolver that is not there
    (ICMP port unreachable) fails at once instead of after the timeout."""
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[bytes] = loop.create_future()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Exchange(answered, query_id),
                                                       remote_addr=(server, port))  # fmt: skip
    try:
        transport.sendto(wire)
        return await asyncio.wait_for(answered, timeout)
    finally:
        transport.close()


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, answered: asyncio.Future[bytes], query_id: int) -> None:
        self.answered, self.query_id = answered, query_id

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == self.query_id and not self.answered.done():
            self.answered.set_result(data)  # anything else is not the answer: wait on

    def error_received(self, exc: Exception) -> None:
        if not self.answered.done():
            self.answered.set_exception(exc)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, proxy: DnsProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        task = asyncio.create_task(self._answer(data, addr))  # forwarding waits: never block the next query
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: Any) -> None:
        wire = await self.proxy.reply(data, tcp=False)
        if wire is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


def _failure(query: dns.message.Message) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response


def _to_wire(response: dns.message.Message, query: dns.message.Message, tcp: bool) -> bytes:
    """`response` in as many bytes as the transport allows; over UDP, an answer too long is sent truncated
    (TC set, records dropped), so the asker retries over TCP."""
    limit = _TCP_MAX if tcp else max(_MIN_UDP, query.payload if query.edns >= 0 else _MIN_UDP)
    try:
        return response.to_wire(max_size=limit)
    except dns.exception.TooBig:
        response.flags |= dns.flags.TC
        response.answer, response.authority, response.additional = [], [], []
        return response.to_wire(max_size=limit)
