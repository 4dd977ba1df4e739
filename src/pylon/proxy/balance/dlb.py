"""Envoy's DLB connection balancer config, accepted for compatibility and served by its fallback.

Envoy's contrib extension `envoy.network.connection_balance.dlb` hands each
accepted connection to Intel DLB hardware queues. pylon has no DLB driver, so
it is in the position Envoy is in on a host without the device: it uses the
`fallback_policy`. `ExactConnectionBalance` becomes pylon's exact balancer,
`NopConnectionBalance` the kernel's; `None` (the proto default) means "no
fallback", and where Envoy would then fail to balance at runtime, pylon refuses
to start and says so, because a config that cannot do what it asks for should
fail before anything binds. `id` and `max_retries` only matter with a device;
they are parsed and checked, not used.
"""

from __future__ import annotations

from typing import Literal

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, UInt32

DLB_TYPE_URL = "type.googleapis.com/envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb"

FallbackPolicy = Literal["None", "NopConnectionBalance", "ExactConnectionBalance"]


class Dlb(EnvoyStruct, kw_only=True):
    """envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb."""

    id: UInt32 = 0
    max_retries: UInt32 = 0
    fallback_policy: FallbackPolicy = "None"


class NoDlbFallback(ValueError):
    """A DLB config with fallback_policy None on a host without a DLB device."""

    field = "fallback_policy"


def fallback_kind(config: Dlb) -> str:
    """The pylon balancer ("exact" or "kernel") that stands in for DLB, or NoDlbFallback."""
    if config.fallback_policy == "ExactConnectionBalance":
        return "exact"
    if config.fallback_policy == "NopConnectionBalance":
        return "kernel"
    raise NoDlbFallback(
        "there is no DLB device here (pylon balances in software), and fallback_policy None means no fallback; "
        "set fallback_policy to ExactConnectionBalance (pylon's exact balancer) or NopConnectionBalance "
        "(the kernel's SO_REUSEPORT balancing)")


registry.register_typed(registry.CONNECTION_BALANCER, DLB_TYPE_URL, Dlb)
