"""Where the ingress gateway's private key lives, per the seed's demo: file, cryptomb, keyd, PKCS#11.

Each mode is the `proxy.istio.io/config` annotation the install file gives the gateway pod, plus what keeps
it from running here (None when it can). A mode that cannot run is reported with its reason and left out,
never simulated. cryptomb runs everywhere with `fallback: true` (Intel's file sets it), but it is only
*accelerated* on a CPU with AVX-512 IFMA; elsewhere the gateway signs with the key in software and says so
in its log, and the report says "fallback", never "accelerated" (`cryptomb_status`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Intel's intel-istio-cryptomb.yaml annotation (pollDelay 10ms, fallback true).
CRYPTOMB_CONFIG = "privateKeyProvider:\n  cryptomb:\n    pollDelay: 10ms\n    fallback: true\n"
FALLBACK_MARK = "cannot run here"  # what the proxy logs when a key provider falls back to the key file


def _runs() -> str | None:
    return None


def _keyd_unavailable() -> str | None:
    return ("not available yet in pylon mesh: the gateway's credential comes from pilot over SDS with its key "
            "inline (pilot/gen/credentials.py knows cryptomb and qat only), and no agent hands a credential's key "
            "to a `pylon keyd`; keyd holds workload keys only (`pylon agent --keyd`)")


def _pkcs11_unavailable() -> str | None:
    return "not available yet: the PKCS#11 key provider is being built (issue 15's PKCS#11 mode)"


@dataclass(frozen=True)
class KeyMode:
    """One placement of the gateway's key: its install annotation, and why it cannot run here (or None)."""

    name: str
    proxy_config: str
    what: str
    unavailable: Callable[[], str | None] = _runs


KEY_MODES: dict[str, KeyMode] = {m.name: m for m in (
    KeyMode("file", "", "the key in the gateway's SDS secret, signed by OpenSSL"),
    KeyMode("cryptomb", CRYPTOMB_CONFIG, "Envoy's cryptomb provider (Intel crypto_mb, AVX-512 IFMA batches of 8)"),
    KeyMode("keyd", "", "the key in a separate `pylon keyd` process", _keyd_unavailable),
    KeyMode("pkcs11", "", "the key in a PKCS#11 token (the SGX provider's interface)", _pkcs11_unavailable),
)}  # fmt: skip


def cryptomb_status(gateway_log: str, cpu_reason: str | None) -> str:
    """What cryptomb did in a run: 'accelerated' only when this CPU can run crypto_mb (`cpu_reason` is None,
    from `pylon.keys.cryptomb.unavailable_reason`) and the gateway did not log a fallback."""
    logged = next((line.split("] ")[-1].strip() for line in gateway_log.splitlines() if FALLBACK_MARK in line), "")
    if logged:
        return f"fallback (software, not accelerated): the gateway logged `{logged[:300]}`"
    if cpu_reason is not None:
        return f"fallback (software, not accelerated): {cpu_reason}"
    return "accelerated (crypto_mb)"
