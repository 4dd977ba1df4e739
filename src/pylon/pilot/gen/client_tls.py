"""TLS origination by DestinationRule: `tls.mode` SIMPLE and MUTUAL on an outbound cluster.

As istiod builds it (pilot/pkg/networking/core/cluster_tls.go constructUpstreamTLS,
pilot/pkg/security/model/authentication.go ApplyCustomSDSToClientCommonTLSContext):

- An UpstreamTlsContext with TLS 1.2 to 1.3, `sni` as the rule writes it, ALPN `h2`
  only when the cluster speaks HTTP/2 upstream.
- With `credentialName`, the certificates come over ADS from pilot: MUTUAL's key and
  chain as `kubernetes://NAME`, the CA that verifies the server as
  `kubernetes://NAME-cacert` (a Secret `NAME-cacert`, else the `ca.crt` of `NAME`).
  Istio gives those only to gateways (and to sidecars selected by a DestinationRule
  `workloadSelector`, which pylon does not have): a sidecar's cluster gets no TLS at all,
  so that sidecars do not wait for secrets they may not read. pylon does the same and
  says so in the log.
- Without it, the files on the proxy's host, which Istio's agent serves over SDS
  (`sds-grpc`): `file-cert:<cert>~<key>` for MUTUAL, `file-root:<ca>` for the CA,
  `file-root:system` (the OS trust store) when `caCertificates` is not set. `caCrl` is
  a file the proxy reads.
- Server verification: the rule's `subjectAltNames`, else the ServiceEntry's
  (`subjectAltNames`, with SPIFFE ids expanded to the mesh's trust domain aliases),
  as exact matchers; `insecureSkipVerify` verifies nothing.
- Without `sni`, Envoy sets SNI from each request's host (`auto_sni`) and, when no SAN
  is written in the rule and verification is on, checks the certificate against that
  host (`auto_san_validation`): upstream HTTP protocol options of the cluster, for TCP
  ports too (Envoy ignores them there), as istiod writes them.
"""

from __future__ import annotations

import logging

from pylon.pilot.gen.credentials import CA_SUFFIX, SDS_OVER_ADS, resource_name
from pylon.pilot.gen.mtls import TLS_SOCKET, sds_secret
from pylon.pilot.gen.types import UPSTREAM_TLS, Json
from pylon.pilot.istio.mesh import MeshConfig
from pylon.pilot.istio.networking import ClientTLSSettings
from pylon.pilot.snapshot import Service

log = logging.getLogger("pylon.pilot.gen")

SYSTEM_ROOTS = "system"
SPIFFE_PREFIX = "spiffe://"


def user_tls_socket(tls: ClientTLSSettings, service: Service, mesh: MeshConfig, http2: bool,
                    for_sidecar: bool) -> Json | None:  # fmt: skip
    """The transport socket of a SIMPLE or MUTUAL cluster; None when Istio would leave the cluster plaintext (a
    credentialName on a sidecar)."""
    assert tls.mode in ("SIMPLE", "MUTUAL")
    if tls.credential_name and for_sidecar:
        log.warning("DestinationRule tls.credentialName %r for %s is not used by sidecars (as in Istio, only gateways "
                    "read credentialName secrets): the sidecar's cluster has no TLS", tls.credential_name,
                    service.hostname)  # fmt: skip
        return None
    common: Json = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"}}
    skip_verify = bool(tls.insecure_skip_verify)
    sans = list(tls.subject_alt_names) or _service_sans(service, mesh)
    if tls.credential_name:
        name = resource_name(tls.credential_name)
        if tls.mode == "MUTUAL":
            common["tls_certificate_sds_secret_configs"] = [{"name": name, "sds_config": SDS_OVER_ADS}]
        if not skip_verify:
            common["combined_validation_context"] = {
                "default_validation_context": _san_matchers(sans),
                "validation_context_sds_secret_config": {"name": name + CA_SUFFIX, "sds_config": SDS_OVER_ADS},
            }
    else:
        if tls.mode == "MUTUAL":
            common["tls_certificate_sds_secret_configs"] = [sds_secret(file_cert(tls.client_certificate, tls.private_key))]
        if skip_verify:
            common["validation_context"] = {}
        else:
            default = _san_matchers(sans)
            if tls.ca_crl:
                default["crl"] = {"filename": tls.ca_crl}
            common["combined_validation_context"] = {
                "default_validation_context": default,
                "validation_context_sds_secret_config": sds_secret(file_root(tls.ca_certificates or SYSTEM_ROOTS)),
            }
    if http2:
        common["alpn_protocols"] = ["h2"]
    context: Json = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": TLS_SOCKET, "typed_config": context}


def auto_sni_options(tls: ClientTLSSettings) -> Json:
    """The `upstream_http_protocol_options` Istio adds for a SIMPLE or MUTUAL rule (empty when it adds none)."""
    if tls.sni:
        return {}
    options: Json = {"auto_sni": True}
    if not tls.subject_alt_names and not tls.insecure_skip_verify:
        options["auto_san_validation"] = True
    return options


def file_cert(certificate: str, key: str) -> str:
    """The agent's SDS name of a key pair in files: `file-cert:<cert>~<key>`."""
    return f"file-cert:{certificate}~{key}"


def file_root(ca: str) -> str:
    """The agent's SDS name of trusted CAs in a file (`system`: the OS trust store): `file-root:<ca>`."""
    return f"file-root:{ca}"


def _san_matchers(sans: list[str]) -> Json:
    return {"match_subject_alt_names": [{"exact": san} for san in sans]} if sans else {}


def _service_sans(service: Service, mesh: MeshConfig) -> list[str]:
    """The ServiceEntry's subjectAltNames, SPIFFE ids also under each trust domain alias, sorted (istiod's
    service accounts of a ServiceEntry; pylon leaves out its endpoints' serviceAccounts)."""
    out = set(service.entry.spec.subject_alt_names)
    for san in service.entry.spec.subject_alt_names:
        if san.startswith(SPIFFE_PREFIX):
            _, _, path = san[len(SPIFFE_PREFIX):].partition("/")
            out.update(f"{SPIFFE_PREFIX}{domain}/{path}" for domain in mesh.trust_domain_aliases)
    return sorted(out)
