"""An IstioOperator install file (`install.istio.io/v1alpha1`, kind IstioOperator), as `pylon mesh up -f` reads it.

What has a meaning on one machine is used: `spec.meshConfig` becomes pilot's MeshConfig, and each enabled
`spec.components.ingressGateways[]` becomes a gateway pod (its `label`, `namespace`, and the
`proxy.istio.io/config` pod annotation, a ProxyConfig such as Intel's `privateKeyProvider`, and the
`inject.istio.io/templates` annotation, whose `keyd` or `pkcs11` template puts the gateway's keys - its mesh key
and its credentials' keys - in a `pylon keyd` or a PKCS#11 token of its pod, as Intel's `sgx` template adds an SDS
server holding them in SGX). What only
makes sense on Kubernetes (images, profiles, Helm values, resources, overlays, other annotations) is
reported as ignored, by name. Anything else is an error naming the field: an install that asks for
something must not silently get less. Egress gateways are not supported by `pylon mesh` yet: an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from pylon.config.errors import ConfigError, split_validation_error
from pylon.pilot.istio.common import convert, read_yaml_file
from pylon.mesh.proxy_configs import DEFAULT_ROOT_NAMESPACE
from pylon.mesh.proxy_configs import effective_proxy_config as merge_effective
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.istio.resources import Resource

#: spec fields that only mean something on Kubernetes (images, install profiles, Helm values).
KUBERNETES_ONLY = ("hub", "tag", "profile", "revision", "namespace", "values", "installPackagePath")


PROXY_CONFIG_ANNOTATION = "proxy.istio.io/config"
TEMPLATES_ANNOTATION = "inject.istio.io/templates"
#: Injection templates a gateway pod may name: Istio's `gateway` (what every gateway pod gets), and pylon's two
#: key placements (see GatewayDeployment.keys).
KEY_TEMPLATES = ("keyd", "pkcs11")
DEFAULT_GATEWAY_NAMESPACE = "istio-system"


@dataclass
class GatewayDeployment:
    """An ingress gateway pod: Istio's default labels (`app: <name>`, `istio: ingressgateway`) under its own."""

    name: str
    namespace: str = DEFAULT_GATEWAY_NAMESPACE
    labels: dict[str, str] = field(default_factory=dict)
    proxy_config: str = ""  # the proxy.istio.io/config annotation's YAML, checked
    keys: str = ""  # where the gateway's private keys live: "" (the agent, Istio's default), "keyd" or "pkcs11"


@dataclass
class Install:
    mesh_config: dict[str, Any] = field(default_factory=dict)
    gateways: list[GatewayDeployment] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def load_install(path: Path) -> Install:
    """The install file's meaning here; ConfigError naming the file and field."""
    source = str(path)
    data = read_yaml_file(path)
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
        if name == "ingressGateways":
            if not isinstance(component, list):
                raise ConfigError(source, where, "must be a list of gateways")
            for index, gateway in enumerate(component):
                deployment = _gateway(gateway, source, f"{where}[{index}]", install)
                if deployment is not None:
                    install.gateways.append(deployment)
            continue
        if name == "egressGateways" and component:
            raise ConfigError(source, where, "egress gateways are not supported by pylon mesh yet")
        if name in ("base", "pilot", "cni", "istiodRemote", "ztunnel", "egressGateways"):
            if isinstance(component, dict) and component.get("enabled") is False:
                continue
            install.ignored.append(where)  # pilot always runs; the rest are Kubernetes deployments
        else:
            raise ConfigError(source, where, "unknown component")


def _gateway(value: Any, source: str, where: str, install: Install) -> GatewayDeployment | None:
    """One ingress gateway, or None when disabled."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        raise ConfigError(source, f"{where}.name", "required")
    if value.get("enabled") is False:
        return None
    deployment = GatewayDeployment(name=value["name"], labels={"app": value["name"], "istio": "ingressgateway"})
    for key, item in value.items():
        if key in ("name", "enabled"):
            continue
        if key == "namespace":
            deployment.namespace = str(item)
        elif key == "label":
            if not isinstance(item, dict):
                raise ConfigError(source, f"{where}.label", "must map label names to values")
            deployment.labels.update({str(k): str(v) for k, v in item.items()})
        elif key == "k8s":
            _gateway_k8s(item, source, f"{where}.k8s", deployment, install)
        elif key in ("hub", "tag"):
            install.ignored.append(f"{where}.{key}")
        else:
            raise ConfigError(source, f"{where}.{key}", "not supported by pylon mesh")
    return deployment


def _gateway_k8s(value: Any, source: str, where: str, deployment: GatewayDeployment, install: Install) -> None:
    if not isinstance(value, dict):
        raise ConfigError(source, where, "must be a mapping")
    for key, item in value.items():
        if key != "podAnnotations":
            install.ignored.append(f"{where}.{key}")  # resources, overlays, service, hpaSpec, ...: Kubernetes's
            continue
        for annotation, text in (item or {}).items():
            if annotation == TEMPLATES_ANNOTATION:
                deployment.keys = _key_template(text, source, f"{where}.podAnnotations.{annotation}")
            elif annotation == PROXY_CONFIG_ANNOTATION:
                deployment.proxy_config = _checked_proxy_config(text, source, f"{where}.podAnnotations.{annotation}")
            else:
                install.ignored.append(f"{where}.podAnnotations.{annotation}")


def _key_template(text: Any, source: str, where: str) -> str:
    """The key placement `inject.istio.io/templates` names ("" for none): `gateway` and at most one of keyd and
    pkcs11; any other template is an error (pylon mesh has no others to inject)."""
    names = [name.strip() for name in str(text).split(",") if name.strip()]
    unknown = [name for name in names if name not in ("gateway", *KEY_TEMPLATES)]
    if unknown:
        raise ConfigError(source, where, f"unknown template(s) {', '.join(unknown)}: pylon mesh injects gateway, "
                                         "keyd (the keys in a pylon keyd of the pod) or pkcs11 (in a PKCS#11 token)")
    placements = [name for name in names if name in KEY_TEMPLATES]
    if len(placements) > 1:
        raise ConfigError(source, where, "keyd and pkcs11 each say where the keys live: name one")
    return placements[0] if placements else ""


def _checked_proxy_config(text: Any, source: str, where: str) -> str:
    from pylon.pilot.istio.proxyconfig import ProxyConfig

    try:
        data = yaml.safe_load(str(text)) or {}
        convert(data, ProxyConfig)
    except yaml.YAMLError as exc:
        raise ConfigError(source, where, f"invalid YAML: {exc}".replace("\n", " ")) from None
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise ConfigError(source, where + (f".{path}" if path else ""), message) from None
    return str(text)


@dataclass
class PodProxyConfig:
    """What the pod's agent gets: `text`, the effective ProxyConfig as YAML for `pylon agent --proxy-config` ("" if
    nothing is set); `ignored`, the fields that only mean something on Kubernetes, by name; `notes`, resources
    not applied."""

    text: str = ""
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    captures_dns: bool = False  # proxyMetadata ISTIO_META_DNS_CAPTURE is "true"


DNS_CAPTURE = "ISTIO_META_DNS_CAPTURE"


def effective_proxy_config(mesh_config: dict[str, Any], annotation: str = "", resources: Sequence[Resource] = (),
                           namespace: str = "default", labels: Mapping[str, str] | None = None,
                           dns_capture_by_default: bool = False) -> PodProxyConfig:  # fmt: skip
    """A pod's ProxyConfig as Istio's injector merges it (mesh/proxy_configs.py): MeshConfig `defaultConfig`, the
    ProxyConfig resources among `resources` for its namespace and labels, and its `proxy.istio.io/config`
    annotation. `image` picks the sidecar's container image: no container here, so it is reported as ignored,
    naming the resource that set it. `dns_capture_by_default`: proxyMetadata ISTIO_META_DNS_CAPTURE is "true"
    unless the merged config sets it."""
    merged = merge_effective(mesh_config.get("defaultConfig") or {}, resources, namespace=namespace,
                             labels=labels or {}, annotation=yaml.safe_load(annotation) if annotation else None,
                             root_namespace=mesh_config.get("rootNamespace") or DEFAULT_ROOT_NAMESPACE)  # fmt: skip
    config = dict(merged.config)
    metadata = dict(config.get("proxyMetadata") or {})
    if dns_capture_by_default and DNS_CAPTURE not in metadata:
        config["proxyMetadata"] = {**metadata, DNS_CAPTURE: "true"}
    captures_dns = str((config.get("proxyMetadata") or {}).get(DNS_CAPTURE, "")).lower() == "true"
    ignored = [f"ProxyConfig {r.namespace}/{r.name}: spec.image" for r in merged.applied if r.spec.image is not None]
    if config.pop("image", None) is None:
        ignored = []
    return PodProxyConfig(text=yaml.safe_dump(config) if config else "", ignored=ignored, notes=merged.notes,
                          captures_dns=captures_dns)
