"""What `pylon echo` answers: Fortio's echo query arguments turned into a reply (sans-IO).

Fortio's echo server shapes each response from the query string, choosing at
random per request with the given percentages, so one URL can emulate a flaky
or slow service:

- `status=503:10,404:5` — 10% 503, 5% 404, otherwise 200 (`status=503` alone: always);
- `delay=2ms:50,10ms:5` — delay before answering (capped at 1.5 s like Fortio);
- `size=1024:10` — body of that many bytes (capped at 256 KiB like Fortio);
- `header=K:V` (repeatable) — extra response header;
- `close=true` (or a percentage) — answer with `Connection: close` and close.

Parsing is cached per query string, and `decide()` takes its random numbers
from a callable, so tests can pin the choice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import formatdate
from functools import lru_cache
from http import HTTPStatus
from typing import Callable
from urllib.parse import parse_qsl

from pylon.bench.fortio_args import parse_go_duration

MAX_DELAY = 1.5  # seconds, Fortio's -max-echo-delay default
MAX_SIZE = 256 * 1024  # bytes, Fortio's -maxpayloadsizekb default
SERVER_NAME = b"pylon-echo"


class EchoQueryError(ValueError):
    """A query argument that cannot be understood; answered with 400."""


Weighted = tuple[tuple[object, float], ...]


@dataclass(frozen=True)
class EchoQuery:
    """The parsed query arguments of one URL."""

    status: Weighted = ()
    delay: Weighted = ()
    size: Weighted = ()
    headers: tuple[tuple[str, str], ...] = ()
    close_percent: float = 0.0


@dataclass(frozen=True)
class Reply:
    """The decision for one request: what to send, after how long, and whether to close."""

    status: int
    body_size: int | None  # None = the default body (or the echoed body)
    delay: float
    headers: tuple[tuple[str, str], ...]
    close: bool


def _weighted(value: str, convert: Callable[[str], object]) -> Weighted:
    entries = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        item, sep, percent = part.partition(":")
        try:
            entries.append((convert(item), float(percent) if sep else 100.0))
        except ValueError:
            raise EchoQueryError(f"invalid value {part!r}") from None
    return tuple(entries)


def _status(text: str) -> int:
    code = int(text)
    if not 100 <= code <= 599:
        raise ValueError(text)
    return code


def _delay(text: str) -> float:
    return min(parse_go_duration(text), MAX_DELAY)


def _size(text: str) -> int:
    return max(0, min(int(text), MAX_SIZE))


@lru_cache(maxsize=256)
def parse_echo_query(query: str) -> EchoQuery:
    """Parse `status`, `delay`, `size`, `header` and `close` from a raw query string."""
    status: Weighted = ()
    delay: Weighted = ()
    size: Weighted = ()
    headers: list[tuple[str, str]] = []
    close_percent = 0.0
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "status":
            status = _weighted(value, _status)
        elif name == "delay":
            delay = _weighted(value, _delay)
        elif name == "size":
            size = _weighted(value, _size)
        elif name == "header":
            key, sep, val = value.partition(":")
            if not sep or not key.strip() or any(c in value for c in "\r\n"):
                raise EchoQueryError(f"invalid header {value!r}, expected K:V")
            try:
                value.encode("latin-1")
            except UnicodeEncodeError:
                raise EchoQueryError(f"header {value!r} is not latin-1") from None
            headers.append((key.strip(), val.strip()))
        elif name == "close":
            close_percent = _close_percent(value)
    return EchoQuery(status, delay, size, tuple(headers), close_percent)


def _close_percent(value: str) -> float:
    lowered = value.strip().lower()
    if lowered in ("", "true", "yes", "on"):
        return 100.0
    if lowered in ("false", "no", "off"):
        return 0.0
    try:
        return float(lowered)
    except ValueError:
        raise EchoQueryError(f"invalid close value {value!r}") from None


def _pick(entries: Weighted, default: object, draw: float) -> object:
    """Fortio's choice: walk cumulative percentages; past their sum, the default."""
    total = 0.0
    for value, percent in entries:
        total += percent
        if draw < total:
            return value
    return default


def decide(query: EchoQuery, rand: Callable[[], float] = random.random) -> Reply:
    """Choose this request's status, size, delay and close from the query's percentages."""
    status = _pick(query.status, 200, rand() * 100) if query.status else 200
    size = _pick(query.size, None, rand() * 100) if query.size else None
    delay = _pick(query.delay, 0.0, rand() * 100) if query.delay else 0.0
    close = query.close_percent >= 100 or (query.close_percent > 0 and rand() * 100 < query.close_percent)
    return Reply(int(status), size, float(delay), query.headers, close)  # type: ignore[arg-type]


@lru_cache(maxsize=64)
def filler(size: int) -> bytes:
    """A body of `size` printable bytes (cached: sizes repeat across requests)."""
    pattern = b"pylon-echo 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n"
    return (pattern * (size // len(pattern) + 1))[:size]


def http_date() -> bytes:
    return formatdate(usegmt=True).encode()


def build_response(status: int, body: bytes, date: bytes, *, close: bool = False,
                   headers: tuple[tuple[str, str], ...] = (), content_type: bytes = b"text/plain") -> bytes:
    """One complete HTTP/1.1 response, headers and body, ready for a single write."""
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Unknown"
    lines = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Server: " + SERVER_NAME,
        b"Date: " + date,
        b"Content-Type: " + content_type,
        b"Content-Length: %d" % len(body),
    ]
    lines.extend(f"{k}: {v}".encode("latin-1") for k, v in headers)
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def debug_text(host: str, peer: tuple[str, int], request_line: bytes, headers: list[tuple[bytes, bytes]],
               body: bytes) -> bytes:
    """The `/debug` page (Fortio's): who asked, the request line, its headers and its body, in plain text."""
    lines = [
        f"pylon echo debug server on {host} - request from {peer[0]}:{peer[1]}".encode(),
        b"",
        request_line,
        b"",
        b"headers:",
        b"",
    ]
    lines.extend(name + b": " + value for name, value in headers)
    lines += [b"", b"body:", b"", body, b""]
    return b"\n".join(lines)
