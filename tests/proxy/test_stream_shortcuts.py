"""The hot path's shortcuts answer as the long way does (the no-socket rig of test_stream_states.py).

Each shortcut skips work for the common case (an authority seen before, a Connection header that nominates
nothing); these tests take the uncommon case right after the common one, on the same connection.
"""

from __future__ import annotations

import pytest

from pylon.proxy import stream as stream_module
from tests.proxy.test_stream_states import OK, rig


def test_a_bad_host_after_a_good_one_on_the_same_connection_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(b"GET /a HTTP/1.1\r\nhost: svc\r\n\r\n")
    r.answer(OK)
    assert r.client.take().startswith(b"HTTP/1.1 200 OK\r\n")
    r.send(b"GET /a HTTP/1.1\r\nhost: svc\"x\r\n\r\n")
    assert r.client.take().startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert r.stream.details == "http.invalid_authority" and r.upstreams[0][1].written.count(b"GET /a") == 1


def test_the_remembered_authorities_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_module, "_VALID_AUTHORITIES", set())
    monkeypatch.setattr(stream_module, "_VALID_AUTHORITIES_MAX", 3)
    for n in range(10):
        assert stream_module._valid_authority(b"h%d" % n)
        assert len(stream_module._VALID_AUTHORITIES) <= 3
    assert not stream_module._valid_authority(b"a b") and b"a b" not in stream_module._VALID_AUTHORITIES
