"""The traffic capture of a sidecar, as istio-iptables sets it up, in one nftables table (sans-IO).

Istio's chains (mesh-facts A3), in nft: inbound connections to the pod go to the sidecar's :15006 but
for the sidecar's own ports; outbound connections go to :15001 but for the proxy's own traffic (uid
1337, or gid 1337 as istio-iptables' --proxy-gid), loopback, and connections from 127.0.0.6 (the
sidecar's inbound passthrough to the app). The
`redirect` of each rule needs `meta l4proto tcp` beside it. Loading is atomic (`nft -f`): a ruleset
that fails installs nothing, so the loader checks the table afterwards.

With DNS capture (istio-iptables' --redirect-dns with ISTIO_META_DNS_CAPTURE; `dns=True`), every DNS query of
the pod's processes, UDP or TCP port 53 to any resolver, goes to the agent's DNS proxy on :15053, ahead of the
loopback exemptions (a resolver may well be on loopback), except the proxy's and the agent's own (uid or gid
1337), which is how the agent's forwarding reaches the real resolvers.
"""

from __future__ import annotations

from pylon.mesh.layout import PROXY_UID

TABLE = "pylon_capture"
INBOUND_CAPTURE_PORT = 15006
OUTBOUND_CAPTURE_PORT = 15001
DNS_CAPTURE_PORT = 15053
# istio-iptables' default exclusions: the sidecar's own ports (HBONE, agent, health, Prometheus).
EXCLUDED_INBOUND_PORTS = (15008, 15020, 15021, 15090)


def ruleset(excluded_inbound: tuple[int, ...] = EXCLUDED_INBOUND_PORTS, dns: bool = False) -> str:
    """The nft script for one workload namespace (replaces any earlier version of the table); `dns`: with DNS
    capture."""
    excluded = ", ".join(str(port) for port in excluded_inbound)
    dns_rules = "".join(
        f"\n    {proto} dport 53 meta skuid != {PROXY_UID} meta skgid != {PROXY_UID} redirect to :{DNS_CAPTURE_PORT}"
        for proto in ("udp", "tcp")) if dns else ""  # fmt: skip
    return f"""table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp tcp dport {{ {excluded} }} return
    meta l4proto tcp redirect to :{INBOUND_CAPTURE_PORT}
  }}
  chain output {{
    type nat hook output priority -100; policy accept;{dns_rules}
    ip saddr 127.0.0.6 oifname "lo" return
    oifname "lo" ip daddr != 127.0.0.1 meta skuid {PROXY_UID} meta l4proto tcp redirect to :{INBOUND_CAPTURE_PORT}
    oifname "lo" meta skuid != {PROXY_UID} return
    meta skuid {PROXY_UID} return
    meta skgid {PROXY_UID} return
    ip daddr 127.0.0.1 return
    meta l4proto tcp redirect to :{OUTBOUND_CAPTURE_PORT}
  }}
}}
"""
