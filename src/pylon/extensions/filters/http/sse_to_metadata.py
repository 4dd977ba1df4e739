"""envoy.filters.http.sse_to_metadata: values inside a Server-Sent Events response into dynamic metadata.

Why: an LLM API streams its answer as SSE and tells the token usage in one of the last events; this filter
reads those events as they pass (nothing held, nothing changed: the body's framing and length stay) so the
access log or a later reader has `envoy.lb:tokens` once the response ended. As Envoy 1.40's filter: only a
response whose content-type is `text/event-stream` (before any `;`, trimmed, any case) is read, every other
one counts `mismatched_content_type`; its body is cut into events (`filters/common/sse.py`, `max_event_size`
default 8192, 0 for none, `event_too_large`); an event without data counts `no_data_field`, one whose data the
content parser cannot read `parse_error`; each write the parser asks for is made at once, one key at a time
(setDynamicMetadata, the key replaced), unless `preserve_existing_metadata_value` finds the key there
(`preserved_existing_metadata`), each counted `metadata_added`; the parser's end-of-stream writes
(on_error/on_missing of rules that never matched) come when the body ends, also counted
`metadata_from_fallback`. When the parser says all its rules are done, the rest of the body is not read.
Counters `sse_to_metadata.resp.<parser prefix>.*` (`sse_to_metadata.resp.json.*`) in the server's scope.
Envoy registers no per-route config for it, nor does pylon.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct, _TypedExtension
from pylon.extensions.filters.common.sse import EventFramer, event_data
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata"
DEFAULT_MAX_EVENT_SIZE = 8192
_STATS = ("metadata_added", "metadata_from_fallback", "mismatched_content_type", "no_data_field", "parse_error",
          "preserved_existing_metadata", "event_too_large")


class ContentParser(_TypedExtension, kw_only=True):
    """config.core.v3.TypedExtensionConfig of a content parser (extensions/content_parsers/)."""

    category: ClassVar[str] = registry.CONTENT_PARSER


class ProcessingRules(EnvoyStruct, kw_only=True):
    """SseToMetadata.ProcessingRules."""

    content_parser: ContentParser
    max_event_size: Annotated[int, msgspec.Meta(ge=0, le=10485760)] | None = None


class SseToMetadataConfig(EnvoyStruct, kw_only=True, weakref=True):
    """extensions.filters.http.sse_to_metadata.v3.SseToMetadata."""

    response_rules: ProcessingRules


def is_event_stream(content_type: bytes | None) -> bool:
    """Envoy's test: the media type before any parameters, trimmed, is text/event-stream in any case."""
    return content_type is not None and content_type.split(b";", 1)[0].strip().lower() == b"text/event-stream"


class _Reading:
    """One response being read: its events' framing and its parser's state."""

    __slots__ = ("framer", "parser", "done")

    def __init__(self, max_event_size: int, parser: Any) -> None:
        self.framer = EventFramer(max_event_size)
        self.parser = parser
        self.done = False


class SseToMetadataFilter:
    """One HCM's sse_to_metadata filter in one worker; each response it reads has its own `_Reading`."""

    keeps_length = True  # the pieces pass unchanged

    def __init__(self, name: str, config: SseToMetadataConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        rules = config.response_rules
        parser_config = rules.content_parser.typed_config
        self.parsers = parser_config.factory()
        self.max_event_size = DEFAULT_MAX_EVENT_SIZE if rules.max_event_size is None else rules.max_event_size
        prefix = f"sse_to_metadata.resp.{parser_config.stats_prefix}"
        self.stats = {stat: stats.counter(prefix + stat) for stat in _STATS}
        self.readings: dict[Any, _Reading] = {}

    def decode_headers(self, stream: Any) -> bool:
        return True

    def encode_headers(self, stream: Any, status: int, headers: Any) -> None:
        if not is_event_stream(headers.get(b"content-type")):
            self.stats["mismatched_content_type"].inc()
            return
        if stream not in self.readings:
            self.readings[stream] = _Reading(self.max_event_size, self.parsers.parser())
            stream.on_finish(lambda: self.readings.pop(stream, None))

    def wants_response_data(self, stream: Any) -> bool:
        return stream in self.readings

    def encode_data(self, stream: Any, data: bytes, end_stream: bool) -> bytes:
        reading = self.readings[stream]
        if reading.done:
            return data
        if data:
            framer = reading.framer
            too_large = framer.too_large
            for event in framer.feed(data, end_stream):
                if self._event(stream, reading.parser, event):
                    reading.done = True
                    break
            if framer.too_large != too_large:
                self.stats["event_too_large"].inc()
        if end_stream or reading.done:
            self._finish(stream, reading)
        return data

    def encode_trailers(self, stream: Any, trailers: list[tuple[bytes, bytes]]) -> None:
        reading = self.readings.get(stream)
        if reading is not None and not reading.done:
            self._finish(stream, reading)

    def _event(self, stream: Any, parser: Any, event: bytes) -> bool:
        """One event through the parser; True when the parser wants no more."""
        data = event_data(event)
        if not data:
            self.stats["no_data_field"].inc()
            return False
        parsed = parser.parse(data)
        if parsed is None:
            self.stats["parse_error"].inc()
            return False
        actions, stop = parsed
        for action in actions:
            if self._write(stream, action):
                self.stats["metadata_added"].inc()
        return stop

    def _finish(self, stream: Any, reading: _Reading) -> None:
        reading.done = True
        for action in reading.parser.deferred():
            if self._write(stream, action):
                self.stats["metadata_added"].inc()
                self.stats["metadata_from_fallback"].inc()

    def _write(self, stream: Any, action: tuple[str, str, Any, bool]) -> bool:
        namespace, key, value, preserve = action
        if preserve and key in (stream.dynamic_metadata or {}).get(namespace, ()):
            self.stats["preserved_existing_metadata"].inc()
            return False
        if value is msgspec.UNSET:
            return False
        stream.set_dynamic_metadata(namespace, {key: value})
        return True


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, SseToMetadataConfig)
register_filter(SseToMetadataConfig, SseToMetadataFilter)
