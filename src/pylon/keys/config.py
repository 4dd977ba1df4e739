"""Typed configs of pylon's private key providers, registered under `envoy.tls.key_providers`.

Importing this module makes the five `@type`s known to the config loader:

* Envoy's CryptoMB config, unchanged (`private_key`, `poll_delay`);
* Envoy's QAT config, unchanged (`private_key`, `poll_delay`): accepted because Istio sends it,
  but pylon drives no QAT device, so it runs only as `fallback: true` (the key in software);
* pylon's `offload` (`private_key`, `threads`);
* pylon's `keyd` (`socket_path`, `key_id`, `timeout`): no key material at all;
* Envoy's SGX config *shape* (`sgx_library`, `key_label`, `usr_pin`, `so_pin`, `token_label`, `key_type`),
  which pylon runs over any PKCS#11 library (keys/sgx.py): no key material either.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

from pylon.config import registry
from pylon.config.datasource import DataSource
from pylon.config.envoy import Duration, EnvoyStruct, NonEmptyStr
from pylon.config.errors import FieldError

CRYPTOMB_TYPE_URL = (
    "type.googleapis.com/envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig"
)
QAT_TYPE_URL = "type.googleapis.com/envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig"
OFFLOAD_TYPE_URL = "type.googleapis.com/pylon.key_providers.offload.v1.Offload"
KEYD_TYPE_URL = "type.googleapis.com/pylon.key_providers.keyd.v1.Keyd"
SGX_TYPE_URL = "type.googleapis.com/envoy.extensions.private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig"


class CryptoMbPrivateKeyMethodConfig(EnvoyStruct, kw_only=True):
    """Envoy's contrib CryptoMB config. `poll_delay` (required, > 0) caps how long a partial batch waits."""

    private_key: DataSource
    poll_delay: Duration

    def __post_init__(self) -> None:
        if self.poll_delay <= 0:
            raise FieldError("poll_delay", "must be greater than 0")


class QatPrivateKeyMethodConfig(EnvoyStruct, kw_only=True):
    """Envoy's contrib QAT config. `poll_delay` (required, at least 1 ms) is how often the device is polled."""

    private_key: DataSource
    poll_delay: Duration

    def __post_init__(self) -> None:
        if self.poll_delay < 0.001:
            raise FieldError("poll_delay", "must be at least 1ms")


class Offload(EnvoyStruct, kw_only=True):
    """pylon's offload provider: private key operations on `threads` threads beside the event loop."""

    private_key: DataSource
    threads: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2


class Keyd(EnvoyStruct, kw_only=True):
    """pylon's keyd provider: operations go to `pylon keyd` on `socket_path`, which alone holds `key_id`.

    `timeout` bounds each operation: past it the handshake fails (with a log line).
    """

    socket_path: NonEmptyStr
    key_id: NonEmptyStr
    timeout: Duration = Duration(1.0)

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise FieldError("timeout", "must be greater than 0")


#: What Envoy's SGX provider accepts in its PINs, labels and key type (contrib/sgx utility.cc isValidString).
_SGX_TEXT = re.compile(r"[A-Za-z0-9_\-/=]*")
_MAX_TOKEN_LABEL = 32  # CK_TOKEN_INFO.label is 32 bytes


class SgxPrivateKeyMethodConfig(EnvoyStruct, kw_only=True):
    """Envoy's contrib SGX config shape: the key `key_label` in the PKCS#11 token `token_label` of `sgx_library`.

    pylon runs it over any PKCS#11 library, SoftHSM2 here: the key lives wherever that library keeps it (an
    enclave only if the library is Intel's SGX Crypto API Toolkit). Each field does what it does in Envoy's
    provider or is refused here, as Envoy refuses it: every field is required; PINs, labels and key type may
    hold only letters, digits, '-', '_', '/' and '='; `key_type` is `rsa` or `ecdsa`; `so_pin` must be given
    but is not used (Envoy's provider never uses it either: the SO PIN only initialises tokens).
    """

    sgx_library: str = ""
    key_label: str = ""
    usr_pin: str = ""
    so_pin: str = ""
    token_label: str = ""
    key_type: str = ""

    def __post_init__(self) -> None:
        for name in ("sgx_library", "key_label", "usr_pin", "so_pin", "token_label", "key_type"):
            if not getattr(self, name):
                raise FieldError(name, "is required")
        for name in ("key_label", "usr_pin", "so_pin", "token_label", "key_type"):
            if not _SGX_TEXT.fullmatch(getattr(self, name)):
                raise FieldError(name, "may contain only letters, digits, '-', '_', '/' and '=' (as Envoy's SGX "
                                       "provider requires)")  # fmt: skip
        if len(self.token_label.encode()) > _MAX_TOKEN_LABEL:
            raise FieldError("token_label", f"is longer than a PKCS#11 token label ({_MAX_TOKEN_LABEL} bytes)")
        if self.key_type not in ("rsa", "ecdsa"):
            raise FieldError("key_type", "must be rsa or ecdsa")


#: provider_name each typed config must come with (Envoy: the factory's name()).
PROVIDER_NAMES: dict[type, str] = {
    CryptoMbPrivateKeyMethodConfig: "cryptomb",
    QatPrivateKeyMethodConfig: "qat",
    Offload: "offload",
    Keyd: "keyd",
    SgxPrivateKeyMethodConfig: "sgx",
}

registry.register_typed(registry.KEY_PROVIDER, CRYPTOMB_TYPE_URL, CryptoMbPrivateKeyMethodConfig)
registry.register_typed(registry.KEY_PROVIDER, QAT_TYPE_URL, QatPrivateKeyMethodConfig)
registry.register_typed(registry.KEY_PROVIDER, OFFLOAD_TYPE_URL, Offload)
registry.register_typed(registry.KEY_PROVIDER, KEYD_TYPE_URL, Keyd)
registry.register_typed(registry.KEY_PROVIDER, SGX_TYPE_URL, SgxPrivateKeyMethodConfig)
