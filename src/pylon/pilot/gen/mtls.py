"""Mutual TLS between sidecars: PeerAuthentication on the inbound side, ISTIO_MUTUAL / auto mTLS outbound.

Inbound mode of a workload port, as istiod resolves it (each level's UNSET
inherits the level above): the port's `portLevelMtls` of the workload policy,
the workload policy (selector matching the proxy, in its namespace; the oldest
- here the first by name - when several match), the namespace policy (no
selector), the mesh policy (MeshConfig `rootNamespace`, no selector), else PERMISSIVE.

On the inbound chains:
- STRICT: only a TLS chain (`transport_protocol: tls` and Istio's ALPN
  `istio-peer-exchange`/`istio`...), requiring a client certificate that chains
  to ROOTCA; a plaintext connection to that port matches no chain and is closed
  (Envoy does not fall back to the port-less catch-all once a port matched).
- PERMISSIVE: the TLS chain and a plaintext chain (`raw_buffer`) on one port,
  told apart by the tls_inspector listener filter.
- DISABLE: plaintext only.
Certificates come over SDS from the agent: `default` (key and chain) and
`ROOTCA` (trust), through the bootstrap's `sds-grpc` cluster.

Outbound: DestinationRule `tls.mode: ISTIO_MUTUAL` gives the cluster an
UpstreamTlsContext with the same SDS secrets, ALPN `istio-peer-exchange`,
`istio` and SNI `outbound_.<port>_.<subset>_.<fqdn>`. Without DestinationRule TLS
and with MeshConfig `enableAutoMtls` (default true), the cluster gets that context
as a transport socket match for endpoints labelled
`security.istio.io/tlsMode: istio` (what injection puts on mesh workloads) and
plaintext for the others, so sidecars talk mTLS to sidecars and plaintext to the
rest without any configuration.
"""

from __future__ import annotations

from pylon.pilot.gen.names import sni_dnat_key
from pylon.pilot.gen.types import DOWNSTREAM_TLS, RAW_BUFFER, UPSTREAM_TLS, Json
from pylon.pilot.istio.networking import ClientTLSSettings
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

SDS_CLUSTER = "sds-grpc"
ISTIO_ALPN = ["istio-peer-exchange", "istio"]
# What Istio's clients offer (the istio-http/* forms carry the inner protocol for HTTP).
ISTIO_CLIENT_ALPNS = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
TLS_MODE_LABEL = "security.istio.io/tlsMode"
TLS_SOCKET = "envoy.transport_sockets.tls"


def sds_secret(name: str) -> Json:
    """An SDS secret from the agent over the bootstrap's `sds-grpc` cluster, as Istio writes the reference."""
    return {"name": name, "sds_config": {
        "api_config_source": {"api_type": "GRPC", "transport_api_version": "V3", "set_node_on_first_message_only": True,
                              "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}]},
        "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}  # fmt: skip


def _common_tls(alpn: list[str]) -> Json:
    return {
        "alpn_protocols": alpn,
        "tls_certificate_sds_secret_configs": [sds_secret("default")],
        "combined_validation_context": {
            "default_validation_context": {"match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"prefix": "spiffe://"}}]},
            "validation_context_sds_secret_config": sds_secret("ROOTCA"),
        },
    }  # fmt: skip


# --------------------------------------------------------------------------- inbound


class PeerModes:
    """The PeerAuthentication modes of one proxy: a default and port-level overrides (STRICT/PERMISSIVE/DISABLE)."""

    def __init__(self, proxy: Proxy, snapshot: Snapshot) -> None:
        candidates = sorted(snapshot.peer_authentications, key=lambda p: (p.namespace, p.name))
        mesh = next((p for p in candidates if p.namespace == snapshot.mesh.root_namespace and p.spec.selector is None), None)
        namespace = next((p for p in candidates if p.namespace == proxy.namespace and p.spec.selector is None), None)
        workload = next((p for p in candidates if p.namespace == proxy.namespace and p.spec.selector is not None
                         and all(proxy.labels.get(k) == v for k, v in p.spec.selector.match_labels.items())), None)  # fmt: skip
        mode = "PERMISSIVE"
        for policy in (mesh, namespace, workload):
            if policy is not None and policy.spec.mtls is not None and policy.spec.mtls.mode != "UNSET":
                mode = policy.spec.mtls.mode
        self.default = mode
        self.ports: dict[int, str] = {}
        if workload is not None:
            for port, setting in workload.spec.port_level_mtls.items():
                if setting.mode != "UNSET":
                    self.ports[int(port)] = setting.mode

    def mode(self, port: int) -> str:
        return self.ports.get(port, self.default)


def inbound_chains(name: str, port: int | None, mode: str, filters: list[Json], http: bool) -> list[Json]:
    """The chains of one inbound port (None: the catch-all) under `mode`, all running `filters`."""
    base: Json = {"destination_port": port} if port is not None else {}
    plain = {"name": name, "filter_chain_match": dict(base), "filters": filters}
    if mode == "DISABLE":
        return [plain] if base else [{"name": name, "filters": filters}]
    tls_chain = {
        "name": name,
        "filter_chain_match": {**base, "transport_protocol": "tls", "application_protocols": ISTIO_CLIENT_ALPNS},
        "filters": filters,
        "transport_socket": {"name": TLS_SOCKET, "typed_config": {
            "@type": DOWNSTREAM_TLS, "require_client_certificate": True,
            "common_tls_context": _common_tls(["h2", "http/1.1"] if http else ISTIO_ALPN)}},
    }  # fmt: skip
    if mode == "STRICT":
        return [tls_chain]
    plain["filter_chain_match"]["transport_protocol"] = "raw_buffer"
    return [tls_chain, plain]


# --------------------------------------------------------------------------- outbound


def sni(fqdn: str, port: int, subset: str) -> str:
    """Istio's SNI for mesh mTLS: `outbound_.<port>_.<subset>_.<fqdn>`."""
    return sni_dnat_key(fqdn, port, subset)


def upstream_tls(fqdn: str, port: int, subset: str, tls: ClientTLSSettings | None = None,
                 generated_sni: bool = True) -> Json:  # fmt: skip
    """ISTIO_MUTUAL's context; a rule's `sni` and `subjectAltNames` replace the generated SNI and the SPIFFE check.
    Without `generated_sni` (a dynamic forward proxy cluster, whose SNI is each request's host) only a rule's."""
    common = _common_tls(ISTIO_ALPN)
    if tls is not None and tls.subject_alt_names:
        common["combined_validation_context"]["default_validation_context"] = {
            "match_subject_alt_names": [{"exact": san} for san in tls.subject_alt_names]}
    name = tls.sni if tls is not None and tls.sni else sni(fqdn, port, subset) if generated_sni else ""
    context: Json = {"@type": UPSTREAM_TLS, **({"sni": name} if name else {}), "common_tls_context": common}
    return {"name": TLS_SOCKET, "typed_config": context}


def apply_client_tls(cluster: Json, tls: ClientTLSSettings | None, auto_mtls: bool, fqdn: str, port: int,
                     subset: str, generated_sni: bool = True) -> None:  # fmt: skip
    """Mesh TLS of an outbound cluster: `tls` is the DestinationRule's (None: the rule sets none), DISABLE or
    ISTIO_MUTUAL here (SIMPLE and MUTUAL are gen/client_tls.py's)."""
    if tls is not None and tls.mode == "ISTIO_MUTUAL":
        cluster["transport_socket"] = upstream_tls(fqdn, port, subset, tls, generated_sni)
    elif tls is None and auto_mtls:
        cluster["transport_socket_matches"] = [
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"},
             "transport_socket": upstream_tls(fqdn, port, subset, generated_sni=generated_sni)},
            {"name": "tlsMode-disabled", "match": {},
             "transport_socket": {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {"@type": RAW_BUFFER}}},
        ]  # fmt: skip


def endpoint_metadata(labels: dict[str, str]) -> Json | None:
    """The transport-socket match metadata of a mesh workload (label security.istio.io/tlsMode: istio)."""
    if labels.get(TLS_MODE_LABEL) != "istio":
        return None
    return {"filter_metadata": {"envoy.transport_socket_match": {"tlsMode": "istio"}}}

