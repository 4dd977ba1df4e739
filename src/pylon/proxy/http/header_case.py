"""HTTP/1.1 header-name case on the wire (sans-IO): Envoy's Http1ProtocolOptions.header_key_format.

Why: pylon's HTTP/1 codecs keep names lower-case, as Envoy's do, and some HTTP/1 peers insist on a case. Envoy's
two formatters, and where they act:

- `proper_case_words` (stateless, the codec's own): every header line a codec writes - the proxy's own included
  (host, framing, connection) - gets its first letter and each letter after a non-alphanumeric upper-cased
  (`content-type` -> `Content-Type`, `te` -> `Te`). On the HCM it formats responses to clients, on a cluster
  requests to its hosts.
- `stateful_formatter` `preserve_case`: the codec that *reads* a message remembers each name's case as it came
  (the first spelling of a name wins) and the codec that *writes* that message on uses it; names it never saw
  (headers the proxy added) are written lower-case, or proper-cased with `formatter_type_on_envoy_headers:
  PROPER_CASE`. On the HCM it records requests' names (which the upstream request then carries, whatever the
  cluster says), on a cluster its responses' (which the client then gets).

A message's recorded case is a `PreservedCase`; `format_head` rewrites the names of a head's header lines with a
formatter (the start line and anything after the head are left alone). Case changes keep every length, so a head
formatted after it was made keeps its offsets. Nothing here runs unless a config asks for it.
"""

from __future__ import annotations

import re
from typing import Any, Callable

__all__ = ["KeyFormattingEncoder", "PreservedCase", "format_head", "proper_case"]

_WORD_START = re.compile(rb"(?:^|(?<=[^A-Za-z0-9]))[a-z]")


def proper_case(name: bytes) -> bytes:
    """Envoy's ProperCaseHeaderKeyFormatter: the first character and every one after a non-alphanumeric one
    upper-cased when it is a letter."""
    return _WORD_START.sub(lambda match: match.group().upper(), name)


def _as_is(name: bytes) -> bytes:
    return name


class PreservedCase:
    """One message's header names as they came (lower-case name -> first spelling), Envoy's PreserveCaseHeaderFormatter."""

    __slots__ = ("original", "fallback")

    def __init__(self, fallback_proper: bool = False) -> None:
        self.original: dict[bytes, bytes] = {}
        self.fallback: Callable[[bytes], bytes] = proper_case if fallback_proper else _as_is

    def record(self, name: bytes) -> None:
        """A name as a peer wrote it (the first spelling of a name is kept)."""
        lower = name.lower()
        if lower not in self.original:
            self.original[lower] = name

    def format(self, name: bytes) -> bytes:
        """The spelling to write for a lower-case `name`: the recorded one, else the fallback's."""
        found = self.original.get(name)
        return found if found is not None else self.fallback(name)


def format_head(data: bytes, fmt: Callable[[bytes], bytes]) -> bytes:
    """`data` (an HTTP/1 message head, possibly followed by a body) with each header line's name through `fmt`."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    first = data.find(b"\r\n")
    if first == end:
        return data  # a start line and no header lines
    lines = data[first + 2:end].split(b"\r\n")
    out = [data[:first + 2]]
    for line in lines:
        colon = line.find(b":")
        out.append(fmt(line[:colon]) + line[colon:] if colon > 0 else line)
        out.append(b"\r\n")
    out.append(data[end + 2:])
    return b"".join(out)


class KeyFormattingEncoder:
    """A stream's view of its HTTP/1.1 connection's response encoder that writes heads with `fmt`'s names (only
    for a response that needs it: the HCM's proper_case_words, or the case an upstream's response came with)."""

    __slots__ = ("inner", "fmt")

    def __init__(self, inner: Any, fmt: Callable[[bytes], bytes]) -> None:
        self.inner = inner
        self.fmt = fmt

    def __getattr__(self, name: str) -> Any:  # encode_data, encode_end, tunnels, out: the connection's own
        return getattr(self.inner, name)

    def _formatted(self, result: Any) -> Any:
        out = self.inner.out
        out[-1] = format_head(out[-1], self.fmt)
        return result

    def encode_continue(self) -> None:
        self._formatted(self.inner.encode_continue())

    def encode_headers(self, *args: Any, **kwargs: Any) -> bool:
        return self._formatted(self.inner.encode_headers(*args, **kwargs))

    def encode_upgrade(self, *args: Any, **kwargs: Any) -> None:
        self._formatted(self.inner.encode_upgrade(*args, **kwargs))

    def encode_local_reply(self, *args: Any, **kwargs: Any) -> None:
        self._formatted(self.inner.encode_local_reply(*args, **kwargs))

    def encode_trailers_only(self, *args: Any, **kwargs: Any) -> None:
        self._formatted(self.inner.encode_trailers_only(*args, **kwargs))
