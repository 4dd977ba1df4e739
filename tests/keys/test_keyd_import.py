"""keyd's IMPORT and FORGET: an agent hands keyd a credential's key, keyd keeps it and signs with it, and drops it
when asked (keys it was started with stay); refusals say why."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pylon.identity.certs import KeyType, generate_key
from pylon.keys.keyd.client import KeydError, forget, import_key

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


def handshake(pki, keyd: Path, files: str, key_id: str) -> bytes:  # type: ignore[no-untyped-def]
    """One request over TLS signed through keyd's `key_id` for the certificate of `files`: the server's answer."""
    tls = provider_tls(getattr(pki, files), keyd_provider(keyd, key_id))

    async def run() -> bytes:
        server, port = await serve(tls)
        try:
            data, _ = await fetch(port, client_context(pki))
        finally:
            server.close()
        return data

    return asyncio.run(run())


@pytest.mark.parametrize("files", ["server_rsa", "server_ecdsa"])
def test_an_imported_key_signs_handshakes(pki, keyd: Path, files: str) -> None:  # type: ignore[no-untyped-def]
    pem = getattr(pki, files).key.read_bytes()
    public = import_key(str(keyd), f"cred-{files}", pem)
    loaded = serialization.load_pem_private_key(pem, password=None)
    assert public == _public_pem(loaded)
    assert handshake(pki, keyd, files, f"cred-{files}") == b"ok:hi"


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


# --------------------------------------------------------------------------- FORGET
def test_a_forgotten_key_no_longer_signs_and_its_id_is_free_again(pki, keyd: Path) -> None:  # type: ignore[no-untyped-def]
    import_key(str(keyd), "cred-a", pki.server_ecdsa.key.read_bytes())
    assert handshake(pki, keyd, "server_ecdsa", "cred-a") == b"ok:hi"
    forget(str(keyd), "cred-a")
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(pki, keyd, "server_ecdsa", "cred-a")  # keyd answers "unknown key id": the handshake fails
    import_key(str(keyd), "cred-a", _pem(generate_key(KeyType.ECDSA_P256)))  # the id is free for another key
    forget(str(keyd), "cred-a")
    forget(str(keyd), "cred-a")  # gone already: still fine (a retry after a lost answer)


def test_keys_keyd_was_started_with_cannot_be_forgotten(pki, keyd: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeydError, match="key id 'ec' was loaded at start"):
        forget(str(keyd), "ec")
    assert handshake(pki, keyd, "server_ecdsa", "ec") == b"ok:hi"
