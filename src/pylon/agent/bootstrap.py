"""The proxy bootstrap the agent writes, in the shape of Istio's (`envoy-rev.json`), sans-IO.

Node id `<type>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`, cluster `istio-proxy`, Istio's node
metadata keys (the pod's LABELS, by which a Gateway's selector picks a gateway; PROXY_CONFIG), ADS
through the static cluster `xds-grpc` and SDS through `sds-grpc`. Both are pipes to the agent's
Unix sockets, as Istio's agent writes them: the proxy holds no credential for the control plane;
the agent's xDS proxy carries its streams to pilot's TLS port with the workload's token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pylon.identity.spiffe import SpiffeId

PROXY_TYPES = ("sidecar", "router")
_HTTP2 = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}},
}}  # fmt: skip


@dataclass(frozen=True)
class Workload:
    identity: SpiffeId
    pod_name: str
    ip: str
    proxy_type: str = "sidecar"
    cluster_id: str = "Kubernetes"
    labels: Mapping[str, str] = field(default_factory=dict)
    proxy_config: Mapping[str, Any] = field(default_factory=dict)
    env_metadata: Mapping[str, Any] = field(default_factory=dict)  # ISTIO_META_* of proxyMetadata, under the rest

    @property
    def dns_domain(self) -> str:
        """The pod's DNS domain, the node id's last part (Kubernetes' `<ns>.svc.cluster.local`)."""
        return f"{self.identity.namespace}.svc.cluster.local"

    @property
    def node_id(self) -> str:
        return f"{self.proxy_type}~{self.ip}~{self.pod_name}.{self.identity.namespace}~{self.dns_domain}"

    @property
    def captures_dns(self) -> bool:
        """Istio's DNS capture: a sidecar whose proxyMetadata sets ISTIO_META_DNS_CAPTURE=true (node metadata
        DNS_CAPTURE) has its agent answer the pod's DNS from pilot's name table."""
        return self.proxy_type == "sidecar" and str(self.env_metadata.get("DNS_CAPTURE", "")).lower() == "true"

    def metadata(self) -> dict[str, Any]:
        return {
            **self.env_metadata,
            "NAMESPACE": self.identity.namespace,
            "SERVICE_ACCOUNT": self.identity.service_account,
            "NAME": self.pod_name,
            "INSTANCE_IPS": self.ip,
            "CLUSTER_ID": self.cluster_id,
            "LABELS": dict(self.labels),
            "PROXY_CONFIG": dict(self.proxy_config),
            "ISTIO_VERSION": "pylon",
        }


def build_bootstrap(workload: Workload, *, xds_socket: str, sds_socket: str, admin_port: int) -> dict[str, Any]:
    """The Envoy v3 bootstrap as a JSON-ready dict."""
    ads_source = {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}
    return {
        "node": {"id": workload.node_id, "cluster": "istio-proxy", "metadata": workload.metadata()},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "dynamic_resources": {
            "lds_config": ads_source,
            "cds_config": ads_source,
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
        },
        "static_resources": {
            "clusters": [
                _cluster("xds-grpc", {"pipe": {"path": xds_socket}}),
                _cluster("sds-grpc", {"pipe": {"path": sds_socket}}),
            ]
        },
    }


def _cluster(name: str, address: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": _HTTP2,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]},
    }
