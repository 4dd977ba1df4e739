"""Endpoint discovery by DNS for STRICT_DNS and LOGICAL_DNS clusters.

`select_addresses` is the sans-IO part: from getaddrinfo's answers it keeps
the addresses `dns_lookup_family` asks for, in answer order without
duplicates. `DnsRefresher` is the shell: it resolves every endpoint hostname
at start and every `dns_refresh_rate`, and hands the cluster the full list of
resolved endpoints. A hostname that fails to resolve keeps its previous
addresses (Envoy keeps the last good answer) and logs a warning.

STRICT_DNS makes a host of every address; LOGICAL_DNS uses only the first
address of each name (Envoy's logical host: one connection target that
follows DNS).

`respect_dns_ttl`: the next refresh comes when the answer's TTL runs out (the
smallest TTL of the addresses; an answer with TTL 0, such as one from
/etc/hosts, keeps `dns_refresh_rate`, as in Envoy). getaddrinfo does not tell
TTLs, so such clusters resolve through c-ares (`CaresResolver`: aiodns), Envoy's
own resolver, which reads /etc/hosts too; the dynamic forward proxy's DNS cache
resolves through it as well. Departure: Envoy times each name on its own; pylon
refreshes a cluster's names together, at the soonest TTL.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pylon.proxy.upstream.host import NO_PLACEMENT, Placement

log = logging.getLogger(__name__)

DEFAULT_DNS_REFRESH_RATE = 5.0
LOOKUP_FAMILIES = ("AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL")


@dataclass(frozen=True)
class DnsTarget:
    """One `lb_endpoints` entry whose address is a name to resolve."""

    hostname: str
    port: int
    weight: int = 1
    eds_flags: int = 0  # the lb_endpoint's health_status as host health flags (host.eds_health_flags)
    # its `envoy.transport_socket_match` metadata (which transport socket its hosts get)
    socket_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    placement: Placement = NO_PLACEMENT  # its locality entry's priority and locality
    lb_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)  # its `envoy.lb`
    # its typed_filter_metadata (the proxy_protocol socket's per-host TLVs)
    typed_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ResolvedEndpoint:
    """One address a target resolved to; the cluster turns it into a `Host`."""

    address: tuple[str, int]
    weight: int
    hostname: str
    eds_flags: int = 0
    socket_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    placement: Placement = NO_PLACEMENT
    lb_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)
    typed_metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)


def select_addresses(infos: Sequence[tuple[Any, ...]], lookup_family: str) -> list[str]:
    """Filter getaddrinfo results by Envoy's `dns_lookup_family`.

    AUTO prefers IPv6 and falls back to IPv4; V4_PREFERRED the reverse;
    ALL keeps both, in answer order.
    """
    v4: list[str] = []
    v6: list[str] = []
    both: list[str] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        bucket = v6 if family == socket.AF_INET6 else v4 if family == socket.AF_INET else None
        if bucket is not None and sockaddr[0] not in bucket:
            bucket.append(sockaddr[0])
            both.append(sockaddr[0])
    if lookup_family == "V4_ONLY":
        return v4
    if lookup_family == "V6_ONLY":
        return v6
    if lookup_family == "V4_PREFERRED":
        return v4 or v6
    if lookup_family == "ALL":
        return both
    if lookup_family == "AUTO":
        return v6 or v4
    raise ValueError(f"dns_lookup_family {lookup_family!r} is not one of {', '.join(LOOKUP_FAMILIES)}")


class CaresResolver:
    """c-ares through aiodns, Envoy's default resolver: a name's addresses of a lookup family and their TTL.

    c-ares reads resolv.conf and the hosts file as getaddrinfo does, and answers `localhost` and `*.localhost`
    with loopback addresses itself (RFC 6761), as it does inside Envoy. Its channel is made on first use, on the
    running loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Any = None) -> None:
        self.loop = loop
        self.config = config  # a CaresDnsResolverConfig (typed_dns_resolver_config), None: the system's settings
        self._channel: Any = None

    async def resolve(self, hostname: str, port: int, lookup_family: str) -> tuple[list[str], int]:
        """The addresses `lookup_family` keeps, in answer order, and the smallest TTL among all the answer's (0:
        none, or a hosts-file answer). Raises aiodns' DNSError (`no_records` tells a name without addresses)."""
        if self._channel is None:
            import aiodns

            options = self.config.channel_options(system_servers) if self.config is not None else {}
            self._channel = aiodns.DNSResolver(loop=self.loop, **options)
        answer = await self._channel.getaddrinfo(hostname, family=socket.AF_UNSPEC, port=port, type=socket.SOCK_STREAM)
        infos = [(node.family, node.socktype, node.protocol, "", (node.addr[0].decode(), *node.addr[1:]))
                 for node in answer.nodes]
        return select_addresses(infos, lookup_family), min((node.ttl for node in answer.nodes), default=0)


def system_servers() -> list[str]:
    """The name servers c-ares finds in the system's resolv.conf (use_resolvers_as_fallback asks)."""
    import pycares

    return list(pycares.Channel().servers)


def no_records(error: BaseException) -> bool:
    """Whether a c-ares error says the name has no addresses (NXDOMAIN or no data): Envoy counts such an answer as
    a completed resolution with no records, other errors as failures."""
    import pycares

    return bool(error.args) and error.args[0] in (pycares.errno.ARES_ENOTFOUND, pycares.errno.ARES_ENODATA)


class DnsRefresher:
    """Resolves targets now and every `refresh_rate` seconds, reporting each full answer."""

    def __init__(
        self,
        cluster_name: str,
        targets: Sequence[DnsTarget],
        on_update: Callable[[list[ResolvedEndpoint]], None],
        *,
        lookup_family: str = "AUTO",
        refresh_rate: float = DEFAULT_DNS_REFRESH_RATE,
        first_only: bool = False,
        respect_ttl: bool = False,
        resolver: Any = None,
    ) -> None:
        if lookup_family not in LOOKUP_FAMILIES:
            raise ValueError(f"dns_lookup_family {lookup_family!r} is not one of {', '.join(LOOKUP_FAMILIES)}")
        self.cluster_name = cluster_name
        self.targets = list(targets)
        self.on_update = on_update
        self.lookup_family = lookup_family
        self.refresh_rate = refresh_rate
        self.first_only = first_only
        self.respect_ttl = respect_ttl
        #: typed_dns_resolver_config's c-ares settings (None: getaddrinfo, or c-ares as the system sets it up)
        self.resolver = resolver
        self.next_refresh = refresh_rate  # the refresh rate, or (respect_ttl) the last answer's TTL
        self._cares: CaresResolver | None = None  # made on first use (respect_ttl or a resolver config only)
        self._last: dict[DnsTarget, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def resolve_once(self, loop: asyncio.AbstractEventLoop) -> list[ResolvedEndpoint]:
        """Resolve every target (concurrently), report the combined answer, and return it."""
        answers = await asyncio.gather(
            *(self._resolve(loop, t) for t in self.targets), return_exceptions=True,
        )
        endpoints: list[ResolvedEndpoint] = []
        ttls = [answer[1] for answer in answers if not isinstance(answer, BaseException) and answer[1] > 0]
        self.next_refresh = min(ttls) if self.respect_ttl and ttls else self.refresh_rate
        for target, result in zip(self.targets, answers):
            answer = result if isinstance(result, BaseException) else result[0]
            if isinstance(answer, BaseException) or not answer:
                reason = answer if isinstance(answer, BaseException) else "no address of the requested family"
                log.warning(
                    "cluster %s: resolving %s failed (%s); keeping %d previous address(es)",
                    self.cluster_name, target.hostname, reason, len(self._last.get(target, [])),
                )
                addresses = self._last.get(target, [])
            else:
                addresses = answer[:1] if self.first_only else answer
                self._last[target] = addresses
            endpoints.extend(
                ResolvedEndpoint((addr, target.port), target.weight, target.hostname, target.eds_flags,
                                 target.socket_metadata, target.placement,
                                 target.lb_metadata, target.typed_metadata)
                for addr in addresses
            )
        self.on_update(endpoints)
        return endpoints

    async def _resolve(self, loop: asyncio.AbstractEventLoop, target: DnsTarget) -> tuple[list[str], int]:
        """The target's addresses and the smallest TTL among them (0: not known, or a hosts-file answer)."""
        if not self.respect_ttl and self.resolver is None:
            infos = await loop.getaddrinfo(target.hostname, target.port, type=socket.SOCK_STREAM)
            return select_addresses(infos, self.lookup_family), 0
        if self._cares is None:
            self._cares = CaresResolver(loop, self.resolver)
        return await self._cares.resolve(target.hostname, target.port, self.lookup_family)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run(loop))

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await self.resolve_once(loop)
            await asyncio.sleep(self.next_refresh)
