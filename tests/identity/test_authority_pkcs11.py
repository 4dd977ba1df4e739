"""The mesh CA with its signing key in a PKCS#11 token (SoftHSM2 in a temp dir): the self-signed root is made
through the token, --ca-dir then holds certificates only, and the CA issues through the token; `pylon pilot
--ca-pkcs11-*` does the same as a process, and refuses a wrong PIN or a missing token naming the flag."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from pylon.identity.authority import CaMaterial, CaSetupError
from pylon.identity.certs import KeyType, build_csr, generate_key
from pylon.identity.client import create_certificate
from pylon.identity.spiffe import SpiffeId
from pylon.keys import pkcs11
from pylon.keys.pkcs11_keys import as_private_key
from pylon.pilot.ca_key import CaToken, open_ca_key
from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port
from tests.softhsm import LIBRARY, PIN, make_tokens

WEB = SpiffeId("cluster.local", "default", "web")


@pytest.fixture(scope="module")
def ca_token(softhsm) -> CaToken:  # type: ignore[no-untyped-def]
    return CaToken(library=LIBRARY, token="pylon-ca", key_label="test-mesh-ca", pin=PIN, key_type=KeyType.RSA_2048)


def test_the_root_is_made_and_the_csrs_signed_through_the_token(tmp_path: Path, ca_token: CaToken) -> None:
    key = open_ca_key(ca_token)
    material = CaMaterial.load_or_create(tmp_path, key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca-cert.pem", "cert-chain.pem", "root-cert.pem"]
    assert material.root.public_key() == key.public_key()
    material.root.verify_directly_issued_by(material.root)  # self-signed through the token
    workload = generate_key(KeyType.ECDSA_P256)
    chain = material.sign_csr(build_csr(workload, WEB), WEB, dt.timedelta(hours=1))
    x509.load_pem_x509_certificate(chain[0].encode()).verify_directly_issued_by(material.root)
    # A restart finds the same key in the token and the same root in the directory.
    assert CaMaterial.load_or_create(tmp_path, open_ca_key(ca_token)).root == material.root


def test_a_ca_key_file_beside_a_token_key_is_refused(tmp_path: Path, ca_token: CaToken) -> None:
    CaMaterial.load_or_create(tmp_path)  # a file CA: ca-key.pem
    with pytest.raises(CaSetupError, match="ca-key.pem: the CA key is to come from the PKCS#11 token"):
        CaMaterial.load_or_create(tmp_path, open_ca_key(ca_token))


def test_a_token_key_that_is_not_the_certificates_is_refused(tmp_path: Path, ca_token: CaToken) -> None:
    CaMaterial.load_or_create(tmp_path, open_ca_key(ca_token))
    token = pkcs11.open_token(LIBRARY, "pylon-ca", PIN)
    other = pkcs11.generate_key(token, "test-other-ca", KeyType.ECDSA_P256)
    try:
        with pytest.raises(CaSetupError, match="the PKCS#11 token's CA key is not the key of ca-cert.pem"):
            CaMaterial.load_or_create(tmp_path, as_private_key(other))
    finally:
        other.delete()


def _pilot(work: Path, env: dict[str, str], pin_file: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    ca_port = free_port()
    (work / "config").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        pylon_cmd("pilot", "--config-dir", str(work / "config"), "--grpc-address", f"127.0.0.1:{free_port()}",
                  "--monitoring-address", f"127.0.0.1:{free_port()}", "--debug-address", f"127.0.0.1:{free_port()}",
                  "--ca-address", f"127.0.0.1:{ca_port}", "--ca-dir", str(work / "ca"),
                  "--ca-pkcs11-token", "mesh-ca", "--ca-pkcs11-pin-file", str(pin_file), *extra),
        env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    return proc, ca_port


def test_pilot_issues_with_the_ca_key_in_the_token(tmp_path: Path) -> None:
    tokens = make_tokens(tmp_path / "hsm", "mesh-ca")
    (tmp_path / "pin").write_text(PIN)
    proc, ca_port = _pilot(tmp_path, tokens.env, tmp_path / "pin")
    try:
        wait_for_port(ca_port, proc=proc)
        assert not (tmp_path / "ca" / "ca-key.pem").exists()
        token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(tmp_path / "ca"), "--namespace", "default",
                                         "--service-account", "web"),
                               check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        root_pem = (tmp_path / "ca" / "root-cert.pem").read_bytes()
        csr = build_csr(generate_key(KeyType.ECDSA_P256), WEB)
        chain = asyncio.run(create_certificate(f"127.0.0.1:{ca_port}", root_pem, csr, token=token))
        root = x509.load_pem_x509_certificate(root_pem)
        x509.load_pem_x509_certificate(chain[0].encode()).verify_directly_issued_by(root)
    finally:
        stop_process_group(proc)


@pytest.mark.parametrize(("pin", "extra", "expected"), [
    ("wrong-pin", (), "--ca-pkcs11-pin-file: token 'mesh-ca' refused the user PIN (CKR_PIN_INCORRECT)"),
    (PIN, ("--ca-pkcs11-token", "no-such-token"), "--ca-pkcs11-token: no token labelled 'no-such-token'"),
    (PIN, ("--ca-pkcs11-library", "/nonexistent/libp11.so"), "--ca-pkcs11-library: no PKCS#11 library at"),
])  # fmt: skip
def test_pilot_refuses_naming_the_flag(tmp_path: Path, pin: str, extra: tuple[str, ...], expected: str) -> None:
    tokens = make_tokens(tmp_path / "hsm", "mesh-ca")
    (tmp_path / "pin").write_text(pin)
    proc, _ = _pilot(tmp_path, tokens.env, tmp_path / "pin", *extra)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and expected in output.decode(), output.decode()
    assert not (tmp_path / "ca").exists()  # nothing made before the key was had
