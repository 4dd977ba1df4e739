"""Rate limit descriptors from `rate_limits` (config.route.v3.RateLimit), as Envoy's router builds them (sans-IO).

A route, its virtual host, or a local rate limit filter lists rate limits; each is a list of actions, and each
action adds one (key, value) entry to that rate limit's descriptor from the request: a literal (generic_key), a
header's first value, a query parameter's first decoded value, the client's address or network, the local
(source) or destination cluster, or a literal when headers match (header_value_match). Envoy's rules, read from
router_ratelimit.cc: an action that cannot produce its entry (a missing header without skip_if_absent, a client
address that is not IP, headers that do not match) drops the whole descriptor; skip_if_absent drops only the
entry. Rate limits are grouped by `stage` (0..10); a filter asks for its own stage's.

A rate limit filter then matches the descriptors against its own configured ones (exact entries, in order).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote

from pylon.config.envoy import RateLimit, RateLimitAction
from pylon.proxy import router

Entry = tuple[str, str]
#: a descriptor as a filter matches it: its entries in the order of the actions
Descriptor = tuple[Entry, ...]


class DescriptorRequest(NamedTuple):
    """What actions read of a request."""

    headers: Any  # a HeaderList of the request (lower-case names)
    authority: str
    path: str  # the request target, query included
    method: str
    scheme: str
    remote: str | tuple[str, int]  # the trusted client: the peer (address, port) or an x-forwarded-for entry
    local_cluster: str  # the node's cluster (--service-cluster): source_cluster's value
    route_cluster: str | None  # the cluster the route sends to; None for weighted or plugin-picked clusters


class RequestDescriptor(NamedTuple):
    entries: Descriptor
    #: the rate limit's x_ratelimit_option: UNSPECIFIED (the filter decides), OFF or DRAFT_VERSION_03
    x_ratelimit_option: str


#: an action's result: an entry, None (no entry, the descriptor goes on) or _FAIL (no descriptor)
_FAIL: Any = object()
Action = Callable[[DescriptorRequest], "Entry | None"]


def _remote_ip(request: DescriptorRequest) -> str | None:
    remote = request.remote
    if isinstance(remote, tuple):
        return remote[0]
    try:
        return str(ipaddress.ip_address(remote))
    except ValueError:
        return None  # an x-forwarded-for entry that is no IP: not an IP address, as Envoy's unresolved one


def _header(request: DescriptorRequest, name: str) -> str | None:
    """The first value of header `name` (pseudo-headers as Envoy's header map has them)."""
    if name.startswith(":") or name == "host":
        value = {":authority": request.authority, "host": request.authority, ":path": request.path,
                 ":method": request.method, ":scheme": request.scheme}.get(name)
        return value or None
    found = request.headers.get(name.encode())
    return found.decode("latin-1") if found is not None else None


def _compile_action(action: RateLimitAction, engine: Any) -> Action:
    if action.source_cluster is not None:
        return lambda request: ("source_cluster", request.local_cluster)
    if action.destination_cluster is not None:
        return lambda request: (("destination_cluster", request.route_cluster) if request.route_cluster is not None
                                else _FAIL)
    if action.request_headers is not None:
        header = action.request_headers
        name, key, skip = header.header_name.lower(), header.descriptor_key, header.skip_if_absent

        def request_header(request: DescriptorRequest) -> Entry | None:
            value = _header(request, name)
            if value is None:
                return None if skip else _FAIL
            return (key, value)
        return request_header
    if action.query_parameters is not None:
        query = action.query_parameters
        parameter, key, skip = query.query_parameter_name, query.descriptor_key, query.skip_if_absent

        def query_parameter(request: DescriptorRequest) -> Entry | None:
            value = router.first_query_values(request.path).get(parameter)
            if value is None:
                return None if skip else _FAIL
            return (key, unquote(value))
        return query_parameter
    if action.remote_address is not None:
        def remote_address(request: DescriptorRequest) -> Entry | None:
            ip = _remote_ip(request)
            return ("remote_address", ip) if ip is not None else _FAIL
        return remote_address
    if action.masked_remote_address is not None:
        masks = (action.masked_remote_address.v4_prefix_mask_len, action.masked_remote_address.v6_prefix_mask_len)

        def masked_remote_address(request: DescriptorRequest) -> Entry | None:
            ip = _remote_ip(request)
            if ip is None:
                return _FAIL
            address = ipaddress.ip_address(ip)
            network = ipaddress.ip_network((address, masks[address.version == 6]), strict=False)
            return ("masked_remote_address", str(network))
        return masked_remote_address
    if action.generic_key is not None:
        entry = (action.generic_key.descriptor_key or "generic_key", action.generic_key.descriptor_value)
        return lambda request: entry
    match = action.header_value_match
    assert match is not None
    conditions = router._Conditions([router._HeaderMatcher(header, engine) for header in match.headers], [])
    matched_entry = (match.descriptor_key or "header_match", match.descriptor_value)
    expect = match.expect_match

    def header_value_match(request: DescriptorRequest) -> Entry | None:
        matched = conditions.matches(request.headers, request.authority, request.path, request.method,
                                     request.scheme)
        return matched_entry if matched == expect else _FAIL
    return header_value_match


class _CompiledRateLimit(NamedTuple):
    actions: tuple[Action, ...]
    disabled: bool  # disable_key set: the local rate limit filter skips it
    x_ratelimit_option: str

    def descriptor(self, request: DescriptorRequest) -> RequestDescriptor | None:
        entries = []
        for action in self.actions:
            entry = action(request)
            if entry is _FAIL:
                return None
            if entry is not None:
                entries.append(entry)
        return RequestDescriptor(tuple(entries), self.x_ratelimit_option)


class RateLimitPolicy:
    """One level's `rate_limits`, compiled and grouped by stage."""

    __slots__ = ("_stages",)

    def __init__(self, rate_limits: Sequence[RateLimit], engine: Any) -> None:
        self._stages: dict[int, list[_CompiledRateLimit]] = {}
        for rate_limit in rate_limits:
            compiled = _CompiledRateLimit(tuple(_compile_action(a, engine) for a in rate_limit.actions),
                                          bool(rate_limit.disable_key), rate_limit.x_ratelimit_option)
            self._stages.setdefault(rate_limit.stage, []).append(compiled)

    def __bool__(self) -> bool:
        return bool(self._stages)

    def add_descriptors(self, stage: int, request: DescriptorRequest, out: list[RequestDescriptor]) -> None:
        """Append the descriptors of this stage's rate limits (those without a disable_key) to `out`."""
        for rate_limit in self._stages.get(stage, ()):
            if not rate_limit.disabled:
                descriptor = rate_limit.descriptor(request)
                if descriptor is not None:
                    out.append(descriptor)
