"""The traffic policy that applies to one cluster: a DestinationRule's layers merged as Istio merges them.

Istio's order, each later layer replacing whole components (loadBalancer,
connectionPool, outlierDetection, tls) that it sets: the rule's trafficPolicy,
its portLevelSettings for the port, the subset's trafficPolicy, the subset's
portLevelSettings for the port.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pylon.pilot.istio.networking import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRuleSpec,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    TrafficPolicy,
)

COMPONENTS = ("load_balancer", "connection_pool", "outlier_detection", "tls")


@dataclass(frozen=True)
class EffectivePolicy:
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None

    def overlay(self, layer: TrafficPolicy | PortTrafficPolicy | None) -> EffectivePolicy:
        if layer is None:
            return self
        changes = {name: getattr(layer, name) for name in COMPONENTS if getattr(layer, name) is not None}
        return replace(self, **changes)


def _port_layer(policy: TrafficPolicy | None, port: int) -> PortTrafficPolicy | None:
    if policy is None:
        return None
    return next((p for p in policy.port_level_settings if p.port.number == port), None)


def effective_policy(rule: DestinationRuleSpec | None, port: int, subset: str = "") -> EffectivePolicy:
    """The policy for `outbound|port|subset|host` under `rule` (None: no DestinationRule)."""
    policy = EffectivePolicy()
    if rule is None:
        return policy
    policy = policy.overlay(rule.traffic_policy).overlay(_port_layer(rule.traffic_policy, port))
    chosen = next((s for s in rule.subsets if s.name == subset), None) if subset else None
    if chosen is not None:
        policy = policy.overlay(chosen.traffic_policy).overlay(_port_layer(chosen.traffic_policy, port))
    return policy
