"""One upstream endpoint as the data path, the health checker and outlier detection see it.

A `Host` is touched on every request, so it is a `__slots__` class whose hot
fields (`healthy`, `active_requests`, `active_connections`) are plain
attributes: the data path reads and bumps them directly. Health is a set of
Envoy health flags; `healthy` is recomputed only when a flag changes, and the
owning cluster is told so it can rebuild its load-balancing set once instead of
filtering hosts on every pick.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

if TYPE_CHECKING:
    from pylon.proxy.upstream.outlier import HostMonitor

# Envoy's health flags, in the order its admin `/clusters` output lists them.
FAILED_ACTIVE_HC = 0x01
FAILED_OUTLIER_CHECK = 0x02
PENDING_ACTIVE_HC = 0x04
ACTIVE_HC_TIMEOUT = 0x08
# The lb_endpoint's health_status (EDS or inline): UNHEALTHY and TIMEOUT set the first, DRAINING the second.
FAILED_EDS_HEALTH = 0x10
EDS_STATUS_DRAINING = 0x20
EDS_FLAGS = FAILED_EDS_HEALTH | EDS_STATUS_DRAINING

# Flags that take a host out of the healthy load-balancing set. PENDING_ACTIVE_HC
# and ACTIVE_HC_TIMEOUT only annotate (Envoy sets them alongside FAILED_ACTIVE_HC).
_UNHEALTHY_MASK = FAILED_ACTIVE_HC | FAILED_OUTLIER_CHECK | EDS_FLAGS

_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (FAILED_ACTIVE_HC, "/failed_active_hc"),
    (FAILED_OUTLIER_CHECK, "/failed_outlier_check"),
    (FAILED_EDS_HEALTH, "/failed_eds_health"),
    (PENDING_ACTIVE_HC, "/pending_active_hc"),
    (ACTIVE_HC_TIMEOUT, "/active_hc_timeout"),
    (EDS_STATUS_DRAINING, "/eds_status_draining"),
)


class Placement(NamedTuple):
    """Where an endpoint's locality entry (ClusterLoadAssignment.endpoints[i]) puts its hosts: the priority level,
    which entry (hosts of one entry form one locality), its locality and its load_balancing_weight (0: unset)."""

    priority: int = 0
    entry: int = 0
    locality: tuple[str, str, str] = ("", "", "")
    weight: int = 0


NO_PLACEMENT = Placement()
#: The `envoy.lb` metadata of a host that has none.
NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def eds_health_flags(health_status: str) -> int:
    """Envoy's setEdsHealthFlag: the health flags an lb_endpoint's `health_status` gives its host."""
    if health_status in ("UNHEALTHY", "TIMEOUT"):
        return FAILED_EDS_HEALTH
    return EDS_STATUS_DRAINING if health_status == "DRAINING" else 0


class Host:
    """An endpoint: address, weight, live counters and health flags.

    The data path bumps `active_requests`/`active_connections` around each
    request/connection and reports outcomes with `record_response` /
    `record_connect_failure` / `record_timeout`, which feed outlier detection.
    """

    __slots__ = (
        "address", "weight", "hostname", "healthy", "health_flags",
        "active_requests", "active_connections", "rq_total", "rq_success", "rq_error",
        "rq_timeout", "cx_connect_fail", "outlier", "on_health_change", "socket", "placement", "lb_metadata",
        "typed_metadata",
    )

    def __init__(self, address: tuple[str, int], weight: int = 1, hostname: str = "") -> None:
        self.address = address
        self.weight = weight
        # The DNS name this address came from ("" for STATIC), shown by /clusters.
        self.hostname = hostname
        self.health_flags = 0
        self.healthy = True
        self.active_requests = 0
        self.active_connections = 0
        self.rq_total = 0
        self.rq_success = 0
        self.rq_error = 0
        self.rq_timeout = 0
        self.cx_connect_fail = 0
        # Which of its cluster's transport_socket_matches it takes (-1: the cluster's transport socket).
        self.socket = -1
        self.placement = NO_PLACEMENT  # its priority and locality (upstream/priority.py balances by them)
        # Its `envoy.lb` metadata: the values a subset load balancer groups it by (upstream/subset.py).
        self.lb_metadata: Mapping[str, Any] = NO_METADATA
        # Its typed_filter_metadata, by name (the upstream proxy_protocol socket's TLVs: upstream/proxy_protocol.py).
        self.typed_metadata: Mapping[str, Any] = NO_METADATA
        # Per-host outlier state, attached by the cluster's detector (None without outlier_detection).
        self.outlier: HostMonitor | None = None
        # Called with this host whenever `healthy` flips; the cluster rebuilds its LB set.
        self.on_health_change: Callable[[Host], None] | None = None

    def __repr__(self) -> str:
        return f"Host({format_address(self.address)}, weight={self.weight}, {self.health_flags_str()})"

    def set_flag(self, flag: int) -> None:
        self._set_flags(self.health_flags | flag)

    def clear_flag(self, flag: int) -> None:
        self._set_flags(self.health_flags & ~flag)

    def has_flag(self, flag: int) -> bool:
        return bool(self.health_flags & flag)

    def _set_flags(self, flags: int) -> None:
        self.health_flags = flags
        healthy = not (flags & _UNHEALTHY_MASK)
        if healthy != self.healthy:
            self.healthy = healthy
            if self.on_health_change is not None:
                self.on_health_change(self)

    def set_eds_flags(self, flags: int) -> None:
        """Replace the EDS health flags without telling the cluster: it refreshes once per assignment."""
        self.health_flags = (self.health_flags & ~EDS_FLAGS) | flags
        self.healthy = not (self.health_flags & _UNHEALTHY_MASK)

    def health_flags_str(self) -> str:
        """Envoy's `/clusters` spelling: `healthy`, or the set flags like `/failed_active_hc/pending_active_hc`."""
        if not self.health_flags:
            return "healthy"
        return "".join(name for flag, name in _FLAG_NAMES if self.health_flags & flag)

    # -- outcomes reported by the data path -------------------------------------------

    def record_response(self, status: int) -> None:
        """An upstream response arrived with `status` (the connection itself worked)."""
        self.rq_total += 1
        if status >= 500:
            self.rq_error += 1
        else:
            self.rq_success += 1
        if self.outlier is not None:
            self.outlier.put_http_status(status)

    def record_connect_failure(self) -> None:
        """Connecting failed (refused, reset, connect timeout): a local-origin error.

        Envoy maps it to a 503 for outlier detection, so it counts as both a
        5xx and a gateway failure.
        """
        self.cx_connect_fail += 1
        if self.outlier is not None:
            self.outlier.put_http_status(503)

    def record_timeout(self) -> None:
        """The upstream did not answer within the route timeout: local origin, mapped to 504."""
        self.rq_total += 1
        self.rq_timeout += 1
        self.rq_error += 1
        if self.outlier is not None:
            self.outlier.put_http_status(504)


def format_address(address: tuple[str, int] | str) -> str:
    """`ip:port`, with IPv6 in brackets as Envoy prints it (`[::1]:8080`); an internal listener's address
    (`envoy://name/id`, proxy/internal_listener.py) as it is."""
    if isinstance(address, str):
        return str(address)  # a plain str (JSON encoders refuse a subclass)
    ip, port = address
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
