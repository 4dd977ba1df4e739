"""The pod's ProxyConfig (Istio's `proxy.istio.io/config` annotation) and the `PROXY_CONFIG` node metadata made
of it, sans-IO apart from reading the file.

Istio's agent sends its effective ProxyConfig as node metadata `PROXY_CONFIG`, protobuf JSON (camelCase,
durations as "0.002s", unset fields left out: pkg/model/proxy.go NodeMetaProxyConfig, filled in
pkg/bootstrap/config.go GetNodeMetaData). Pilot reads `privateKeyProvider` from it to choose how gateway keys
are served. The file is validated by pilot's own ProxyConfig model, so a field pilot does not implement is an
error naming the file and the field rather than a setting silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pylon.pilot.istio.common import load_struct_file
from pylon.pilot.istio.proxyconfig import ProxyConfig


def load_proxy_config(path: Path) -> ProxyConfig:
    """The ProxyConfig YAML in `path` (the annotation's value); ConfigError naming the file and field."""
    return load_struct_file(path, ProxyConfig, "ProxyConfig")


def node_proxy_config(config: ProxyConfig, *, discovery_address: str, admin_port: int) -> dict[str, Any]:
    """`PROXY_CONFIG`: the effective ProxyConfig as protobuf JSON, with the fields the agent's own flags set
    (`discoveryAddress`, `proxyAdminPort`) and the file's `privateKeyProvider`."""
    metadata: dict[str, Any] = {"discoveryAddress": discovery_address, "proxyAdminPort": admin_port}
    provider = config.private_key_provider
    if provider is not None:
        settings = provider.settings
        metadata["privateKeyProvider"] = {provider.name: {"pollDelay": protojson_duration(settings.poll_delay),
                                                          "fallback": settings.fallback}}  # fmt: skip
    return metadata


def protojson_duration(seconds: float) -> str:
    """google.protobuf.Duration in protobuf JSON as Go writes it: 0, 3, 6 or 9 fractional digits ("0.010s")."""
    whole, nanos = divmod(round(seconds * 1e9), 1_000_000_000)
    if nanos == 0:
        return f"{whole}s"
    for digits, unit in ((3, 1_000_000), (6, 1_000)):
        if nanos % unit == 0:
            return f"{whole}.{nanos // unit:0{digits}d}s"
    return f"{whole}.{nanos:09d}s"
