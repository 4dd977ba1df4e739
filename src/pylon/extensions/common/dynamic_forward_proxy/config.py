"""extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig: the DNS cache a dynamic forward proxy's filter and
cluster share by name.

Every field is Envoy's, with its default and proto rule. Those pylon runs: `dns_lookup_family`,
`dns_refresh_rate` (60 s), `dns_min_refresh_rate` (5 s), `host_ttl` (300 s), `max_hosts` (1024),
`dns_failure_refresh_rate`, `dns_cache_circuit_breaker.max_pending_requests` (1024), `preresolve_hostnames`,
`dns_query_timeout` (5 s, 0: none), `typed_dns_resolver_config` (c-ares, Envoy's default resolver, which pylon
resolves through: its resolvers, TCP, search domain, timeout, tries and rotation; else the host's resolv.conf and
hosts files). Refused by name: the older resolver fields (`dns_resolution_config`, `use_tcp_for_dns_lookups`),
`key_value_config` (a persistent cache),
`disable_dns_refresh_on_failure` and `resolved_address_filter`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

from pylon.config.constraints import AtLeastOneMs, DnsRefreshRate, Duration, PositiveDuration
from pylon.config.envoy import (
    EnvoyStruct, NotSupportedYet, PositiveUInt32, SharedByName, SocketAddress, TypedDnsResolverConfig, UInt32,
)
from pylon.config.errors import FieldError

#: Envoy's defaults (dns_cache_impl.cc).
DEFAULT_REFRESH_RATE = 60.0
DEFAULT_MIN_REFRESH_RATE = 5.0
DEFAULT_HOST_TTL = 300.0
DEFAULT_MAX_HOSTS = 1024
DEFAULT_QUERY_TIMEOUT = 5.0
DEFAULT_MAX_PENDING_REQUESTS = 1024


class AtLeastOneSecond(Duration):
    """DnsCacheConfig.dns_min_refresh_rate: PGV `gte: {seconds: 1}`."""

    at_least_ns = 1_000_000_000


class RefreshRate(EnvoyStruct, kw_only=True):
    """config.cluster.v3.Cluster.RefreshRate: the jittered exponential backoff of refreshes after a failure."""

    base_interval: DnsRefreshRate
    max_interval: DnsRefreshRate | None = None  # Envoy's default: 10 x base_interval

    def __post_init__(self) -> None:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise FieldError("max_interval", "dns_failure_refresh_rate must have max_interval greater than or equal "
                                             "to the base_interval")

    @property
    def maximum(self) -> float:
        return float(self.max_interval) if self.max_interval is not None else 10 * float(self.base_interval)


class DnsCacheCircuitBreakers(EnvoyStruct, kw_only=True):
    """How many requests may wait for a resolution at once (more: 503, `dns_rq_pending_overflow`)."""

    max_pending_requests: UInt32 = DEFAULT_MAX_PENDING_REQUESTS


class DnsCacheConfig(SharedByName, kw_only=True):
    """extensions.common.dynamic_forward_proxy.v3.DnsCacheConfig (see the module docstring)."""

    conflict: ClassVar[str] = "config specified DNS cache '{name}' with different settings"

    dns_lookup_family: Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"] = "AUTO"
    dns_refresh_rate: AtLeastOneMs = AtLeastOneMs(DEFAULT_REFRESH_RATE)
    dns_min_refresh_rate: AtLeastOneSecond = AtLeastOneSecond(DEFAULT_MIN_REFRESH_RATE)
    host_ttl: PositiveDuration = PositiveDuration(DEFAULT_HOST_TTL)
    max_hosts: PositiveUInt32 = DEFAULT_MAX_HOSTS
    disable_dns_refresh_on_failure: bool = False
    dns_failure_refresh_rate: RefreshRate | None = None
    dns_cache_circuit_breaker: DnsCacheCircuitBreakers = msgspec.field(default_factory=DnsCacheCircuitBreakers)
    use_tcp_for_dns_lookups: NotSupportedYet | None = None
    dns_resolution_config: NotSupportedYet | None = None
    typed_dns_resolver_config: TypedDnsResolverConfig | None = None
    preresolve_hostnames: list[SocketAddress] = []
    dns_query_timeout: Duration = Duration(DEFAULT_QUERY_TIMEOUT)
    key_value_config: NotSupportedYet | None = None
    resolved_address_filter: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.disable_dns_refresh_on_failure:
            raise FieldError("disable_dns_refresh_on_failure", "not supported yet: failed hosts are refreshed at "
                                                               "dns_failure_refresh_rate (else dns_refresh_rate)")
        if len(self.preresolve_hostnames) > self.max_hosts:
            raise FieldError("preresolve_hostnames", f"DNS Cache [{self.name}] configured with preresolve_hostnames="
                                                     f"{len(self.preresolve_hostnames)} larger than max_hosts="
                                                     f"{self.max_hosts}")
