"""HTTP header lists and Envoy's header add/remove rules, compiled once per route config.

`HeaderList` wraps the list the HTTP codec already builds, `[(name, value), ...]`
with lower-cased names in arrival order, without copying it: the codec makes
one per request, so construction must be free. Lookups scan the list; for the
5-10 headers of a typical request a scan (~0.1-0.2 µs) beats building a dict
(~0.35 µs) unless a request is looked up more than two or three times.

`HeaderOps` is the compiled form of Envoy's `*_headers_to_add` /
`*_headers_to_remove` at one or more config levels, applied with Envoy's
`HeaderParser::evaluateHeaders` rules:
- per level, removals first; then every add decides against the headers as they
  were before the level's own additions (two ADD_IF_ABSENT of one absent name
  both add); then overwrites, then appends;
- an empty value is skipped unless `keep_empty_value`;
- levels run in the order given (the router passes route, virtual host, route
  configuration: the last one wins, as in Envoy by default).

Header values may use Envoy's substitution syntax, restricted to what a
sans-IO core can know: `%%` (a literal `%`), `%DOWNSTREAM_REMOTE_ADDRESS%` and
`%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` (from the `downstream` argument of
`apply`), and `%REQ(name)%` / `%REQ(name?alternative)%` / `%REQ(name):N%`, a request
header's value (the alternative when the first is absent; at most N characters),
from the `request` lookup of `apply`: a missing header is empty (so the header is
skipped unless keep_empty_value), as in Envoy. For request headers the router looks
them up before the tracer writes its context; for response headers, in the request
as it went upstream (`HeaderOps.bound`), so `%REQ(x-b3-traceid)%` answers the trace
the proxy sent (observed with Envoy 1.40). In a route configuration's rules (route,
virtual host, weighted cluster: `compile_header_level(..., stream_facts=True)`) any other
access-log operator may appear too (%RESPONSE_CODE%, %RESPONSE_FLAGS%, %UPSTREAM_HOST%,
%DYNAMIC_METADATA(...)% ...): the access log's formatter over the stream's record as it stands
when the headers are made (`apply`'s `facts`; unset values empty). Elsewhere, and for an operator
the access log does not know, any other `%OPERATOR%` is a `ValueError` at build time, naming it.
"""

from __future__ import annotations

import re
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Sequence

__all__ = [
    "ADD_IF_ABSENT",
    "APPEND_IF_EXISTS_OR_ADD",
    "HeaderList",
    "HeaderOps",
    "check_scripted_header",
    "cookie_value",
    "OVERWRITE_IF_EXISTS",
    "OVERWRITE_IF_EXISTS_OR_ADD",
    "RequestHeaders",
    "BoundHeaderOps",
    "compile_header_level",
    "request_lookup",
]


_NAME = itemgetter(0)  # a header pair's name


class HeaderList:
    """Headers as `(name, value)` byte pairs; names lower-case, duplicates allowed, order kept.

    `items` is the caller's list, used in place (no copy): whoever builds a
    `HeaderList` hands its list over.
    """

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[bytes, bytes]] | None = None) -> None:
        self.items = [] if items is None else items

    def get(self, name: bytes) -> bytes | None:
        """The first value of `name`, or None."""
        for n, v in self.items:
            if n == name:
                return v
        return None

    def get_all(self, name: bytes) -> list[bytes]:
        """Every value of `name`, in order."""
        return [v for n, v in self.items if n == name]

    def __contains__(self, name: object) -> bool:
        return name in map(_NAME, self.items)  # the scan in C: a response's headers are mostly not the one asked

    def remove(self, name: bytes) -> None:
        """Drop every header called `name`."""
        items = self.items
        if name in map(_NAME, items):
            self.items = [item for item in items if item[0] != name]

    def set(self, name: bytes, value: bytes) -> None:
        """Make `value` the only value of `name`: replaces the first in place, drops the others."""
        items = self.items
        names = list(map(_NAME, items))  # the names in C, then searched in C: no bytecode per header
        if name not in names:
            items.append((name, value))
            return
        first = names.index(name)
        items[first] = (name, value)
        if names.count(name) > 1:
            items[first + 1:] = [item for item in items[first + 1:] if item[0] != name]

    def add(self, name: bytes, value: bytes) -> None:
        """Append one more `name: value` (existing values are kept)."""
        self.items.append((name, value))

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"HeaderList({self.items!r})"


#: The request side uses the same class; the name matches what the router API says.
RequestHeaders = HeaderList

# Envoy's HeaderValueOption.HeaderAppendAction values.
APPEND_IF_EXISTS_OR_ADD = "APPEND_IF_EXISTS_OR_ADD"
ADD_IF_ABSENT = "ADD_IF_ABSENT"
OVERWRITE_IF_EXISTS_OR_ADD = "OVERWRITE_IF_EXISTS_OR_ADD"
OVERWRITE_IF_EXISTS = "OVERWRITE_IF_EXISTS"
# Maps config strings to these very objects, so `apply` can compare by identity.
_ACTIONS = {a: a for a in (APPEND_IF_EXISTS_OR_ADD, ADD_IF_ABSENT, OVERWRITE_IF_EXISTS_OR_ADD, OVERWRITE_IF_EXISTS)}

# Dynamic pieces of a value template.
_REMOTE_ADDRESS = 0
_REMOTE_ADDRESS_WITHOUT_PORT = 1
_OPERATORS = {
    b"DOWNSTREAM_REMOTE_ADDRESS": _REMOTE_ADDRESS,
    b"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _REMOTE_ADDRESS_WITHOUT_PORT,
}

Downstream = tuple[str, int]  # (ip, port) as asyncio's peername gives it
#: A request header's first value by lower-case name (pseudo-headers such as :authority included), or None.
RequestLookup = Callable[[bytes], "bytes | None"]


class _Req:
    """A %REQ(name?alternative):max% piece."""

    __slots__ = ("names", "max_length")

    def __init__(self, names: tuple[bytes, ...], max_length: int | None) -> None:
        self.names = names
        self.max_length = max_length

    def value(self, request: RequestLookup | None) -> bytes:
        if request is None:
            return b""
        for name in self.names:
            found = request(name)
            if found is not None:
                return found[:self.max_length] if self.max_length is not None else found
        return b""


class _Facts:
    """Any other access-log command operator (%RESPONSE_CODE%, %DYNAMIC_METADATA(...)%, %UPSTREAM_HOST% ...) in a
    route's header rules: the access log's formatter for it alone, over the stream's record as it stands when the
    headers are made (unset values empty, as Envoy's header formatter prints them)."""

    __slots__ = ("render",)

    def __init__(self, render: Callable[[Any], bytes]) -> None:
        self.render = render


def _facts_operator(value: bytes, operator: bytes, commands: Any = None) -> _Facts:
    from pylon.proxy.access_log import compile_text_format  # the access log imports the router, which imports this

    try:
        return _Facts(compile_text_format(f"%{operator.decode('utf-8', 'replace')}%", omit_empty_values=True,
                                          commands=commands))
    except ValueError as exc:
        raise ValueError(f"header value {value!r}: {exc}") from None


def _parse_req(value: bytes, operator: bytes) -> _Req | None:
    """`REQ(a?b):N` as a piece; None if `operator` is not REQ; ValueError when malformed."""
    if not operator.startswith(b"REQ("):
        return None
    close = operator.find(b")")
    rest = operator[close + 1:] if close > 0 else b""
    names = operator[4:close].lower().split(b"?") if close > 0 else []
    if close < 0 or not all(names) or len(names) > 2 or (rest and not (rest[:1] == b":" and rest[1:].isdigit())):
        raise ValueError(f"header value {value!r}: malformed %{operator.decode('utf-8', 'replace')}% (write "
                         "%REQ(name)%, %REQ(name?alternative)% or %REQ(name):length%)")
    return _Req(tuple(names), int(rest[1:]) if rest else None)


def request_lookup(headers: list[tuple[bytes, bytes]], pseudo: dict[bytes, bytes]) -> RequestLookup:
    """A `RequestLookup` over a header list, with the pseudo-headers (:authority, :path, ...) the codec keeps apart
    (`host` is :authority, as in Envoy's header map)."""
    def lookup(name: bytes) -> bytes | None:
        if name[:1] == b":":
            return pseudo.get(name)
        if name == b"host":
            return pseudo.get(b":authority")
        for n, v in headers:
            if n == name:
                return v
        return None
    return lookup


def _parse_value(value: bytes, stream_facts: bool = False,
                 commands: Any = None) -> bytes | tuple[bytes | int | _Req | _Facts, ...]:
    """A literal (bytes) or a template of literal and operator pieces; `stream_facts`: any access-log operator is
    allowed (a route's header rules, whose callers pass the stream's record to `apply`), and the caller's own
    `commands` (access_log.Command by name)."""
    if b"%" not in value:
        return value
    pieces: list[bytes | int | _Req | _Facts] = []
    literal = bytearray()
    i = 0
    while i < len(value):
        pct = value.find(b"%", i)
        if pct < 0:
            literal += value[i:]
            break
        literal += value[i:pct]
        close = value.find(b"%", pct + 1)
        if close < 0:
            raise ValueError(f"header value {value!r}: unescaped '%' at position {pct} (write '%%' for a percent sign)")
        if close == pct + 1:
            literal += b"%"
        else:
            name = value[pct + 1 : close]
            code: int | _Req | _Facts | None = _OPERATORS.get(name)
            if code is None:
                code = _parse_req(value, name)
            if code is None and stream_facts:
                code = _facts_operator(value, name, commands)
            if code is None:
                raise ValueError(
                    f"header value {value!r}: unsupported substitution operator %{name.decode('utf-8', 'replace')}%"
                    f" (supported: %DOWNSTREAM_REMOTE_ADDRESS%, %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%, "
                    f"%REQ(...)%, %%)"
                )
            if literal:
                pieces.append(bytes(literal))
                literal.clear()
            pieces.append(code)
        i = close + 1
    if literal:
        pieces.append(bytes(literal))
    if all(piece.__class__ is bytes for piece in pieces):
        return b"".join(pieces)  # type: ignore[arg-type]
    return tuple(pieces)


def _format(template: tuple[bytes | int | _Req | _Facts, ...], downstream: Downstream | None,
            request: RequestLookup | None, facts: Any = None) -> bytes:
    out = []
    for piece in template:
        if piece.__class__ is bytes:
            out.append(piece)
        elif piece.__class__ is _Req:
            out.append(piece.value(request))  # type: ignore[union-attr]
        elif piece.__class__ is _Facts:
            out.append(piece.render(facts) if facts is not None else b"")  # type: ignore[union-attr]
        elif downstream is not None:
            host, port = downstream[0], downstream[1]
            if piece == _REMOTE_ADDRESS_WITHOUT_PORT:
                out.append(host.encode())
            elif ":" in host:
                out.append(f"[{host}]:{port}".encode())
            else:
                out.append(f"{host}:{port}".encode())
    return b"".join(out)  # type: ignore[arg-type]


def _check_modifiable(name: bytes, where: str) -> None:
    # Envoy: ":-prefixed or host headers may not be modified".
    if not name or name.startswith(b":") or name == b"host":
        raise ValueError(f"{where}: header {name.decode('utf-8', 'replace')!r} may not be modified "
                         "(pseudo-headers and host are off limits)")


class _Level:
    """The compiled add/remove rules of one config level."""

    __slots__ = ("removes", "adds")

    def __init__(self, removes: frozenset[bytes], adds: tuple[tuple[bytes, Any, str, bool], ...]) -> None:
        self.removes = removes
        self.adds = adds


def compile_header_level(headers_to_add: Iterable[Any], headers_to_remove: Iterable[str],
                         stream_facts: bool = False, commands: Any = None) -> _Level | None:
    """Compile one level's `HeaderValueOption`s and names to remove; None when both are empty.

    `headers_to_add` items are `pylon.config.envoy.HeaderValueOption`s; with `stream_facts` their values may use
    any access-log operator (the caller gives `apply` the stream's record), and the caller's own `commands`. Raises
    `ValueError` on what Envoy rejects at config time (pseudo-headers, `host`,
    unknown substitution operators).
    """
    removes = set()
    for name in headers_to_remove:
        lname = name.lower().encode()
        _check_modifiable(lname, "headers_to_remove")
        removes.add(lname)
    adds = []
    for option in headers_to_add:
        name = option.header.key.lower().encode()
        _check_modifiable(name, "headers_to_add")
        # The deprecated `append: false` means OVERWRITE_IF_EXISTS_OR_ADD.
        action = _ACTIONS.get(OVERWRITE_IF_EXISTS_OR_ADD if option.append is False else option.append_action)
        if action is None:
            raise ValueError(f"header {option.header.key!r}: unknown append_action {option.append_action!r}")
        adds.append((name, _parse_value(option.header.value.encode(), stream_facts, commands), action,
                     bool(option.keep_empty_value)))
    if not removes and not adds:
        return None
    return _Level(frozenset(removes), tuple(adds))


class HeaderOps:
    """Header rules of several levels, applied in order (later levels win on overwrite)."""

    __slots__ = ("levels", "empty", "reads_request", "reads_stream")

    def __init__(self, levels: Sequence[_Level | None] = ()) -> None:
        self.levels: tuple[_Level, ...] = tuple(level for level in levels if level is not None)
        #: True when `apply` would do nothing: callers may skip the call.
        self.empty = not self.levels
        #: True when a value reads the request (%REQ(...)%): the caller passes `request` or binds one.
        self.reads_request = any(piece.__class__ is _Req for level in self.levels for _, template, _, _ in level.adds
                                 if template.__class__ is tuple for piece in template)
        #: True when a value reads the stream's record (%RESPONSE_CODE%, %DYNAMIC_METADATA(...)% ...): the caller
        #: passes `facts`, a function making it
        self.reads_stream = any(piece.__class__ is _Facts for level in self.levels for _, template, _, _ in level.adds
                                if template.__class__ is tuple for piece in template)

    def bound(self, request: RequestLookup) -> "BoundHeaderOps":
        """These rules with `request` as what %REQ(...)% reads (a response's rules, bound to the request sent)."""
        return BoundHeaderOps(self, request)

    def apply(self, headers: HeaderList, downstream: Downstream | None = None,
              request: RequestLookup | None = None, facts: Callable[[], Any] | None = None) -> None:
        """Mutate `headers` in place. `downstream` feeds the %DOWNSTREAM_REMOTE_ADDRESS...% operators, `request`
        the %REQ(...)% ones, `facts` (called once, when some value reads it) the stream's access-log record."""
        record = facts() if facts is not None and self.reads_stream else None
        for level in self.levels:
            removes = level.removes
            if removes:
                headers.items = [item for item in headers.items if item[0] not in removes]
            overwrite: list[tuple[bytes, bytes]] = []
            append: list[tuple[bytes, bytes]] = []
            for name, template, action, keep_empty in level.adds:
                value = template if template.__class__ is bytes else _format(template, downstream, request, record)
                if not value and not keep_empty:
                    continue
                if action is APPEND_IF_EXISTS_OR_ADD:
                    append.append((name, value))
                elif action is OVERWRITE_IF_EXISTS_OR_ADD:
                    overwrite.append((name, value))
                elif action is ADD_IF_ABSENT:
                    if name not in headers:
                        append.append((name, value))
                elif name in headers:  # OVERWRITE_IF_EXISTS
                    overwrite.append((name, value))
            for name, value in overwrite:
                headers.set(name, value)
            if append:
                headers.items.extend(append)


class BoundHeaderOps:
    """`HeaderOps` whose %REQ(...)% read one request: what `HeaderOps.bound` gives, used as the rules themselves."""

    __slots__ = ("ops", "request", "empty", "reads_stream")

    def __init__(self, ops: HeaderOps, request: RequestLookup) -> None:
        self.ops = ops
        self.request = request
        self.empty = ops.empty
        self.reads_stream = ops.reads_stream

    def apply(self, headers: HeaderList, downstream: Downstream | None = None,
              facts: Callable[[], Any] | None = None) -> None:
        self.ops.apply(headers, downstream, self.request, facts)


#: What a header written by a script (Lua, the Python filter) may be called: an RFC 9110 token in lower case, or a
#: pseudo-header; and what its value may never hold. The codecs write names and values as given, so a CR or LF
#: would end the header there and start one of the script's (or, copied from a request, the client's) making.
_FIELD_NAME = re.compile(rb":?[!#$%&'*+\-.^_`|~0-9a-z]+")
_NOT_IN_VALUE = re.compile(rb"[\r\n\x00]")


def check_scripted_header(name: bytes, value: bytes) -> None:
    """ValueError (Envoy's words: "invalid header value for: <name>") for a name or value the wire cannot carry."""
    if not _FIELD_NAME.fullmatch(name):
        raise ValueError(f"invalid header name: {name!r}")
    if _NOT_IN_VALUE.search(value):
        raise ValueError(f"invalid header value for: {name.decode('latin-1')}")


def cookie_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's cookie headers (quotes around it removed), or None, as Envoy's
    parseCookieValue: the first one (a cookie hash policy's, a stateful session's, the API key and credential
    filters')."""
    for header, value in headers:
        if header != b"cookie":
            continue
        for pair in value.split(b";"):
            key, equals, found = pair.strip().partition(b"=")
            if equals and key == name:
                return found[1:-1] if len(found) > 1 and found[:1] == found[-1:] == b'"' else found
    return None
