"""Where a stateful session's upstream host is kept: a cookie or a header, as Envoy 1.40 writes and reads them
(sans-IO).

Read from Envoy's envoy.http.stateful_session.cookie and .header extensions:

- Cookie: the value is base64 of a protobuf `envoy.Cookie {string address = 1; uint64 expires = 2}`; `expires`
  (set when the cookie has a ttl) is the POSIX second it expires at (Envoy 1.40 writes the system clock's;
  observed), checked against the proxy's clock, not the client's. A value that is not such
  a message is read as a bare address (Envoy's older format). The cookie only applies to requests whose path is
  under the cookie's `path` (a path not ending in `/` matches itself and what follows it after `/`, `?` or `#`).
  Set as `name="value"; Max-Age=<ttl>; Path=<path>; <attributes>; HttpOnly`.
- Header: base64 of the address, in the header both ways.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pylon.proxy.headers import cookie_value


def b64decode(value: bytes) -> bytes:
    """Envoy's Base64::decode: empty when the input is not padded base64."""
    if len(value) % 4:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


class CookieMessage(NamedTuple):
    address: bytes
    expires: int


def encode_cookie(address: bytes, expires: int) -> bytes:
    """The `envoy.Cookie` message (expires left out when 0, as protobuf leaves a default)."""
    out = b"\x0a" + _varint(len(address)) + address
    return out + b"\x10" + _varint(expires) if expires else out


def decode_cookie(data: bytes) -> CookieMessage | None:
    """The message, or None when `data` is not one (protobuf's ParseFromString failing)."""
    address, expires, at = b"", 0, 0
    try:
        while at < len(data):
            tag, at = _read_varint(data, at)
            number, kind = tag >> 3, tag & 7
            if number == 0:
                return None
            if kind == 0:
                value, at = _read_varint(data, at)
                if number == 2:
                    expires = value & ((1 << 64) - 1)
            elif kind == 2:
                length, at = _read_varint(data, at)
                if at + length > len(data):
                    return None
                if number == 1:
                    address = data[at:at + length]
                at += length
            elif kind in (1, 5):
                at += 8 if kind == 1 else 4
                if at > len(data):
                    return None
            else:
                return None
    except ValueError:
        return None
    return CookieMessage(address, expires)


def path_matcher(path: str) -> Callable[[bytes], bool]:
    """Whether a request path is under the cookie's path, as Envoy's cookie session state decides."""
    if not path or path == "/":
        return lambda request_path: True
    prefix = path.encode()
    if path.endswith("/"):
        return lambda request_path: request_path.startswith(prefix)
    size = len(prefix)
    return lambda request_path: request_path.startswith(prefix) and (
        len(request_path) == size or request_path[size:size + 1] in (b"/", b"?", b"#"))


def cookie_address(headers: Sequence[tuple[bytes, bytes]], name: bytes,
                   clock: Callable[[], float] = time.time) -> str | None:
    """The host a request's session cookie names, None without one (or expired)."""
    value = cookie_value(headers, name)
    if not value:  # absent or empty
        return None
    decoded = b64decode(value)
    message = decode_cookie(decoded)
    if message is None:
        address = decoded  # Envoy's older, bare format
    else:
        address = message.address
        if message.expires and int(clock()) > message.expires:
            return None
    return address.decode("latin-1") or None


def set_cookie(name: str, address: str, path: str, ttl: int, attributes: Sequence[tuple[str, str]],
               clock: Callable[[], float] = time.time) -> bytes:
    """The set-cookie value naming `address`."""
    expires = int(clock()) + ttl if ttl else 0
    value = base64.b64encode(encode_cookie(address.encode("latin-1"), expires)).decode()
    out = f'{name}="{value}"'
    if ttl:
        out += f"; Max-Age={ttl}"
    if path:
        out += f"; Path={path}"
    for attribute, attribute_value in attributes:
        out += f"; {attribute}={attribute_value}" if attribute_value else f"; {attribute}"
    return (out + "; HttpOnly").encode("latin-1")


def header_address(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return b64decode(value).decode("latin-1") or None
    return None
