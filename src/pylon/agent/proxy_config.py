"""The pod's ProxyConfig (Istio's `proxy.istio.io/config` annotation) and the `PROXY_CONFIG` node metadata made
of it, sans-IO apart from reading the file.

Istio's agent sends its effective ProxyConfig as node metadata `PROXY_CONFIG`, protobuf JSON (camelCase,
durations as "0.002s", unset fields left out: pkg/model/proxy.go NodeMetaProxyConfig, filled in
pkg/bootstrap/config.go GetNodeMetaData). Pilot reads `privateKeyProvider` from it to choose how gateway keys
are served. The file is validated by pilot's own ProxyConfig model, so a field pilot does not implement is an
error naming the file and the field rather than a setting silently dropped.

`concurrency` and `proxyMetadata` are the agent's own: the proxy's workers, and its process environment (Istio
puts proxyMetadata into the istio-proxy container's env, which Envoy inherits). As Istio's agent reads its
environment, `ISTIO_META_<K>` variables among them become node metadata `K` and `ISTIO_METAJSON_<K>` JSON
metadata (pkg/bootstrap/config.go), under the keys the agent sets itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pylon.config.errors import ConfigError
from pylon.pilot.istio.common import load_struct_file
from pylon.pilot.istio.proxyconfig import ProxyConfig


def load_proxy_config(path: Path) -> ProxyConfig:
    """The ProxyConfig YAML in `path` (the annotation's value); ConfigError naming the file and field."""
    return load_struct_file(path, ProxyConfig, "ProxyConfig")


def node_proxy_config(config: ProxyConfig, *, discovery_address: str, admin_port: int) -> dict[str, Any]:
    """`PROXY_CONFIG`: the effective ProxyConfig as protobuf JSON, with the fields the agent's own flags set
    (`discoveryAddress`, `proxyAdminPort`) and the file's `concurrency`, `proxyMetadata` and `privateKeyProvider`."""
    metadata: dict[str, Any] = {"discoveryAddress": discovery_address, "proxyAdminPort": admin_port}
    if config.concurrency is not None:
        metadata["concurrency"] = config.concurrency
    if config.proxy_metadata:
        metadata["proxyMetadata"] = dict(config.proxy_metadata)
    provider = config.private_key_provider
    if provider is not None:
        settings = provider.settings
        metadata["privateKeyProvider"] = {provider.name: {"pollDelay": protojson_duration(settings.poll_delay),
                                                          "fallback": settings.fallback}}  # fmt: skip
    return metadata


def env_metadata(proxy_metadata: dict[str, str], source: str) -> dict[str, Any]:
    """Node metadata from the proxy's environment variables as Istio's agent takes it from its own: `ISTIO_META_<K>`
    verbatim, `ISTIO_METAJSON_<K>` parsed as JSON (ConfigError naming `source` and the variable if it is not)."""
    metadata: dict[str, Any] = {}
    for name, value in proxy_metadata.items():
        if name.startswith("ISTIO_METAJSON_"):
            try:
                metadata[name.removeprefix("ISTIO_METAJSON_")] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(source, f"proxyMetadata.{name}", f"invalid JSON: {exc}") from None
        elif name.startswith("ISTIO_META_"):
            metadata[name.removeprefix("ISTIO_META_")] = value
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
