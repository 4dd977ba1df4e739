"""TLS contexts that name their certificates and trust by SDS secret, and the secrets that fill them (sans-IO).

A `CommonTlsContext` may hold its certificates and validation context inline,
or name them: `tls_certificate_sds_secret_configs`,
`validation_context_sds_secret_config`, or a `combined_validation_context`
(a static default merged with a secret, Istio's SPIFFE SAN matchers over the
mesh root `ROOTCA`). Before a context can be built, `resolve` replaces the
names by the secrets' content, so `proxy/tls.py` only ever sees inline
contexts. A secret without `sds_config` is a static one of the bootstrap
(`static_resources.secrets`); the others come over SDS.

pylon keeps one table of secrets by name. Envoy keys SDS subscriptions by name
and config source; pylon refuses one name fetched from two sources instead
(`source_conflicts`), so one name always means one secret.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import msgspec

from pylon.config.envoy import (
    CertificateValidationContext, CommonTlsContext, ConfigSource, SdsSecretConfig, Secret,
)
from pylon.config.errors import FieldError, join_path

#: Below a transport socket, where its CommonTlsContext is.
COMMON = "typed_config.common_tls_context"


class SecretMissing(Exception):
    """A secret a context names has not arrived (yet): the context cannot be built, its user warms or refuses."""

    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} has not been received")
        self.name = name


def tls_context(transport_socket: Any) -> Any:
    """The TLS context (Downstream/UpstreamTlsContext) of a transport socket; None for plain TCP (none, or
    raw_buffer). A socket whose config names a `transport_socket` wraps that one (the tap) and has its TLS."""
    while transport_socket is not None and hasattr(transport_socket.typed_config, "transport_socket"):
        transport_socket = transport_socket.typed_config.transport_socket
    if transport_socket is None or not hasattr(transport_socket.typed_config, "common_tls_context"):
        return None
    return transport_socket.typed_config


def tls_socket_path(transport_socket: Any, path: str = "transport_socket") -> str:
    """Where, below `path` (the socket's own field), the socket holding the TLS context is: `path` itself, or
    below the sockets wrapping it (a tap's `typed_config.transport_socket`), so errors name the right field."""
    while transport_socket is not None and hasattr(transport_socket.typed_config, "transport_socket"):
        transport_socket = transport_socket.typed_config.transport_socket
        path += ".typed_config.transport_socket"
    return path


def common_tls_context(transport_socket: Any) -> CommonTlsContext | None:
    """The CommonTlsContext of a listener chain's or a cluster's transport socket (None: plain TCP)."""
    context = tls_context(transport_socket)
    return context.common_tls_context if context is not None else None


def listener_secret_refs(listener: Any) -> Iterator[tuple[str, SdsSecretConfig]]:
    """(field path below the listener, reference) of every SDS secret the listener's chains name: their TLS
    contexts', and those of the HTTP filters whose config names secrets (`secret_configs()`, credential_injector)."""
    for rel, chain in listener.all_filter_chains():
        common = common_tls_context(chain.transport_socket)
        if common is not None:
            for sub, ref in common.secret_configs():
                yield f"{rel}.{tls_socket_path(chain.transport_socket)}.{COMMON}.{sub}", ref
        for k, network_filter in enumerate(chain.filters):
            for m, http_filter in enumerate(getattr(network_filter.typed_config, "http_filters", ())):
                named = getattr(http_filter.typed_config, "secret_configs", None)
                for sub, ref in named() if named is not None else ():
                    yield f"{rel}.filters[{k}].typed_config.http_filters[{m}].typed_config.{sub}", ref


def cluster_secret_refs(cluster: Any) -> Iterator[tuple[str, SdsSecretConfig]]:
    """(field path below the cluster, reference) of every SDS secret the cluster's transport sockets name (its
    own, and those of its transport_socket_matches)."""
    sockets = [("transport_socket", cluster.transport_socket)]
    sockets += [(f"transport_socket_matches[{i}].transport_socket", match.transport_socket)
                for i, match in enumerate(cluster.transport_socket_matches)]
    for path, transport_socket in sockets:
        common = common_tls_context(transport_socket)
        if common is not None:
            for sub, ref in common.secret_configs():
                yield f"{tls_socket_path(transport_socket, path)}.{COMMON}.{sub}", ref


def secret_names(common: CommonTlsContext | None) -> frozenset[str]:
    """The names of the secrets a context needs."""
    return frozenset(ref.name for _, ref in common.secret_configs()) if common is not None else frozenset()


def sds_references(refs: Iterable[tuple[str, SdsSecretConfig]]) -> dict[str, tuple[str, ConfigSource]]:
    """The secrets fetched over SDS among `refs`: name -> (first field path naming it, its config source)."""
    found: dict[str, tuple[str, ConfigSource]] = {}
    for path, ref in refs:
        if ref.sds_config is not None:
            found.setdefault(ref.name, (path, ref.sds_config))
    return found


def source_conflicts(refs: Iterable[tuple[str, SdsSecretConfig]],
                     known: Mapping[str, ConfigSource | None]) -> Iterator[tuple[str, str]]:
    """(field path, problem) for a name fetched from another source than `known` (None: the static secret of that
    name) or than an earlier reference of `refs`."""
    seen: dict[str, ConfigSource | None] = dict(known)
    for path, ref in refs:
        if ref.name not in seen:
            seen[ref.name] = ref.sds_config
        elif seen[ref.name] != ref.sds_config:
            where = "a static secret" if seen[ref.name] is None else "fetched from another config source"
            yield (join_path(path, "sds_config"),
                   f"secret {ref.name!r} is {where} elsewhere; pylon keeps one secret per name (use another name)")


def static_secret_problems(refs: Iterable[tuple[str, SdsSecretConfig]], static: Mapping[str, Secret]
                           ) -> Iterator[tuple[str, str]]:
    """References without `sds_config` must name a static secret (Envoy: "Unknown static secret")."""
    for path, ref in refs:
        if ref.sds_config is None and ref.name not in static:
            yield (join_path(path, "name"), f"unknown static secret {ref.name!r} (no static_resources.secrets of "
                                            "that name; give sds_config to fetch it over SDS)")


def resolve(common: CommonTlsContext, secrets: Mapping[str, Secret], *, skip_missing: bool = False) -> CommonTlsContext:
    """`common` with every named secret put in place: certificates into `tls_certificates`, the validation
    context (merged over the default one for a combined context) into `validation_context`.

    A secret not in `secrets` raises SecretMissing, or with `skip_missing` (checking the rest of a context
    before its secrets came) is left out. A secret of the wrong kind raises FieldError naming the reference.
    """
    if not common.secret_configs():
        return common
    certificates = list(common.tls_certificates)
    for i, ref in enumerate(common.tls_certificate_sds_secret_configs):
        secret = _lookup(secrets, ref, skip_missing)
        if secret is not None:
            if secret.tls_certificate is None:
                raise FieldError(f"tls_certificate_sds_secret_configs[{i}].name",
                                 f"secret {ref.name!r} holds no tls_certificate")
            certificates.append(secret.tls_certificate)
    validation = common.validation_context
    where = ""
    if common.validation_context_sds_secret_config is not None:
        where = "validation_context_sds_secret_config"
        validation = _validation_secret(secrets, common.validation_context_sds_secret_config, where, skip_missing)
    elif common.combined_validation_context is not None:
        combined = common.combined_validation_context
        where = "combined_validation_context"
        dynamic = _validation_secret(secrets, combined.validation_context_sds_secret_config,
                                     f"{where}.validation_context_sds_secret_config", skip_missing)
        # Missing while checking the rest: the default's matchers alone (no CA yet) are still checked by tls.py.
        validation = merge_validation(combined.default_validation_context, dynamic)
        if dynamic is None:
            where = ""
    if where and validation is not None:
        try:
            validation.check_secure()  # SAN matchers with no CA in the merged context: refused, as Envoy does
        except FieldError as exc:
            raise FieldError(join_path(where, exc.rel_path), exc.message) from None
    resolved = msgspec.structs.replace(common)
    for name, value in (("tls_certificates", certificates), ("tls_certificate_sds_secret_configs", []),
                        ("validation_context", validation), ("validation_context_sds_secret_config", None),
                        ("combined_validation_context", None)):
        # Set without CommonTlsContext's own checks, which hold for a config as written: a context whose CA
        # secret has not come (skip_missing) has SAN matchers and no CA yet; it is only checked, never served.
        msgspec.structs.force_setattr(resolved, name, value)
    return resolved


def merge_validation(default: CertificateValidationContext,
                     dynamic: CertificateValidationContext | None) -> CertificateValidationContext:
    """Envoy's merge of a combined validation context: the SDS context over the default, as protobuf's MergeFrom
    (a field the secret sets wins, lists are joined)."""
    if dynamic is None:
        return default
    return CertificateValidationContext(
        trusted_ca=dynamic.trusted_ca if dynamic.trusted_ca is not None else default.trusted_ca,
        match_typed_subject_alt_names=[*default.match_typed_subject_alt_names, *dynamic.match_typed_subject_alt_names],
        match_subject_alt_names=[*default.match_subject_alt_names, *dynamic.match_subject_alt_names],
        crl=dynamic.crl if dynamic.crl is not None else default.crl,
        only_verify_leaf_cert_crl=default.only_verify_leaf_cert_crl or dynamic.only_verify_leaf_cert_crl)


def _lookup(secrets: Mapping[str, Secret], ref: SdsSecretConfig, skip_missing: bool) -> Secret | None:
    secret = secrets.get(ref.name)
    if secret is None and not skip_missing:
        raise SecretMissing(ref.name)
    return secret


def _validation_secret(secrets: Mapping[str, Secret], ref: SdsSecretConfig, path: str,
                       skip_missing: bool) -> CertificateValidationContext | None:
    secret = _lookup(secrets, ref, skip_missing)
    if secret is None:
        return None
    if secret.validation_context is None:
        raise FieldError(f"{path}.name", f"secret {ref.name!r} holds no validation_context")
    return secret.validation_context
