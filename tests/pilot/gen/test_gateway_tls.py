"""HTTPS gateway servers: TLS filter chains by SNI, `https.*` routes, and the `kubernetes://` secrets served.

Shapes as istiod generates them (BuildListenerTLSContext, pilot/pkg/xds/sds.go); every generated
resource also goes through Envoy's API (pilot's encoder) so a translation slip fails here.
"""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.identity.certs import issue_leaf, make_ca
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen import generator_for
from pylon.pilot.gen.types import LISTENER, ROUTE, SECRET, Resources
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.istio.common import convert
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import build_snapshot
from pylon.pilot.source.secrets import load_secrets
from pylon.pilot.xds.encode import to_any
from tests.pilot.builders import doc, gateway_proxy, resources, virtual_service

IDENTITY = SpiffeId("cluster.local", "istio-system", "ingressgateway")


def https_gateway(*servers: dict[str, Any]) -> dict[str, Any]:
    return doc("Gateway", "gw", {"selector": {"istio": "ingressgateway"}, "servers": list(servers)},
               namespace="istio-system")


def https_server(hosts: list[str], credential: str = "gw-cred", mode: str = "SIMPLE", port: int = 443,
                 name: str = "https", **tls: Any) -> dict[str, Any]:
    settings = {"mode": mode, **({"credentialName": credential} if credential else {}), **tls}
    return {"port": {"number": port, "name": name, "protocol": "HTTPS"}, "hosts": hosts, "tls": settings}


def secret_manifest(name: str, namespace: str = "istio-system", with_ca: bool = False) -> dict[str, Any]:
    ca = make_ca()
    leaf = issue_leaf(ca, common_name=name, dns_names=[f"{name}.example.com"])
    data = {"tls.crt": leaf.cert_pem, "tls.key": leaf.key_pem}
    if with_ca:
        data["ca.crt"] = ca.cert_pem
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {key: base64.b64encode(value).decode() for key, value in data.items()}}  # fmt: skip


def generate(docs: list[dict[str, Any]], secrets: list[dict[str, Any]] = (), proxy: Proxy | None = None,
             mesh: MeshConfig | None = None, tmp_path: Path | None = None) -> Resources:
    found = {}
    if secrets:
        assert tmp_path is not None
        import yaml

        (tmp_path / "secrets.yaml").write_text(yaml.safe_dump_all(list(secrets)))
        result = load_secrets(tmp_path)
        assert not result.errors, result.errors
        found = result.secrets
    snapshot = build_snapshot(resources(*docs), version="v", mesh=mesh, secrets=found)
    proxy = proxy or dataclasses.replace(gateway_proxy(), identity=IDENTITY)
    out = generator_for(proxy).generate(proxy, snapshot)
    for type_url, items in out.items():
        for item in items.values():
            to_any(type_url, item)  # valid Envoy API
    return out


def test_one_tls_chain_per_server_by_sni_with_its_own_route(tmp_path: Path) -> None:
    out = generate([https_gateway(https_server(["a.example.com"], "a-cred", name="https-a"),
                                  https_server(["*"], "b-cred", name="https-b")),
                    virtual_service([{"route": [{"destination": {"host": "x.example.com"}}]}])],
                   [secret_manifest("a-cred"), secret_manifest("b-cred")], tmp_path=tmp_path)
    listener = out[LISTENER]["0.0.0.0_443"]
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    first, catch_all = listener["filter_chains"]
    assert first["filter_chain_match"] == {"server_names": ["a.example.com"]}
    assert "filter_chain_match" not in catch_all  # `*` matches every name, so it goes last
    hcm = first["filters"][0]["typed_config"]
    assert hcm["rds"]["route_config_name"] == "https.443.https-a.gw.istio-system"
    assert set(out[ROUTE]) == {"https.443.https-a.gw.istio-system", "https.443.https-b.gw.istio-system"}
    tls = first["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    assert tls["common_tls_context"]["tls_certificate_sds_secret_configs"] == [
        {"name": "kubernetes://a-cred", "sds_config": {"ads": {}, "resource_api_version": "V3"}}]
    assert tls["require_client_certificate"] is False
    assert set(out[SECRET]) == {"kubernetes://a-cred", "kubernetes://b-cred"}
    assert "private_key" in out[SECRET]["kubernetes://a-cred"]["tls_certificate"]


def test_mutual_validates_clients_against_the_cacert_secret(tmp_path: Path) -> None:
    out = generate([https_gateway(https_server(["a.example.com"], "a-cred", mode="MUTUAL",
                                               subjectAltNames=["client.example.com"]))],
                   [secret_manifest("a-cred", with_ca=True)], tmp_path=tmp_path)
    tls = out[LISTENER]["0.0.0.0_443"]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    combined = tls["common_tls_context"]["combined_validation_context"]
    assert combined["validation_context_sds_secret_config"]["name"] == "kubernetes://a-cred-cacert"
    assert combined["default_validation_context"] == {"match_subject_alt_names": [{"exact": "client.example.com"}]}
    assert set(out[SECRET]) == {"kubernetes://a-cred", "kubernetes://a-cred-cacert"}
    assert "trusted_ca" in out[SECRET]["kubernetes://a-cred-cacert"]["validation_context"]


def test_istio_mutual_uses_the_gateways_mesh_certificate() -> None:
    out = generate([https_gateway(https_server(["a.example.com"], "", mode="ISTIO_MUTUAL"))])
    common = out[LISTENER]["0.0.0.0_443"]["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert [s["name"] for s in common["tls_certificate_sds_secret_configs"]] == ["default"]
    assert common["combined_validation_context"]["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert out[SECRET] == {}


def test_secrets_only_for_a_verified_proxy_of_their_namespace(tmp_path: Path) -> None:
    docs = [https_gateway(https_server(["a.example.com"], "a-cred"))]
    # The plaintext port: no verified identity, no key.
    assert generate(docs, [secret_manifest("a-cred")], proxy=gateway_proxy(), tmp_path=tmp_path)[SECRET] == {}
    # A secret of another namespace is not this gateway's, whatever its name.
    assert generate(docs, [secret_manifest("a-cred", namespace="other")], tmp_path=tmp_path)[SECRET] == {}


def test_private_key_provider_from_mesh_default_and_from_the_node(tmp_path: Path) -> None:
    docs = [https_gateway(https_server(["a.example.com"], "a-cred"))]
    mesh = convert({"defaultConfig": {"privateKeyProvider": {"cryptomb": {"pollDelay": "10ms", "fallback": True}}}},
                   MeshConfig)
    certificate = generate(docs, [secret_manifest("a-cred")], mesh=mesh, tmp_path=tmp_path)[SECRET][
        "kubernetes://a-cred"]["tls_certificate"]
    assert "private_key" not in certificate
    provider = certificate["private_key_provider"]
    assert (provider["provider_name"], provider["fallback"], provider["typed_config"]["poll_delay"]) == (
        "cryptomb", True, "0.01s")
    assert provider["typed_config"]["@type"].endswith("cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig")
    # The agent's PROXY_CONFIG (the proxy.istio.io/config annotation) wins over the mesh default.
    node = dataclasses.replace(gateway_proxy(), identity=IDENTITY, metadata={
        "PROXY_CONFIG": {"privateKeyProvider": {"qat": {"pollDelay": "2ms"}}}})
    certificate = generate(docs, [secret_manifest("a-cred")], proxy=node, mesh=mesh, tmp_path=tmp_path)[SECRET][
        "kubernetes://a-cred"]["tls_certificate"]
    assert certificate["private_key_provider"]["provider_name"] == "qat"
    assert certificate["private_key_provider"]["fallback"] is False


@pytest.mark.parametrize(("server", "field", "message"), [
    ({"port": {"number": 443, "name": "https", "protocol": "HTTPS"}, "hosts": ["*"]}, "tls", "need TLS settings"),
    (https_server(["*"], "", mode="SIMPLE"), "credentialName", "requires credentialName"),
    (https_server(["*"], mode="PASSTHROUGH"), "tls.credentialName", "do not end TLS"),
    ({"port": {"number": 9000, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"], "tls": {"mode": "SIMPLE",
      "credentialName": "x"}}, "tls", "non HTTPS/TLS ports"),
    ({"port": {"number": 27017, "name": "mongo", "protocol": "MONGO"}, "hosts": ["*"]}, "port.protocol",
     "not supported by pylon pilot yet"),
    (https_server(["*"], "sds://x"), "credentialName", "only Kubernetes secrets"),
    (https_server(["*"], subjectAltNames=["x"]), "subjectAltNames", "not validated in SIMPLE mode"),
    (https_server(["*"], "", mode="ISTIO_MUTUAL", minProtocolVersion="TLSV1_3"), "minProtocolVersion",
     "Istio ignores them on ISTIO_MUTUAL"),
    ({"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"],
      "tls": {"mode": "SIMPLE", "credentialName": "x"}}, "tls", "plain-text HTTP server"),
])  # fmt: skip
def test_server_tls_errors_name_the_field(server: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        resources(https_gateway(server))
    assert field in info.value.path and message in info.value.message


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"tls.crt": "bm90IGEgY2VydA=="}, "data.tls.key", "required with the other half"),
    ({"tls.crt": "bm90IGEgY2VydA==", "tls.key": "eA=="}, "data.tls.crt", "not a PEM certificate"),
    ({"tls.crt": "!!"}, "data.tls.crt", "not valid base64"),
    ({"other": "eA=="}, "data", "no credentials"),
])  # fmt: skip
def test_secret_errors_name_file_document_and_key(tmp_path: Path, data: dict[str, str], field: str,
                                                  message: str) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Secret",
                                                     "metadata": {"name": "x"}, "data": data}))
    errors = load_secrets(tmp_path).errors
    assert len(errors) == 1 and errors[0].path == field and message in errors[0].message
    assert "s.yaml (document 1, Secret default/x)" in str(errors[0])


def test_a_secret_defined_twice_is_an_error_naming_both(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([secret_manifest("dup"), secret_manifest("dup")]))
    result = load_secrets(tmp_path)
    assert [e.path for e in result.errors] == ["metadata.name"] and "defined twice" in result.errors[0].message
    assert list(result.secrets) == [("istio-system", "dup")]  # the first one stays
