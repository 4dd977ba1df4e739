"""Istio's ProxyConfig (`mesh/v1alpha1/proxy.proto`) as pilot reads it: MeshConfig `defaultConfig`, and the
`PROXY_CONFIG` node metadata an agent sends (the `proxy.istio.io/config` annotation merged over it).

Most ProxyConfig fields configure the agent and the proxy process (concurrency, drain, ports), not
what pilot generates. `privateKeyProvider` is pilot's: it puts the CryptoMB or QAT provider into the
gateway secrets it serves (istiod's pilot/pkg/xds/sds.go). `concurrency` (the proxy's workers) and
`proxyMetadata` (the proxy process's environment) are the agent's: `pylon agent --proxy-config` applies
them, and `pylon mesh run` (pylon's injector) merges them from `defaultConfig`, ProxyConfig resources and
the annotation. The other fields are named as not implemented, so setting one is an error rather than a
silent no-op.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pylon.config.errors import FieldError, split_validation_error
from pylon.pilot.istio.common import GoDuration, Int32, IstioStruct, NotImplementedField, convert, exactly_one
from pylon.pilot.istio.proxyconfig_resource import check_environment


class KeyProviderSettings(IstioStruct, kw_only=True):
    """`cryptomb` / `qat`: how long a partial batch (or the device poll) waits, and whether to fall back to
    the key in software where the accelerator is missing."""

    poll_delay: GoDuration
    fallback: bool = False

    def __post_init__(self) -> None:
        if self.poll_delay <= 0:  # Istio's validation: "pollDelay must be non-zero"
            raise FieldError("pollDelay", "must be greater than 0")


class PrivateKeyProvider(IstioStruct, kw_only=True):
    cryptomb: KeyProviderSettings | None = None
    qat: KeyProviderSettings | None = None

    def __post_init__(self) -> None:
        exactly_one(self, "cryptomb", "qat")

    @property
    def name(self) -> str:
        """Envoy's provider_name."""
        return "cryptomb" if self.cryptomb is not None else "qat"

    @property
    def settings(self) -> KeyProviderSettings:
        settings = self.cryptomb or self.qat
        assert settings is not None
        return settings


class ProxyConfig(IstioStruct, kw_only=True):
    private_key_provider: PrivateKeyProvider | None = None
    config_path: NotImplementedField | None = None
    binary_path: NotImplementedField | None = None
    service_cluster: NotImplementedField | None = None
    drain_duration: NotImplementedField | None = None
    termination_drain_duration: NotImplementedField | None = None
    discovery_address: NotImplementedField | None = None
    proxy_admin_port: NotImplementedField | None = None
    concurrency: Int32 | None = None  # None: the agent's default (2); 0: a worker per CPU, as Envoy's default
    interception_mode: NotImplementedField | None = None
    tracing: NotImplementedField | None = None
    proxy_stats_matcher: NotImplementedField | None = None
    proxy_metadata: dict[str, str] = {}  # environment variables of the proxy process
    status_port: NotImplementedField | None = None
    extra_stat_tags: NotImplementedField | None = None
    gateway_topology: NotImplementedField | None = None
    hold_application_until_proxy_starts: NotImplementedField | None = None
    proxy_headers: NotImplementedField | None = None
    image: NotImplementedField | None = None
    ca_certificates_pem: NotImplementedField | None = None

    def __post_init__(self) -> None:
        if self.concurrency is not None and self.concurrency < 0:
            raise FieldError("concurrency", "concurrency must be greater than or equal to 0")
        check_environment(self.proxy_metadata, "proxyMetadata")


def key_provider_from_metadata(metadata: dict[str, Any]) -> PrivateKeyProvider | None:
    """`PROXY_CONFIG.privateKeyProvider` of a node's metadata (the rest of PROXY_CONFIG is the agent's business);
    ValueError naming the field if it is malformed."""
    proxy_config = metadata.get("PROXY_CONFIG")
    if proxy_config is None:
        return None
    if not isinstance(proxy_config, dict):
        raise ValueError("metadata PROXY_CONFIG must be a ProxyConfig object")
    value = proxy_config.get("privateKeyProvider")
    if value is None:
        return None
    try:
        return convert(value, PrivateKeyProvider)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        where = "metadata PROXY_CONFIG.privateKeyProvider" + (f".{path}" if path else "")
        raise ValueError(f"{where}: {message}") from None
