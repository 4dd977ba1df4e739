"""Service VIPs for pods without a sidecar: what kube-proxy does for a ClusterIP, as one nft table (sans-IO).

A sidecar captures every outbound connection and routes by its own config, so a VIP needs nothing else in a
meshed pod. A pod outside the mesh has no sidecar: its connection to a VIP is DNATed to one of the service's
pods, picked at random per connection, as kube-proxy's iptables mode picks.
"""

from __future__ import annotations

from collections.abc import Mapping

TABLE = "pylon_services"


def ruleset(services: Mapping[tuple[str, int], list[str]]) -> str:
    """The nft script for `services`: (VIP, port) -> the pod addresses behind it (replaces the earlier table)."""
    rules = []
    for (vip, port), pods in sorted(services.items()):
        if not pods:
            continue
        targets = ", ".join(f"{i} : {pod}" for i, pod in enumerate(pods))
        rules.append(f"    ip daddr {vip} tcp dport {port} dnat to numgen random mod {len(pods)} map {{ {targets} }}")
    body = "\n".join(rules)
    return f"""table ip {TABLE}
delete table ip {TABLE}
table ip {TABLE} {{
  chain output {{
    type nat hook output priority -100; policy accept;
{body}
  }}
}}
"""
