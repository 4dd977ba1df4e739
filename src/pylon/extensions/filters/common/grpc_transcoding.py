"""JSON/HTTP ↔ gRPC transcoding, sans-IO: what envoy.filters.http.grpc_json_transcoder decides per request.

From a FileDescriptorSet (the `proto_descriptor` of the filter) and the services it names, each method's
`google.api.http` rules (and its additional_bindings; with `auto_mapping`, also `POST /<service>/<method>`)
become bindings: an HTTP method and a path template. A request that matches one becomes a gRPC unary call:
path variables, query parameters and the JSON body (the rule's `body`: `*` for the whole message, a field
name for that field, none for no body) fill the request message, which is serialized and framed. gRPC
messages coming back become JSON with protobuf's canonical JSON mapping (the print options choose the field
names, defaults and enum form); several (server streaming) become a JSON array.

Path templates are google.api.http's: `/` segments of literals, `*` (one segment), `**` (the rest), and
variables `{field.path}` (one segment) or `{field.path=segments}`, then an optional `:verb`. Variables bound
to one segment are percent-decoded whole; multi-segment ones keep `%2F` encoded (Envoy's default
url_unescape_spec, ALL_CHARACTERS_EXCEPT_RESERVED, for both).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

#: gRPC status -> HTTP status, as Envoy maps a call's result for an HTTP client (Grpc::Utility::grpcToHttpStatus).
GRPC_TO_HTTP = {0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
                12: 501, 13: 500, 14: 503, 15: 500, 16: 401}
FRAME_HEADER = 5


class TranscodingError(ValueError):
    """A request that matched a binding but cannot become its gRPC request (Envoy answers 400)."""


class DescriptorError(ValueError):
    """The descriptor set or a named service/method cannot be used (a config error)."""


@dataclass(frozen=True)
class _Segment:
    literal: str | None  # a literal segment, or None for a wildcard
    rest: bool = False  # `**`: this and every later segment


@dataclass(frozen=True)
class _Variable:
    field_path: tuple[str, ...]
    start: int  # first segment index it covers
    end: int | None  # one past its last segment (None: to the end, through `**`)


@dataclass(frozen=True)
class Binding:
    """One HTTP rule of one method."""

    http_method: str
    segments: tuple[_Segment, ...]
    variables: tuple[_Variable, ...]
    verb: str | None
    body: str  # "" (no body), "*" (the whole message) or a field name
    response_body: str
    method: MethodDescriptor

    @property
    def grpc_path(self) -> bytes:
        return f"/{self.method.containing_service.full_name}/{self.method.name}".encode()

    def match(self, path: str) -> dict[tuple[str, ...], str] | None:
        """The path variables' values, or None when `path` (without query) does not fit the template."""
        verb = None
        last_slash = path.rfind("/")
        colon = path.find(":", last_slash + 1)
        if colon >= 0:
            path, verb = path[:colon], path[colon + 1:]
        if verb != self.verb:
            return None
        parts = path.split("/")[1:] if path.startswith("/") else None
        if parts is None:
            return None
        if self.segments and self.segments[-1].rest:
            if len(parts) < len(self.segments) - 1:
                return None
        elif len(parts) != len(self.segments):
            return None
        for i, segment in enumerate(self.segments):
            if segment.rest:
                break
            if segment.literal is not None and unquote(parts[i]) != segment.literal:
                return None
        values = {}
        for variable in self.variables:
            covered = parts[variable.start:variable.end]
            if len(covered) == 1:
                values[variable.field_path] = unquote(covered[0])
            else:  # multi-segment: reserved characters stay encoded
                values[variable.field_path] = "/".join(unquote(p).replace("/", "%2F") for p in covered)
        return values


def parse_template(template: str) -> tuple[tuple[_Segment, ...], tuple[_Variable, ...], str | None]:
    """google.api.http's path template grammar; DescriptorError naming the template when it does not parse."""
    if not template.startswith("/"):
        raise DescriptorError(f"http rule path {template!r} must start with '/'")
    text, verb = template, None
    last = text.rfind("}")
    colon = text.find(":", max(last, text.rfind("/")) + 1)
    if colon >= 0:
        text, verb = text[:colon], text[colon + 1:]
    segments: list[_Segment] = []
    variables: list[_Variable] = []
    i, body = 0, text[1:]
    while i <= len(body):
        if body[i:i + 1] == "{":
            close = body.find("}", i)
            if close < 0:
                raise DescriptorError(f"http rule path {template!r}: unclosed variable")
            name, _, pattern = body[i + 1:close].partition("=")
            start = len(segments)
            for piece in (pattern or "*").split("/"):
                segments.append(_segment(piece, template))
            end = None if segments[-1].rest else len(segments)
            variables.append(_Variable(tuple(name.split(".")), start, end))
            i = close + 1
        else:
            slash = body.find("/", i)
            piece = body[i:] if slash < 0 else body[i:slash]
            segments.append(_segment(piece, template))
            i = len(body) if slash < 0 else slash
        if i < len(body) and body[i] != "/":
            raise DescriptorError(f"http rule path {template!r}: a variable must be a whole segment")
        i += 1
    if any(s.rest for s in segments[:-1]):
        raise DescriptorError(f"http rule path {template!r}: '**' must be the last segment")
    return tuple(segments), tuple(variables), verb


def _segment(piece: str, template: str) -> _Segment:
    if piece == "*":
        return _Segment(None)
    if piece == "**":
        return _Segment(None, rest=True)
    if not piece or "{" in piece or "}" in piece:
        raise DescriptorError(f"http rule path {template!r}: bad segment {piece!r}")
    return _Segment(piece)


@dataclass(frozen=True)
class PrintOptions:
    add_whitespace: bool = False
    always_print_primitive_fields: bool = False
    always_print_enums_as_ints: bool = False
    preserve_proto_field_names: bool = False


class Transcoder:
    """The bindings of the named services of one descriptor set."""

    def __init__(self, descriptor_set: bytes, services: Iterable[str], auto_mapping: bool,
                 print_options: PrintOptions, ignored_query_parameters: Iterable[str] = (),
                 ignore_unknown_query_parameters: bool = False) -> None:
        files = descriptor_pb2.FileDescriptorSet()
        try:
            files.ParseFromString(descriptor_set)
        except Exception as exc:  # protobuf's DecodeError
            raise DescriptorError(f"unable to parse proto descriptor: {exc}") from None
        self.pool = descriptor_pool.DescriptorPool()
        added: set[str] = set()
        by_name = {f.name: f for f in files.file}

        def add(name: str) -> None:  # dependencies first, as the pool wants them
            if name in added:
                return
            added.add(name)
            proto = by_name.get(name)
            if proto is None:
                raise DescriptorError(f"proto descriptor: {name!r} is imported but not in the set")
            for dependency in proto.dependency:
                add(dependency)
            self.pool.Add(proto)

        for proto in files.file:
            add(proto.name)
        self.bindings: list[Binding] = []
        for service_name in services:
            try:
                service = self.pool.FindServiceByName(service_name)
            except KeyError:
                raise DescriptorError(f"could not find {service_name!r} in the proto descriptor") from None
            for method in service.methods:
                self.bindings.extend(_bindings(method, auto_mapping))
        self.print_options = print_options
        self.ignored = frozenset(ignored_query_parameters)
        self.ignore_unknown = ignore_unknown_query_parameters
        self._classes: dict[str, Any] = {}

    def match(self, http_method: str, path: str) -> tuple[Binding, dict[tuple[str, ...], str]] | None:
        """The first binding the request fits (method and path without its query), with the path variables."""
        for binding in self.bindings:
            if binding.http_method == http_method:
                values = binding.match(path)
                if values is not None:
                    return binding, values
        return None

    def message_class(self, descriptor: Any) -> Any:
        cls = self._classes.get(descriptor.full_name)
        if cls is None:
            cls = self._classes[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
        return cls

    def query_fits(self, binding: Binding, query: str) -> bool:
        """Whether every query parameter names a field the request can take (an ignored one always does): Envoy
        transcodes a request only then, and passes any other unchanged, unless unknown ones are to be ignored."""
        if self.ignore_unknown:
            return True
        descriptor = binding.method.input_type
        for name, _ in parse_qsl(query, keep_blank_values=True):
            if name not in self.ignored and _leaf(descriptor, tuple(name.split("."))) is None:
                return False
        return True

    def request(self, binding: Binding, variables: dict[tuple[str, ...], str], query: str, body: bytes) -> bytes:
        """The gRPC request body (one length-prefixed message) for a matched request; TranscodingError (400).

        The JSON body first (fields it does not know are ignored, as Envoy does), then the path variables, then
        the query parameters, each later one winning over an earlier one for the same field."""
        message = self.message_class(binding.method.input_type)()
        if binding.body and body.strip():
            try:
                parsed = json.loads(body)
                if binding.body == "*":
                    json_format.ParseDict(parsed, message, ignore_unknown_fields=True)
                else:
                    field = message.DESCRIPTOR.fields_by_name[binding.body]
                    json_format.ParseDict({field.json_name: parsed}, message, ignore_unknown_fields=True)
            except (json.JSONDecodeError, json_format.ParseError) as exc:
                raise TranscodingError(str(exc)) from None
        for path, value in variables.items():
            _set_field(message, path, value)
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name not in self.ignored:
                _set_field(message, tuple(name.split(".")), value)
        payload = message.SerializeToString()
        return b"\x00" + len(payload).to_bytes(4, "big") + payload

    def response(self, binding: Binding, body: bytes) -> bytes:
        """The JSON for a gRPC response body (its length-prefixed messages); several become a JSON array."""
        cls = self.message_class(binding.method.output_type)
        texts = []
        for payload in _frames(body):
            message = cls()
            message.ParseFromString(payload)
            if binding.response_body:
                message = getattr(message, binding.response_body)
            texts.append(self._json(message))
        if binding.method.server_streaming:
            return b"[" + b",".join(texts) + b"]"
        return texts[0] if texts else b"{}"

    def _json(self, message: Any) -> bytes:
        options = self.print_options
        as_dict = json_format.MessageToDict(
            message, preserving_proto_field_name=options.preserve_proto_field_names,
            use_integers_for_enums=options.always_print_enums_as_ints,
            always_print_fields_with_no_presence=options.always_print_primitive_fields)
        if options.add_whitespace:
            return (json.dumps(as_dict, indent=1) + "\n").encode()
        return json.dumps(as_dict, separators=(",", ":")).encode()


def _bindings(method: MethodDescriptor, auto_mapping: bool) -> list[Binding]:
    options = descriptor_pb2.MethodOptions()
    options.ParseFromString(method.GetOptions().SerializeToString())
    out = []
    if options.HasExtension(annotations_pb2.http):
        rule = options.Extensions[annotations_pb2.http]
        for each in (rule, *rule.additional_bindings):
            kind = each.WhichOneof("pattern")
            if kind is None:
                continue
            if kind == "custom":
                http_method, template = each.custom.kind, each.custom.path
            else:
                http_method, template = kind.upper(), getattr(each, kind)
            segments, variables, verb = parse_template(template)
            out.append(Binding(http_method, segments, variables, verb, each.body, each.response_body, method))
    if auto_mapping and not method.client_streaming:
        service = method.containing_service.full_name
        out.append(Binding("POST", (_Segment(service), _Segment(method.name)), (), None, "*", "", method))
    return out


def _leaf(descriptor: Any, path: tuple[str, ...]) -> FieldDescriptor | None:
    """The scalar field at a dotted path through singular message fields, or None."""
    for name in path[:-1]:
        field = _field(descriptor, name)
        if field is None or field.type != FieldDescriptor.TYPE_MESSAGE or _repeated(field):
            return None
        descriptor = field.message_type
    field = _field(descriptor, path[-1])
    return None if field is None or field.type == FieldDescriptor.TYPE_MESSAGE else field


def _set_field(message: Any, path: tuple[str, ...], text: str) -> None:
    """Set the scalar field at `path` (checked by `_leaf`) from its text form; TranscodingError for a bad value."""
    for name in path[:-1]:
        message = getattr(message, _field(message.DESCRIPTOR, name).name)  # type: ignore[union-attr]
    field = _field(message.DESCRIPTOR, path[-1])
    if field is None:
        raise TranscodingError(f"Could not find field \"{'.'.join(path)}\" in the type \"{message.DESCRIPTOR.full_name}\".")
    value = _scalar(field, text)
    if _repeated(field):
        getattr(message, field.name).append(value)
    else:
        setattr(message, field.name, value)


def _field(descriptor: Any, name: str) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(name)
    if field is None:
        field = next((f for f in descriptor.fields if f.json_name == name), None)
    return field


def _repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _invalid(field: FieldDescriptor, text: str) -> TranscodingError:
    kind = descriptor_pb2.FieldDescriptorProto.Type.Name(field.type)
    return TranscodingError(f'{field.name}: invalid value "{text}" for type {kind}')


def _scalar(field: FieldDescriptor, text: str) -> Any:
    """A query parameter's or path variable's text as the field's value (Envoy's 400 message when it is not one)."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind == FieldDescriptor.TYPE_BYTES:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if kind == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise _invalid(field, text)
        return text == "true"
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        try:
            return float(text)
        except ValueError:
            raise _invalid(field, text) from None
    if kind == FieldDescriptor.TYPE_ENUM:
        value = field.enum_type.values_by_name.get(text)
        if value is None:
            try:
                return int(text)
            except ValueError:
                raise _invalid(field, text) from None
        return value.number
    try:
        return int(text)
    except ValueError:
        raise _invalid(field, text) from None


def _frames(body: bytes) -> Iterable[bytes]:
    i = 0
    while i + FRAME_HEADER <= len(body):
        length = int.from_bytes(body[i + 1:i + FRAME_HEADER], "big")
        yield body[i + FRAME_HEADER:i + FRAME_HEADER + length]
        i += FRAME_HEADER + length
