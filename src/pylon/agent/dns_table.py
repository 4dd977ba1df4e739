"""The agent's DNS answers from pilot's name table, sans-IO: a query's wire bytes in, the answer's out, or None
when the name is not the mesh's (then the DNS proxy asks the pod's own resolvers).

The rules are Istio's agent's (pkg/dns/client/dns.go), so a pod resolves as it would under Istio:
- every hostname of the table answers A and AAAA from its IPv4 and IPv6 addresses, TTL 30 s, authoritative;
  a name of the table asked for a family it has no address of gets an empty NOERROR answer (not NXDOMAIN, which
  would make resolvers give up the other family too), any other query type is not the table's;
- a `*.example.com` entry answers every name under it, by the name asked;
- a name with the first search domain of the pod's resolv.conf appended (what a resolver tries first for a
  name with fewer dots than `ndots`) is answered at once with a CNAME to the name, saving the round trips of
  the search list;
- `Kubernetes` registry entries also answer `short.namespace`, `short.namespace.svc` and, in the proxy's own
  namespace, `short` (pylon's pilot sends only `External` entries; an Envoy-less Istio pilot could send these);
- addresses are rotated between answers (round robin), as Istio's.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 30  # seconds, Istio's defaultTTLInSeconds
KUBERNETES_REGISTRY = "Kubernetes"


@dataclass(frozen=True)
class NameInfo:
    """One entry of pilot's NameTable (istio.networking.nds.v1.NameTable.NameInfo)."""

    ips: tuple[str, ...]
    registry: str = ""
    shortname: str = ""
    namespace: str = ""


@dataclass
class LookupTable:
    """Fully qualified lower-case names (with the trailing dot) to their addresses, and search-path CNAMEs."""

    v4: dict[str, list[str]] = field(default_factory=dict)
    v6: dict[str, list[str]] = field(default_factory=dict)
    cnames: dict[str, str] = field(default_factory=dict)

    def __contains__(self, name: str) -> bool:
        return name in self.v4 or name in self.v6 or name in self.cnames


def build_lookup_table(table: Mapping[str, NameInfo], proxy_namespace: str, proxy_domain: str,
                       search: Iterable[str] = ()) -> LookupTable:  # fmt: skip
    """The answers for `table`, for a proxy of `proxy_namespace` whose DNS domain is `proxy_domain`
    (`<ns>.svc.cluster.local`) and whose resolv.conf searches `search`."""
    domain_parts = proxy_domain.split(".")
    if domain_parts and domain_parts[0] == proxy_namespace:
        domain_parts = domain_parts[1:]
    domain = ".".join(domain_parts)
    first_search = next(iter(search), "").strip(".").lower()
    lookup = LookupTable()
    for hostname, info in table.items():
        v4 = [ip for ip in info.ips if _family(ip) == 4]
        v6 = [ip for ip in info.ips if _family(ip) == 6]
        if not v4 and not v6:
            continue
        names = _names(hostname, info, proxy_namespace, domain, domain_parts)
        for name in names:
            if v4:
                lookup.v4[name] = v4
            if v6:
                lookup.v6[name] = v6
            if first_search and not name.endswith(f"{first_search}."):
                expanded = f"{name}{first_search}."
                if expanded not in names:
                    lookup.cnames[expanded] = name
    return lookup


def _names(hostname: str, info: NameInfo, proxy_namespace: str, domain: str, domain_parts: list[str]) -> set[str]:
    """The names an entry answers to (Istio's generateAltHosts for Kubernetes entries, else the host alone)."""
    host = hostname.lower().rstrip(".")
    names = {f"{host}."}
    if info.registry != KUBERNETES_REGISTRY or not domain or not host.endswith(domain):
        return names
    short, namespace = info.shortname.lower(), info.namespace.lower()
    names.add(f"{short}.{namespace}.")
    names.add(f"{short}.{namespace}.{domain_parts[0]}.")
    if namespace == proxy_namespace:
        names.add(f"{short}.")
    return names


def _family(ip: str) -> int | None:
    try:
        return ipaddress.ip_address(ip).version
    except ValueError:
        return None


def answer(lookup: LookupTable, query: dns.message.Message) -> dns.message.Message | None:
    """The table's answer to `query`, or None if the question is not the table's (the caller forwards it)."""
    if not query.question:
        reply = dns.message.make_response(query)
        reply.set_rcode(dns.rcode.SERVFAIL)
        return reply
    question = query.question[0]
    if question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA) or question.rdclass != dns.rdataclass.IN:
        return None
    asked = question.name.to_text().lower()
    name = _find(lookup, asked)
    if name is None:
        return None
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.AA
    owner = asked  # a wildcard entry answers by the name asked
    target = lookup.cnames.get(name)
    if target is not None:
        reply.answer.append(dns.rrset.from_text(asked, TTL, "IN", "CNAME", target))
        owner = name = target
    addresses = (lookup.v4 if question.rdtype == dns.rdatatype.A else lookup.v6).get(name, [])
    if addresses:
        rdtype = "A" if question.rdtype == dns.rdatatype.A else "AAAA"
        reply.answer.append(dns.rrset.from_text_list(owner, TTL, "IN", rdtype, _rotated(addresses)))
    return reply


def _find(lookup: LookupTable, asked: str) -> str | None:
    """The table's name for `asked`: itself, or the closest `*.` entry above it."""
    if asked in lookup:
        return asked
    labels = asked.rstrip(".").split(".")
    for i in range(1, len(labels)):
        wildcard = "*." + ".".join(labels[i:]) + "."
        if wildcard in lookup:
            return wildcard
    return None


def _rotated(addresses: list[str]) -> list[str]:
    if len(addresses) < 2:
        return addresses
    start = random.randrange(len(addresses))
    return addresses[start:] + addresses[:start]
