"""Envoy's role-based access control (`config.rbac.v3`): its config, and the engine both RBAC filters decide with.

The HTTP filter (`filters/http/rbac.py`) and the network filter
(`filters/network/rbac.py`) share it, as in Envoy. The engine is sans-IO:
`Engine(rbac).evaluate(facts)` takes a `Facts` (the connection, and for HTTP
the request) and returns a `Decision`: allowed or not, and which policy matched.

Semantics, each observed with Envoy 1.40 (the behaviour tests run both):

- Policies are tried in lexicographic order of their names; the first one that
  matches is *the* matched policy (the one a 403's details and per-policy stats
  name). A policy matches when one of its permissions and one of its principals
  match. ALLOW allows when a policy matches (none: denied, also with no
  policies at all); DENY denies when one does; LOG allows everything.
- `header`: a header sent several times matches when one of its values does
  (`invert_match` then negates the result), not their ","-joined form - but
  Envoy's inline headers (user-agent, accept, ...) are joined with "," first,
  as Envoy joins them when it reads the request (the router's rule); a
  missing header matches only `present_match: false` or an inverted
  `present_match: true` (`treat_missing_header_as_empty`: it is "").
  `host` is the `:authority`; `:path` has the query, `:method`,
  `:scheme` as sent. `url_path`: the path without query and fragment, not
  percent-decoded, after the connection manager's normalization.
- `authenticated`: never on plaintext. Without `principal_name`, any TLS
  connection, even one whose client sent no certificate. With one: any URI SAN,
  any DNS SAN, or the subject of the peer certificate (RFC 2253, all three
  tried); a TLS client without a certificate has the subject "" (so `exact: ""`
  and `safe_regex: .*` match it).
- `direct_remote_ip`: the socket peer. The deprecated `source_ip`: the
  connection's remote address, which a PROXY protocol header's source replaces
  (the two agree without one). `remote_ip`: the client address the HTTP
  connection manager derives from x-forwarded-for (`Facts.client_address`, see
  the HTTP filter); on the network filter, the connection's remote address.
- `destination_ip` / `destination_port` / `destination_port_range`: the local
  address of the connection; a range is [start, end).
- `requested_server_name`: the SNI as the listener's tls_inspector read it;
  without tls_inspector it is "" even on TLS (`ConnectionInfo.inspected_server_name`).
- `metadata` / `sourced_metadata` (DYNAMIC): the stream's dynamic metadata as
  the filters before set it (set_metadata, header_to_metadata, json_to_metadata;
  proxy/dynamic_metadata.py), matched as Envoy's MetadataMatcher: each value
  matcher kind matches only a value of its kind, `present_match: true` any value
  (false: none), `list_match` any element; on a TCP connection every value is
  absent. No value matcher matches an absent value, so such a matcher is then its
  `invert`. Istio's `request.auth.*` conditions (namespace `istio_authn`,
  written by Istio's authn filter for a RequestAuthentication) thus never match,
  as in Envoy without that filter. The namespaces RBAC filters write themselves
  (`envoy.common` for LOG's access_log_hint, the shadow results under
  `envoy.filters.http.rbac` / `envoy.filters.network.rbac`) would be present in
  Envoy: matchers on them are refused by name.

Refused by name (`NotSupportedYet`): audit logging, CEL conditions, custom and
URI-template matchers, filter_state principals, ROUTE-sourced metadata.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from pylon.config.envoy import (
    CidrRange, EnvoyStruct, HeaderMatcher, NonEmptyStr, NotSupportedYet, Port, StringMatcher, _exactly_one,
)
from pylon.config.errors import FieldError, join_path
from pylon.config.matcher import PathSegment, ValueMatcher
from pylon.proxy import dynamic_metadata
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.matching.input_matchers import value_matcher
from pylon.proxy.router import _compile_string_matcher, _HeaderMatcher
from pylon.regex import RegexEngine, get_engine

Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
#: Dynamic-metadata namespaces that RBAC filters write in Envoy; pylon does not keep them.
RBAC_WRITTEN_NAMESPACES = frozenset({"envoy.common", "envoy.filters.http.rbac", "envoy.filters.network.rbac"})
SUPPORTED_PSEUDO_HEADERS = frozenset({":authority", ":path", ":method", ":scheme"})


# --------------------------------------------------------------------------- config: matchers


class PathMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.PathMatcher: a StringMatcher on the path without query and fragment."""

    path: StringMatcher


class MetadataMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.MetadataMatcher on the stream's dynamic metadata (see the module doc)."""

    filter: NonEmptyStr
    path: Annotated[list[PathSegment], msgspec.Meta(min_length=1)]
    value: ValueMatcher
    invert: bool = False

    def __post_init__(self) -> None:
        if self.filter in RBAC_WRITTEN_NAMESPACES:
            raise FieldError("filter", f"{self.filter} is dynamic metadata that RBAC filters write themselves; "
                                       "pylon does not keep it, so matching on it is not supported yet")


class SourcedMetadata(EnvoyStruct, kw_only=True):
    """config.rbac.v3.SourcedMetadata: only the DYNAMIC source (the same as `metadata`)."""

    metadata_matcher: MetadataMatcher
    metadata_source: Literal["DYNAMIC", "ROUTE"] = "DYNAMIC"

    def __post_init__(self) -> None:
        if self.metadata_source != "DYNAMIC":
            raise FieldError("metadata_source", "ROUTE (the matched route's metadata) is not supported yet")


class PortRange(EnvoyStruct, kw_only=True):
    """type.v3.Int32Range as Permission.destination_port_range: ports in [start, end), bounds in 0..65536."""

    start: Int32 = 0
    end: Int32 = 0

    def __post_init__(self) -> None:
        for field in ("start", "end"):
            value = getattr(self, field)
            if not 0 <= value <= 65536:
                raise FieldError(field, f"range {field} {value} is out of bounds")
        if self.start >= self.end:
            raise FieldError("start", f"range start {self.start} cannot be greater or equal than range end {self.end}")


def _check_header(header: HeaderMatcher | None) -> None:
    if header is not None and header.name.startswith(":") and header.name.lower() not in SUPPORTED_PSEUDO_HEADERS:
        raise FieldError("header.name", f"pseudo-header {header.name!r} is not supported "
                                        f"(supported: {', '.join(sorted(SUPPORTED_PSEUDO_HEADERS))})")


def _check_any(value: bool | None) -> None:
    if value is False:
        raise FieldError("any", "must be true (leave it out to match nothing by it)")


# --------------------------------------------------------------------------- config: RBAC


class PermissionSet(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Permission.Set."""

    rules: Annotated[list[Permission], msgspec.Meta(min_length=1)]


class Permission(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Permission: what the request (or connection) does; exactly one kind."""

    and_rules: PermissionSet | None = None
    or_rules: PermissionSet | None = None
    any: bool | None = None
    header: HeaderMatcher | None = None
    url_path: PathMatcher | None = None
    destination_ip: CidrRange | None = None
    destination_port: Port | None = None
    destination_port_range: PortRange | None = None
    metadata: MetadataMatcher | None = None
    not_rule: Permission | None = None
    requested_server_name: StringMatcher | None = None
    matcher: NotSupportedYet | None = None
    uri_template: NotSupportedYet | None = None
    sourced_metadata: SourcedMetadata | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, *PERMISSION_KINDS)
        _check_any(self.any)
        _check_header(self.header)


class PrincipalSet(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Principal.Set."""

    ids: Annotated[list[Principal], msgspec.Meta(min_length=1)]


class Authenticated(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Principal.Authenticated; without principal_name: any TLS connection."""

    principal_name: StringMatcher | None = None


class Principal(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Principal: who the downstream is; exactly one kind."""

    and_ids: PrincipalSet | None = None
    or_ids: PrincipalSet | None = None
    any: bool | None = None
    authenticated: Authenticated | None = None
    source_ip: CidrRange | None = None  # deprecated in Envoy: the connection's remote address (PROXY protocol's)
    direct_remote_ip: CidrRange | None = None
    remote_ip: CidrRange | None = None
    header: HeaderMatcher | None = None
    url_path: PathMatcher | None = None
    metadata: MetadataMatcher | None = None
    filter_state: NotSupportedYet | None = None
    not_id: Principal | None = None
    sourced_metadata: SourcedMetadata | None = None
    custom: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, *PRINCIPAL_KINDS)
        _check_any(self.any)
        _check_header(self.header)


PERMISSION_KINDS = tuple(f for f in Permission.__struct_fields__)
PRINCIPAL_KINDS = tuple(f for f in Principal.__struct_fields__)


class Policy(EnvoyStruct, kw_only=True):
    """config.rbac.v3.Policy: matches when one permission and one principal match."""

    permissions: Annotated[list[Permission], msgspec.Meta(min_length=1)]
    principals: Annotated[list[Principal], msgspec.Meta(min_length=1)]
    condition: NotSupportedYet | None = None
    checked_condition: NotSupportedYet | None = None
    cel_config: NotSupportedYet | None = None


class RBAC(EnvoyStruct, kw_only=True):
    """config.rbac.v3.RBAC."""

    action: Literal["ALLOW", "DENY", "LOG"] = "ALLOW"
    policies: dict[str, Policy] = {}
    audit_logging_options: NotSupportedYet | None = None


def header_matchers(rbac: RBAC) -> Iterator[tuple[str, HeaderMatcher]]:
    """Every header matcher of `rbac` with its path below it (`policies[p].permissions[0].header`)."""
    for name, policy in rbac.policies.items():
        base = f"policies[{name}]"
        for i, permission in enumerate(policy.permissions):
            yield from _permission_headers(permission, f"{base}.permissions[{i}]")
        for i, principal in enumerate(policy.principals):
            yield from _principal_headers(principal, f"{base}.principals[{i}]")


def _permission_headers(permission: Permission, path: str) -> Iterator[tuple[str, HeaderMatcher]]:
    if permission.header is not None:
        yield join_path(path, "header"), permission.header
    for field in ("and_rules", "or_rules"):
        rule_set = getattr(permission, field)
        if rule_set is not None:
            for i, rule in enumerate(rule_set.rules):
                yield from _permission_headers(rule, f"{path}.{field}.rules[{i}]")
    if permission.not_rule is not None:
        yield from _permission_headers(permission.not_rule, f"{path}.not_rule")


def _principal_headers(principal: Principal, path: str) -> Iterator[tuple[str, HeaderMatcher]]:
    if principal.header is not None:
        yield join_path(path, "header"), principal.header
    for field in ("and_ids", "or_ids"):
        id_set = getattr(principal, field)
        if id_set is not None:
            for i, item in enumerate(id_set.ids):
                yield from _principal_headers(item, f"{path}.{field}.ids[{i}]")
    if principal.not_id is not None:
        yield from _principal_headers(principal.not_id, f"{path}.not_id")


# --------------------------------------------------------------------------- facts


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip(address: Any) -> IpAddress | None:
    try:
        return ipaddress.ip_address(address[0] if isinstance(address, tuple) else address)
    except (TypeError, ValueError, IndexError):
        return None


class Request:
    """The HTTP request a decision looks at, as Envoy's HTTP filters see it (the HTTP filter builds it)."""

    __slots__ = ("headers", "method", "authority", "path", "scheme")

    def __init__(self, headers: Sequence[tuple[bytes, bytes]], method: bytes, authority: bytes, path: bytes,
                 scheme: bytes) -> None:
        self.headers = headers  # lower-case names
        self.method = method
        self.authority = authority
        self.path = path  # with the query, as `:path`
        self.scheme = scheme

    def values(self, name: bytes) -> list[bytes]:
        """Every value of header `name` (pseudo-headers and `host` included), in order; [] when absent."""
        if name == b":authority" or name == b"host":
            return [self.authority]
        if name == b":path":
            return [self.path]
        if name == b":method":
            return [self.method]
        if name == b":scheme":
            return [self.scheme]
        return [value for key, value in self.headers if key == name]

    @property
    def url_path(self) -> str:
        """The path without query and fragment (UTF-8 with surrogateescape, as the router matches it)."""
        path = self.path
        for mark in (b"?", b"#"):
            cut = path.find(mark)
            if cut >= 0:
                path = path[:cut]
        return path.decode("utf-8", "surrogateescape")


class Facts:
    """What one decision looks at: the connection, and for HTTP the request and the client address.

    Everything is computed on first use: most policies read one or two facts.
    `client_address` is what `remote_ip` matches (the HTTP connection manager's
    client, possibly from x-forwarded-for); None, or not an IP, means the peer.
    """

    def __init__(self, connection: ConnectionInfo, request: Request | None = None,
                 client_address: str | None = None, dynamic_metadata: dict[str, dict[str, Any]] | None = None) -> None:
        self.connection = connection
        self.request = request
        self.client_address = client_address
        self.dynamic_metadata = dynamic_metadata  # the stream's (HTTP), what `metadata` matchers read

    @cached_property
    def local_ip(self) -> IpAddress | None:
        return _ip(self.connection.local_address)

    @cached_property
    def local_port(self) -> int | None:
        local = self.connection.local_address
        return local[1] if isinstance(local, tuple) else None  # an internal listener's address has no port

    @cached_property
    def direct_remote_ip(self) -> IpAddress | None:
        return _ip(self.connection.direct_remote_address)

    @cached_property
    def source_ip(self) -> IpAddress | None:
        return _ip(self.connection.remote_address)

    @cached_property
    def remote_ip(self) -> IpAddress | None:
        client = _ip(self.client_address) if self.client_address is not None else None
        return client if client is not None else self.source_ip

    @property
    def server_name(self) -> str:
        return self.connection.inspected_server_name

    @cached_property
    def principal_names(self) -> list[str] | None:
        """None without TLS; else the peer certificate's URI SANs, DNS SANs and subject ("" without one)."""
        connection = self.connection
        if not connection.tls:
            return None
        certificate = connection.peer_certificate
        if certificate is None:
            return [""]
        return [*certificate.uri_sans, *certificate.dns_sans, certificate.subject]


# --------------------------------------------------------------------------- the engine


def stat_part(prefix: str) -> str:
    """A stat prefix as Envoy joins it into a name: "" stays "", else it ends in one "." (added if missing).

    Observed with Envoy 1.40: stat_prefix `tcp.` and `tcp` both give `tcp.rbac.allowed`, `x..` gives
    `x..rbac.allowed`; rules_stat_prefix `r_` gives `...rbac.r_.allowed`, `r.` gives `...rbac.r.allowed`.
    """
    return prefix if not prefix or prefix.endswith(".") else prefix + "."



Predicate = Callable[[Facts], bool]


_WHITESPACE = str.maketrans({c: "_" for c in " \t\f\v\n\r"})


def denied_details(policy: str | None) -> str:
    """Why a denial happened, as Envoy writes it in response and connection-termination details (no whitespace)."""
    return f"rbac_access_denied_matched_policy[{(policy or 'none').translate(_WHITESPACE)}]"


class Decision(NamedTuple):
    allowed: bool
    policy: str | None  # the matched policy (first by name), None when none matched


class Engine:
    """One `RBAC` compiled: its policies in name order, each a predicate over `Facts`."""

    __slots__ = ("action", "policies")

    def __init__(self, config: RBAC, regex_engine: RegexEngine | None = None) -> None:
        engine = regex_engine if regex_engine is not None else get_engine()
        self.action = config.action
        self.policies = tuple((name, _policy(config.policies[name], engine)) for name in sorted(config.policies))

    def evaluate(self, facts: Facts) -> Decision:
        matched = next((name for name, matches in self.policies if matches(facts)), None)
        if self.action == "ALLOW":
            return Decision(matched is not None, matched)
        if self.action == "DENY":
            return Decision(matched is None, matched)
        return Decision(True, matched)  # LOG: Envoy only marks the request for access logs


def _always(facts: Facts) -> bool:
    return True


def _never(facts: Facts) -> bool:
    return False


def _all(predicates: list[Predicate]) -> Predicate:
    return lambda facts: all(p(facts) for p in predicates)


def _any(predicates: list[Predicate]) -> Predicate:
    return lambda facts: any(p(facts) for p in predicates)


def _policy(policy: Policy, engine: RegexEngine) -> Predicate:
    permission = _any([_permission(p, engine) for p in policy.permissions])
    principal = _any([_principal(p, engine) for p in policy.principals])
    return lambda facts: permission(facts) and principal(facts)


def _permission(rule: Permission, engine: RegexEngine) -> Predicate:
    if rule.and_rules is not None:
        return _all([_permission(r, engine) for r in rule.and_rules.rules])
    if rule.or_rules is not None:
        return _any([_permission(r, engine) for r in rule.or_rules.rules])
    if rule.any:
        return _always
    if rule.header is not None:
        return _header(rule.header, engine)
    if rule.url_path is not None:
        return _url_path(rule.url_path, engine)
    if rule.destination_ip is not None:
        network = rule.destination_ip.network
        return lambda facts: facts.local_ip is not None and facts.local_ip in network
    if rule.destination_port is not None:
        port = rule.destination_port
        return lambda facts: facts.local_port == port
    if rule.destination_port_range is not None:
        start, end = rule.destination_port_range.start, rule.destination_port_range.end
        return lambda facts: facts.local_port is not None and start <= facts.local_port < end
    if rule.metadata is not None:
        return _metadata(rule.metadata, engine)
    if rule.sourced_metadata is not None:
        return _metadata(rule.sourced_metadata.metadata_matcher, engine)
    if rule.not_rule is not None:
        inner = _permission(rule.not_rule, engine)
        return lambda facts: not inner(facts)
    assert rule.requested_server_name is not None
    server_name = _compile_string_matcher(rule.requested_server_name, engine, as_bytes=False)
    return lambda facts: bool(server_name(facts.server_name))


def _principal(rule: Principal, engine: RegexEngine) -> Predicate:
    if rule.and_ids is not None:
        return _all([_principal(r, engine) for r in rule.and_ids.ids])
    if rule.or_ids is not None:
        return _any([_principal(r, engine) for r in rule.or_ids.ids])
    if rule.any:
        return _always
    if rule.authenticated is not None:
        return _authenticated(rule.authenticated, engine)
    if rule.source_ip is not None:
        source = rule.source_ip.network
        return lambda facts: facts.source_ip is not None and facts.source_ip in source
    if rule.direct_remote_ip is not None:
        network = rule.direct_remote_ip.network
        return lambda facts: facts.direct_remote_ip is not None and facts.direct_remote_ip in network
    if rule.remote_ip is not None:
        network = rule.remote_ip.network
        return lambda facts: facts.remote_ip is not None and facts.remote_ip in network
    if rule.header is not None:
        return _header(rule.header, engine)
    if rule.url_path is not None:
        return _url_path(rule.url_path, engine)
    if rule.metadata is not None:
        return _metadata(rule.metadata, engine)
    if rule.sourced_metadata is not None:
        return _metadata(rule.sourced_metadata.metadata_matcher, engine)
    assert rule.not_id is not None
    inner = _principal(rule.not_id, engine)
    return lambda facts: not inner(facts)


def _authenticated(authenticated: Authenticated, engine: RegexEngine) -> Predicate:
    if authenticated.principal_name is None:
        return lambda facts: facts.principal_names is not None
    name_matches = _compile_string_matcher(authenticated.principal_name, engine, as_bytes=False)

    def matches(facts: Facts) -> bool:
        names = facts.principal_names
        return names is not None and any(name_matches(name) for name in names)

    return matches


def _header(config: HeaderMatcher, engine: RegexEngine) -> Predicate:
    """Envoy's header matching, value by value (see the module doc); the router's compiled matcher per value."""
    matcher = _HeaderMatcher(config, engine)
    name, invert = matcher.name, matcher.invert
    if not (name.startswith(b":") or name == b"host"):
        # A plain header: value by value, Envoy's inline headers joined first - the router's own rule.
        return lambda facts: matcher.matches_headers(facts.request.headers if facts.request is not None else ())

    def matches(facts: Facts) -> bool:
        values = facts.request.values(name) if facts.request is not None else []
        if not values:
            return matcher.matches(None)
        return any(matcher.matches(value) != invert for value in values) != invert

    return matches


def _url_path(config: PathMatcher, engine: RegexEngine) -> Predicate:
    path_matches = _compile_string_matcher(config.path, engine, as_bytes=False)
    return lambda facts: facts.request is not None and bool(path_matches(facts.request.url_path))


def _metadata(config: MetadataMatcher, engine: RegexEngine) -> Predicate:
    """Envoy's MetadataMatcher over the stream's dynamic metadata: the value at the filter's path (absent on a TCP
    connection, or when no filter set it), its value matcher, then `invert`."""
    matches = value_matcher(config.value, engine)
    namespace, path, invert = config.filter, tuple(segment.key for segment in config.path), config.invert
    return lambda facts: matches(dynamic_metadata.lookup(facts.dynamic_metadata, namespace, path)) != invert


