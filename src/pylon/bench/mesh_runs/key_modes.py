"""Where the ingress gateway's private key lives, per the seed's demo: file, cryptomb, keyd, PKCS#11.

Each mode is the annotations the install file gives the gateway pod - `proxy.istio.io/config` (cryptomb) or
`inject.istio.io/templates` (keyd, pkcs11: `pylon mesh` then runs a `pylon keyd` in the gateway's pod or makes a
SoftHSM2 token for it, and the gateway's agent moves the credential's key there) - plus what keeps it from running
here (None when it can). A mode that cannot run is reported with its reason and left out, never simulated.
cryptomb runs everywhere with `fallback: true` (Intel's file sets it), but it is only
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


def _softhsm_missing() -> str | None:
    """The pkcs11 mode needs SoftHSM2 (the token) and python-pkcs11 (pylon's way to it)."""
    import importlib.util
    import shutil

    if shutil.which("softhsm2-util") is None:
        return "SoftHSM2 is not installed (apt-get install softhsm2)"
    if importlib.util.find_spec("pkcs11") is None:
        return "python-pkcs11 is not installed (pip install python-pkcs11)"
    return None


@dataclass(frozen=True)
class KeyMode:
    """One placement of the gateway's key: its install annotations, and why it cannot run here (or None)."""

    name: str
    proxy_config: str
    what: str
    unavailable: Callable[[], str | None] = _runs
    templates: str = ""  # inject.istio.io/templates


KEY_MODES: dict[str, KeyMode] = {m.name: m for m in (
    KeyMode("file", "", "the key in the gateway's SDS secret, signed by OpenSSL"),
    KeyMode("cryptomb", CRYPTOMB_CONFIG, "Envoy's cryptomb provider (Intel crypto_mb, AVX-512 IFMA batches of 8)"),
    KeyMode("keyd", "", "the key moved by the gateway's agent into a `pylon keyd` of its pod",
            templates="gateway,keyd"),
    KeyMode("pkcs11", "", "the key moved by the gateway's agent into a PKCS#11 token of its pod (SoftHSM2; the SGX "
            "provider's interface)", _softhsm_missing, templates="gateway,pkcs11"),
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
