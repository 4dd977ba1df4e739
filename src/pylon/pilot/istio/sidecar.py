"""networking.istio.io Sidecar: a workload's sidecar listeners, inbound (`ingress`) and outbound (`egress`).

Field names are istio/api's (`networking/v1alpha3/sidecar.proto`); the checks are those of Istio's webhook
(pkg/config/validation ValidateSidecar), errors naming the field. What the sidecar generator does with
them is gen/sidecar.py's and gen/inbound.py's. Not served, each an error naming the field:

- egress listeners on a unix domain socket (port 0, a `unix://` bind) outside the HTTP family: istiod's chains
  there route to `outbound|0||<host>`, a cluster that never exists.
- ingress `tls` in PASSTHROUGH mode (the proto's default): istiod does not pass TLS through there, it ends it
  (with the files given, else the workload's mesh certificate) and checks no client: a mode that says the
  opposite of what happens; SIMPLE, MUTUAL and OPTIONAL_MUTUAL say it.
- ingress `tls` `verifyCertificateSpki`/`verifyCertificateHash`: istiod never reads them.
- egress ports of protocol UDP: istiod builds no listener for them.
- ingress ports of protocol HTTP_PROXY: the protocol of explicit egress proxies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import IstioStruct, NonEmptyStr, UInt32
from pylon.pilot.istio.networking import HTTP_PROTOCOLS, ConnectionPoolSettings, Destination, check_protocol, is_ip

UNIX_PREFIX = "unix://"
HTTP_PROXY = "HTTP_PROXY"
# What Istio's SplitHostPort of a defaultEndpoint may name (validation.go): the proxy's own addresses.
DEFAULT_ENDPOINT_HOSTS = ("", "127.0.0.1", "0.0.0.0", "::1", "::")
TLS_VERSION = Literal["TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3"]
CaptureMode = Literal["DEFAULT", "IPTABLES", "NONE"]
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


class SidecarWorkloadSelector(IstioStruct, kw_only=True):
    labels: dict[str, str] = {}


class SidecarPort(IstioStruct, kw_only=True):
    """A listener's port. `number` 0 is how Istio writes a unix domain socket listener (egress only)."""

    number: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    protocol: str = ""
    name: str = ""
    target_port: UInt32 = 0

    def __post_init__(self) -> None:
        if self.protocol.upper() != HTTP_PROXY:
            check_protocol(self.protocol, "protocol")
        if self.name and not _DNS_LABEL.fullmatch(self.name):
            raise FieldError("name", f"invalid port name {self.name!r}: must be a DNS-1123 label")
        if self.target_port:
            raise FieldError("targetPort", "targetPort has no impact on Sidecars (Istio's validation)")


@dataclass(frozen=True)
class DefaultEndpoint:
    """An ingress listener's `defaultEndpoint`: a unix socket path, or one of DEFAULT_ENDPOINT_HOSTS and a port."""

    unix_path: str = ""
    host: str = ""
    port: int = 0


def unix_path(address: str) -> str:
    """The path of a `unix://` address (Istio's ValidateUnixAddress: absolute, not a directory, or an abstract
    `@name`); ValueError else."""
    path = address[len(UNIX_PREFIX):]
    if not path.startswith("@") and (not path.startswith("/") or path.endswith("/")):
        raise ValueError(f"{path!r} is not an absolute path to a file (or an abstract @name)")
    return path


def parse_default_endpoint(value: str) -> DefaultEndpoint:
    """`127.0.0.1:PORT`, `0.0.0.0:PORT`, `[::1]:PORT`, `[::]:PORT`, `:PORT` or `unix:///path`; ValueError else."""
    if value.startswith(UNIX_PREFIX):
        return DefaultEndpoint(unix_path=unix_path(value))
    if value.startswith("["):
        host, bracket, port = value[1:].partition("]:")
        if not bracket:
            raise ValueError(f"{value!r}: missing port after the bracketed address")
    else:
        host, colon, port = value.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(f"{value!r}: expected host:port (IPv6 addresses in brackets)")
    if host not in DEFAULT_ENDPOINT_HOSTS:
        raise ValueError("defaultEndpoint must be of form 127.0.0.1:<port>, 0.0.0.0:<port>, [::1]:port, [::]:port, "
                         "unix://filepath or unset (Istio's validation)")  # fmt: skip
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"defaultEndpoint port {port!r} is not a port number (1-65535)")
    return DefaultEndpoint(host=host, port=int(port))


class SidecarIngressTLS(IstioStruct, kw_only=True):
    """ServerTLSSettings as a sidecar's ingress listener takes them: TLS ended with the workload's own files
    (served by the agent over SDS as `file-cert:`/`file-root:`), client certificates checked with MUTUAL and
    OPTIONAL_MUTUAL. What Istio's webhook refuses there (credentialName and its kin, subjectAltNames,
    httpsRedirect, ISTIO_MUTUAL, AUTO_PASSTHROUGH) and what it accepts but would not do are errors."""

    mode: Literal["PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"] = "PASSTHROUGH"
    server_certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    ca_crl: str = ""
    insecure_skip_verify: bool | None = None
    min_protocol_version: TLS_VERSION = "TLS_AUTO"
    max_protocol_version: TLS_VERSION = "TLS_AUTO"
    cipher_suites: list[NonEmptyStr] = []
    ecdh_curves: list[NonEmptyStr] = []
    https_redirect: bool = False
    credential_name: str = ""
    credential_names: list[str] = []
    tls_certificates: list[Any] = []
    subject_alt_names: list[str] = []
    verify_certificate_spki: list[str] = []
    verify_certificate_hash: list[str] = []

    def __post_init__(self) -> None:
        for field, value, why in (
            ("subjectAltNames", self.subject_alt_names, "subjectAltNames is not supported in ingress tls"),
            ("httpsRedirect", self.https_redirect, "httpsRedirect is not supported"),
            ("credentialName", self.credential_name, "credentialName is not currently supported"),
            ("credentialNames", self.credential_names, "credentialNames is not currently supported"),
            ("tlsCertificates", self.tls_certificates, "tls_certificates is not currently supported"),
        ):  # fmt: skip
            if value:
                raise FieldError(field, f"sidecar: {why} (Istio's validation)")
        for field, value in (("verifyCertificateSpki", self.verify_certificate_spki),
                             ("verifyCertificateHash", self.verify_certificate_hash)):  # fmt: skip
            if value:
                raise FieldError(field, "istiod never reads it for a sidecar: it would check nothing")
        if self.mode in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
            raise FieldError("mode", f"configuration is invalid: cannot set mode to {self.mode} in sidecar ingress tls")
        if self.mode == "PASSTHROUGH":
            raise FieldError("mode", "PASSTHROUGH (the default) does not pass TLS through on a sidecar: istiod ends it "
                             "there all the same; write SIMPLE, MUTUAL or OPTIONAL_MUTUAL")  # fmt: skip
        for field, value in (("serverCertificate", self.server_certificate), ("privateKey", self.private_key)):
            if not value:
                raise FieldError(field, f"{self.mode} TLS requires a server certificate and a private key (files on "
                                 "the workload's host)")  # fmt: skip
        if self.mode == "SIMPLE":
            for field, value in (("caCertificates", self.ca_certificates), ("caCrl", self.ca_crl),
                                 ("insecureSkipVerify", self.insecure_skip_verify)):  # fmt: skip
                if value:
                    raise FieldError(field, "SIMPLE TLS does not check client certificates (Istio ignores it); "
                                     "only MUTUAL and OPTIONAL_MUTUAL take it")  # fmt: skip
        elif not self.ca_certificates:
            raise FieldError("caCertificates", "MUTUAL TLS requires a client CA bundle (Istio's validation)")

    @property
    def checks_clients(self) -> bool:
        return self.mode in ("MUTUAL", "OPTIONAL_MUTUAL")


class IstioIngressListener(IstioStruct, kw_only=True):
    port: SidecarPort
    bind: str = ""
    capture_mode: CaptureMode = "DEFAULT"
    default_endpoint: str = ""
    tls: SidecarIngressTLS | None = None
    connection_pool: ConnectionPoolSettings | None = None

    def __post_init__(self) -> None:
        if self.port.number == 0:
            raise FieldError("port.number", "port number 0 must be in the range 1..65535")
        if self.port.protocol.upper() == HTTP_PROXY:
            raise FieldError("port.protocol", "HTTP_PROXY is the protocol of egress proxy ports (Istio: applicable only "
                             "for sidecar egress listeners)")  # fmt: skip
        if self.bind and not is_ip(self.bind):
            raise FieldError("bind", f"{self.bind!r} is not an IP address")
        if self.default_endpoint:
            try:
                parse_default_endpoint(self.default_endpoint)
            except ValueError as exc:
                raise FieldError("defaultEndpoint", str(exc)) from None
        if self.tls is not None and self.port.protocol.upper() not in ("HTTPS", "TLS"):
            raise FieldError("tls", "server cannot have TLS settings for non HTTPS/TLS ports (Istio's validation)")

    @property
    def endpoint(self) -> DefaultEndpoint:
        """The parsed defaultEndpoint (host "" and port 0 when unset: the connection's original destination)."""
        return parse_default_endpoint(self.default_endpoint) if self.default_endpoint else DefaultEndpoint()

    @property
    def protocol(self) -> str:
        """The protocol behind the listener's TLS, if it ends TLS (Istio's AfterTLSTermination: HTTPS is HTTP,
        TLS is TCP)."""
        protocol = self.port.protocol.upper()
        if self.tls is None:
            return protocol
        return {"HTTPS": "HTTP", "TLS": "TCP"}.get(protocol, protocol)


class IstioEgressListener(IstioStruct, kw_only=True):
    hosts: Annotated[list[NonEmptyStr], msgspec.Meta(min_length=1)]
    port: SidecarPort | None = None
    bind: str = ""
    capture_mode: CaptureMode = "DEFAULT"

    def __post_init__(self) -> None:
        for i, host in enumerate(self.hosts):
            namespace, slash, name = host.partition("/")
            if not slash or not namespace or not name:
                raise FieldError(f"hosts[{i}]", f"{host!r} must be namespace/dnsName (`*/`, `./` or `~/` for namespaces)")
            if name != "*" and "*" in name[1:]:
                raise FieldError(f"hosts[{i}]", f"{host!r}: a wildcard is only allowed as the first label")
        if self.port is not None and self.port.number == 0:
            if not self.bind.startswith(UNIX_PREFIX):
                raise FieldError("bind", "sidecar: ports with 0 value must have a unix domain socket bind address")
            try:
                unix_path(self.bind)
            except ValueError as exc:
                raise FieldError("bind", str(exc)) from None
            if self.capture_mode == "IPTABLES":
                raise FieldError("captureMode", "sidecar: captureMode must be DEFAULT/NONE for unix domain socket listeners")
            if self.port.protocol.upper() not in (*HTTP_PROTOCOLS, HTTP_PROXY):
                raise FieldError("port.protocol", "a unix domain socket egress listener must speak HTTP: istiod's "
                                 "TCP chains there route to outbound|0||<host>, a cluster that never exists")  # fmt: skip
        elif self.bind and not is_ip(self.bind):
            raise FieldError("bind", f"{self.bind!r} is not an IP address")
        if self.port is not None and self.port.protocol.upper() == "UDP":
            raise FieldError("port.protocol", "istiod builds no listener for a UDP port")


class OutboundTrafficPolicy(IstioStruct, kw_only=True):
    """The Sidecar's own outbound policy; `mode` defaults to REGISTRY_ONLY, the proto's zero value (MeshConfig's
    policy defaults to ALLOW_ANY, the Sidecar's does not). `egressProxy` takes the place of PassthroughCluster."""

    mode: Literal["REGISTRY_ONLY", "ALLOW_ANY"] = "REGISTRY_ONLY"
    egress_proxy: Destination | None = None

    def __post_init__(self) -> None:
        proxy = self.egress_proxy
        if proxy is None:
            return
        if self.mode != "ALLOW_ANY":
            raise FieldError("egressProxy", "egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy mode")
        if proxy.host == "*" or "/" in proxy.host:
            raise FieldError("egressProxy.host", f"invalid destination host {proxy.host!r}")
        if proxy.port is None:
            raise FieldError("egressProxy.port", "sidecar: egress_proxy port must be non-nil")


class SidecarSpec(IstioStruct, kw_only=True):
    workload_selector: SidecarWorkloadSelector | None = None
    ingress: list[IstioIngressListener] = []
    egress: list[IstioEgressListener] = []
    outbound_traffic_policy: OutboundTrafficPolicy | None = None
    inbound_connection_pool: ConnectionPoolSettings | None = None

    def __post_init__(self) -> None:
        if not (self.egress or self.ingress or self.outbound_traffic_policy or self.inbound_connection_pool):
            raise ValueError("sidecar: empty configuration provided")
        seen: set[int] = set()
        for i, listener in enumerate(self.ingress):
            if listener.port.number in seen:
                raise FieldError(f"ingress[{i}].port.number", "sidecar: ports on IP bound listeners must be unique")
            seen.add(listener.port.number)
        seen = set()
        sockets: set[str] = set()
        for i, egress in enumerate(self.egress):
            if egress.port is None:
                if i != len(self.egress) - 1:
                    raise FieldError(f"egress[{i}]", "sidecar: the egress listener with empty port should be the last "
                                     "listener in the list (the catch-all; there can be only one)")  # fmt: skip
            elif egress.port.number == 0:
                if egress.bind in sockets:
                    raise FieldError(f"egress[{i}].bind", "sidecar: unix domain socket values for listeners must be unique")
                sockets.add(egress.bind)
            elif egress.port.number in seen:
                raise FieldError(f"egress[{i}].port.number", "sidecar: ports on IP bound listeners must be unique")
            else:
                seen.add(egress.port.number)

    def ingress_pool(self, port: int) -> ConnectionPoolSettings | None:
        """Istio's InboundConnectionPoolForPort: the pool of the ingress listener on `port`, else the Sidecar's
        `inboundConnectionPool` (None: neither)."""
        for listener in self.ingress:
            if listener.port.number == port and listener.connection_pool is not None:
                return listener.connection_pool
        return self.inbound_connection_pool

    @property
    def reads_instance_ips(self) -> bool:
        """Whether the listeners depend on the proxy's own IPs: an ingress listener without `bind` is bound to the
        proxy's first global unicast IP (Istio's GlobalUnicastIP), a defaultEndpoint `0.0.0.0`/`::` names its
        IP."""
        return any(not i.bind or i.endpoint.host in ("0.0.0.0", "::") for i in self.ingress)
