"""What /config_dump never shows: the values of Envoy's sensitive fields (sans-IO).

Envoy marks fields that hold secrets `(udpa.annotations.sensitive)` and its admin replaces their values with
`[redacted]` everywhere in /config_dump: the bootstrap, listeners, clusters and secrets alike (checked against
Envoy 1.40: a static listener's inline private key and password show as `[redacted]`). A data source keeps its
shape, so a file name still shows where the secret lives; inline bytes become base64 of `[redacted]`, as
Envoy prints them. pylon redacts the fields of that kind it accepts: a certificate's private key and its
password, the private key inside a key provider's config (cryptomb, qat), session ticket keys, a generic
secret's value, SkyWalking's backend_token, AWS inline credentials' secret_access_key and session_token, the
api_key_auth filter's credentials (key and client both, as Envoy 1.40 shows them), and the user and SO PINs of the SGX provider config (a token's PIN
is a credential whether or not a proto marks it). Names are matched in both of the proto JSON spellings (`private_key`, `privateKey`).
"""

from __future__ import annotations

from typing import Any

REDACTED = "[redacted]"
REDACTED_BYTES = "W3JlZGFjdGVkXQ=="  # base64 of "[redacted]": inline_bytes are base64 in proto JSON

#: Fields whose value is a secret wherever they appear (names without underscores, lower case).
_SENSITIVE = frozenset({"privatekey", "password", "usrpin", "sopin", "backendtoken", "secretaccesskey",
                        "sessiontoken"})
#: Fields that are secrets only inside a given parent: TlsSessionTicketKeys.keys, GenericSecret.secret,
#: ApiKeyAuth's Credential.key and .client (observed: Envoy 1.40 hides both).
_SENSITIVE_IN = {"sessionticketkeys": frozenset({"keys"}), "genericsecret": frozenset({"secret"}),
                 "credentials": frozenset({"key", "client"})}


def _plain(name: str) -> str:
    return name.replace("_", "").lower()


def redact(value: Any, parent: str = "") -> Any:
    """`value` (builtins: dicts, lists, scalars) with every sensitive field's value redacted; a new object."""
    if isinstance(value, dict):
        secret_children = _SENSITIVE_IN.get(parent, frozenset())
        out = {}
        for name, item in value.items():
            plain = _plain(name) if isinstance(name, str) else ""
            out[name] = _hidden(item) if plain in _SENSITIVE or plain in secret_children else redact(item, plain)
        return out
    if isinstance(value, list):
        return [redact(item, parent) for item in value]
    return value


def _hidden(value: Any) -> Any:
    """A secret's value, redacted: a string, a data source (its file name stays), or a list of either."""
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, list):
        return [_hidden(item) for item in value]
    if isinstance(value, dict):
        return {name: (REDACTED_BYTES if _plain(name) == "inlinebytes" else
                       REDACTED if _plain(name) == "inlinestring" else item) for name, item in value.items()}
    return value
