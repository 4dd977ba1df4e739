"""An IstioOperator install file (`install.istio.io/v1alpha1`, kind IstioOperator), as `pylon mesh up -f` reads it.

What has a meaning on one machine is used: `spec.meshConfig` becomes pilot's MeshConfig. What only
makes sense on Kubernetes (images, profiles, Helm values) is reported as ignored, by name. Anything
else is an error naming the field: an install that asks for something must not silently get less.
Gateways (`spec.components.ingressGateways`, `egressGateways`) are not supported by `pylon mesh` yet: an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import yaml

from pylon.config.errors import ConfigError, split_validation_error
from pylon.pilot.istio.common import convert
from pylon.pilot.istio.mesh import MeshConfig

#: spec fields that only mean something on Kubernetes (images, install profiles, Helm values).
KUBERNETES_ONLY = ("hub", "tag", "profile", "revision", "namespace", "values", "installPackagePath")


@dataclass
class Install:
    mesh_config: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def load_install(path: Path) -> Install:
    """The install file's meaning here; ConfigError naming the file and field."""
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict) or data.get("kind") != "IstioOperator":
        raise ConfigError(source, "kind", "expected an IstioOperator (apiVersion install.istio.io/v1alpha1)")
    if data.get("apiVersion") != "install.istio.io/v1alpha1":
        raise ConfigError(source, "apiVersion", "expected install.istio.io/v1alpha1")
    spec = data.get("spec") or {}
    if not isinstance(spec, dict):
        raise ConfigError(source, "spec", "must be a mapping")
    install = Install()
    for key, value in spec.items():
        if key in KUBERNETES_ONLY:
            install.ignored.append(f"spec.{key}")
        elif key == "meshConfig":
            install.mesh_config = _mesh_config(value, source)
        elif key == "components":
            _components(value, source, install)
        else:
            raise ConfigError(source, f"spec.{key}", "not supported by pylon mesh")
    return install


def _mesh_config(value: Any, source: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(source, "spec.meshConfig", "must be a mapping")
    try:
        convert(value, MeshConfig)  # checked as pilot will read it, errors named by their place in this file
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise ConfigError(source, "spec.meshConfig" + (f".{path}" if path else ""), message) from None
    return value


def _components(value: Any, source: str, install: Install) -> None:
    if not isinstance(value, dict):
        raise ConfigError(source, "spec.components", "must be a mapping")
    for name, component in value.items():
        where = f"spec.components.{name}"
        if name in ("ingressGateways", "egressGateways") and component:
            raise ConfigError(source, where, "gateways are not supported by pylon mesh yet")
        if name in ("base", "pilot", "cni", "istiodRemote", "ztunnel", "ingressGateways", "egressGateways"):
            if isinstance(component, dict) and component.get("enabled") is False:
                continue
            install.ignored.append(where)  # pilot always runs; the rest are Kubernetes deployments
        else:
            raise ConfigError(source, where, "unknown component")
