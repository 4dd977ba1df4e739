"""The SSL_CTX* accessor: the pointer is found, checked and agrees with what Python reports."""

from __future__ import annotations

import ssl

import pytest

from pylon.openssl.context import SSL_SESS_CACHE_OFF, SSL_SESS_CACHE_SERVER, OpenSslContext


def test_openssl_context_checks() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    handle = OpenSslContext(context)
    assert handle.pointer == OpenSslContext(context).pointer
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    assert handle.options == context.options
    with pytest.raises(TypeError):
        OpenSslContext(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="P-999"):
        handle.set_groups(["X25519", "P-999"])


def test_session_knobs_are_written_to_the_ssl_ctx() -> None:
    handle = OpenSslContext(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    assert handle.session_cache_mode == SSL_SESS_CACHE_SERVER  # OpenSSL's default for a server
    handle.session_cache_mode = SSL_SESS_CACHE_OFF
    assert handle.session_cache_mode == SSL_SESS_CACHE_OFF
    handle.timeout = 300
    assert handle.timeout == 300
