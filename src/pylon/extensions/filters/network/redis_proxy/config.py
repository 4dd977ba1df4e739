"""The redis_proxy config messages (extensions.filters.network.redis_proxy.v3) and their load-time checks.

What the proxy does with each field is in `session.py`/`splitter.py`; what it cannot do yet is refused here by
field path, so a config that loads is served as Envoy would serve it.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.datasource import DataSource
from pylon.config.envoy import (
    EnvoyStruct,
    NonEmptyStr,
    NotSupportedYet,
    RuntimeFractionalPercent,
    SocketAddress,
    UInt32,
)
from pylon.config.errors import FieldError

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
OPTIONS_TYPE_URL = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"
#: the key of RedisProtocolOptions in a cluster's typed_extension_protocol_options
OPTIONS_KEY = "envoy.filters.network.redis_proxy"


class ConnPoolSettings(EnvoyStruct, kw_only=True):
    """RedisProxy.ConnPoolSettings."""

    op_timeout: Duration | None = None
    enable_hashtagging: bool = False
    enable_redirection: bool = False
    dns_cache_config: NotSupportedYet | None = None
    max_buffer_size_before_flush: UInt32 = 0
    buffer_flush_timeout: Duration | None = None
    max_upstream_unknown_connections: NotSupportedYet | None = None
    enable_command_stats: bool = False
    read_policy: Literal["MASTER", "PREFER_MASTER", "REPLICA", "PREFER_REPLICA", "ANY"] = "MASTER"
    connection_rate_limit: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.op_timeout is None:
            raise FieldError("op_timeout", "missing required field")
        if self.enable_redirection:
            raise FieldError("enable_redirection", "not supported yet (MOVED/ASK redirection)")
        if self.enable_command_stats:
            raise FieldError("enable_command_stats", "not supported yet (per-command latency histograms)")
        if self.read_policy != "MASTER":
            raise FieldError("read_policy", f"{self.read_policy} is not supported yet (pylon knows no replicas: "
                                            "every host is a master)")

    @property
    def flush_timeout(self) -> float:
        """How long requests wait to fill max_buffer_size_before_flush (Envoy's default: 3 ms)."""
        return 0.003 if self.buffer_flush_timeout is None else float(self.buffer_flush_timeout)


class Route(EnvoyStruct, kw_only=True):
    """RedisProxy.PrefixRoutes.Route."""

    prefix: str = ""
    remove_prefix: bool = False
    cluster: NonEmptyStr
    request_mirror_policy: NotSupportedYet | None = None
    key_formatter: NotSupportedYet | None = None
    read_command_policy: NotSupportedYet | None = None


class PrefixRoutes(EnvoyStruct, kw_only=True):
    """RedisProxy.PrefixRoutes: the longest prefix of the key wins; else the catch-all route."""

    routes: list[Route] = []
    case_insensitive: bool = False
    catch_all_route: Route | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, route in enumerate(self.routes):
            prefix = route.prefix.lower() if self.case_insensitive else route.prefix
            if prefix in seen:
                raise FieldError(f"routes[{i}].prefix", f"prefix `{route.prefix}` already exists.")
            seen.add(prefix)


class RedisFault(EnvoyStruct, kw_only=True):
    """RedisProxy.RedisFault: an error or a delay for a share of the commands it names (none: all)."""

    fault_type: Literal["DELAY", "ERROR"] = "DELAY"
    fault_enabled: RuntimeFractionalPercent | None = None
    delay: Duration | None = None
    commands: list[str] = []

    def __post_init__(self) -> None:
        if self.fault_enabled is None:
            raise FieldError("fault_enabled", "missing required field")


class RedisProxy(EnvoyStruct, kw_only=True):
    """extensions.filters.network.redis_proxy.v3.RedisProxy: a terminal network filter."""

    terminal_filter: ClassVar[bool] = True

    stat_prefix: NonEmptyStr
    settings: ConnPoolSettings | None = None
    latency_in_micros: bool = False
    prefix_routes: PrefixRoutes | None = None
    downstream_auth_password: DataSource | None = None
    downstream_auth_passwords: list[DataSource] = []
    downstream_auth_username: DataSource | None = None
    faults: list[RedisFault] = []
    external_auth_provider: NotSupportedYet | None = None
    custom_commands: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.settings is None:
            raise FieldError("settings", "missing required field")


class CredentialAddress(EnvoyStruct, kw_only=True):
    socket_address: SocketAddress


class Credentials(EnvoyStruct, kw_only=True):
    """RedisProtocolOptions.Credentials: the AUTH of the hosts at one address."""

    address: CredentialAddress
    auth_username: DataSource | None = None
    auth_password: DataSource | None = None


class RedisProtocolOptions(EnvoyStruct, kw_only=True):
    """A cluster's redis options: the AUTH each new upstream connection sends first."""

    extension_name: ClassVar[str] = OPTIONS_KEY  # the key Envoy's docs use (the message name is taken too)

    auth_password: DataSource | None = None
    auth_username: DataSource | None = None
    credentials: list[Credentials] = []
    aws_iam: NotSupportedYet | None = None


# Both messages register here, the module config/registry.py names (importing it runs the package's __init__,
# which registers the terminal filter with the proxy).
registry.register_typed(registry.NETWORK_FILTER, TYPE_URL, RedisProxy)
registry.register_typed(registry.UPSTREAM_OPTIONS, OPTIONS_TYPE_URL, RedisProtocolOptions)
