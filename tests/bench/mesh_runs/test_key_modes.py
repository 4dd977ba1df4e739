"""The gateway's key modes: which run here, and cryptomb said as it ran (accelerated only when it was)."""

from __future__ import annotations

import yaml

from pylon.bench.mesh_runs.key_modes import CRYPTOMB_CONFIG, KEY_MODES, cryptomb_status
from pylon.keys import cryptomb

FALLBACK_LINE = ("2026-12-05 14:47:01 WARNING [pylon.keys] private key provider cryptomb cannot run here (cryptomb "
                 "needs AVX-512 IFMA); using the key file instead (fallback: true)")


def test_modes_in_the_seeds_order_with_intels_cryptomb_annotation() -> None:
    assert list(KEY_MODES) == ["file", "cryptomb", "keyd", "pkcs11"]
    assert KEY_MODES["file"].proxy_config == ""
    assert yaml.safe_load(CRYPTOMB_CONFIG) == {"privateKeyProvider": {"cryptomb": {"pollDelay": "10ms",
                                                                                   "fallback": True}}}
    assert KEY_MODES["file"].unavailable() is None and KEY_MODES["cryptomb"].unavailable() is None


def test_keyd_and_pkcs11_are_injection_templates_of_the_gateway_pod() -> None:
    assert KEY_MODES["keyd"].templates == "gateway,keyd" and KEY_MODES["pkcs11"].templates == "gateway,pkcs11"
    assert KEY_MODES["keyd"].proxy_config == "" and KEY_MODES["pkcs11"].proxy_config == ""
    assert KEY_MODES["keyd"].unavailable() is None
    assert KEY_MODES["pkcs11"].unavailable() is None  # this machine has SoftHSM2 and python-pkcs11 (bootstrap.sh)


def test_cryptomb_is_accelerated_only_on_a_cpu_that_can_and_with_no_fallback_logged() -> None:
    assert cryptomb_status("", None) == "accelerated (crypto_mb)"
    assert cryptomb_status("", "this CPU has no avx512ifma").startswith("fallback (software, not accelerated)")
    logged = cryptomb_status(f"other\n{FALLBACK_LINE}\n", None)
    assert logged.startswith("fallback (software, not accelerated): the gateway logged")
    assert "cannot run here" in logged
    if cryptomb.unavailable_reason() is not None:  # this machine: never reported as accelerated
        assert "accelerated (" not in cryptomb_status("", cryptomb.unavailable_reason())
