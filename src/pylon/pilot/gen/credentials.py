"""Gateway TLS: the DownstreamTlsContext of an HTTPS server, and the `kubernetes://` secrets pilot serves over ADS.

As istiod does (pilot/pkg/networking/core/listener.go BuildListenerTLSContext, pilot/pkg/xds/sds.go):

- SIMPLE / MUTUAL / OPTIONAL_MUTUAL take the certificate from SDS over ADS as
  `kubernetes://<credentialName>`; client validation (MUTUAL, OPTIONAL_MUTUAL) trusts
  `kubernetes://<credentialName>-cacert`, whose CA comes from a Secret named `<name>-cacert`, else
  from the `ca.crt` of the credential's own Secret. ISTIO_MUTUAL uses the gateway's mesh
  certificate (`default`/`ROOTCA` from the agent's `sds-grpc`). ALPN `h2,http/1.1`.
- Secrets are looked up in the gateway's own namespace and served only to a proxy whose identity
  was verified on the TLS port (a client certificate or token of that namespace): the plaintext
  port never hands out a private key, as istiod's SecretGen refuses unauthenticated proxies.
- With a `privateKeyProvider` (node metadata PROXY_CONFIG, else MeshConfig defaultConfig), the
  secret carries the CryptoMB or QAT provider with the key inline instead of `private_key`.
"""

from __future__ import annotations

import base64
import logging

from pylon.pilot.gen.mtls import TLS_SOCKET, sds_secret
from pylon.pilot.gen.types import DOWNSTREAM_TLS, Json
from pylon.pilot.istio.common import format_duration
from pylon.pilot.istio.networking import ServerTLSSettings
from pylon.pilot.istio.proxyconfig import PrivateKeyProvider, key_provider_from_metadata
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot
from pylon.pilot.source.secrets import GatewaySecret

log = logging.getLogger("pylon.pilot.gen")

CREDENTIAL_PREFIX = "kubernetes://"
CA_SUFFIX = "-cacert"
HTTPS_ALPN = ["h2", "http/1.1"]
# No initial_fetch_timeout of 0: a credential that does not exist yet must not hold the listener for ever (Istio).
SDS_OVER_ADS: Json = {"ads": {}, "resource_api_version": "V3"}
KEY_PROVIDER_TYPES = {
    "cryptomb": "type.googleapis.com/envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig",
    "qat": "type.googleapis.com/envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig",
}
_TLS_VERSIONS = {"TLSV1_0": "TLSv1_0", "TLSV1_1": "TLSv1_1", "TLSV1_2": "TLSv1_2", "TLSV1_3": "TLSv1_3"}


def resource_name(credential_name: str) -> str:
    """The SDS name of a credential: `kubernetes://<name>` (a name already in that form is kept)."""
    return credential_name if credential_name.startswith(CREDENTIAL_PREFIX) else CREDENTIAL_PREFIX + credential_name


def server_transport_socket(tls: ServerTLSSettings, alpn: list[str] | None = None) -> Json:
    """The transport socket terminating TLS for one HTTPS (or TLS) gateway server; ALPN `h2,http/1.1` unless
    `alpn` says otherwise."""
    common: Json = {"alpn_protocols": list(alpn or HTTPS_ALPN)}
    sans = [{"exact": san} for san in tls.subject_alt_names]
    if tls.mode == "ISTIO_MUTUAL":
        common["tls_certificate_sds_secret_configs"] = [sds_secret("default")]
        common["combined_validation_context"] = {"default_validation_context": _sans(sans),
                                                 "validation_context_sds_secret_config": sds_secret("ROOTCA")}
    else:
        name = resource_name(tls.credential_name)
        common["tls_certificate_sds_secret_configs"] = [{"name": name, "sds_config": SDS_OVER_ADS}]
        if tls.mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
            common["combined_validation_context"] = {
                "default_validation_context": _sans(sans),
                "validation_context_sds_secret_config": {"name": name + CA_SUFFIX, "sds_config": SDS_OVER_ADS},
            }
        params = server_tls_params(tls.min_protocol_version, tls.max_protocol_version, tls.cipher_suites)
        if params:
            common["tls_params"] = params
    context = {"@type": DOWNSTREAM_TLS, "common_tls_context": common,
               "require_client_certificate": tls.mode in ("MUTUAL", "ISTIO_MUTUAL")}  # fmt: skip
    return {"name": TLS_SOCKET, "typed_config": context}


def server_tls_params(min_version: str, max_version: str, cipher_suites: list[str],
                      ecdh_curves: list[str] | None = None) -> Json:  # fmt: skip
    """The TlsParameters a server's settings ask for (istiod's applyServerTLSSettings; TLS_AUTO leaves a bound to
    Envoy's default); empty when they ask for none."""
    params: Json = {}
    if min_version in _TLS_VERSIONS:
        params["tls_minimum_protocol_version"] = _TLS_VERSIONS[min_version]
    if max_version in _TLS_VERSIONS:
        params["tls_maximum_protocol_version"] = _TLS_VERSIONS[max_version]
    if cipher_suites:
        params["cipher_suites"] = list(cipher_suites)
    if ecdh_curves:
        params["ecdh_curves"] = list(ecdh_curves)
    return params


def ads_secret_names(listeners: list[Json], clusters: list[Json]) -> set[str]:
    """The `kubernetes://` SDS names the listeners' TLS chains and the clusters' TLS origination ask of pilot
    over ADS (every SdsSecretConfig of their transport sockets whose source is ADS)."""
    sockets = [chain.get("transport_socket") for listener in listeners for chain in listener.get("filter_chains", [])]
    sockets += [cluster.get("transport_socket") for cluster in clusters]
    names: set[str] = set()
    for socket in sockets:
        if socket is None:
            continue
        common = socket["typed_config"].get("common_tls_context", {})
        configs = list(common.get("tls_certificate_sds_secret_configs", []))
        configs.append(common.get("combined_validation_context", {}).get("validation_context_sds_secret_config"))
        names.update(c["name"] for c in configs if c is not None and c.get("sds_config") == SDS_OVER_ADS)
    return names


def _sans(sans: list[Json]) -> Json:
    return {"match_subject_alt_names": sans} if sans else {}


def gateway_secrets(proxy: Proxy, snapshot: Snapshot, names: set[str]) -> dict[str, Json]:
    """The Secret resources of `names` (`kubernetes://…` references in the proxy's listeners) this proxy may have.

    None at all for a proxy whose identity was not verified (it came over the plaintext port);
    a name whose Secret does not exist is left out (the proxy's listener waits for it, as with Istio).
    """
    if not names:
        return {}
    if proxy.identity is None:
        log.warning("a gateway of namespace %s asked for %d secret(s) over the plaintext port; secrets are served "
                    "only on the TLS port to a verified identity", proxy.namespace, len(names))  # fmt: skip
        return {}
    provider = key_provider(proxy, snapshot)
    out: dict[str, Json] = {}
    for name in sorted(names):
        bare = name[len(CREDENTIAL_PREFIX):]
        if bare.endswith(CA_SUFFIX):
            ca = _ca_of(snapshot, proxy.namespace, bare[: -len(CA_SUFFIX)])
            if ca is not None:
                out[name] = {"name": name, "validation_context": {"trusted_ca": _inline(ca.ca)}}
                if ca.crl is not None:
                    out[name]["validation_context"]["crl"] = _inline(ca.crl)
            else:
                log.warning("no CA for %s (no Secret %s/%s%s, and no ca.crt in %s/%s)", name, proxy.namespace,
                            bare[: -len(CA_SUFFIX)], CA_SUFFIX, proxy.namespace, bare[: -len(CA_SUFFIX)])  # fmt: skip
            continue
        secret = snapshot.secrets.get((proxy.namespace, bare))
        if secret is None or secret.cert is None or secret.key is None:
            log.warning("no certificate and key for %s in namespace %s", name, proxy.namespace)
            continue
        out[name] = {"name": name, "tls_certificate": _certificate(secret, provider)}
    return out


def key_provider(proxy: Proxy, snapshot: Snapshot) -> PrivateKeyProvider | None:
    """The proxy's privateKeyProvider: its agent's PROXY_CONFIG (annotation included), else the mesh default."""
    from_node = key_provider_from_metadata(proxy.metadata)
    return from_node if from_node is not None else snapshot.mesh.default_config.private_key_provider


def _ca_of(snapshot: Snapshot, namespace: str, name: str) -> GatewaySecret | None:
    for candidate in (snapshot.secrets.get((namespace, name + CA_SUFFIX)), snapshot.secrets.get((namespace, name))):
        if candidate is not None and candidate.ca is not None:
            return candidate
    return None


def _certificate(secret: GatewaySecret, provider: PrivateKeyProvider | None) -> Json:
    assert secret.cert is not None and secret.key is not None
    certificate: Json = {"certificate_chain": _inline(secret.cert)}
    if provider is None:
        certificate["private_key"] = _inline(secret.key)
        return certificate
    certificate["private_key_provider"] = {
        "provider_name": provider.name,
        "typed_config": {"@type": KEY_PROVIDER_TYPES[provider.name], "private_key": _inline(secret.key),
                         "poll_delay": format_duration(provider.settings.poll_delay)},
        "fallback": provider.settings.fallback,
    }  # fmt: skip
    return certificate


def _inline(data: bytes) -> Json:
    return {"inline_bytes": base64.b64encode(data).decode()}
