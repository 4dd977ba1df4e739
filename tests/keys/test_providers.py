"""Provider planning: names, fallback, and refusal messages naming what is missing."""

from __future__ import annotations

import logging

import pytest

from pylon.config.envoy import DownstreamTlsContext, convert
from pylon.config.errors import ConfigError
from pylon.keys import cryptomb, providers
from pylon.keys.config import CRYPTOMB_TYPE_URL, OFFLOAD_TYPE_URL, QAT_TYPE_URL
from pylon.keys.hook import is_hooked
from pylon.proxy.tls import TlsConfigError

from .conftest import needs_mb, provider_tls


def mb(files, **extra):  # type: ignore[no-untyped-def]
    return {"provider_name": "cryptomb",
            "typed_config": {"@type": CRYPTOMB_TYPE_URL, "private_key": {"filename": str(files.key)},
                             "poll_delay": "0.001s"}, **extra}


def test_cpu_flags_and_missing_features() -> None:
    flags = cryptomb.cpu_flags("processor\t: 0\nflags\t\t: fpu avx512f bmi2\n")
    assert flags == {"fpu", "avx512f", "bmi2"}
    assert cryptomb.missing_cpu_features(flags) == ["avx512dq", "avx512bw", "avx512ifma", "avx512_vbmi2"]


def test_refusal_names_what_is_missing(pki, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(providers.cryptomb, "unavailable_reason",
                        lambda: "cryptomb needs AVX-512 IFMA; this CPU has no avx512ifma")
    with pytest.raises(TlsConfigError) as info:
        provider_tls(pki.server_rsa, mb(pki.server_rsa))
    assert info.value.path == "common_tls_context.tls_certificates[0].private_key_provider"
    assert info.value.message == (
        "cryptomb needs AVX-512 IFMA; this CPU has no avx512ifma; set fallback: true or use provider offload")


def test_fallback_uses_the_key_file_with_one_warning(pki, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(providers.cryptomb, "unavailable_reason", lambda: "cryptomb needs AVX-512 IFMA")
    caplog.set_level(logging.WARNING, "pylon.keys")
    tls = provider_tls(pki.server_rsa, mb(pki.server_rsa, fallback=True))
    assert not is_hooked(tls.context) and not tls.key_ops
    assert [r.message for r in caplog.records if "fallback" in r.message]


@needs_mb
def test_unsupported_key_size_refused(pki, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pylon.identity.certs import KeyType, issue_leaf, write_pem_files

    leaf = issue_leaf(pki.authority, dns_names=["localhost"], key_type=KeyType.RSA_3072)
    files = write_pem_files(tmp_path, "rsa3072", leaf, pki.authority)
    tls = provider_tls(files, mb(files))  # 3072 is supported
    assert is_hooked(tls.context)
    assert cryptomb.key_unsupported_reason(pki.authority.cert.public_key()) is None
    from cryptography.hazmat.primitives.asymmetric import rsa

    small = rsa.generate_private_key(65537, 1024).public_key()
    assert "not 1024" in (cryptomb.key_unsupported_reason(small) or "")


def test_provider_name_must_match(pki) -> None:  # type: ignore[no-untyped-def]
    provider = {"provider_name": "cryptomb",
                "typed_config": {"@type": OFFLOAD_TYPE_URL, "private_key": {"filename": str(pki.server_rsa.key)}}}
    with pytest.raises(TlsConfigError, match="provider_name: must be 'offload'"):
        provider_tls(pki.server_rsa, provider)


def test_poll_delay_must_be_positive(pki) -> None:  # type: ignore[no-untyped-def]
    provider = mb(pki.server_rsa)
    provider["typed_config"]["poll_delay"] = "0s"
    cert = {"certificate_chain": {"filename": str(pki.server_rsa.cert)}, "private_key_provider": provider}
    with pytest.raises((ValueError, ConfigError), match="poll_delay"):
        convert({"common_tls_context": {"tls_certificates": [cert]}}, DownstreamTlsContext)


@pytest.mark.skipif(cryptomb.unavailable_reason() is None, reason="crypto_mb runs on this CPU")
def test_refused_on_this_cpu_with_what_to_do(pki) -> None:  # type: ignore[no-untyped-def]
    """No simulation: on a CPU without AVX-512 IFMA the real check refuses and says what to do instead."""
    with pytest.raises(TlsConfigError) as info:
        provider_tls(pki.server_rsa, mb(pki.server_rsa))
    assert "AVX-512 IFMA" in info.value.message
    assert info.value.message.endswith("set fallback: true or use provider offload")


def qat(files, **extra):  # type: ignore[no-untyped-def]
    return {"provider_name": "qat",
            "typed_config": {"@type": QAT_TYPE_URL, "private_key": {"filename": str(files.key)},
                             "poll_delay": "0.002s"}, **extra}


def test_qat_is_refused_without_fallback_saying_what_to_do(pki) -> None:  # type: ignore[no-untyped-def]
    """Istio sends QAT configs (privateKeyProvider qat); pylon drives no QAT device and says so."""
    with pytest.raises(TlsConfigError) as info:
        provider_tls(pki.server_rsa, qat(pki.server_rsa))
    assert info.value.path == "common_tls_context.tls_certificates[0].private_key_provider"
    assert info.value.message.startswith("qat: pylon does not drive Intel QAT devices; set fallback: true")


def test_qat_with_fallback_uses_the_key_file_with_one_warning(pki, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.WARNING, "pylon.keys")
    tls = provider_tls(pki.server_rsa, qat(pki.server_rsa, fallback=True))
    assert not is_hooked(tls.context) and not tls.key_ops
    assert [r.message for r in caplog.records if "qat" in r.message and "fallback" in r.message]


def test_qat_poll_delay_is_at_least_a_millisecond(pki) -> None:  # type: ignore[no-untyped-def]
    provider = qat(pki.server_rsa)
    provider["typed_config"]["poll_delay"] = "0.0005s"
    cert = {"certificate_chain": {"filename": str(pki.server_rsa.cert)}, "private_key_provider": provider}
    with pytest.raises((ValueError, ConfigError), match="poll_delay"):
        convert({"common_tls_context": {"tls_certificates": [cert]}}, DownstreamTlsContext)
