"""envoy.filters.http.grpc_json_transcoder: JSON over HTTP in front of a gRPC service.

As Envoy 1.40 does (observed side by side, tests/proxy/test_proxy_grpc_json_transcoder.py): a request whose
method and path fit one of the services' `google.api.http` rules (extensions/filters/common/grpc_transcoding.py
decides which, and builds the message) is sent upstream as that method's unary gRPC call: POST to
`/<package.Service>/<Method>`, content-type application/grpc, `te: trailers`, the client's path and method kept
in x-envoy-original-path and x-envoy-original-method, and the route chosen again for the new path unless
`match_incoming_request_route`. A request that fits no rule, or is gRPC already, passes unchanged. A body that
cannot become the message is answered 400 (flag -, details grpc_json_transcode_failure).

The response is held whole: its gRPC messages become JSON (a server stream's become a JSON array),
content-type application/json; its grpc-status (from the trailers, or a trailers-only head) becomes the HTTP
status by gRPC's mapping (NOT_FOUND 404, UNAVAILABLE 503, ...), grpc-status and grpc-message stay as headers.

Refused by name (not supported yet): convert_grpc_status, url_unescape_spec other than the default,
query_param_unescape_plus, match_unregistered_custom_verb, request_validation_options,
case_insensitive_enum_parsing, max_request_body_size, max_response_body_size, capture_unknown_query_parameters,
print_options.stream_newline_delimited / stream_sse_style_delimited, and the filter as a per-route config.
"""

from __future__ import annotations

from typing import Any, Literal

from pylon.config import registry
from pylon.config.datasource import DataSource, DataSourceError, read_bytes
from pylon.config.envoy import EnvoyStruct, NotSupportedYet
from pylon.config.errors import FieldError
from pylon.extensions.filters.common import grpc_transcoding as gt
from pylon.extensions.filters.http.grpc_http1_bridge import is_grpc
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
JSON = b"application/json"
TRANSCODE_FAILED = lr.LocalReply(400, "-", b"", "grpc_json_transcode_failure")


class PrintOptions(EnvoyStruct, kw_only=True):
    add_whitespace: bool = False
    always_print_primitive_fields: bool = False
    always_print_enums_as_ints: bool = False
    preserve_proto_field_names: bool = False
    stream_newline_delimited: bool = False
    stream_sse_style_delimited: bool = False

    def __post_init__(self) -> None:
        for name in ("stream_newline_delimited", "stream_sse_style_delimited"):
            if getattr(self, name):
                raise FieldError(name, "not supported yet: a server stream is sent as one JSON array")


class GrpcJsonTranscoder(EnvoyStruct, kw_only=True):
    """extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder."""

    proto_descriptor: str | None = None
    proto_descriptor_bin: bytes | None = None
    services: list[str] = []
    print_options: PrintOptions = PrintOptions()
    match_incoming_request_route: bool = False
    ignored_query_parameters: list[str] = []
    auto_mapping: bool = False
    ignore_unknown_query_parameters: bool = False
    convert_grpc_status: bool = False
    url_unescape_spec: Literal["ALL_CHARACTERS_EXCEPT_RESERVED", "ALL_CHARACTERS_EXCEPT_SLASH",
                               "ALL_CHARACTERS"] = "ALL_CHARACTERS_EXCEPT_RESERVED"
    query_param_unescape_plus: bool = False
    match_unregistered_custom_verb: bool = False
    request_validation_options: NotSupportedYet | None = None
    case_insensitive_enum_parsing: bool = False
    max_request_body_size: NotSupportedYet | None = None
    max_response_body_size: NotSupportedYet | None = None
    capture_unknown_query_parameters: bool = False

    def __post_init__(self) -> None:
        if (self.proto_descriptor is None) == (self.proto_descriptor_bin is None):
            raise FieldError("descriptor_set", "exactly one of proto_descriptor, proto_descriptor_bin must be set")
        if self.url_unescape_spec != "ALL_CHARACTERS_EXCEPT_RESERVED":
            raise FieldError("url_unescape_spec", "not supported yet: only ALL_CHARACTERS_EXCEPT_RESERVED (the default)")
        for name in ("convert_grpc_status", "query_param_unescape_plus", "match_unregistered_custom_verb",
                     "case_insensitive_enum_parsing", "capture_unknown_query_parameters"):
            if getattr(self, name):
                raise FieldError(name, "not supported yet")
        try:
            self.transcoder()
        except gt.DescriptorError as exc:
            raise FieldError("proto_descriptor" if self.proto_descriptor is not None else "proto_descriptor_bin",
                             str(exc)) from None

    def transcoder(self) -> gt.Transcoder:
        """The bindings (reads the descriptor file again: each worker builds its own)."""
        if self.proto_descriptor is not None:
            try:
                descriptors = read_bytes(DataSource(filename=self.proto_descriptor))
            except DataSourceError as exc:
                raise gt.DescriptorError(f"unable to read the proto descriptor: {exc}") from None
        else:
            assert self.proto_descriptor_bin is not None
            descriptors = self.proto_descriptor_bin
        options = self.print_options
        return gt.Transcoder(descriptors, self.services, self.auto_mapping, gt.PrintOptions(
            options.add_whitespace, options.always_print_primitive_fields, options.always_print_enums_as_ints,
            options.preserve_proto_field_names), self.ignored_query_parameters, self.ignore_unknown_query_parameters)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in headers if key == name), None)


class GrpcJsonTranscoderFilter:
    """One HCM's transcoder in one worker."""

    def __init__(self, name: str, config: GrpcJsonTranscoder, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.transcoder = config.transcoder()
        self.rematch = not config.match_incoming_request_route
        #: transcoded streams -> (their binding, the path variables and the query, kept until the body is in)
        self.calls: dict[Any, tuple[gt.Binding, dict[tuple[str, ...], str], str]] = {}

    # ---------------------------------------------------------------- the request side
    def decode_headers(self, stream: Any) -> bool:
        if is_grpc(_header(stream.headers, b"content-type")):
            return True
        target, _, query = stream.path.decode("utf-8", "surrogateescape").partition("?")
        found = self.transcoder.match(stream.method.decode("latin-1"), target)
        if found is None:
            return True
        binding, variables = found
        if not self.transcoder.query_fits(binding, query):
            return True  # a parameter no field takes: Envoy passes such a request unchanged
        self.calls[stream] = (binding, variables, query)
        stream.on_finish(lambda: self.calls.pop(stream, None))
        body = None
        if not (stream.req_length or stream.req_chunked):  # nothing will come: the message is made now
            body = self._request(stream, b"")
            if body is None:
                return False
        stream.edit_request_header("remove", b"content-length")
        stream.edit_request_header("set", b"content-type", b"application/grpc")
        stream.edit_request_header("set", b"te", b"trailers")
        stream.rewrite_request(b"POST", binding.grpc_path, body, self.rematch)
        return True

    def _request(self, stream: Any, body: bytes) -> bytes | None:
        binding, variables, query = self.calls[stream]
        try:
            return self.transcoder.request(binding, variables, query, body)
        except gt.TranscodingError as exc:
            stream.details = TRANSCODE_FAILED.details
            stream.respond_from_filter(400, str(exc).encode(), [], TRANSCODE_FAILED.details)
            return None

    def wants_request_body(self, stream: Any) -> bool:
        return stream in self.calls

    def decode_body(self, stream: Any, body: bytes) -> bytes | None:
        return self._request(stream, body)

    # ---------------------------------------------------------------- the response side
    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        """Nothing at the head alone (the whole response decides); being an encoder lets the filter hold it."""

    def wants_response_body(self, stream: Any) -> bool:
        return stream in self.calls and not stream.local_reply

    def encode_body(self, stream: Any, status: int, headers: Any, body: bytes) -> bytes | None:
        if not is_grpc(headers.get(b"content-type")):
            return None  # not a gRPC answer (an upstream error page): as it came
        binding = self.calls[stream][0]
        trailers = stream.resp_trailers or []
        grpc_status = _header(trailers, b"grpc-status") or headers.get(b"grpc-status")
        if grpc_status is not None and grpc_status != b"0":
            stream.status = gt.GRPC_TO_HTTP.get(int(grpc_status) if grpc_status.isdigit() else 2, 500)
            if not body:
                return None  # a trailers-only error: its head, gRPC content-type and all, with the HTTP status
        for name in (b"grpc-status", b"grpc-message"):
            value = _header(trailers, name)
            if value is not None:
                headers.set(name, value)
        stream.resp_trailers = None
        headers.set(b"content-type", JSON)
        return self.transcoder.response(binding, body)


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, GrpcJsonTranscoder)
register_filter(GrpcJsonTranscoder, GrpcJsonTranscoderFilter)
