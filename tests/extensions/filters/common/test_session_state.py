"""filters/common/session_state.py: Envoy's session cookie and header formats (sans-IO)."""

from __future__ import annotations

import base64

from pylon.extensions.filters.common import session_state as state


def test_the_cookie_message_round_trips_and_refuses_what_protobuf_would() -> None:
    data = state.encode_cookie(b"10.0.0.1:8080", 1234567890)
    assert data == b"\x0a\x0d10.0.0.1:8080\x10\xd2\x85\xd8\xcc\x04"
    assert state.decode_cookie(data) == state.CookieMessage(b"10.0.0.1:8080", 1234567890)
    assert state.decode_cookie(state.encode_cookie(b"h:1", 0)) == state.CookieMessage(b"h:1", 0)
    assert state.decode_cookie(b"\x0a\x20short") is None  # a length past the end
    assert state.decode_cookie(b"\x0b") is None  # a group
    assert state.decode_cookie(b"\x18\x01\x0a\x01a") == state.CookieMessage(b"a", 0)  # unknown fields skipped


def test_a_cookie_names_its_host_until_it_expires() -> None:
    value = state.set_cookie("s", "10.0.0.1:80", "/p", 60, [("SameSite", "Strict"), ("Secure", "")], lambda: 1000.0)
    name_value, _, attributes = value.decode().partition("; ")
    assert attributes == "Max-Age=60; Path=/p; SameSite=Strict; Secure; HttpOnly"
    headers = [(b"cookie", b"a=b; " + name_value.encode())]
    assert state.cookie_address(headers, b"s", lambda: 1060.0) == "10.0.0.1:80"
    assert state.cookie_address(headers, b"s", lambda: 1061.0) is None
    bare = base64.b64encode(b"127.0.0.1:8080")
    assert state.cookie_address([(b"cookie", b"s=" + bare)], b"s") == "127.0.0.1:8080"  # the older format
    # ... unless the bytes happen to parse as a message (without an address): then no session, as protobuf reads it
    assert state.cookie_address([(b"cookie", b"s=" + base64.b64encode(b"10.0.0.2:81"))], b"s") is None
    assert state.cookie_address([(b"cookie", b"s=%%%")], b"s") is None
    assert state.cookie_address([], b"s") is None


def test_the_cookie_path_rule() -> None:
    under = state.path_matcher("/path")
    assert [under(p) for p in (b"/path", b"/path/x", b"/path?q", b"/pathology", b"/")] == [
        True, True, True, False, False]
    assert state.path_matcher("/dir/")(b"/dir/x") and not state.path_matcher("/dir/")(b"/dir")
    assert state.path_matcher("")(b"/anything") and state.path_matcher("/")(b"/anything")


def test_the_header_carries_base64() -> None:
    assert state.header_address([(b"session", base64.b64encode(b"[::1]:80"))], b"session") == "[::1]:80"
    assert state.header_address([(b"session", b"not base64!")], b"session") is None
