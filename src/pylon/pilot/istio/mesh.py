"""Istio's MeshConfig (`mesh/v1alpha1/config.proto`), read from the `--mesh-config` YAML file.

Only the fields pylon pilot acts on decode; MeshConfig fields Istio has that are
not implemented yet are named as such, anything else is an unknown field, so a
mesh setting is never silently ignored.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import yaml

from pylon.config.errors import ConfigError, split_validation_error
from pylon.pilot.istio.common import IstioStruct, NotImplementedField, convert
from pylon.pilot.istio.proxyconfig import ProxyConfig
from pylon.pilot.istio.sidecar import OutboundTrafficPolicy


class MeshConfig(IstioStruct, kw_only=True):
    outbound_traffic_policy: OutboundTrafficPolicy = OutboundTrafficPolicy()
    default_config: ProxyConfig = ProxyConfig()
    trust_domain: NotImplementedField | None = None
    access_log_file: NotImplementedField | None = None
    access_log_encoding: NotImplementedField | None = None
    access_log_format: NotImplementedField | None = None
    enable_auto_mtls: bool = True
    root_namespace: NotImplementedField | None = None
    connect_timeout: NotImplementedField | None = None
    default_destination_rule_export_to: NotImplementedField | None = None
    default_virtual_service_export_to: NotImplementedField | None = None
    default_service_export_to: NotImplementedField | None = None
    enable_tracing: NotImplementedField | None = None
    extension_providers: NotImplementedField | None = None
    ca_certificates: NotImplementedField | None = None


def load_mesh_config(path: Path | None) -> MeshConfig:
    """The MeshConfig in `path` (Istio's defaults without one); ConfigError naming the file and field."""
    if path is None:
        return MeshConfig()
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}".replace("\n", " ")) from None
    if data is None:
        return MeshConfig()
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a MeshConfig mapping, got {type(data).__name__}")
    try:
        return convert(data, MeshConfig)
    except msgspec.ValidationError as exc:
        field_path, message = split_validation_error(exc)
        raise ConfigError(source, field_path, message) from None
