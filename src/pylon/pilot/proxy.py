"""A connected proxy as istiod sees it: type, IPs, namespace and labels from its node id and metadata.

The node id is `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`
(pilot-agent's ServiceNode); metadata keys are Istio's (`NAMESPACE`, `LABELS`,
`INSTANCE_IPS`, ...). Like istiod, an id that does not have four parts or has an
unknown type is refused, with the reason, before anything is generated.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pylon.identity.spiffe import SpiffeId

PROXY_TYPES = ("sidecar", "router", "waypoint")


@dataclass(frozen=True)
class Proxy:
    node_id: str
    type: str
    ip_addresses: tuple[str, ...]
    id: str
    dns_domain: str
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    # Who the proxy proved to be on the TLS port (client certificate or token); None on the plaintext port.
    identity: SpiffeId | None = None


def parse_node(node_id: str, metadata: dict[str, Any] | None = None) -> Proxy:
    """The Proxy for an Envoy node id and metadata; ValueError saying what is wrong with them."""
    metadata = metadata or {}
    parts = node_id.split("~")
    if len(parts) != 4:
        raise ValueError(f"node id {node_id!r} must have 4 parts separated by '~' (type~ip~pod.namespace~domain)")
    proxy_type, ip_part, pod, domain = parts
    if proxy_type not in PROXY_TYPES:
        raise ValueError(f"node id {node_id!r}: unknown proxy type {proxy_type!r}; expected one of {', '.join(PROXY_TYPES)}")
    instance_ips = metadata.get("INSTANCE_IPS")
    ips = tuple(ip for ip in instance_ips.split(",") if ip) if isinstance(instance_ips, str) and instance_ips else (ip_part,)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ValueError(f"node id {node_id!r}: {ip!r} is not an IP address") from None
    namespace = metadata.get("NAMESPACE") or _namespace_from(pod, domain)
    labels = metadata.get("LABELS") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"node {node_id!r}: metadata LABELS must map label names to strings")
    return Proxy(node_id=node_id, type=proxy_type, ip_addresses=ips, id=pod, dns_domain=domain,
                 namespace=str(namespace), labels=dict(labels), metadata=dict(metadata))


def _namespace_from(pod: str, domain: str) -> str:
    """Istio's fallback without NAMESPACE metadata: the first label of the DNS domain, else the pod id's."""
    if domain and "." in domain:
        return domain.split(".", 1)[0]
    if "." in pod:
        return pod.split(".", 1)[1]
    return "default"
