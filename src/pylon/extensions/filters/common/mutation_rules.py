"""config.common.mutation_rules.v3.HeaderMutation lists: Envoy's ordered header edits, compiled once (sans-IO);
and config.core.v3.KeyValueMutation lists, header_mutation's query parameter edits.

Unlike a route's `*_headers_to_add` (one level: removals first, then every add decided against the headers as
they were), a mutation list runs one mutation after another on the live headers, as Envoy's HeaderMutations
does: `remove` drops a name, `remove_on_match` every header whose name its StringMatcher matches, and `append`
is one HeaderValueOption under its `append_action` (ADD_IF_ABSENT and OVERWRITE_IF_EXISTS look at the headers the
earlier mutations left). A value may use the substitution formats pylon's route header rules know
(proxy/headers.py: `%REQ(...)%`, `%DOWNSTREAM_REMOTE_ADDRESS%`...): each append is compiled as a one-entry level
of those rules, so both share one formatter and one set of refusals. A list compiled with its caller's own
`commands` (the transform filter's %REQUEST_BODY(...)%) takes any access-log operator besides, read from the record
`facts` gives `apply`. Pseudo-headers and `host` are refused, as the route rules refuse them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pylon.config.envoy import EnvoyStruct, HeaderValueOption, HttpText, StringMatcher, _exactly_one
from pylon.config.errors import FieldError
from pylon.proxy.headers import (
    Downstream, HeaderList, HeaderOps, RequestLookup, _format, _parse_value, compile_header_level,
)
from pylon.proxy.router import _compile_string_matcher
from pylon.regex import get_engine


class RemoveOnMatch(EnvoyStruct, kw_only=True):
    """config.common.mutation_rules.v3.HeaderMutation.RemoveOnMatch."""

    key_matcher: StringMatcher | None = None

    def __post_init__(self) -> None:
        if self.key_matcher is None:
            raise FieldError("key_matcher", "missing required field")


class HeaderMutation(EnvoyStruct, kw_only=True):
    """config.common.mutation_rules.v3.HeaderMutation: oneof action {remove, append, remove_on_match}."""

    remove: HttpText | None = None
    append: HeaderValueOption | None = None
    remove_on_match: RemoveOnMatch | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "remove", "append", "remove_on_match")
        if self.remove is not None and (not self.remove or self.remove.startswith(":")
                                        or self.remove.lower() == "host"):
            raise FieldError("remove", f"header {self.remove!r} may not be removed (pseudo-headers and host are "
                             "off limits)")


#: what a list compiled with commands reads besides the request: a function making the record (called when read)
Facts = Callable[[], Any] | None
#: one compiled mutation: (headers, downstream, request lookup, facts) -> None, editing the headers in place
_Step = Callable[[HeaderList, "Downstream | None", "RequestLookup | None", Facts], None]


def _removal(name: bytes) -> _Step:
    return lambda headers, downstream, request, facts: headers.remove(name)


def _removal_on_match(matches: Callable[[Any], bool]) -> _Step:
    def step(headers: HeaderList, downstream: Downstream | None, request: RequestLookup | None,
             facts: Facts) -> None:
        headers.items = [item for item in headers.items if not matches(item[0])]
    return step


def _addition(ops: HeaderOps) -> _Step:
    return lambda headers, downstream, request, facts: ops.apply(headers, downstream, request, facts)


class HeaderMutations:
    """A compiled mutation list; `apply` edits a HeaderList in place, in the configured order."""

    __slots__ = ("steps", "empty", "reads_request")

    def __init__(self, mutations: Sequence[HeaderMutation], field: str, commands: Any = None) -> None:
        steps: list[_Step] = []
        reads_request = False
        for i, mutation in enumerate(mutations):
            if mutation.remove is not None:
                steps.append(_removal(mutation.remove.lower().encode()))
            elif mutation.append is not None:
                try:
                    ops = HeaderOps([compile_header_level([mutation.append], [], commands is not None, commands)])
                except ValueError as exc:
                    raise FieldError(f"{field}[{i}].append", str(exc)) from None
                reads_request = reads_request or ops.reads_request
                steps.append(_addition(ops))
            else:
                assert mutation.remove_on_match is not None and mutation.remove_on_match.key_matcher is not None
                steps.append(_removal_on_match(_compile_string_matcher(mutation.remove_on_match.key_matcher,
                                                                       get_engine(), as_bytes=True)))
        self.steps = tuple(steps)
        self.empty = not steps
        #: True when a value reads the request (%REQ(...)%): the caller passes a lookup
        self.reads_request = reads_request

    def apply(self, headers: HeaderList, downstream: Downstream | None = None,
              request: RequestLookup | None = None, facts: Facts = None) -> None:
        for step in self.steps:
            step(headers, downstream, request, facts)


# --------------------------------------------------------------------------- query parameters

class KeyValuePair(EnvoyStruct, kw_only=True):
    """config.core.v3.KeyValuePair; a query parameter's value must be a string (Envoy refuses other kinds)."""

    key: str
    value: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.value, str):
            raise FieldError("value", "only a string value is allowed for a query parameter")


class KeyValueAppend(EnvoyStruct, kw_only=True):
    """config.core.v3.KeyValueAppend; Envoy takes `record` only (`entry` alone is "No record specified")."""

    record: KeyValuePair | None = None
    entry: Any = None
    action: Literal["APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD",
                    "OVERWRITE_IF_EXISTS"] = "APPEND_IF_EXISTS_OR_ADD"

    def __post_init__(self) -> None:
        if self.record is None:
            raise FieldError("record", "No record specified for append mutation.")


class KeyValueMutation(EnvoyStruct, kw_only=True):
    """config.core.v3.KeyValueMutation: a parameter to append, or one to remove."""

    append: KeyValueAppend | None = None
    remove: str = ""

    def __post_init__(self) -> None:
        if self.append is None and not self.remove:
            raise FieldError("remove", "No mutation specified.")


#: what stays as it is when Envoy encodes an added value (observed: the rest is %XX, `~` included)
_QUERY_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._*")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
#: bytes a decoded parameter may not bring into the path: they would break the request line or change the query's
#: structure (a parameter smuggled in as `a%26admin%3Dtrue`); then it stays as it came
_UNSAFE_DECODED = re.compile(rb"[\x00-\x20\x7f-\xff#&=+%]")


def _encode(value: bytes) -> bytes:
    return b"".join(bytes((c,)) if c in _QUERY_SAFE else b"%%%02X" % c for c in value)


def _decode(text: bytes) -> bytes:
    """%XX decoded (a malformed escape stays), `+` kept; but kept as it came when an escape stands for a byte that
    would break the request line or the query's structure (Envoy 1.40 writes those decoded)."""
    if b"%" not in text:
        return text
    escaped = [int(m.group(1), 16) for m in _ESCAPE.finditer(text)]
    if any(_UNSAFE_DECODED.match(bytes((byte,))) for byte in escaped):
        return text
    return _ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), text)


class QueryParameterMutations:
    """Envoy's query parameter mutations on a path (sans-IO): the query is read into parameters by name (values
    decoded, in order), the mutations applied in order, and written back sorted by name as Envoy's map is;
    appended values are percent-encoded, the others written decoded (observed with Envoy 1.40)."""

    __slots__ = ("steps", "reads_request")

    def __init__(self, mutations: Sequence[KeyValueMutation], field: str) -> None:
        steps: list[tuple[str, bytes, Any]] = []
        for i, mutation in enumerate(mutations):
            if mutation.append is None:
                steps.append(("remove", mutation.remove.encode(), None))
                continue
            record = mutation.append.record
            assert record is not None
            try:
                template = _parse_value(record.value.encode())
            except ValueError as exc:
                raise FieldError(f"{field}[{i}].append.record.value", str(exc)) from None
            steps.append((mutation.append.action, record.key.encode(), template))
        self.steps = tuple(steps)
        self.reads_request = any(template.__class__ is tuple for _, _, template in steps)

    def apply(self, path: bytes, downstream: Downstream | None = None, request: RequestLookup | None = None) -> bytes:
        """The path with its query mutated."""
        base, _, query = path.partition(b"?")
        params: dict[bytes, list[bytes]] = {}
        if query:
            for part in query.split(b"&"):
                key, _, value = part.partition(b"=")
                params.setdefault(_decode(key), []).append(_decode(value))
        for action, key, template in self.steps:
            if action == "remove":
                params.pop(key, None)
                continue
            value = _encode(template if template.__class__ is bytes else _format(template, downstream, request))
            if action == "APPEND_IF_EXISTS_OR_ADD":
                params.setdefault(key, []).append(value)
            elif action == "ADD_IF_ABSENT":
                if key not in params:
                    params[key] = [value]
            elif action == "OVERWRITE_IF_EXISTS_OR_ADD" or key in params:  # the other: OVERWRITE_IF_EXISTS
                params[key] = [value]
        if not params:
            return base
        return base + b"?" + b"&".join(key + b"=" + value for key in sorted(params) for value in params[key])
