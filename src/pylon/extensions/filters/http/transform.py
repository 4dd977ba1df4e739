"""envoy.filters.http.transform (TransformConfig): JSON request and response bodies rewritten, headers set from them.

Why: an LLM gateway routes and bills by what is inside a JSON body (the model asked for, the tokens used): this
filter lifts body fields into headers (`%REQUEST_BODY(model)%`, `%RESPONSE_BODY(usage:prompt_tokens)%`) and
rewrites the body itself from a substitution format. As Envoy 1.40's filter does:

- a direction is transformed only when its config is set, the message has a body and its content-type contains
  `application/json`; a response the proxy made itself never is. Such a body is held whole (the connection's
  buffer limit: 413 for a request, 500 for a response beyond it, as Envoy's buffering).
- the body must parse as a JSON object (protobuf's Struct: numbers are doubles), else nothing at all changes.
  The body format (`body_transformation.body_format`, text or JSON, with the body commands) is made first; with
  MERGE (the default) it must parse as a JSON object too, else nothing changes, and its top-level keys replace the
  body's (Struct's MergeFrom), the result written as compact JSON with sorted keys; with REPLACE it is the new
  body as it came out. Then `headers_mutations` run (config.common.mutation_rules, any access-log operator and the
  body commands: both read the body as it came), then the body is replaced, its length fixed, and the
  content-type set to `body_format.content_type` when that is not empty. Counted `rq_transformed` /
  `rs_transformed` when headers or body were transformed, under the HCM's `http.<stat_prefix>.` with Envoy's
  prefix `.http_transform` (sic: `http.<stat_prefix>..http_transform.rq_transformed`, as Envoy 1.40 names them).
- `%REQUEST_BODY(a:b)%` / `%RESPONSE_BODY(a:b)%`: the value at that path of keys through objects; nothing when
  it is missing or null (a header is then not added, an access-log text prints `-`), a string as it is, anything
  else as compact JSON (numbers without a fraction when integral). The request body they read in the response is
  the one the request transformation parsed (and merged): none when the request was not transformed.
- a route's typed_per_filter_config replaces the filter's config for that route (the most specific one);
  `clear_route_cache` chooses the route again after the request headers were transformed. Both it and
  `clear_cluster_cache` is Envoy's error.

Departures: `clear_cluster_cache` (Envoy re-picks the cluster of the same route) is refused by name. Envoy drops
a replaced body's content-length and sends it chunked; pylon sends it with its new length (the same bytes).
A JSON body format's keys come out sorted in both (Envoy makes a Struct of it). Envoy's Struct keeps every
number a double, so an integer beyond 2^53 comes out rounded in Envoy's JSON, whole in pylon's.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, SubstitutionFormatString
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.mutation_rules import HeaderMutation, HeaderMutations
from pylon.extensions.filters.common.per_route import MostSpecific
from pylon.extensions.filters.common.request_edits import replace_request_headers
from pylon.proxy import dynamic_metadata
from pylon.proxy.access_log import Command, compile_log_format
from pylon.proxy.filters.http import register_filter
from pylon.proxy.headers import HeaderList, request_lookup

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.transform.v3.TransformConfig"
_JSON = b"application/json"


class BodyTransformation(EnvoyStruct, kw_only=True):
    """transform.v3.BodyTransformation."""

    body_format: SubstitutionFormatString
    action: Literal["MERGE", "REPLACE"] = "MERGE"


class Transformation(EnvoyStruct, kw_only=True):
    """transform.v3.Transformation."""

    headers_mutations: list[HeaderMutation] = msgspec.field(default_factory=list)
    body_transformation: BodyTransformation | None = None


class TransformConfig(EnvoyStruct, kw_only=True, weakref=True):
    """transform.v3.TransformConfig: the filter's config, and a route's replacement of it."""

    request_transformation: Transformation | None = None
    response_transformation: Transformation | None = None
    clear_cluster_cache: bool = False
    clear_route_cache: bool = False

    def __post_init__(self) -> None:
        if self.clear_cluster_cache and self.clear_route_cache:
            raise ValueError("Only one of clear_cluster_cache and clear_route_cache can be set to true")
        if self.clear_cluster_cache:
            raise FieldError("clear_cluster_cache", "is not supported yet (re-picking the cluster of the same "
                                                    "route); clear_route_cache is")
        _Compiled(self)  # the formats are checked at load, naming the field


# --------------------------------------------------------------------------- the body commands


def body_value(body: dict[str, Any] | None, arg: str | None) -> Any:
    """The value at `arg`'s path of keys (`a:b`) in a parsed body, as Envoy's structValue finds it; None when
    missing or null (an empty path finds nothing)."""
    if body is None or not arg:
        return None
    node: Any = body
    for key in arg.split(":"):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
        if node is None:
            return None
    return node


def as_text(value: Any) -> str | None:
    """A body value as a header or a text format prints it: a string as it is, anything else as compact JSON."""
    if value is None or isinstance(value, str):
        return value
    return msgspec.json.encode(value, order="sorted").decode()  # parsed bodies hold integral numbers as ints


class _BodyRecord:
    """The stream's access-log record with the parsed bodies the body commands read (every other attribute is the
    record's)."""

    __slots__ = ("record", "request_body", "response_body")

    def __init__(self, record: Any, request_body: dict[str, Any] | None, response_body: dict[str, Any] | None) -> None:
        self.record = record
        self.request_body = request_body
        self.response_body = response_body

    def __getattr__(self, name: str) -> Any:
        return getattr(self.record, name)


COMMANDS = {
    "REQUEST_BODY": Command(lambda r, arg: as_text(body_value(r.request_body, arg)),
                            lambda r, arg: dynamic_metadata.canonical(body_value(r.request_body, arg))),
    "RESPONSE_BODY": Command(lambda r, arg: as_text(body_value(r.response_body, arg)),
                             lambda r, arg: dynamic_metadata.canonical(body_value(r.response_body, arg))),
}


def _number(text: str) -> float | int:
    """A JSON number with a fraction or exponent as a double, an int when integral: Envoy's Struct prints it so."""
    number = float(text)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


_DECODER = msgspec.json.Decoder(float_hook=_number)


def parse_object(body: bytes) -> dict[str, Any] | None:
    """A body as protobuf's JSON reader makes a Struct of it; None when it is not a JSON object."""
    try:
        parsed = _DECODER.decode(body)
    except msgspec.DecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def serialized(body: dict[str, Any]) -> bytes:
    """A Struct as Envoy writes it: compact JSON, keys sorted, integral numbers without a fraction."""
    return msgspec.json.encode(body, order="sorted")


# --------------------------------------------------------------------------- compiled configs


def _sorted(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: _sorted(value) if isinstance(value, dict) else value for key, value in sorted(spec.items())}


class _Side:
    """One direction's transformation, compiled."""

    __slots__ = ("headers", "body_format", "merge", "content_type")

    def __init__(self, transformation: Transformation, field: str) -> None:
        self.headers = HeaderMutations(transformation.headers_mutations, f"{field}.headers_mutations", COMMANDS) \
            if transformation.headers_mutations else None
        body = transformation.body_transformation
        self.body_format = None
        self.merge = True
        self.content_type = b""
        if body is not None:
            body_format = body.body_format
            if body_format.json_format is not None:  # Envoy makes a Struct of it: its keys come out sorted
                body_format = msgspec.structs.replace(body_format, json_format=_sorted(body_format.json_format))
            try:
                self.body_format = compile_log_format(body_format, commands=COMMANDS)
            except ValueError as exc:
                raise FieldError(f"{field}.body_transformation.body_format", str(exc)) from None
            self.merge = body.action == "MERGE"
            self.content_type = body.body_format.content_type.encode()

    def transform(self, record: _BodyRecord, original: dict[str, Any],
                  headers: HeaderList, lookup: Any, peer: Any) -> tuple[bytes | None, bool]:
        """(the new body or None, whether anything was transformed); `headers` edited in place, `original` merged
        into (the body the response's %REQUEST_BODY% reads is the merged one, as in Envoy)."""
        made = self.body_format(record) if self.body_format is not None else None
        update = parse_object(made) if made is not None and self.merge else None
        if made is not None and self.merge and update is None:
            return None, False  # a merge needs a JSON object: nothing changes
        if self.headers is not None:
            self.headers.apply(headers, peer, lookup, lambda: record)  # the body as it came
        if update is not None:
            original.update(update)  # Struct's MergeFrom: top-level keys replaced
            made = serialized(original)
        return made, made is not None or self.headers is not None


class _Compiled:
    __slots__ = ("request", "response", "clear_route_cache")

    def __init__(self, config: TransformConfig) -> None:
        self.request = _Side(config.request_transformation, "request_transformation") \
            if config.request_transformation is not None else None
        self.response = _Side(config.response_transformation, "response_transformation") \
            if config.response_transformation is not None else None
        self.clear_route_cache = config.clear_route_cache


def _is_json(headers: Any) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return _JSON in value
    return False


def _pseudo(stream: Any) -> dict[bytes, bytes]:
    return {b":authority": stream.authority or b"", b":path": stream.path, b":method": stream.method,
            b":scheme": stream.conn.scheme}


class TransformFilter:
    """One HCM's transform filter in one worker; per-route configs compiled once each."""

    def __init__(self, name: str, config: TransformConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.configs = MostSpecific(name, config, _Compiled)
        prefix = f"http.{stat_prefix}..http_transform."
        self.rq_transformed = stats.counter(prefix + "rq_transformed")
        self.rs_transformed = stats.counter(prefix + "rs_transformed")
        #: the request body a stream's request transformation parsed, for %REQUEST_BODY% in its response
        self.request_bodies: dict[Any, dict[str, Any]] = {}

    def decode_headers(self, stream: Any) -> bool:
        return True

    def wants_request_body(self, stream: Any) -> bool:
        return self.configs.of(stream).request is not None and _is_json(stream.headers)

    def decode_body(self, stream: Any, body: bytes) -> bytes | None:
        config = self.configs.of(stream)
        side = config.request
        assert side is not None
        original = parse_object(body)
        if original is None:
            return None
        self.request_bodies[stream] = original
        stream.on_finish(lambda: self.request_bodies.pop(stream, None))
        record = _BodyRecord(stream.hcm.access_record(stream, stream.conn.loop_time() - stream.start), original, None)
        edited = HeaderList(list(stream.headers))
        pseudo = _pseudo(stream)
        new_body, transformed = side.transform(record, original, edited,
                                               lambda name: request_lookup(edited.items, pseudo)(name),
                                               stream.conn.peer)
        if not transformed:
            return None
        self.rq_transformed.inc()
        if new_body is not None:
            edited.remove(b"content-length")
            if side.content_type:
                edited.set(b"content-type", side.content_type)
        replace_request_headers(stream, edited.items)
        if side.headers is not None and config.clear_route_cache:
            stream.rewrite_request(stream.method, stream.path, None, rematch=True, keep_original=False)
        return new_body

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        pass  # the response is transformed whole, in encode_body

    def wants_response_body(self, stream: Any) -> bool:
        return not stream.local_reply and self.configs.of(stream).response is not None and \
            _is_json(stream.resp_headers)

    def encode_body(self, stream: Any, status: int, headers: HeaderList, body: bytes) -> bytes | None:
        side = self.configs.of(stream).response
        if side is None or stream.local_reply or not _is_json(headers.items):
            return None
        original = parse_object(body)
        if original is None:
            return None
        record = _BodyRecord(stream.hcm.access_record(stream, stream.conn.loop_time() - stream.start),
                             self.request_bodies.get(stream), original)
        new_body, transformed = side.transform(record, original, headers,
                                               request_lookup(stream.headers, _pseudo(stream)), stream.conn.peer)
        if not transformed:
            return None
        self.rs_transformed.inc()
        if new_body is not None and side.content_type:
            headers.set(b"content-type", side.content_type)
        return new_body


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, TransformConfig)
registry.register_typed(registry.HTTP_FILTER_PER_ROUTE, TYPE_URL, TransformConfig)
register_filter(TransformConfig, TransformFilter)
