"""What a perf run feeds the mesh: the IstioOperator install file and the gateways' Istio resources.

The install file is shaped like Intel's (intel/istio `intel/yaml/intel-istio-cryptomb.yaml`): each ingress
gateway under `spec.components.ingressGateways`, its key provider in the `proxy.istio.io/config` pod
annotation, and where its keys live (pylon's `keyd` or `pkcs11` template) in `inject.istio.io/templates`.
The resources are what a user applies with `kubectl apply -f`: the gateway credential as a
`kubernetes.io/tls` Secret (an RSA-2048 leaf, so handshakes cost what they cost in Istio's setups), one
Gateway per ingress gateway (HTTPS on :8443 with `credentialName`, optionally HTTP on :8080), and a
VirtualService sending everything to the server. Documents are built sans-IO; `write_inputs` writes them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pylon.bench.mesh_runs.modes import ECHO_PORT, GW, GW_NS, HTTP_PORT, HTTPS_PORT, SERVER, host

CREDENTIAL = "bench-cred"


@dataclass(frozen=True)
class IngressGateway:
    """One ingress gateway of the install: its name, its pod's `proxy.istio.io/config` and
    `inject.istio.io/templates` annotations, whether it serves HTTP."""

    name: str
    proxy_config: str = ""
    http: bool = False
    templates: str = ""

    @property
    def selector(self) -> str:
        """The `istio` label its Gateway selects: Istio's default gateway keeps `ingressgateway`."""
        return "ingressgateway" if self.name == GW else self.name


@dataclass(frozen=True)
class Inputs:
    install: Path
    resources: Path
    ca: Path  # the credential's CA, for the load client's -cacert


def install_document(gateways: list[IngressGateway]) -> dict[str, Any]:
    """The IstioOperator `pylon mesh up -f` reads."""
    entries: list[dict[str, Any]] = []
    for gateway in gateways:
        entry: dict[str, Any] = {"name": gateway.name, "enabled": True}
        if gateway.name != GW:
            entry["label"] = {"istio": gateway.selector}
        annotations = {key: value for key, value in (("proxy.istio.io/config", gateway.proxy_config),
                                                     ("inject.istio.io/templates", gateway.templates)) if value}
        if annotations:
            entry["k8s"] = {"podAnnotations": annotations}
        entries.append(entry)
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "spec": {"components": {"ingressGateways": entries}}}  # fmt: skip


def gateway_documents(gateways: list[IngressGateway], cert_pem: bytes, key_pem: bytes) -> list[dict[str, Any]]:
    """Secret, Gateways and the VirtualService, as `pylon mesh apply -f` takes them."""
    docs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": CREDENTIAL, "namespace": GW_NS},
        "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}]
    for gateway in gateways:
        servers: list[dict[str, Any]] = []
        if gateway.http:
            servers.append({"port": {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"},
                            "hosts": [host(gateway.name, GW_NS)]})
        servers.append({"port": {"number": HTTPS_PORT, "name": "https", "protocol": "HTTPS"},
                        "hosts": [host(gateway.name, GW_NS)],
                        "tls": {"mode": "SIMPLE", "credentialName": CREDENTIAL}})
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                     "metadata": {"name": f"{gateway.name}-gw", "namespace": GW_NS},
                     "spec": {"selector": {"istio": gateway.selector}, "servers": servers}})
    docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                 "metadata": {"name": "bench-via-gw", "namespace": GW_NS},
                 "spec": {"hosts": [host(g.name, GW_NS) for g in gateways],
                          "gateways": [f"{g.name}-gw" for g in gateways],
                          "http": [{"route": [{"destination": {"host": host(SERVER),
                                                               "port": {"number": ECHO_PORT}}}]}]}})
    return docs  # fmt: skip


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the annotation's embedded YAML) as `|` blocks, readable as Intel's files are."""


_LiteralDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


def write_inputs(work: Path, gateways: list[IngressGateway], stem: str = "") -> Inputs:
    """Write the install file, the resources and the credential's CA under `work` (names prefixed by `stem`)."""
    from pylon.identity.certs import issue_leaf, make_ca

    ca = make_ca("pylon mesh bench CA")
    names = [host(g.name, GW_NS) for g in gateways]
    leaf = issue_leaf(ca, common_name=names[0], dns_names=names)  # RSA-2048, as make_ca's default
    work.mkdir(parents=True, exist_ok=True)
    prefix = f"{stem}-" if stem else ""
    inputs = Inputs(work / f"{prefix}install.yaml", work / f"{prefix}gateway.yaml", work / f"{prefix}ca.pem")
    inputs.install.write_text(yaml.dump(install_document(gateways), Dumper=_LiteralDumper, sort_keys=False))
    inputs.resources.write_text(yaml.safe_dump_all(gateway_documents(gateways, leaf.cert_pem, leaf.key_pem)))
    inputs.ca.write_bytes(ca.cert_pem)
    return inputs
