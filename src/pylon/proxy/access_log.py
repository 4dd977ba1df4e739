"""Envoy access logging: format strings compiled once, lines written buffered off the event loop.

A log format (Envoy's SubstitutionFormatString: a text format with `%OPERATOR%`
command operators, or a JSON object whose string values hold them) is compiled
at config time into one function with every operator inlined (see
"operators" below), so formatting a line does no parsing and few calls.
Unknown operators are a ValueError naming the operator; the config loader adds
the field path.

The data path fills an `AccessLogRecord` per request (HTTP) or connection
(TCP proxy) and calls `AccessLogger.log(record)`. Lines are appended to an
in-memory buffer per destination; `AccessLogWriter` hands full buffers (and,
on a timer, partial ones) to a background thread that does the `write()`
calls, so a slow disk or a blocked stdout pipe never stalls the loop (Envoy
has a flush thread for the same reason).
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from pylon.config.datasource import read_bytes
from pylon.config.envoy import AccessLog, FileAccessLog, StderrAccessLog, StdoutAccessLog, SubstitutionFormatString
from pylon.proxy import dynamic_metadata
from pylon.proxy.access_log_filter import compile_filter
from pylon.regex import get_engine

# Envoy's default format (configuration/observability/access_log/usage: "Default format string").
DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

# What a text format prints for a value that is not set (Envoy's "unspecified value").
UNSPECIFIED = "-"

Address = tuple[Any, ...] | str  # as the socket module gives it: (host, port, ...) or a Unix path


class AccessLogRecord:
    """What the data path knows about one request or TCP connection when it logs it.

    Strings are `str`; headers are the `(lowercase name, value)` byte pairs the
    codec already has; addresses are socket addresses as the socket module gives
    them, formatted only if a log format asks (a str is printed as is).
    Durations are milliseconds from `start_time` (epoch seconds), None when the
    point was never reached. TCP proxy records leave the HTTP fields at None.
    Construct with keywords, or empty and assign attributes.
    """

    __slots__ = (
        "start_time", "method", "path", "original_path", "scheme", "authority", "protocol",
        "request_headers", "response_code", "response_code_details", "response_flags",
        "response_headers", "bytes_received", "bytes_sent", "duration", "request_duration",
        "response_duration", "upstream_host", "upstream_cluster", "upstream_local_address",
        "upstream_transport_failure_reason", "downstream_remote", "downstream_local",
        "route_name", "connection_id", "requested_server_name", "connection_termination_details",
        "health_check", "local_reply_body", "dynamic_metadata",
    )

    def __init__(
        self,
        start_time: float = 0.0,
        *,
        method: str | None = None,
        path: str | None = None,
        original_path: str | None = None,
        scheme: str | None = None,
        authority: str | None = None,
        protocol: str | None = None,
        request_headers: Sequence[tuple[bytes, bytes]] = (),
        response_code: int | None = None,
        response_code_details: str | None = None,
        response_flags: str = "",
        response_headers: Sequence[tuple[bytes, bytes]] = (),
        bytes_received: int = 0,
        bytes_sent: int = 0,
        duration: float | None = None,
        request_duration: float | None = None,
        response_duration: float | None = None,
        upstream_host: Address | None = None,
        upstream_cluster: str | None = None,
        upstream_local_address: Address | None = None,
        upstream_transport_failure_reason: str | None = None,
        downstream_remote: Address | None = None,
        downstream_local: Address | None = None,
        route_name: str | None = None,
        connection_id: int | None = None,
        requested_server_name: str | None = None,
        connection_termination_details: str | None = None,
        health_check: bool = False,
        local_reply_body: bytes | None = None,
        dynamic_metadata: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.start_time = start_time
        self.method = method
        self.path = path
        self.original_path = original_path
        self.scheme = scheme
        self.authority = authority
        self.protocol = protocol
        self.request_headers = request_headers
        self.response_code = response_code
        self.response_code_details = response_code_details
        self.response_flags = response_flags
        self.response_headers = response_headers
        self.bytes_received = bytes_received
        self.bytes_sent = bytes_sent
        self.duration = duration
        self.request_duration = request_duration
        self.response_duration = response_duration
        self.upstream_host = upstream_host
        self.upstream_cluster = upstream_cluster
        self.upstream_local_address = upstream_local_address
        self.upstream_transport_failure_reason = upstream_transport_failure_reason
        self.downstream_remote = downstream_remote
        self.downstream_local = downstream_local
        self.route_name = route_name
        self.connection_id = connection_id
        self.requested_server_name = requested_server_name
        self.connection_termination_details = connection_termination_details
        self.health_check = health_check  # the health_check filter took the request as a health check
        self.local_reply_body = local_reply_body  # a local reply's body, while local_reply_config formats it
        self.dynamic_metadata = dynamic_metadata  # the stream's (proxy/dynamic_metadata.py), None when none was set


# --------------------------------------------------------------------------- operators
#
# Each operator compiles to a Python expression over the record `r` (plus
# helper objects bound by name), and a whole format becomes one generated
# function. Calling one small getter per operator instead costs ~60-100 ns per
# operator on these machines, i.e. over 1 µs for Envoy's default format before
# any work is done; inlined, a typical JSON line costs about what a
# hand-written formatter does. Only identifiers generated here and the fixed
# expressions below ever reach the generated source: user text (literals, keys,
# header names, time formats) is bound as objects, never spliced in.


def format_address(address: Address | None) -> str | None:
    """`1.2.3.4:80`, `[::1]:80`, a Unix path or an internal listener's `envoy://` address, as Envoy prints them."""
    if address is None:
        return None
    if isinstance(address, str):
        return str(address)  # a plain str: JSON encoders refuse a subclass (an internal listener's InternalAddress)
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address_without_port(address: Address | None) -> str | None:
    if address is None:
        return None
    if isinstance(address, str):
        return str(address)
    return address[0]


def address_port(address: Address | None) -> int | None:
    """The port of an IP address (None for a Unix path or nothing), as %DOWNSTREAM_*_PORT% print it."""
    if address is None or isinstance(address, str):
        return None
    return address[1]


class _Compiler:
    """Collects what one generated formatter needs: bound objects, temporaries, header dicts."""

    def __init__(self, local_reply: bool = False, commands: Mapping[str, Command] | None = None) -> None:
        self.local_reply = local_reply  # formatting a local reply's body: %LOCAL_REPLY_BODY% has a value
        self.commands = commands or {}  # the caller's own operators (Envoy's command parsers of a filter)
        self.env: dict[str, Any] = {}
        self.uses_request_headers = False
        self.uses_response_headers = False
        self._temps = 0

    def bind(self, value: Any) -> str:
        name = f"_b{len(self.env)}"
        self.env[name] = value
        return name

    def temp(self) -> str:
        self._temps += 1
        return f"_t{self._temps}"

    def function(self, result: str) -> Callable[[AccessLogRecord], Any]:
        # Header lists become dicts once per line (first occurrence wins), then each lookup is one `get`.
        lines = ["def _format(r):"]
        if self.uses_request_headers:
            lines.append("    _rq = dict(reversed(r.request_headers))")
        if self.uses_response_headers:
            lines.append("    _rs = dict(reversed(r.response_headers))")
        lines.append(f"    return {result}")
        namespace = dict(self.env)
        exec(compile("\n".join(lines), "<access log format>", "exec"), namespace)
        return namespace["_format"]


# Kinds of operator values: STR may be None or empty (both "not set"); INT may be None; BODY is a string printed
# as it is, even empty, in text and in JSON (Envoy's %LOCAL_REPLY_BODY%); META is a metadata value's text (None:
# not set, "" printed empty), and a lone META operator in a JSON format keeps the value's type (`_metadata_typed`).
STR, INT, BODY, META = "str", "int", "body", "meta"

# Request "headers" that are fields of the record rather than entries of request_headers.
_REQUEST_PSEUDO = {
    ":method": "method", ":path": "path", ":authority": "authority", "host": "authority",
    ":scheme": "scheme", "x-envoy-original-path": "original_path",
}


def _header(c: _Compiler, arg: str | None, max_length: int | None, response: bool) -> str:
    """REQ(X?Y):N / RESP(X?Y):N: the first of the headers that is present, truncated to N characters."""
    names = [name.strip().lower() for name in (arg or "").split("?")]
    if len(names) > 2 or not all(names):
        raise ValueError(f"invalid header specification {arg!r}: expected NAME or NAME?ALTERNATIVE")
    sources = []
    for name in names:
        field = None if response else _REQUEST_PSEUDO.get(name)
        if field is not None:
            sources.append(f"r.{field}")
            continue
        if response:
            c.uses_response_headers = True
        else:
            c.uses_request_headers = True
        raw = c.temp()
        sources.append(f"(None if ({raw} := {'_rs' if response else '_rq'}.get({c.bind(name.encode())})) is None"
                       f" else {raw}.decode('latin-1'))")
    expr = sources[0]
    if len(sources) == 2:
        first = c.temp()
        expr = f"({first} if ({first} := {sources[0]}) is not None else {sources[1]})"
    if max_length is not None:
        value = c.temp()
        expr = f"(None if ({value} := {expr}) is None else {value}[:{max_length}])"
    return expr


_MILLIS = [f".{ms:03d}Z" for ms in range(1000)]  # a lookup is cheaper than formatting per line
_SUBSECOND = re.compile(r"%([1-9]?)f|%E([1-9])S|%s")


def start_time_formatter(spec: str | None) -> Callable[[float], str]:
    """%START_TIME% in UTC; the part down to seconds is rendered once per second, not per line.

    The default is Envoy's `%Y-%m-%dT%H:%M:%E3SZ` (ISO 8601, milliseconds). A
    custom format is strftime plus Envoy's additions: `%s` (epoch seconds),
    `%f` / `%1f`..`%9f` (fraction digits) and `%E1S`..`%E9S` (seconds with digits).
    """
    cache: list[Any] = [None, None]
    if not spec:
        def default(t: float) -> str:
            second = int(t)
            if second != cache[0]:
                cache[0], cache[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            return cache[1] + _MILLIS[int((t - second) * 1000)]

        return default

    chunks: list[str] = []
    extras: list[Callable[[float], str]] = []
    last = 0
    for match in _SUBSECOND.finditer(spec):
        chunks.append(spec[last:match.start()])
        if match.group(0) == "%s":
            extras.append(lambda t: str(int(t)))
        elif match.group(2):
            extras.append(_seconds_with_fraction(int(match.group(2))))
        else:
            extras.append(_fraction(int(match.group(1) or 9)))
        last = match.end()
    chunks.append(spec[last:])

    def custom(t: float) -> str:
        second = int(t)
        if second != cache[0]:
            moment = time.gmtime(second)
            cache[0], cache[1] = second, [time.strftime(chunk, moment) if chunk else "" for chunk in chunks]
        rendered = cache[1]
        parts = [rendered[0]]
        for extra, chunk in zip(extras, rendered[1:]):
            parts.append(extra(t))
            parts.append(chunk)
        return "".join(parts)

    return custom


def _fraction(digits: int) -> Callable[[float], str]:
    def render(t: float) -> str:
        return f"{int((t - int(t)) * 10**digits):0{digits}d}"

    return render


def _seconds_with_fraction(digits: int) -> Callable[[float], str]:
    fraction = _fraction(digits)

    def render(t: float) -> str:
        return f"{time.gmtime(int(t)).tm_sec:02d}.{fraction(t)}"

    return render


def _millis(field: str) -> Callable[[_Compiler, str | None, int | None], str]:
    """Durations print as whole milliseconds, like Envoy's."""

    def build(c: _Compiler, arg: str | None, max_length: int | None) -> str:
        value = c.temp()
        return f"(None if ({value} := r.{field}) is None else int({value}))"

    return build


def _field(field: str) -> Callable[[_Compiler, str | None, int | None], str]:
    return lambda c, arg, max_length: f"r.{field}"


def _address(field: str, with_port: bool = True) -> Callable[[_Compiler, str | None, int | None], str]:
    convert = format_address if with_port else address_without_port

    def build(c: _Compiler, arg: str | None, max_length: int | None) -> str:
        # Consecutive lines mostly repeat an address (keep-alive, one upstream): remember the last one.
        last: list[Any] = [None, None]

        def render(address: Address | None) -> str | None:
            if address != last[0]:
                last[0], last[1] = address, convert(address)
            return last[1]

        return f"{c.bind(render)}(r.{field})"

    return build


class _Operator(NamedTuple):
    build: Callable[[_Compiler, str | None, int | None], str]
    kind: str
    argument: bool = False  # takes (or, for REQ/RESP, requires) an argument
    truncatable: bool = False


_OPERATORS: dict[str, _Operator] = {
    "START_TIME": _Operator(lambda c, arg, n: f"{c.bind(start_time_formatter(arg))}(r.start_time)", STR, True),
    "REQ": _Operator(lambda c, arg, n: _header(c, arg, n, response=False), STR, True, True),
    "RESP": _Operator(lambda c, arg, n: _header(c, arg, n, response=True), STR, True, True),
    # Envoy's long names for the same two operators (its docs' examples use them).
    "REQUEST_HEADER": _Operator(lambda c, arg, n: _header(c, arg, n, response=False), STR, True, True),
    "RESPONSE_HEADER": _Operator(lambda c, arg, n: _header(c, arg, n, response=True), STR, True, True),
    "PROTOCOL": _Operator(_field("protocol"), STR),
    "RESPONSE_CODE": _Operator(_field("response_code"), INT),
    "RESPONSE_FLAGS": _Operator(_field("response_flags"), STR),
    "RESPONSE_CODE_DETAILS": _Operator(_field("response_code_details"), STR),
    "BYTES_RECEIVED": _Operator(_field("bytes_received"), INT),
    "BYTES_SENT": _Operator(_field("bytes_sent"), INT),
    "DURATION": _Operator(_millis("duration"), INT),
    "REQUEST_DURATION": _Operator(_millis("request_duration"), INT),
    "RESPONSE_DURATION": _Operator(_millis("response_duration"), INT),
    "UPSTREAM_HOST": _Operator(_address("upstream_host"), STR),
    "UPSTREAM_CLUSTER": _Operator(_field("upstream_cluster"), STR),
    # Envoy's _RAW ignores a cluster's alt_stat_name; pylon has no alt_stat_name, so both print the name.
    "UPSTREAM_CLUSTER_RAW": _Operator(_field("upstream_cluster"), STR),
    "REQUESTED_SERVER_NAME": _Operator(_field("requested_server_name"), STR),
    "CONNECTION_TERMINATION_DETAILS": _Operator(_field("connection_termination_details"), STR),
    "UPSTREAM_LOCAL_ADDRESS": _Operator(_address("upstream_local_address"), STR),
    "UPSTREAM_TRANSPORT_FAILURE_REASON": _Operator(_field("upstream_transport_failure_reason"), STR),
    "DOWNSTREAM_REMOTE_ADDRESS": _Operator(_address("downstream_remote"), STR),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _Operator(_address("downstream_remote", with_port=False), STR),
    "DOWNSTREAM_LOCAL_ADDRESS": _Operator(_address("downstream_local"), STR),
    "DOWNSTREAM_LOCAL_PORT": _Operator(lambda c, arg, n: f"{c.bind(address_port)}(r.downstream_local)", INT),
    "DOWNSTREAM_REMOTE_PORT": _Operator(lambda c, arg, n: f"{c.bind(address_port)}(r.downstream_remote)", INT),
    "ROUTE_NAME": _Operator(_field("route_name"), STR),
    "CONNECTION_ID": _Operator(_field("connection_id"), INT),
    "HOSTNAME": _Operator(lambda c, arg, n: c.bind(socket.gethostname()), STR),
    "LOCAL_REPLY_BODY": _Operator(lambda c, arg, n: _local_reply_body(c), BODY),
    "DYNAMIC_METADATA": _Operator(lambda c, arg, n: _metadata_text(c, arg, n), META, True, True),
}


def _metadata_path(arg: str | None) -> tuple[str, tuple[str, ...]]:
    """DYNAMIC_METADATA(NAMESPACE:KEY:...): the namespace and the path of keys under it."""
    namespace, *path = (arg or "").split(":")
    if not namespace or not all(path):
        raise ValueError(f"invalid metadata specification {arg!r}: expected NAMESPACE or NAMESPACE:KEY[:KEY...]")
    return namespace, tuple(path)


def _metadata_text(c: _Compiler, arg: str | None, max_length: int | None) -> str:
    """%DYNAMIC_METADATA(NAMESPACE:KEY*):Z% as text: a string as it is, other values as JSON, at most Z characters."""
    namespace, path = _metadata_path(arg)
    expr = f"{c.bind(dynamic_metadata.render_text)}({c.bind(dynamic_metadata.lookup)}(r.dynamic_metadata, " \
           f"{c.bind(namespace)}, {c.bind(path)}))"
    if max_length is not None:
        value = c.temp()
        expr = f"(None if ({value} := {expr}) is None else {value}[:{max_length}])"
    return expr


def _metadata_typed(c: _Compiler, arg: str | None, max_length: str | None) -> str:
    """A lone %DYNAMIC_METADATA(...)% in a JSON format: the value with its type (null when not set); a maximum
    length cuts strings only (Envoy 1.40 leaves numbers, lists and objects whole, observed)."""
    namespace, path = _metadata_path(arg)

    def typed(metadata: dict[str, dict[str, Any]] | None) -> Any:
        value = dynamic_metadata.lookup(metadata, namespace, path)
        if value is dynamic_metadata.MISSING:
            return None
        if max_length is not None and isinstance(value, str):
            return value[:int(max_length)]
        return dynamic_metadata.canonical(value)

    return f"{c.bind(typed)}(r.dynamic_metadata)"


def _local_reply_body(c: _Compiler) -> str:
    if not c.local_reply:
        raise ValueError("command operator %LOCAL_REPLY_BODY% is supported in local_reply_config body formats "
                         "only (not in access logs yet)")
    return "(r.local_reply_body or b'').decode('utf-8', 'replace')"

class Command(NamedTuple):
    """An operator one caller adds to the formats it compiles, as an Envoy filter hands the formatter its own command
    parsers (the transform filter's %REQUEST_BODY(...)%). Both functions take the record the caller formats (it
    carries what they read) and the operator's argument (None without one); `text` gives its text (None: not set),
    `typed` its value where a JSON format keeps a lone operator's type (None: null). Envoy's body commands take a
    maximum length and ignore it; so do these."""

    text: Callable[[Any, str | None], str | None]
    typed: Callable[[Any, str | None], Any]


_COMMAND = re.compile(r"%([A-Z][A-Z0-9_]*)(?:\(([^)]*)\))?(?::(\d+))?%")


def _operator(c: _Compiler, name: str, arg: str | None, max_length: str | None) -> tuple[str, str]:
    """(expression, kind) for one command operator; ValueError naming it when it is unsupported or misused."""
    command = c.commands.get(name)
    if command is not None:
        return f"{c.bind(command.text)}(r, {c.bind(arg)})", META
    operator = _OPERATORS.get(name)
    if operator is None:
        raise ValueError(f"unsupported access log command operator %{name}%")
    if arg is not None and not operator.argument:
        raise ValueError(f"command operator %{name}% takes no argument")
    if arg is None and operator.truncatable:
        raise ValueError(f"command operator %{name}% needs an argument, e.g. %{name}(X-REQUEST-ID)%")
    if max_length is not None and not operator.truncatable:
        raise ValueError(f"command operator %{name}% does not support a maximum length")
    return operator.build(c, arg, int(max_length) if max_length is not None else None), operator.kind


def _parse(c: _Compiler, text: str) -> list[str | tuple[str, str]]:
    """Literal strings and (expression, kind) pairs in order; a `%` that starts no operator is literal."""
    pieces: list[str | tuple[str, str]] = []
    last = 0
    for match in _COMMAND.finditer(text):
        if match.start() > last:
            pieces.append(text[last:match.start()])
        pieces.append(_operator(c, *match.groups()))
        last = match.end()
    if last < len(text):
        pieces.append(text[last:])
    return pieces


# --------------------------------------------------------------------------- formatters


def _as_text(c: _Compiler, expr: str, kind: str, missing: str) -> str:
    """An operator's value for a text position: `missing` when not set."""
    if kind == STR:
        return f"({expr} or {missing!r})"
    if kind == BODY:
        return expr
    value = c.temp()
    if kind == META:
        return f"({missing!r} if ({value} := {expr}) is None else {value})"
    return f"({missing!r} if ({value} := {expr}) is None else {value})"


def _interpolate(c: _Compiler, text: str, missing: str) -> str:
    """An expression rendering `text` with its operators: one `str.format` call."""
    template: list[str] = []
    arguments: list[str] = []
    for piece in _parse(c, text):
        if isinstance(piece, str):
            template.append(piece.replace("{", "{{").replace("}", "}}"))
        else:
            template.append("{}")
            arguments.append(_as_text(c, *piece, missing))
    if not arguments:
        return c.bind(text)
    return f"{c.bind(''.join(template).format)}({', '.join(arguments)})"


def compile_text_format(text: str, omit_empty_values: bool = False, local_reply: bool = False,
                        commands: Mapping[str, Command] | None = None) -> Callable[[AccessLogRecord], bytes]:
    """A text format: unset operators print `-` (nothing with omit_empty_values); no newline is added.
    `local_reply`: the format of a local reply's body (local_reply_config), where %LOCAL_REPLY_BODY% is known;
    `commands`: the caller's own operators."""
    c = _Compiler(local_reply, commands)
    return c.function(f"{_interpolate(c, text, '' if omit_empty_values else UNSPECIFIED)}.encode()")


def _json_value(c: _Compiler, value: Any, omit_empty_values: bool) -> str:
    """A lone operator keeps its type (numbers stay numbers, unset is null); mixed text is a string."""
    if isinstance(value, Mapping):
        return _json_object(c, value, omit_empty_values)
    if not isinstance(value, str):
        return c.bind(value)
    if lone := _COMMAND.fullmatch(value):
        command = c.commands.get(lone.group(1))
        if command is not None:
            return f"{c.bind(command.typed)}(r, {c.bind(lone.group(2))})"
        expr, kind = _operator(c, *lone.groups())
        if kind == META:
            return _metadata_typed(c, lone.group(2), lone.group(3))
        return f"({expr} or None)" if kind == STR else expr
    return _interpolate(c, value, "" if omit_empty_values else UNSPECIFIED)


def _json_object(c: _Compiler, spec: Mapping[str, Any], omit_empty_values: bool) -> str:
    # A Struct type per object: as fast to encode as a dict, and omit_defaults
    # drops unset (None) values for omit_empty_values at no per-line cost.
    fields = [f"f{i}" for i in range(len(spec))]
    line_type = msgspec.defstruct(
        "AccessLogLine",
        [(field, Any, None) for field in fields],
        rename=dict(zip(fields, spec)),
        omit_defaults=omit_empty_values,
    )
    values = [_json_value(c, value, omit_empty_values) for value in spec.values()]
    return f"{c.bind(line_type)}({', '.join(values)})"


def compile_json_format(spec: Mapping[str, Any], omit_empty_values: bool = False, local_reply: bool = False,
                        commands: Mapping[str, Command] | None = None) -> Callable[[AccessLogRecord], bytes]:
    """A JSON format: one object per line, newline-terminated."""
    c = _Compiler(local_reply, commands)
    body = _json_object(c, spec, omit_empty_values)
    return c.function(f"{c.bind(msgspec.json.Encoder().encode)}({body}) + b'\\n'")


def compile_log_format(log_format: SubstitutionFormatString | None, local_reply: bool = False,
                       commands: Mapping[str, Command] | None = None) -> Callable[[AccessLogRecord], bytes]:
    """The formatter for a config's `log_format` (or a local reply's `body_format`: `local_reply`); None means
    Envoy's default text format. `commands`: the caller's own operators."""
    if log_format is None:
        return compile_text_format(DEFAULT_FORMAT)
    if log_format.json_format is not None:
        return compile_json_format(log_format.json_format, log_format.omit_empty_values, local_reply, commands)
    if log_format.text_format is not None:
        text = log_format.text_format
    else:
        assert log_format.text_format_source is not None  # exactly one is set (config validation)
        text = read_bytes(log_format.text_format_source).decode()
    return compile_text_format(text, log_format.omit_empty_values, local_reply, commands)



# --------------------------------------------------------------------------- buffered output


class Destination:
    """One output (file or stream) with its pending bytes; several loggers may share it."""

    __slots__ = ("name", "fd", "owns_fd", "buffer", "_writer")

    def __init__(self, name: str, fd: int, owns_fd: bool, writer: AccessLogWriter) -> None:
        self.name = name
        self.fd = fd
        self.owns_fd = owns_fd
        self.buffer = bytearray()
        self._writer = writer

    def write(self, line: bytes) -> None:
        self.buffer += line
        if len(self.buffer) >= self._writer.buffer_limit:
            self._writer.hand_off(self)


class AccessLogWriter:
    """Buffers per destination, a flush timer on the loop, and one thread that does the writes.

    Create one per process (worker) after fork: the thread starts on the first
    hand-off. `flush()` never blocks; `close()` blocks until everything queued
    is written (use it at exit). If the thread falls more than `max_pending`
    bytes behind, new buffers are dropped and counted in `dropped_bytes` rather
    than growing memory without bound.

    Buffers are handed off at 1 MiB, not at Envoy's 64 KiB: each hand-off makes
    the thread take the GIL from the event loop two or three times (wake-up, back
    from `write`), and at 64 KiB, some 120 hand-offs a second under load, those
    switches cost about 2.5 µs per logged request; at 1 MiB about 0.2 µs
    (benchmarks/results/proxy_ab-access-log-batches.md). A line still reaches its file
    within `flush_interval`.
    """

    def __init__(
        self, flush_interval: float = 1.0, buffer_limit: int = 1024 * 1024, max_pending: int = 16 * 1024 * 1024
    ) -> None:
        self.flush_interval = flush_interval
        self.buffer_limit = buffer_limit
        self.max_pending = max_pending
        self.dropped_bytes = 0
        self.write_errors = 0
        self._destinations: dict[str, Destination] = {}
        self._queue: queue.SimpleQueue[tuple[Destination, bytes] | None] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def file(self, path: str) -> Destination:
        """The destination for `path` (shared by every logger of that path); /dev/stdout and /dev/stderr are the streams."""
        if path == "/dev/stdout":
            return self.stdout()
        if path == "/dev/stderr":
            return self.stderr()
        destination = self._destinations.get(path)
        if destination is None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            destination = self._destinations[path] = Destination(path, fd, True, self)
        return destination

    def stdout(self) -> Destination:
        return self._stream("/dev/stdout", 1)

    def stderr(self) -> Destination:
        return self._stream("/dev/stderr", 2)

    def _stream(self, name: str, fd: int) -> Destination:
        destination = self._destinations.get(name)
        if destination is None:
            destination = self._destinations[name] = Destination(name, fd, False, self)
        return destination

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flush every `flush_interval` seconds on `loop`."""
        self._loop = loop
        self._timer = loop.call_later(self.flush_interval, self._tick)

    def _tick(self) -> None:
        self.flush()
        assert self._loop is not None
        self._timer = self._loop.call_later(self.flush_interval, self._tick)

    def flush(self) -> None:
        """Hand every non-empty buffer to the writer thread (does not wait for the write)."""
        for destination in self._destinations.values():
            if destination.buffer:
                self.hand_off(destination)

    def hand_off(self, destination: Destination) -> None:
        data = bytes(destination.buffer)
        destination.buffer.clear()
        with self._lock:
            if self._pending + len(data) > self.max_pending:
                self.dropped_bytes += len(data)
                return
            self._pending += len(data)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pylon-access-log", daemon=True)
            self._thread.start()
        self._queue.put((destination, data))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            destination, data = item
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(destination.fd, view):]
            except OSError:
                self.write_errors += 1
            with self._lock:
                self._pending -= len(data)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the timer, write out everything buffered and close the files this writer opened."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None
        for destination in self._destinations.values():
            if destination.owns_fd:
                os.close(destination.fd)
        self._destinations.clear()


class AccessLogger:
    """One configured access log: a compiled format, where its lines go, and the filter a record must pass."""

    __slots__ = ("format", "destination", "passes")

    def __init__(self, format: Callable[[AccessLogRecord], bytes], destination: Destination,
                 passes: Callable[[AccessLogRecord], bool] | None = None) -> None:
        self.format = format
        self.destination = destination
        self.passes = passes

    def log(self, record: AccessLogRecord) -> None:
        if self.passes is None or self.passes(record):
            self.destination.write(self.format(record))


def build_access_loggers(entries: Sequence[AccessLog], writer: AccessLogWriter) -> list[AccessLogger]:
    """Loggers for a config's `access_log` list (HCM, TCP proxy or admin)."""
    loggers = []
    for entry in entries:
        config = entry.typed_config
        if isinstance(config, FileAccessLog):
            destination = writer.file(config.path)
        elif isinstance(config, StdoutAccessLog):
            destination = writer.stdout()
        elif isinstance(config, StderrAccessLog):
            destination = writer.stderr()
        else:
            raise ValueError(f"unsupported access logger {type(config).__name__}")
        passes = compile_filter(entry.filter, get_engine()) if entry.filter is not None else None
        loggers.append(AccessLogger(compile_log_format(config.log_format), destination, passes))
    return loggers
