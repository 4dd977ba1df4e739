"""The install file and gateway resources a perf run applies: checked as `pylon mesh` reads them."""

from __future__ import annotations

import base64
from pathlib import Path

import yaml

from pylon.bench.mesh_runs.inputs import IngressGateway, gateway_documents, install_document, write_inputs
from pylon.bench.mesh_runs.key_modes import CRYPTOMB_CONFIG
from pylon.bench.mesh_runs.modes import GW, GW_CMB
from pylon.mesh.install import load_install
from pylon.pilot.istio.resources import decode_resource
from pylon.pilot.source.secrets import decode_secret


def test_the_install_file_is_an_istio_operator_with_the_key_provider_annotation(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, [IngressGateway(GW, CRYPTOMB_CONFIG)], stem="cryptomb")
    assert inputs.install.name == "cryptomb-install.yaml"
    text = inputs.install.read_text()
    assert "proxy.istio.io/config: |" in text  # the embedded YAML reads as in Intel's files
    install = load_install(inputs.install)  # as `pylon mesh up -f` reads it
    assert install.ignored == []
    [gateway] = install.gateways
    assert gateway.name == GW and gateway.namespace == "istio-system"
    assert gateway.labels == {"app": GW, "istio": "ingressgateway"}
    assert yaml.safe_load(gateway.proxy_config)["privateKeyProvider"]["cryptomb"]["fallback"] is True


def test_the_key_template_annotation_reads_as_a_key_placement(tmp_path: Path) -> None:
    inputs = write_inputs(tmp_path, [IngressGateway(GW, templates="gateway,pkcs11")], stem="pkcs11")
    annotations = yaml.safe_load(inputs.install.read_text())["spec"]["components"]["ingressGateways"][0]["k8s"]
    assert annotations == {"podAnnotations": {"inject.istio.io/templates": "gateway,pkcs11"}}
    [gateway] = load_install(inputs.install).gateways
    assert gateway.keys == "pkcs11" and gateway.proxy_config == ""


def test_a_second_gateway_gets_its_own_selector_label() -> None:
    doc = install_document([IngressGateway(GW, http=True), IngressGateway(GW_CMB, CRYPTOMB_CONFIG)])
    first, second = doc["spec"]["components"]["ingressGateways"]
    assert "label" not in first and "k8s" not in first
    assert second["label"] == {"istio": GW_CMB}


def test_resources_decode_as_pilot_reads_them() -> None:
    docs = gateway_documents([IngressGateway(GW, http=True), IngressGateway(GW_CMB)], b"CERT", b"KEY")
    secret, gw, gw_cmb, route = docs
    assert base64.b64decode(secret["data"]["tls.key"]) == b"KEY"
    assert [s["port"]["number"] for s in gw["spec"]["servers"]] == [8080, 8443]
    assert [s["port"]["number"] for s in gw_cmb["spec"]["servers"]] == [8443]
    assert gw["spec"]["selector"] == {"istio": "ingressgateway"} and gw_cmb["spec"]["selector"] == {"istio": GW_CMB}
    assert route["spec"]["gateways"] == [f"{GW}-gw", f"{GW_CMB}-gw"]
    for index, doc in enumerate(docs[1:], 1):
        decode_resource(doc, "gateway.yaml", index)


def test_written_credential_is_a_real_rsa_certificate_for_the_gateway_name(tmp_path: Path) -> None:
    from cryptography import x509

    inputs = write_inputs(tmp_path, [IngressGateway(GW)])
    [secret] = [d for d in yaml.safe_load_all(inputs.resources.read_text()) if d["kind"] == "Secret"]
    decode_secret(secret, str(inputs.resources), 0)
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["istio-ingressgateway.istio-system.svc.cluster.local"]
    assert cert.public_key().key_size == 2048
    assert inputs.ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
