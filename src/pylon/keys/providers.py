"""From a `PrivateKeyProvider` config to the `KeyOps` serving a certificate, with Envoy's fallback.

`plan_provider` decides, before anything binds: which provider runs the
key's operations, or — when the provider cannot run here and `fallback` is
true — that the default implementation (the key file) is used instead, with
one warning. Without `fallback` the error names what is missing, e.g.
"cryptomb needs AVX-512 IFMA; this CPU has no avx512ifma; set fallback: true
or use provider offload".

Providers are shared per process (a pylon worker is one process and one event
loop), as Envoy keeps one CryptoMB queue per worker thread: one batcher for
all cryptomb certificates with the same poll_delay, one offload pool.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pylon.config.datasource import DataSourceError, read_bytes
from pylon.keys import cryptomb
from pylon.keys.config import (PROVIDER_NAMES, CryptoMbPrivateKeyMethodConfig, Keyd, Offload, QatPrivateKeyMethodConfig,
                               SgxPrivateKeyMethodConfig)  # fmt: skip
from pylon.keys.hook import HookError, KeyOps, check_runtime
from pylon.keys.keyd.client import KeydOps
from pylon.keys.offload import OffloadOps

if TYPE_CHECKING:
    from pylon.config.envoy import PrivateKeyProvider

log = logging.getLogger("pylon.keys")


class ProviderError(Exception):
    """The provider cannot serve this certificate; `path` is relative to the provider config."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


@dataclass(frozen=True)
class ProviderPlan:
    """`ops` serve the key (with `private_pem` for in-process providers), or `ops` is None and the
    certificate falls back to the default implementation with `private_pem` as its key file."""

    ops: KeyOps | None
    private_pem: bytes | None


_cryptomb: dict[float, cryptomb.CryptoMbOps] = {}
_offload: dict[int, OffloadOps] = {}
_keyd: dict[tuple[str, str, float], KeydOps] = {}


def plan_provider(provider: PrivateKeyProvider, public_key: object) -> ProviderPlan:
    """The plan for one certificate whose public key is `public_key`. Raises ProviderError."""
    config = provider.typed_config
    expected = PROVIDER_NAMES.get(type(config))
    if expected is None:
        raise ProviderError("typed_config", f"{type(config).__name__} is not a private key provider config")
    if provider.provider_name != expected:
        raise ProviderError("provider_name", f"must be {expected!r} for this typed_config")

    if isinstance(config, Keyd):
        try:
            check_runtime()
        except HookError as exc:
            raise ProviderError("", f"keyd: {exc}") from None  # no key here to fall back to
        ops = _keyd.get((config.socket_path, config.key_id, config.timeout))
        if ops is None:
            ops = _keyd[(config.socket_path, config.key_id, config.timeout)] = KeydOps(
                config.socket_path, config.key_id, config.timeout
            )
        return ProviderPlan(ops, None)

    if isinstance(config, SgxPrivateKeyMethodConfig):  # the key is in a PKCS#11 token: nothing to fall back to
        from pylon.keys.sgx import SgxConfigError, plan_sgx  # python-pkcs11 only where a config names a token

        try:
            check_runtime()
            return ProviderPlan(plan_sgx(config, public_key), None)
        except HookError as exc:
            raise ProviderError("", f"sgx: {exc}") from None
        except SgxConfigError as exc:
            raise ProviderError(f"typed_config.{exc.field}", exc.message) from None

    try:
        pem = read_bytes(config.private_key)
    except DataSourceError as exc:
        raise ProviderError("typed_config.private_key", str(exc)) from None

    reason: str | None
    if isinstance(config, CryptoMbPrivateKeyMethodConfig):
        reason = cryptomb.unavailable_reason()
        if reason is None:
            reason = cryptomb.key_unsupported_reason(public_key)
        if reason is None:
            ops: KeyOps = _cryptomb.setdefault(config.poll_delay, cryptomb.CryptoMbOps(config.poll_delay))
            return ProviderPlan(ops, pem)
        hint = "set fallback: true or use provider offload"
    elif isinstance(config, QatPrivateKeyMethodConfig):
        reason = "qat: pylon does not drive Intel QAT devices"
        hint = "set fallback: true to sign with the key in software, or use provider cryptomb or offload"
    else:
        assert isinstance(config, Offload)
        try:
            check_runtime()
            reason = None
        except HookError as exc:
            reason = f"offload: {exc}"
        if reason is None:
            return ProviderPlan(_offload.setdefault(config.threads, OffloadOps(config.threads)), pem)
        hint = "set fallback: true"

    if provider.fallback:
        log.warning("private key provider %s cannot run here (%s); using the key file instead (fallback: true)",
                    expected, reason)
        return ProviderPlan(None, pem)
    raise ProviderError("", f"{reason}; {hint}")
