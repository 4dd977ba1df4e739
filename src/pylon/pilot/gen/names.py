"""Istio's names for generated resources (pilot/pkg/model/service.go BuildSubsetKey, gateway.go)."""

from __future__ import annotations

BLACKHOLE = "BlackHoleCluster"
PASSTHROUGH = "PassthroughCluster"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"


def subset_key(host: str, port: int, subset: str = "", direction: str = "outbound") -> str:
    """`outbound|<port>|<subset>|<fqdn>`: cluster, EDS service and CLA name."""
    return f"{direction}|{port}|{subset}|{host}"


def sni_dnat_key(host: str, port: int, subset: str = "") -> str:
    """`outbound_.<port>_.<subset>_.<fqdn>` (BuildDNSSrvSubsetKey): Istio's mTLS SNI, and the name of a gateway's
    SNI-DNAT cluster (AUTO_PASSTHROUGH) and its load assignment."""
    return f"outbound_.{port}_.{subset}_.{host}"


def subset_key_host(name: str) -> str:
    """The fqdn of a `subset_key` or `sni_dnat_key` name (the host of an outbound cluster or its load assignment)."""
    if "|" not in name and name.startswith("outbound_."):
        return name.split("_.", 3)[-1]
    return name.rsplit("|", 1)[-1]


def listener_name(bind: str, port: int) -> str:
    """`<bind>_<port>`, e.g. `0.0.0.0_8080`."""
    return f"{bind}_{port}"


def gateway_http_route_name(port: int, bind: str = "") -> str:
    """RDS name of a plain-HTTP gateway port: `http.<port>`, `http.<port>.<bind>` when the server binds."""
    return f"http.{port}.{bind}" if bind else f"http.{port}"


def gateway_https_route_name(port: int, port_name: str, gateway: str, namespace: str, bind: str = "") -> str:
    """RDS name of one HTTPS (TLS-terminating) gateway server: `https.<port>.<portName>.<gateway>.<namespace>`,
    `.<bind>` appended when the server binds."""
    return f"https.{port}.{port_name}.{gateway}.{namespace}" + (f".{bind}" if bind else "")


def domain_name(host: str, port: int) -> str:
    """Virtual host names: `<host>:<port>`."""
    return f"{host}:{port}"
