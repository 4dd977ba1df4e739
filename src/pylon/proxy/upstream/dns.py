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
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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


@dataclass(frozen=True)
class ResolvedEndpoint:
    """One address a target resolved to; the cluster turns it into a `Host`."""

    address: tuple[str, int]
    weight: int
    hostname: str
    eds_flags: int = 0


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
    ) -> None:
        if lookup_family not in LOOKUP_FAMILIES:
            raise ValueError(f"dns_lookup_family {lookup_family!r} is not one of {', '.join(LOOKUP_FAMILIES)}")
        self.cluster_name = cluster_name
        self.targets = list(targets)
        self.on_update = on_update
        self.lookup_family = lookup_family
        self.refresh_rate = refresh_rate
        self.first_only = first_only
        self._last: dict[DnsTarget, list[str]] = {}
        self._task: asyncio.Task[None] | None = None

    async def resolve_once(self, loop: asyncio.AbstractEventLoop) -> list[ResolvedEndpoint]:
        """Resolve every target (concurrently), report the combined answer, and return it."""
        answers = await asyncio.gather(
            *(self._resolve(loop, t) for t in self.targets), return_exceptions=True,
        )
        endpoints: list[ResolvedEndpoint] = []
        for target, answer in zip(self.targets, answers):
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
                ResolvedEndpoint((addr, target.port), target.weight, target.hostname, target.eds_flags)
                for addr in addresses
            )
        self.on_update(endpoints)
        return endpoints

    async def _resolve(self, loop: asyncio.AbstractEventLoop, target: DnsTarget) -> list[str]:
        infos = await loop.getaddrinfo(target.hostname, target.port, type=socket.SOCK_STREAM)
        return select_addresses(infos, self.lookup_family)

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
            await asyncio.sleep(self.refresh_rate)
