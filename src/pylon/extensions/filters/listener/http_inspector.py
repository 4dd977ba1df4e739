"""envoy.filters.listener.http_inspector: does a plaintext client speak HTTP/1.0, HTTP/1.1 or HTTP/2 (h2c)?

Sets the connection's application protocol to `http/1.0`, `http/1.1` or `h2c`
(prior knowledge: the client starts with HTTP/2's connection preface), which
filter chains match with `application_protocols`, as Envoy does; Istio uses it
to tell HTTP from other TCP on ports of unknown protocol. A connection already
found to be TLS is left alone (its ALPN says the protocol).

Envoy's rules, checked against Envoy 1.40 (which parses the first line with a
lenient HTTP/1 parser): the preface counts only once all 24 bytes are there; a
first line counts once it ends (LF alone will do) - HTTP/1.1 exactly is
`http/1.1`, any other parsable request line (no version, HTTP/1.2, HTTP/2.0) is
`http/1.0`; any method token will do, lower case too; bytes that cannot start
a request line (whitespace first, a byte no method contains) are not HTTP at
once, and a line with a bad target or a version that is not
`HTTP/<digit>.<digit>` once it ends. A line still unfinished at
64 KiB closes the connection (`read_error`). Methods and target, version
separated by spaces or tabs; the target in origin form (`/x`), `*`, absolute
form (`http://h/x`), or `host:port` for CONNECT.

Stats, rooted at `http_inspector.` as Envoy's: http10_found, http11_found,
http2_found, http_not_found, read_error.
"""

from __future__ import annotations

import re
from typing import Any

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.proxy.filters.listener import CLOSE, DONE, MORE, Detected, register_listener_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_INSPECT = 64 * 1024

#: RFC 9110 token characters: what a method is made of.
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_SEPARATOR = re.compile(rb"[ \t]+")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*://")
_AUTHORITY = re.compile(rb"[^/?#\s]+:[0-9]+")


class HttpInspector(EnvoyStruct, kw_only=True):
    """extensions.filters.listener.http_inspector.v3.HttpInspector (no fields)."""


def detect_protocol(data: bytes) -> str | None:
    """`h2c`, `http/1.0`, `http/1.1`, "" for not HTTP, or None while the bytes cannot tell yet."""
    if H2_PREFACE.startswith(data[:len(H2_PREFACE)]):
        return "h2c" if len(data) >= len(H2_PREFACE) else None
    if data[:1] in (b"\r", b"\n", b" ", b"\t"):
        return ""
    end = data.find(b"\n")
    line = data if end < 0 else data[:end].rstrip(b" \t\r")
    method = _SEPARATOR.split(line, 1)[0]
    if not all(byte in _TOKEN for byte in method):
        return ""
    if end < 0:
        return None
    parts = _SEPARATOR.split(line)
    if len(parts) not in (2, 3) or not _valid_target(parts[0], parts[1]):
        return ""
    if len(parts) == 2:
        return "http/1.0"  # a request line without a version (HTTP/0.9's shape)
    found = _VERSION.fullmatch(parts[2])
    if found is None:
        return ""
    return "http/1.1" if found.groups() == (b"1", b"1") else "http/1.0"


def _valid_target(method: bytes, target: bytes) -> bool:
    """Origin form (/x), asterisk, absolute form (scheme://...), or host:port for CONNECT - as Envoy accepts."""
    if target[:1] in (b"/", b"*") or _ABSOLUTE.match(target):
        return True
    return method == b"CONNECT" and _AUTHORITY.fullmatch(target) is not None


class HttpInspectorFilter:
    """One listener's http_inspector in one worker."""

    max_bytes = MAX_INSPECT

    def __init__(self, config: HttpInspector, stats: Any) -> None:
        self.found = {
            "http/1.0": stats.counter("http_inspector.http10_found"),
            "http/1.1": stats.counter("http_inspector.http11_found"),
            "h2c": stats.counter("http_inspector.http2_found"),
            "": stats.counter("http_inspector.http_not_found"),
        }
        self.read_error = stats.counter("http_inspector.read_error")

    def inspect(self, data: bytes, detected: Detected) -> int:
        if detected.transport_protocol not in ("", "raw_buffer"):
            return DONE
        protocol = detect_protocol(data)
        if protocol is None:
            if len(data) < self.max_bytes:
                return MORE
            self.read_error.inc()  # no request line within the limit: Envoy drops the connection
            return CLOSE
        self.found[protocol].inc()
        if protocol:
            detected.application_protocols = (protocol,)
        return DONE


registry.register_typed(registry.LISTENER_FILTER, TYPE_URL, HttpInspector)
register_listener_filter(HttpInspector, HttpInspectorFilter)
