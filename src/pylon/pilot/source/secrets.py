"""Gateway credentials (`credentialName`) from a directory of Kubernetes Secret manifests, as istiod reads them.

Why manifests: they are what users already have (`kubectl create secret tls NAME --cert … --key …
--dry-run=client -o yaml`), with the namespace the secret belongs to. A Secret holds a server
certificate and key under Istio's key names, `tls.crt`/`tls.key` (with `ca.crt` for client
validation, `ca.crl`) or `cert`/`key` (with `cacert`, `crl`), in `data` (base64) or `stringData`.
A Secret with only a CA serves `<name>-cacert` alone. Every certificate is parsed when loaded, so a
broken secret is an error naming its file, document and key instead of a proxy's TLS failure.

Secrets are kept apart from the config directory: they never appear in `/debug/config_dump`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from pylon.config.errors import ConfigError
from pylon.pilot.istio.resources import describe_source
from pylon.pilot.source.directory import config_files, decode_documents

#: Istio's key names (pilot/pkg/credentials/kube/secrets.go): the TLS secret type's, then the generic ones.
KEY_NAMES = (
    {"cert": "tls.crt", "key": "tls.key", "ca": "ca.crt", "crl": "ca.crl"},
    {"cert": "cert", "key": "key", "ca": "cacert", "crl": "crl"},
)


@dataclass(frozen=True)
class GatewaySecret:
    """One Secret's credentials (PEM bytes); `cert` and `key` come together or not at all."""

    namespace: str
    name: str
    cert: bytes | None = None
    key: bytes | None = None
    ca: bytes | None = None
    crl: bytes | None = None


SecretKey = tuple[str, str]  # (namespace, name)


@dataclass
class SecretsResult:
    secrets: dict[SecretKey, GatewaySecret]
    errors: list[ConfigError]


def load_secrets(root: Path) -> SecretsResult:
    """Every Secret below `root` by (namespace, name); all errors at once, each naming file, document and key."""
    result = SecretsResult(secrets={}, errors=[])
    if not root.is_dir():
        result.errors.append(ConfigError(str(root), "", "not a directory"))
        return result
    for secret, path, index, data in decode_documents(config_files(root), decode_secret, result.errors):
        key = (secret.namespace, secret.name)
        if key in result.secrets:
            result.errors.append(ConfigError(describe_source(str(path), index, data), "metadata.name",
                                             f"secret {secret.namespace}/{secret.name} is defined twice"))  # fmt: skip
            continue
        result.secrets[key] = secret
    return result


def decode_secret(data: Any, file: str, index: int) -> GatewaySecret:
    """One Secret manifest to its credentials; ConfigError naming the field."""
    source = describe_source(file, index, data)
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a Secret mapping, got {type(data).__name__}")
    if data.get("apiVersion") != "v1" or data.get("kind") != "Secret":
        raise ConfigError(source, "kind", "expected apiVersion v1, kind Secret (a Kubernetes Secret manifest)")
    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
        raise ConfigError(source, "metadata.name", "required")
    namespace = metadata.get("namespace", "default")
    if not isinstance(namespace, str) or not namespace:
        raise ConfigError(source, "metadata.namespace", "must be a non-empty string")
    values = _values(data, source)
    for names in KEY_NAMES:
        if any(names[field] in values for field in ("cert", "key", "ca")):
            break
    else:
        raise ConfigError(source, "data", "no credentials: expected tls.crt/tls.key (and ca.crt), or cert/key "
                          "(and cacert)")  # fmt: skip
    fields = {field: values.get(names[field]) for field in ("cert", "key", "ca", "crl")}
    if (fields["cert"] is None) != (fields["key"] is None):
        missing = names["key"] if fields["key"] is None else names["cert"]
        raise ConfigError(source, f"data.{missing}", "required with the other half of the key pair")
    _check_pem(fields, names, source)
    return GatewaySecret(namespace=namespace, name=metadata["name"], **fields)


def _values(data: dict[str, Any], source: str) -> dict[str, bytes]:
    """`data` (base64) merged with `stringData` (plain), as the API server merges them."""
    values: dict[str, bytes] = {}
    encoded = data.get("data") or {}
    if not isinstance(encoded, dict):
        raise ConfigError(source, "data", "must be a mapping of key to base64 value")
    for key, value in encoded.items():
        try:
            values[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(source, f"data.{key}", "not valid base64") from None
    plain = data.get("stringData") or {}
    if not isinstance(plain, dict):
        raise ConfigError(source, "stringData", "must be a mapping of key to string")
    values.update({str(key): str(value).encode() for key, value in plain.items()})
    return values


def _check_pem(fields: dict[str, bytes | None], names: dict[str, str], source: str) -> None:
    for field in ("cert", "ca"):
        value = fields[field]
        if value is not None:
            try:
                x509.load_pem_x509_certificates(value)
            except ValueError as exc:
                raise ConfigError(source, f"data.{names[field]}", f"not a PEM certificate: {exc}") from None
    if fields["key"] is not None:
        try:
            load_pem_private_key(fields["key"], password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(source, f"data.{names['key']}", f"not an unencrypted PEM private key: {exc}") from None
