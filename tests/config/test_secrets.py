"""SDS secret references in TLS contexts: resolution, the combined validation context, and the config errors."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import CommonTlsContext, SdsSecretConfig, Secret, convert
from pylon.config.errors import ConfigError, FieldError
from pylon.config.loader import parse_bootstrap
from pylon.config.secrets import SecretMissing, resolve, source_conflicts
from tests.proxy.conftest import DOWNSTREAM_TLS_TYPE, http_listener, route, static_cluster

CA = {"inline_string": "ca"}
CERT = {"certificate_chain": {"inline_string": "chain"}, "private_key": {"inline_string": "key"}}
SPIFFE = {"san_type": "URI", "matcher": {"prefix": "spiffe://cluster.local/"}}
ADS_SOURCE = {"ads": {}}


def common(**fields: Any) -> CommonTlsContext:
    return convert(fields, CommonTlsContext)


def secrets(*items: dict[str, Any]) -> dict[str, Secret]:
    return {item["name"]: convert(item, Secret) for item in items}


def test_resolve_fills_certificates_and_merges_the_combined_validation_context() -> None:
    context = common(tls_certificate_sds_secret_configs=[{"name": "default", "sds_config": ADS_SOURCE}],
                     combined_validation_context={"default_validation_context": {"match_typed_subject_alt_names": [SPIFFE]},
                                                  "validation_context_sds_secret_config": {"name": "ROOTCA"}})
    table = secrets({"name": "default", "tls_certificate": CERT},
                    {"name": "ROOTCA", "validation_context": {"trusted_ca": CA, "match_subject_alt_names": [{"exact": "x"}]}})
    resolved = resolve(context, table)
    assert resolved.tls_certificates == [table["default"].tls_certificate]
    assert resolved.tls_certificate_sds_secret_configs == [] and resolved.combined_validation_context is None
    validation = resolved.validation_context
    # Envoy merges the secret over the default: its CA, and the lists joined.
    assert validation.trusted_ca == table["ROOTCA"].validation_context.trusted_ca
    assert [m.san_type for m in validation.match_typed_subject_alt_names] == ["URI"]
    assert [m.exact for m in validation.match_subject_alt_names] == ["x"]


def test_a_missing_secret_raises_unless_checking() -> None:
    context = common(tls_certificate_sds_secret_configs=[{"name": "default", "sds_config": ADS_SOURCE}],
                     combined_validation_context={"default_validation_context": {"match_typed_subject_alt_names": [SPIFFE]},
                                                  "validation_context_sds_secret_config": {"name": "ROOTCA"}})
    with pytest.raises(SecretMissing, match="'default'"):
        resolve(context, {})
    checked = resolve(context, {}, skip_missing=True)  # the rest of the context, checked before secrets come
    assert checked.tls_certificates == [] and checked.validation_context.trusted_ca is None


@pytest.mark.parametrize(("table", "path", "message"), [
    ([{"name": "default", "validation_context": {"trusted_ca": CA}}, {"name": "ROOTCA", "validation_context": {}}],
     "tls_certificate_sds_secret_configs[0].name", "secret 'default' holds no tls_certificate"),
    ([{"name": "default", "tls_certificate": CERT}, {"name": "ROOTCA", "tls_certificate": CERT}],
     "validation_context_sds_secret_config.name", "secret 'ROOTCA' holds no validation_context"),
    ([{"name": "default", "tls_certificate": CERT},
      {"name": "ROOTCA", "validation_context": {"match_subject_alt_names": [{"exact": "x"}]}}],
     "validation_context_sds_secret_config.trusted_ca", "SAN matching without a trusted CA is insecure and not allowed"),
])  # fmt: skip
def test_wrong_or_insecure_secrets(table: list[dict[str, Any]], path: str, message: str) -> None:
    context = common(tls_certificate_sds_secret_configs=[{"name": "default", "sds_config": ADS_SOURCE}],
                     validation_context_sds_secret_config={"name": "ROOTCA", "sds_config": ADS_SOURCE})
    with pytest.raises(FieldError) as info:
        resolve(context, secrets(*table))
    assert (info.value.rel_path, info.value.message) == (path, message)


def test_a_combined_context_without_a_ca_in_its_secret_is_insecure() -> None:
    """SAN matchers in the default, no CA in the secret either: every certificate would pass the chain check."""
    context = common(combined_validation_context={
        "default_validation_context": {"match_typed_subject_alt_names": [SPIFFE]},
        "validation_context_sds_secret_config": {"name": "ROOTCA", "sds_config": ADS_SOURCE}})
    with pytest.raises(FieldError) as info:
        resolve(context, secrets({"name": "ROOTCA", "validation_context": {}}))
    assert info.value.rel_path == "combined_validation_context.trusted_ca"


def test_one_name_one_source() -> None:
    refs = [("a", convert({"name": "s", "sds_config": ADS_SOURCE}, SdsSecretConfig)),
            ("b", convert({"name": "s", "sds_config": {"path_config_source": {"path": "/s.yaml"}}}, SdsSecretConfig))]
    assert list(source_conflicts(refs, {})) == [
        ("b.sds_config", "secret 's' is fetched from another config source elsewhere; pylon keeps one secret per "
                         "name (use another name)")]
    assert list(source_conflicts(refs[:1], {"s": None}))[0][1].startswith("secret 's' is a static secret elsewhere")


def load_error(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "b.yaml")
    return f"{info.value.path}: {info.value.message}"


def tls_bootstrap(common_context: dict[str, Any], **extra: Any) -> dict[str, Any]:
    listener = http_listener("main", 8080, [route("/", "backend")])
    listener["filter_chains"][0]["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": common_context}}
    return {"static_resources": {"listeners": [listener], "clusters": [static_cluster("backend", [9000])], **extra}}


TLS_PATH = "static_resources.listeners[0].filter_chains[0].transport_socket.typed_config.common_tls_context"


def test_bootstrap_errors() -> None:
    sds_grpc = {"name": "default", "sds_config": {"api_config_source": {
        "api_type": "GRPC", "transport_api_version": "V3", "grpc_services": [{"envoy_grpc": {"cluster_name": "sds"}}]}}}
    assert load_error(tls_bootstrap({"tls_certificate_sds_secret_configs": [sds_grpc]})) == (
        f"{TLS_PATH}.tls_certificate_sds_secret_configs[0].sds_config.api_config_source.grpc_services[0].envoy_grpc."
        "cluster_name: unknown cluster 'sds' (a gRPC config source's cluster must be a static cluster)")
    ads_ref = {"name": "default", "sds_config": ADS_SOURCE}
    assert load_error(tls_bootstrap({"tls_certificate_sds_secret_configs": [ads_ref]})) == (
        f"{TLS_PATH}.tls_certificate_sds_secret_configs[0].sds_config.ads: needs dynamic_resources.ads_config")
    static = {"secrets": [{"name": "default", "tls_certificate": CERT}, {"name": "default", "tls_certificate": CERT}]}
    assert load_error(tls_bootstrap({"tls_certificate_sds_secret_configs": [{"name": "default"}]}, **static)) == (
        "static_resources.secrets[1].name: duplicate secret name 'default' (also static_resources.secrets[0])")


def test_pipe_addresses_only_for_grpc_clusters() -> None:
    pipe = {"pipe": {"path": "/run/sds.sock"}}
    data = tls_bootstrap({"tls_certificates": [CERT]})
    data["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"][
        "address"] = pipe
    assert load_error(data) == (
        "static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.pipe: pipe "
        "endpoints are supported only for gRPC clusters (xDS, SDS), which speak HTTP/2: set http2_protocol_options")


def test_the_secrets_crl_wins_and_only_verify_leaf_cert_crl_merges() -> None:
    """Envoy's MergeFrom of a combined validation context: a CRL in the secret replaces the default's, a true
    only_verify_leaf_cert_crl on either side stays true."""
    crl = {"inline_string": "-----BEGIN X509 CRL-----\nA\n-----END X509 CRL-----\n"}
    context = common(combined_validation_context={
        "default_validation_context": {"crl": {"filename": "/etc/default.crl"}, "only_verify_leaf_cert_crl": True},
        "validation_context_sds_secret_config": {"name": "ROOTCA"}})
    merged = resolve(context, secrets({"name": "ROOTCA", "validation_context": {"trusted_ca": CA, "crl": crl}}))
    assert merged.validation_context.crl.inline_string == crl["inline_string"]
    assert merged.validation_context.only_verify_leaf_cert_crl is True
    kept = resolve(context, secrets({"name": "ROOTCA", "validation_context": {"trusted_ca": CA}}))
    assert kept.validation_context.crl.filename == "/etc/default.crl"
    with pytest.raises(FieldError, match=r"^combined_validation_context\.crl: a CRL without a trusted CA"):
        resolve(context, secrets({"name": "ROOTCA", "validation_context": {}}))
