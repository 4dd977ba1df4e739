"""Which filter chain takes a connection: Envoy's FilterChainMatch rules (sans-IO).

Envoy narrows the listener's chains criterion by criterion, in a fixed order:
destination port, destination IP (`prefix_ranges`), server name (SNI),
transport protocol, application protocols (ALPN), direct source IP, source
type, source IP, source port. At each step the chains that match the
connection most specifically go on - an exact port before "any port", the
longest matching prefix, the exact server name before `*.example.com` before
`*.com`, the first of the client's ALPN protocols that some chain names - and
chains that leave the criterion empty go on only when no chain matched it
specifically. There is no backtracking: a connection whose port picks chain A
is not given to the port-less chain B when A's later criteria fail; it gets
the `default_filter_chain`, or is closed (`no_filter_chain_match`).

Two chains whose criteria can describe the same connection identically are a
config error, as in Envoy (the same rules, or overlapping ones: a value both
list, or one chain lists twice): then at most one chain survives every step.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")
_LOOPBACK = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))


@dataclass(slots=True)
class ConnectionFacts:
    """What a connection offers to match on."""

    destination_ip: IPAddress
    destination_port: int
    source_ip: IPAddress
    source_port: int
    server_name: str = ""
    transport_protocol: str = "raw_buffer"
    application_protocols: tuple[str, ...] = ()
    #: the socket's peer when a PROXY protocol header named another source (None: it is `source_ip`)
    direct_source_ip: IPAddress | None = None


class DuplicateMatch(ValueError):
    """Chain `index` matches connections chain `previous` (an earlier one, or itself) matches too.

    `identical`: the two have the very same rules; else they overlap (a value listed twice
    in one chain overlaps that chain with itself), as Envoy tells the two apart.
    """

    def __init__(self, index: int, previous: int, identical: bool) -> None:
        super().__init__(index, previous, identical)
        self.index, self.previous, self.identical = index, previous, identical


class _Criteria:
    """One chain's FilterChainMatch, in the forms matching needs."""

    __slots__ = ("port", "destinations", "listed_names", "exact_names", "wildcard_suffixes", "transport",
                 "listed_alpn", "alpn", "direct_sources", "source_type", "sources", "listed_ports", "source_ports")

    def __init__(self, match: Any) -> None:
        self.port: int | None = getattr(match, "destination_port", None)
        self.destinations = _networks(getattr(match, "prefix_ranges", ()))
        # Server names match regardless of case, as in Envoy.
        self.listed_names = [name.lower() for name in getattr(match, "server_names", ())]
        self.exact_names = frozenset(n for n in self.listed_names if not n.startswith("*."))
        self.wildcard_suffixes = frozenset(n[1:] for n in self.listed_names if n.startswith("*."))  # "*.a" -> ".a"
        self.transport: str = getattr(match, "transport_protocol", "")
        self.listed_alpn: list[str] = list(getattr(match, "application_protocols", ()))
        self.alpn = frozenset(self.listed_alpn)
        self.direct_sources = _networks(getattr(match, "direct_source_prefix_ranges", ()))
        self.source_type: str = getattr(match, "source_type", "ANY")
        self.sources = _networks(getattr(match, "source_prefix_ranges", ()))
        self.listed_ports: list[int] = list(getattr(match, "source_ports", ()))
        self.source_ports = frozenset(self.listed_ports)

    def rules(self) -> tuple[Any, ...]:
        """The criteria as sets: equal for two chains with the same matching rules, in any order."""
        return (self.port, frozenset(self.destinations), self.exact_names, self.wildcard_suffixes, self.transport,
                self.alpn, frozenset(self.direct_sources), self.source_type, frozenset(self.sources),
                self.source_ports)

    def leaves(self) -> Iterator[tuple[Any, ...]]:
        """Every combination of single values this chain matches on, repeats included (a leaf seen twice is a
        duplicate)."""
        return itertools.product(
            [self.port], _or_any(self.destinations), _or_any(self.listed_names), [self.transport],
            _or_any(self.listed_alpn), _or_any(self.direct_sources), [self.source_type], _or_any(self.sources),
            _or_any(self.listed_ports))


def _networks(ranges: Iterable[Any]) -> tuple[IPNetwork, ...]:
    return tuple(r.network for r in ranges)


def _or_any(values: Sequence[T]) -> Sequence[T | None]:
    return values if values else [None]


def _best(candidates: list[_Criteria], score: Callable[[_Criteria], int | None]) -> list[_Criteria]:
    """The candidates with the highest score; None means "does not match" (an empty criterion scores -1)."""
    best = None
    kept: list[_Criteria] = []
    for criteria in candidates:
        value = score(criteria)
        if value is None or (best is not None and value < best):
            continue
        if best is None or value > best:
            best, kept = value, []
        kept.append(criteria)
    return kept


def _prefix_score(networks: tuple[IPNetwork, ...], ip: IPAddress) -> int | None:
    if not networks:
        return -1
    lengths = [n.prefixlen for n in networks if n.version == ip.version and ip in n]
    return max(lengths) if lengths else None


def _server_name_score(criteria: _Criteria, server_name: str) -> int | None:
    if not criteria.exact_names and not criteria.wildcard_suffixes:
        return -1
    if server_name in criteria.exact_names:
        return 1 << 16
    # "*.b.example" covers "x.b.example" and "y.x.b.example": the longest suffix wins.
    best = None
    for dot in range(len(server_name)):
        if server_name[dot] == "." and server_name[dot:] in criteria.wildcard_suffixes:
            best = len(server_name) - dot
            break
    return best


class FilterChainSelector:
    """Picks the index of the chain for a connection, or None (the default chain, else close)."""

    def __init__(self, matches: Sequence[Any]) -> None:
        """`matches`: each chain's filter_chain_match (None for none), in config order.

        Raises DuplicateMatch when two chains match the same connections.
        """
        self.criteria = [_Criteria(match) for match in matches]
        self._index = {id(c): i for i, c in enumerate(self.criteria)}
        seen: dict[tuple[Any, ...], int] = {}
        for i, criteria in enumerate(self.criteria):
            for leaf in criteria.leaves():
                if leaf in seen:
                    previous = seen[leaf]
                    identical = previous != i and self.criteria[previous].rules() == criteria.rules()
                    raise DuplicateMatch(i, previous, identical)
                seen[leaf] = i

    def select(self, facts: ConnectionFacts) -> int | None:
        candidates = self.criteria
        port = facts.destination_port
        candidates = _best(candidates, lambda c: None if c.port not in (None, port) else (0 if c.port is None else 1))
        candidates = _best(candidates, lambda c: _prefix_score(c.destinations, facts.destination_ip))
        name = facts.server_name.lower()
        candidates = _best(candidates, lambda c: _server_name_score(c, name))
        transport = facts.transport_protocol or "raw_buffer"
        candidates = _best(candidates, lambda c: -1 if not c.transport else (1 if c.transport == transport else None))
        candidates = self._by_alpn(candidates, facts.application_protocols)
        direct = facts.direct_source_ip if facts.direct_source_ip is not None else facts.source_ip
        candidates = _best(candidates, lambda c: _prefix_score(c.direct_sources, direct))
        # Envoy's loopback is 127.0.0.1 (or ::1) itself, not all of 127/8 (checked against Envoy 1.40).
        local = facts.source_ip in _LOOPBACK or facts.source_ip == facts.destination_ip
        wanted_type = "SAME_IP_OR_LOOPBACK" if local else "EXTERNAL"
        candidates = _best(candidates, lambda c: -1 if c.source_type == "ANY" else (1 if c.source_type == wanted_type
                                                                                     else None))
        candidates = _best(candidates, lambda c: _prefix_score(c.sources, facts.source_ip))
        source_port = facts.source_port
        candidates = _best(candidates, lambda c: -1 if not c.source_ports else (1 if source_port in c.source_ports
                                                                                  else None))
        return self._index[id(candidates[0])] if candidates else None

    @staticmethod
    def _by_alpn(candidates: list[_Criteria], offered: tuple[str, ...]) -> list[_Criteria]:
        """The chains naming the first offered protocol any chain names; else those naming none."""
        for protocol in offered:
            named = [c for c in candidates if protocol in c.alpn]
            if named:
                return named
        return [c for c in candidates if not c.alpn]
