"""keyd's IMPORT: an agent hands keyd a credential's key, keyd keeps it and signs with it; refusals say why."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pylon.identity.certs import KeyType, generate_key
from pylon.keys.keyd.client import KeydError, import_key

from .conftest import client_context, fetch, provider_tls, serve
from .test_keyd import keyd_provider, start_keyd, stop


def _pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())  # fmt: skip


def _public_pem(key) -> bytes:  # type: ignore[no-untyped-def]
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def keyd(pki, tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = tmp_path / "keyd.sock"
    proc = start_keyd(sock, pki)
    yield sock
    stop(proc)


@pytest.mark.parametrize("files", ["server_rsa", "server_ecdsa"])
def test_an_imported_key_signs_handshakes(pki, keyd: Path, files: str) -> None:  # type: ignore[no-untyped-def]
    pem = getattr(pki, files).key.read_bytes()
    public = import_key(str(keyd), f"cred-{files}", pem)
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert public == _public_pem(loaded)
    tls = provider_tls(getattr(pki, files), keyd_provider(keyd, f"cred-{files}"))

    async def run() -> bytes:
        server, port = await serve(tls)
        try:
            data, _ = await fetch(port, client_context(pki))
        finally:
            server.close()
        return data

    assert asyncio.run(run()) == b"ok:hi"


def test_the_same_key_again_is_fine_another_under_its_id_is_refused(keyd: Path) -> None:
    key, other = generate_key(KeyType.ECDSA_P256), generate_key(KeyType.ECDSA_P256)
    assert import_key(str(keyd), "cred-x", _pem(key)) == _public_pem(key)
    assert import_key(str(keyd), "cred-x", _pem(key)) == _public_pem(key)  # a re-sent secret
    with pytest.raises(KeydError, match="key id 'cred-x' holds another key"):
        import_key(str(keyd), "cred-x", _pem(other))
    with pytest.raises(KeydError, match="key id 'rsa' holds another key"):  # a key keyd was started with
        import_key(str(keyd), "rsa", _pem(other))


def test_what_is_not_a_key_is_refused(keyd: Path) -> None:
    with pytest.raises(KeydError, match="not an unencrypted PEM private key"):
        import_key(str(keyd), "cred-y", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeydError, match="empty key id"):
        import_key(str(keyd), "", _pem(generate_key(KeyType.ECDSA_P256)))


def test_an_unreachable_keyd_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeydError, match=f"keyd at {tmp_path}/nothing.sock: No such file or directory"):
        import_key(str(tmp_path / "nothing.sock"), "cred-z", _pem(generate_key(KeyType.ECDSA_P256)))
