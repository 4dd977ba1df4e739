"""keyd's FORGET: an agent drops a key it made or handed over once no certificate names it; keyd's own stay."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from pylon.identity.certs import KeyType, generate_key
from pylon.keys.keyd.client import KeydError, forget, import_key

from .conftest import client_context, fetch, provider_tls, serve
from .test_keyd import keyd_provider, start_keyd, stop
from .test_keyd_import import _pem


@pytest.fixture
def keyd(pki, tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = tmp_path / "keyd.sock"
    proc = start_keyd(sock, pki)
    yield sock
    stop(proc)


def _handshake(pki, keyd: Path, key_id: str) -> bytes:  # type: ignore[no-untyped-def]
    tls = provider_tls(pki.server_ecdsa, keyd_provider(keyd, key_id))

    async def run() -> bytes:
        server, port = await serve(tls)
        try:
            data, _ = await fetch(port, client_context(pki))
        finally:
            server.close()
        return data

    return asyncio.run(run())


def test_a_forgotten_key_no_longer_signs_and_its_id_is_free_again(pki, keyd: Path) -> None:  # type: ignore[no-untyped-def]
    pem = pki.server_ecdsa.key.read_bytes()
    import_key(str(keyd), "cred-a", pem)
    assert _handshake(pki, keyd, "cred-a") == b"ok:hi"
    forget(str(keyd), "cred-a")
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(pki, keyd, "cred-a")  # keyd answers "unknown key id": the handshake fails
    other = generate_key(KeyType.ECDSA_P256)
    import_key(str(keyd), "cred-a", _pem(other))  # the id is free: another key may take it now
    forget(str(keyd), "cred-a")
    forget(str(keyd), "cred-a")  # gone already: still fine (a retry after a lost answer)


def test_keys_keyd_was_started_with_cannot_be_forgotten(pki, keyd: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeydError, match="key id 'ec' was loaded at start"):
        forget(str(keyd), "ec")
    assert _handshake(pki, keyd, "ec") == b"ok:hi"
