"""networking.istio.io specs: Gateway, VirtualService, DestinationRule, ServiceEntry, WorkloadEntry.

Field names and meanings are istio/api's (`networking/v1alpha3/*.proto`). What a
gateway generator can honour is modelled; the rest of each message is typed
`NotImplementedField` (an error that says "not supported by pylon pilot yet"),
and anything else is an unknown field. Checks here are the ones Istio's
validation webhook makes on a single resource; cross-resource checks belong to
the snapshot.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

import msgspec

from pylon.config.errors import FieldError
from pylon.pilot.hosts import matches
from pylon.pilot.istio.cors import CorsPolicy
from pylon.pilot.istio.common import (
    GoDuration,
    Int32,
    IstioStruct,
    NonEmptyStr,
    NonNegativeInt32,
    NotImplementedField,
    Percent,
    PortNumber,
    PortSelector,
    StringMatch,
    UInt32,
    at_most_one,
    check_regex,
    exactly_one,
)

# Istio's protocol names (pkg/config/protocol), compared case-insensitively as Istio does.
PROTOCOLS = frozenset(
    {"HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "MYSQL", "REDIS", "TCP", "TLS", "UDP", "THRIFT", "HBONE"}
)
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})
# Protocols whose upstream connections Istio makes HTTP/2 (the cluster gets http2_protocol_options).
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})


def check_protocol(value: str, field: str) -> None:
    if value.upper() not in PROTOCOLS:
        raise FieldError(field, f"unknown protocol {value!r}; Istio's protocols: {', '.join(sorted(PROTOCOLS))}")


# --------------------------------------------------------------------------- Gateway


class ServerPort(IstioStruct, kw_only=True):
    number: PortNumber
    protocol: NonEmptyStr
    name: str = ""
    target_port: NotImplementedField | None = None

    def __post_init__(self) -> None:
        check_protocol(self.protocol, "protocol")


#: Gateway TLS modes whose server terminates TLS and serves HTTP (an `https.*` route configuration).
TERMINATING_MODES = frozenset({"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"})


class ServerTLSSettings(IstioStruct, kw_only=True):
    """Gateway TLS. HTTPS and TLS servers terminate TLS with a `credentialName` secret (SIMPLE, MUTUAL,
    OPTIONAL_MUTUAL) or the gateway's mesh certificate (ISTIO_MUTUAL), or pass it through (PASSTHROUGH by
    VirtualService tls routes, AUTO_PASSTHROUGH by the SNI of mesh clusters); plain HTTP servers may only
    set `httpsRedirect`."""

    https_redirect: bool = False
    mode: Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"] = "PASSTHROUGH"
    credential_name: str = ""
    subject_alt_names: list[NonEmptyStr] = []
    min_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    max_protocol_version: Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"] = "TLS_AUTO"
    cipher_suites: list[NonEmptyStr] = []
    server_certificate: NotImplementedField | None = None
    private_key: NotImplementedField | None = None
    ca_certificates: NotImplementedField | None = None
    ca_crl: NotImplementedField | None = None
    credential_names: NotImplementedField | None = None
    tls_certificates: NotImplementedField | None = None
    verify_certificate_spki: NotImplementedField | None = None
    verify_certificate_hash: NotImplementedField | None = None

    def __post_init__(self) -> None:
        if self.mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH"):
            for field, unset in (("credentialName", not self.credential_name),
                                 ("subjectAltNames", not self.subject_alt_names),
                                 ("minProtocolVersion", self.min_protocol_version == "TLS_AUTO"),
                                 ("maxProtocolVersion", self.max_protocol_version == "TLS_AUTO"),
                                 ("cipherSuites", not self.cipher_suites)):  # fmt: skip
                if not unset:  # the gateway never ends the TLS: Istio reads none of these
                    raise FieldError(field, f"{self.mode} servers do not end TLS: Istio ignores it")
            return
        if self.mode == "ISTIO_MUTUAL":
            if self.credential_name:
                raise FieldError("credentialName", "ISTIO_MUTUAL uses the gateway's mesh certificate; "
                                 "credentialName must not be set")  # fmt: skip
            for field, unset in (("minProtocolVersion", self.min_protocol_version == "TLS_AUTO"),
                                 ("maxProtocolVersion", self.max_protocol_version == "TLS_AUTO"),
                                 ("cipherSuites", not self.cipher_suites)):  # fmt: skip
                if not unset:  # istiod applies them to SIMPLE, MUTUAL and OPTIONAL_MUTUAL only, and drops them here
                    raise FieldError(field, "only SIMPLE, MUTUAL and OPTIONAL_MUTUAL servers take TLS versions and "
                                     "cipher suites (Istio ignores them on ISTIO_MUTUAL)")  # fmt: skip
        elif not self.credential_name:
            raise FieldError("credentialName", f"{self.mode} TLS requires credentialName (the secret holding the "
                             "certificate and key; serverCertificate files are not supported by pylon pilot yet)")
        elif "://" in self.credential_name and not self.credential_name.startswith("kubernetes://"):
            raise FieldError("credentialName", f"{self.credential_name!r}: only Kubernetes secrets (NAME or "
                             "kubernetes://NAME) are supported by pylon pilot")  # fmt: skip
        if self.mode == "SIMPLE" and self.subject_alt_names:
            # Istio would send SAN matchers without a CA, which Envoy rejects as insecure.
            raise FieldError("subjectAltNames", "client certificates are not validated in SIMPLE mode; "
                             "use MUTUAL or OPTIONAL_MUTUAL")  # fmt: skip


class Server(IstioStruct, kw_only=True):
    port: ServerPort
    bind: str = ""
    hosts: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    tls: ServerTLSSettings | None = None
    default_endpoint: NotImplementedField | None = None
    name: str = ""

    def __post_init__(self) -> None:
        protocol = self.port.protocol.upper()
        if protocol in ("HTTPS", "TLS"):
            if self.tls is None:
                raise FieldError("tls", "HTTPS and TLS servers need TLS settings (Istio: server must have TLS "
                                 "settings for HTTPS/TLS protocols)")  # fmt: skip
        elif protocol in HTTP_PROTOCOLS:
            if self.tls is not None and not self.tls.https_redirect:
                raise FieldError("tls", "a plain-text HTTP server cannot have TLS settings other than httpsRedirect")
        elif protocol == "TCP":
            if self.tls is not None:
                raise FieldError("tls", "server cannot have TLS settings for non HTTPS/TLS ports (Istio's validation)")
        else:
            raise FieldError(
                "port.protocol",
                f"{self.port.protocol} servers are not supported by pylon pilot yet "
                "(HTTP, HTTP2, GRPC, GRPC-WEB, HTTPS, TLS and TCP only)",
            )
        if self.bind:
            try:
                ipaddress.ip_address(self.bind)
            except ValueError:
                raise FieldError("bind", f"{self.bind!r} is not an IP address (unix sockets are not supported)") from None
        for i, host in enumerate(self.hosts):
            namespace, _, name = host.rpartition("/")
            if not name or "/" in namespace:
                raise FieldError(f"hosts[{i}]", f"invalid host {host!r}: expected [namespace/]dnsName")

    @property
    def kind(self) -> Literal["http", "https", "tls", "tcp"]:
        """How the gateway serves it: plain HTTP (`http`, merged per port), TLS ended and HTTP routed behind it
        (`https`: an HTTPS server in a terminating mode), TLS passed through by SNI or ended with TCP routed behind
        it (`tls`: VirtualService tls/tcp routes), or plain TCP (`tcp`)."""
        protocol = self.port.protocol.upper()
        if self.tls is not None and protocol in ("HTTPS", "TLS"):
            return "https" if protocol == "HTTPS" and self.tls.mode in TERMINATING_MODES else "tls"
        return "tcp" if protocol == "TCP" else "http"

    @property
    def passthrough(self) -> bool:
        """TLS goes through untouched (PASSTHROUGH by the VirtualServices' SNI routes, AUTO_PASSTHROUGH by the SNI
        of the mesh's clusters)."""
        return self.tls is not None and self.tls.mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH")


class GatewaySpec(IstioStruct, kw_only=True):
    servers: Annotated[list[Server], msgspec.Meta(min_length=1)]
    selector: dict[str, str] = {}


# --------------------------------------------------------------------------- VirtualService


class Destination(IstioStruct, kw_only=True):
    host: NonEmptyStr
    subset: str = ""
    port: PortSelector | None = None


class HeaderOperations(IstioStruct, kw_only=True):
    set: dict[str, str] = {}
    add: dict[str, str] = {}
    remove: list[str] = []


class Headers(IstioStruct, kw_only=True):
    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


class HTTPRouteDestination(IstioStruct, kw_only=True):
    destination: Destination
    weight: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    headers: Headers | None = None


class HTTPMatchRequest(IstioStruct, kw_only=True):
    name: str = ""
    uri: StringMatch | None = None
    scheme: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: dict[str, StringMatch] = {}
    port: UInt32 = 0
    source_labels: dict[str, str] = {}
    gateways: list[str] = []
    query_params: dict[str, StringMatch] = {}
    ignore_uri_case: bool = False
    without_headers: dict[str, StringMatch] = {}
    source_namespace: str = ""
    stat_prefix: str = ""

    def __post_init__(self) -> None:
        for field, headers in (("headers", self.headers), ("withoutHeaders", self.without_headers)):
            for name in headers:
                if name != name.lower():
                    raise FieldError(f"{field}.{name}", "header names must be lowercase (Istio's validation)")
                if name.startswith("@"):
                    raise FieldError(f"{field}.{name}", "JWT claim routing (@request.auth.claims) is not supported yet")


class RegexRewrite(IstioStruct, kw_only=True):
    match: str
    rewrite: str

    def __post_init__(self) -> None:
        try:
            check_regex(self.match)
        except ValueError as exc:
            raise FieldError("match", str(exc)) from None


class HTTPRewrite(IstioStruct, kw_only=True):
    uri: str = ""
    authority: str = ""
    uri_regex_rewrite: RegexRewrite | None = None

    def __post_init__(self) -> None:
        if self.uri and self.uri_regex_rewrite is not None:
            raise ValueError("uri and uriRegexRewrite cannot both be set")


class HTTPRetry(IstioStruct, kw_only=True):
    attempts: Int32 = 0
    per_try_timeout: GoDuration | None = None
    retry_on: str = ""
    retry_remote_localities: bool | None = None
    retry_ignore_previous_hosts: bool | None = None
    backoff: GoDuration | None = None

    def __post_init__(self) -> None:
        if self.per_try_timeout is not None and self.per_try_timeout < 0.001:
            raise FieldError("perTryTimeout", "must be at least 1ms")


class FaultDelay(IstioStruct, kw_only=True):
    fixed_delay: GoDuration | None = None
    exponential_delay: NotImplementedField | None = None
    percentage: Percent | None = None
    percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0

    def __post_init__(self) -> None:
        if self.fixed_delay is None:
            raise FieldError("fixedDelay", "missing required field")
        if self.fixed_delay < 0.001:
            raise FieldError("fixedDelay", "must be at least 1ms")


# gRPC status names Istio accepts for abort.grpcStatus, with their codes.
GRPC_STATUS = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
    "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}  # fmt: skip


class FaultAbort(IstioStruct, kw_only=True):
    http_status: Annotated[int, msgspec.Meta(ge=200, le=599)] | None = None
    grpc_status: str | None = None
    http2_error: NotImplementedField | None = None
    percentage: Percent | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "http_status", "grpc_status")
        if self.grpc_status is not None and self.grpc_status not in GRPC_STATUS:
            raise FieldError("grpcStatus", f"unknown gRPC status {self.grpc_status!r}")


class HTTPFaultInjection(IstioStruct, kw_only=True):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    def __post_init__(self) -> None:
        if self.delay is None and self.abort is None:
            raise ValueError("at least one of delay, abort must be set")


REDIRECT_CODES = {0: "MOVED_PERMANENTLY", 301: "MOVED_PERMANENTLY", 302: "FOUND", 303: "SEE_OTHER",
                  307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}  # fmt: skip


class HTTPRedirect(IstioStruct, kw_only=True):
    uri: str = ""
    authority: str = ""
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    derive_port: Literal["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"] | None = None
    scheme: str = ""
    redirect_code: UInt32 = 0

    def __post_init__(self) -> None:
        at_most_one(self, "port", "derive_port")
        if self.redirect_code not in REDIRECT_CODES:
            raise FieldError("redirectCode", f"{self.redirect_code} is not one of 301, 302, 303, 307, 308")


class HTTPBody(IstioStruct, kw_only=True):
    string: str | None = None
    bytes: str | None = None  # base64, as protobuf's JSON mapping writes bytes

    def __post_init__(self) -> None:
        exactly_one(self, "string", "bytes")


class HTTPDirectResponse(IstioStruct, kw_only=True):
    status: Annotated[int, msgspec.Meta(ge=200, le=599)]
    body: HTTPBody | None = None


class HTTPMirrorPolicy(IstioStruct, kw_only=True):
    destination: Destination
    percentage: Percent | None = None


class Delegate(IstioStruct, kw_only=True):
    """The VirtualService (without hosts) an HTTP route hands its requests to (delegation.py merges it)."""

    name: NonEmptyStr
    namespace: str = ""


class HTTPRoute(IstioStruct, kw_only=True):
    name: str = ""
    match: list[HTTPMatchRequest] = []
    route: list[HTTPRouteDestination] = []
    redirect: HTTPRedirect | None = None
    direct_response: HTTPDirectResponse | None = None
    delegate: Delegate | None = None
    rewrite: HTTPRewrite | None = None
    timeout: GoDuration | None = None
    retries: HTTPRetry | None = None
    fault: HTTPFaultInjection | None = None
    mirror: Destination | None = None
    mirrors: list[HTTPMirrorPolicy] = []
    mirror_percent: UInt32 | None = None
    mirror_percentage: Percent | None = None
    cors_policy: CorsPolicy | None = None
    headers: Headers | None = None

    def __post_init__(self) -> None:
        actions = [name for name, value in (("route", self.route), ("redirect", self.redirect),
                                            ("directResponse", self.direct_response)) if value]  # fmt: skip
        if self.delegate is not None:
            for action in ("route", "redirect"):
                if action in actions:
                    raise FieldError(action, f"a root HTTP route (with delegate) must not specify {action}")
        elif len(actions) != 1:
            got = f" (got {', '.join(actions)})" if actions else ""
            raise ValueError(f"an HTTP route needs exactly one of route, redirect, directResponse{got}")
        if self.redirect is not None and self.rewrite is not None:
            raise FieldError("rewrite", "a redirect route cannot also rewrite")
        if self.mirror is not None and self.mirrors:
            raise ValueError("mirror and mirrors cannot both be set")


class RouteDestination(IstioStruct, kw_only=True):
    """A destination of a TCP or TLS route, with its share of the connections."""

    destination: Destination
    weight: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0


def _check_destinations(route: list[RouteDestination]) -> None:
    """Istio's validateRouteDestinations, for TCP and TLS routes."""
    if not route:
        raise FieldError("route", "a TCP or TLS route needs at least one destination")
    if len(route) > 1 and sum(d.weight for d in route) == 0:
        raise FieldError("route", "total destination weight = 0")


class _L4Match(IstioStruct, kw_only=True):
    """What TCP and TLS matches share: `port`, `gateways`, `sourceLabels`, `sourceNamespace` are decided when
    config is generated for a proxy; `destinationSubnets` by the proxy, as a filter chain's prefix ranges."""

    destination_subnets: list[NonEmptyStr] = []
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    source_labels: dict[str, str] = {}
    gateways: list[NonEmptyStr] = []
    source_namespace: str = ""

    def __post_init__(self) -> None:
        for i, subnet in enumerate(self.destination_subnets):
            try:
                ipaddress.ip_network(subnet, strict=False)
            except ValueError:
                raise FieldError(f"destinationSubnets[{i}]", f"{subnet!r} is not an IP address or CIDR") from None


class L4MatchAttributes(_L4Match, kw_only=True):
    pass


class TLSMatchAttributes(_L4Match, kw_only=True):
    sni_hosts: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]


class TCPRoute(IstioStruct, kw_only=True):
    match: list[L4MatchAttributes] = []
    route: list[RouteDestination] = []

    def __post_init__(self) -> None:
        _check_destinations(self.route)


class TLSRoute(IstioStruct, kw_only=True):
    match: Annotated[list[TLSMatchAttributes], msgspec.Meta(min_length=1)]
    route: list[RouteDestination] = []

    def __post_init__(self) -> None:
        _check_destinations(self.route)


class VirtualServiceSpec(IstioStruct, kw_only=True):
    hosts: list[NonEmptyStr] = []  # none: a delegate, whose HTTP routes a root VirtualService takes in
    gateways: list[NonEmptyStr] = []
    http: list[HTTPRoute] = []
    tls: list[TLSRoute] = []
    tcp: list[TCPRoute] = []
    export_to: list[str] = []

    def __post_init__(self) -> None:
        if not (self.http or self.tcp or self.tls):
            raise ValueError("http, tcp or tls must be provided in virtual service")
        if not self.hosts:  # Istio's rules for a delegate
            for field, value in (("gateways", self.gateways), ("tls", self.tls), ("tcp", self.tcp)):
                if value:
                    raise FieldError(field, f"a delegate virtual service (no hosts) must have no {field}")
            for i, http in enumerate(self.http):
                if http.delegate is not None:
                    raise FieldError(f"http[{i}].delegate", "a delegate HTTP route cannot delegate again")
        for i, tls in enumerate(self.tls):
            for j, match in enumerate(tls.match):
                for k, sni in enumerate(match.sni_hosts):
                    if not any(matches(host, sni) for host in self.hosts):  # Istio: the SNI host is a subset of one
                        raise FieldError(f"tls[{i}].match[{j}].sniHosts[{k}]",
                                         f"SNI host {sni!r} is not a compatible subset of any of the virtual service "
                                         f"hosts: [{', '.join(self.hosts)}]")  # fmt: skip


# --------------------------------------------------------------------------- DestinationRule


class HTTPCookie(IstioStruct, kw_only=True):
    name: NonEmptyStr
    path: str = ""
    ttl: GoDuration | None = None
    attributes: NotImplementedField | None = None


class RingHash(IstioStruct, kw_only=True):
    minimum_ring_size: Annotated[int, msgspec.Meta(ge=0)] = 0


class MagLev(IstioStruct, kw_only=True):
    table_size: Annotated[int, msgspec.Meta(ge=0)] = 0


class ConsistentHashLB(IstioStruct, kw_only=True):
    http_header_name: str | None = None
    http_cookie: HTTPCookie | None = None
    use_source_ip: bool | None = None
    http_query_parameter_name: str | None = None
    ring_hash: RingHash | None = None
    maglev: MagLev | None = None
    minimum_ring_size: Annotated[int, msgspec.Meta(ge=0)] = 0

    def __post_init__(self) -> None:
        exactly_one(self, "http_header_name", "http_cookie", "use_source_ip", "http_query_parameter_name")
        at_most_one(self, "ring_hash", "maglev")


class LoadBalancerSettings(IstioStruct, kw_only=True):
    simple: Literal["UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"] | None = None
    consistent_hash: ConsistentHashLB | None = None
    locality_lb_setting: NotImplementedField | None = None
    warmup_duration_secs: NotImplementedField | None = None
    warmup: NotImplementedField | None = None

    def __post_init__(self) -> None:
        at_most_one(self, "simple", "consistent_hash")


class TcpKeepalive(IstioStruct, kw_only=True):
    probes: UInt32 = 0
    time: GoDuration | None = None
    interval: GoDuration | None = None


class TCPSettings(IstioStruct, kw_only=True):
    max_connections: NonNegativeInt32 = 0
    connect_timeout: GoDuration | None = None
    tcp_keepalive: TcpKeepalive | None = None
    max_connection_duration: GoDuration | None = None
    idle_timeout: GoDuration | None = None


class HTTPSettings(IstioStruct, kw_only=True):
    http1_max_pending_requests: NonNegativeInt32 = 0
    http2_max_requests: NonNegativeInt32 = 0
    max_requests_per_connection: NonNegativeInt32 = 0
    max_retries: NonNegativeInt32 = 0
    idle_timeout: GoDuration | None = None
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] = "DEFAULT"
    use_client_protocol: bool = False
    max_concurrent_streams: NonNegativeInt32 = 0

    def __post_init__(self) -> None:
        if self.use_client_protocol and self.h2_upgrade_policy == "UPGRADE":
            raise FieldError("useClientProtocol", "must not be true when h2UpgradePolicy is UPGRADE (Istio's validation)")


class ConnectionPoolSettings(IstioStruct, kw_only=True):
    """DestinationRule and Sidecar connection pools, with Istio's checks (validateConnectionPool): at least one
    of tcp and http, no negative limits."""

    tcp: TCPSettings | None = None
    http: HTTPSettings | None = None

    def __post_init__(self) -> None:
        if self.tcp is None and self.http is None:
            raise ValueError("connection pool must have at least one field (tcp or http)")


class OutlierDetection(IstioStruct, kw_only=True):
    consecutive_5xx_errors: UInt32 | None = msgspec.field(default=None, name="consecutive5xxErrors")
    consecutive_gateway_errors: UInt32 | None = None
    interval: GoDuration | None = None
    base_ejection_time: GoDuration | None = None
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    min_health_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: UInt32 | None = None


class ClientTLSSettings(IstioStruct, kw_only=True):
    """Upstream TLS of the clusters a DestinationRule (or one of its ports or subsets) covers.

    `mode` defaults to DISABLE (the proto's zero value): a `tls` block without a mode turns TLS off, auto mTLS
    included, as in Istio. SIMPLE and MUTUAL originate TLS with either a
    `credentialName` Secret (served over ADS as `kubernetes://NAME`, its CA as `kubernetes://NAME-cacert`) or
    files on the proxy's host (`clientCertificate`, `privateKey`, `caCertificates`, `caCrl`), which Istio's
    agent serves over SDS as `file-cert:` / `file-root:` resources. The checks are those of Istio's webhook
    (pkg/config/validation/agent ValidateTLS); fields Istio would silently ignore for the mode are errors.
    """

    mode: Literal["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"] = "DISABLE"
    client_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    credential_name: str = ""
    subject_alt_names: list[NonEmptyStr] = []
    sni: str = ""
    insecure_skip_verify: bool | None = None

    def __post_init__(self) -> None:
        files = (("clientCertificate", self.client_certificate), ("privateKey", self.private_key),
                 ("caCertificates", self.ca_certificates), ("caCrl", self.ca_crl))  # fmt: skip
        if self.mode in ("DISABLE", "ISTIO_MUTUAL"):
            ignored = [*files, ("credentialName", self.credential_name),
                       ("insecureSkipVerify", self.insecure_skip_verify)]  # fmt: skip
            if self.mode != "ISTIO_MUTUAL":
                ignored += [("sni", self.sni), ("subjectAltNames", self.subject_alt_names)]
            for field, value in ignored:
                if value:  # Istio reads none of these for the mode: a setting that would do nothing
                    raise FieldError(field, f"is not used with mode {self.mode} (Istio ignores it); "
                                     "only SIMPLE and MUTUAL take it")  # fmt: skip
            return
        skip_verify = bool(self.insecure_skip_verify)
        if skip_verify:
            conflicting = [("caCertificates", self.ca_certificates), ("subjectAltNames", self.subject_alt_names)]
            if self.mode == "SIMPLE":
                conflicting.append(("credentialName", self.credential_name))
            for field, value in conflicting:
                if value:
                    raise FieldError(field, "cannot be set when insecureSkipVerify is true (Istio's validation)")
        if self.credential_name:
            for field, value in files:
                if value:
                    raise FieldError(field, "cannot be set with credentialName: the Secret holds the certificates "
                                     "(Istio's validation)")  # fmt: skip
            name = self.credential_name
            if "://" in name and not name.startswith("kubernetes://"):
                raise FieldError("credentialName", f"{name!r}: only Kubernetes secrets (NAME or kubernetes://NAME) "
                                 "are supported by pylon pilot")  # fmt: skip
            return
        if self.mode == "MUTUAL":
            for field, value in files[:2]:
                if not value:
                    raise FieldError(field, "required for MUTUAL TLS without credentialName (Istio's validation)")


class PortTrafficPolicy(IstioStruct, kw_only=True):
    port: PortSelector
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None


class TrafficPolicy(IstioStruct, kw_only=True):
    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    tls: ClientTLSSettings | None = None
    port_level_settings: list[PortTrafficPolicy] = []
    tunnel: NotImplementedField | None = None
    proxy_protocol: NotImplementedField | None = None
    retry_budget: NotImplementedField | None = None


class Subset(IstioStruct, kw_only=True):
    name: NonEmptyStr
    labels: dict[str, str] = {}
    traffic_policy: TrafficPolicy | None = None

    def __post_init__(self) -> None:
        if "|" in self.name:
            raise FieldError("name", "a subset name must not contain '|' (it is part of cluster names)")


class DestinationRuleSpec(IstioStruct, kw_only=True):
    host: NonEmptyStr
    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = []
    export_to: list[str] = []
    workload_selector: NotImplementedField | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, subset in enumerate(self.subsets):
            if subset.name in seen:
                raise FieldError(f"subsets[{i}].name", f"duplicate subset name {subset.name!r}")
            seen.add(subset.name)


# --------------------------------------------------------------------------- ServiceEntry, WorkloadEntry


class _WorkloadFields(IstioStruct, kw_only=True):
    """What a WorkloadEntry and a WorkloadGroup's template share."""

    address: str = ""
    ports: dict[str, Annotated[int, msgspec.Meta(ge=1, le=65535)]] = {}
    labels: dict[str, str] = {}
    network: str = ""
    locality: str = ""
    weight: UInt32 = 0
    service_account: str = ""


class WorkloadEntrySpec(_WorkloadFields, kw_only=True):
    """A workload's address, named ports, labels and weight (also ServiceEntry.endpoints[])."""

    def __post_init__(self) -> None:
        if not self.address:
            raise FieldError("address", "missing required field (pylon pilot needs an IP address)")
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise FieldError(
                "address", f"{self.address!r} is not an IP address (DNS names and unix sockets are not supported yet)"
            ) from None


_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class ServiceEntryEndpoint(WorkloadEntrySpec, kw_only=True):
    """ServiceEntry.endpoints[]: a WorkloadEntry whose address may also be a DNS name (resolution DNS)."""

    def __post_init__(self) -> None:
        if not self.address:
            raise FieldError("address", "missing required field")
        if not is_ip(self.address) and not _DNS_NAME.match(self.address):
            raise FieldError("address", f"{self.address!r} is neither an IP address nor a DNS name "
                                        "(unix sockets are not supported yet)")  # fmt: skip


def is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


class ServicePort(IstioStruct, kw_only=True):
    number: PortNumber
    protocol: str = ""
    name: NonEmptyStr
    target_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0

    def __post_init__(self) -> None:
        if self.protocol:
            check_protocol(self.protocol, "protocol")


class WorkloadSelector(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}


class ServiceEntrySpec(IstioStruct, kw_only=True):
    hosts: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    addresses: list[str] = []
    ports: list[ServicePort] = []
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    resolution: Literal["NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"] = "NONE"
    endpoints: list[ServiceEntryEndpoint] = []
    workload_selector: WorkloadSelector | None = None
    export_to: list[str] = []
    subject_alt_names: list[str] = []

    def __post_init__(self) -> None:
        if self.resolution == "DYNAMIC_DNS":
            self._check_dynamic_dns()
        if self.resolution == "STATIC":
            for i, endpoint in enumerate(self.endpoints):
                if not is_ip(endpoint.address):
                    raise FieldError(f"endpoints[{i}].address", f"{endpoint.address!r}: STATIC resolution needs IP addresses")
        elif self.workload_selector is not None and self.resolution != "NONE":
            raise FieldError("workloadSelector", f"with resolution {self.resolution} is not supported by pylon pilot yet")
        if self.endpoints and self.workload_selector is not None:
            raise ValueError("only one of endpoints and workloadSelector may be set")
        seen: set[str] = set()
        for i, port in enumerate(self.ports):
            if port.name in seen:
                raise FieldError(f"ports[{i}].name", f"duplicate port name {port.name!r}")
            seen.add(port.name)
        for i, host in enumerate(self.hosts):
            if host == "*":
                raise FieldError(f"hosts[{i}]", "a ServiceEntry host cannot be '*'")


    def _check_dynamic_dns(self) -> None:
        """Istio's rules for DYNAMIC_DNS (served by Envoy's dynamic forward proxy, pilot/gen/dfp.py): wildcard
        hosts only, no addresses or endpoints, ports of HTTP, TLS, GRPC or HTTP2."""
        for i, host in enumerate(self.hosts):
            if not host.startswith("*"):
                raise FieldError(f"hosts[{i}]", "host must be wildcarded for resolution mode DYNAMIC_DNS")
        if self.addresses:
            raise FieldError("addresses", "addresses cannot be set for resolution type DYNAMIC_DNS. HTTP route "
                                          "domains will only be generated from the hosts field values")
        if self.endpoints:
            raise FieldError("endpoints", "endpoints cannot be set for resolution type DYNAMIC_DNS. Destination IP "
                                          "address determined from hosts field values")
        for i, port in enumerate(self.ports):
            protocol = port.protocol.upper()
            if protocol not in ("HTTP", "TLS", "GRPC", "HTTP2"):
                raise FieldError(f"ports[{i}].protocol", "only HTTP, TLS, GRPC, and HTTP2 protocols are supported "
                                                         "for resolution type DYNAMIC_DNS")


class WorkloadTemplate(_WorkloadFields, kw_only=True):
    """A WorkloadGroup's template: a WorkloadEntry without an address (each workload brings its own)."""

    def __post_init__(self) -> None:
        if self.address:
            raise FieldError("address", "must not be set in a WorkloadGroup template: each workload's own IP is used")


class WorkloadGroupMetadata(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class WorkloadGroupSpec(IstioStruct, kw_only=True):
    """Workloads (VMs) that register themselves when their agent connects (Istio's auto-registration)."""

    template: WorkloadTemplate
    metadata: WorkloadGroupMetadata = WorkloadGroupMetadata()
    probe: NotImplementedField | None = None
