"""HttpConnectionManager `local_reply_config`: rewrite the proxy's own replies before they go out.

Envoy's LocalReply: when the proxy answers a request itself (no route, no healthy upstream, a filter's 403, a
direct response ...), the first mapper whose access-log filter matches the request may replace the status,
the body and add headers; then the mapper's `body_format_override`, else the config's `body_format`, formats
the body, where `%LOCAL_REPLY_BODY%` is the body so far and `%RESPONSE_CODE%` the status so far. The filters
see the reply's status and flags as they stand before the rewrite (Envoy sets the code first for exactly that).
A formatted body's content type is the format's `content_type`, else text/plain for text and
application/json for JSON, as Envoy does.

Sans-IO: `rewrite` works on an access-log record and a header list the stream hands it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from pylon.config.datasource import read_bytes
from pylon.config.envoy import LocalReplyConfig, SubstitutionFormatString
from pylon.proxy.access_log import AccessLogRecord, compile_log_format
from pylon.proxy.access_log_filter import Predicate, compile_filter
from pylon.proxy.headers import Downstream, HeaderList, HeaderOps, RequestLookup, compile_header_level
from pylon.regex import RegexEngine


class _BodyFormat(NamedTuple):
    format: Callable[[AccessLogRecord], bytes]
    content_type: bytes


class _Mapper(NamedTuple):
    matches: Predicate
    status: int | None
    body: bytes | None
    body_format: _BodyFormat | None
    headers: HeaderOps


class Rewritten(NamedTuple):
    status: int
    body: bytes
    content_type: bytes


def _body_format(config: SubstitutionFormatString | None) -> _BodyFormat | None:
    if config is None:
        return None
    content_type = config.content_type or ("application/json" if config.json_format is not None else "text/plain")
    return _BodyFormat(compile_log_format(config, local_reply=True), content_type.encode())


class LocalReplyMapper:
    """One HCM's local_reply_config, compiled."""

    def __init__(self, config: LocalReplyConfig, engine: RegexEngine) -> None:
        self.mappers = [
            _Mapper(compile_filter(m.filter, engine), m.status_code,
                    read_bytes(m.body) if m.body is not None else None, _body_format(m.body_format_override),
                    HeaderOps([compile_header_level(m.headers_to_add, [])]))
            for m in config.mappers
        ]
        self.body_format = _body_format(config.body_format)

    def rewrite(self, record: AccessLogRecord, status: int, body: bytes, content_type: bytes, headers: HeaderList,
                downstream: Downstream | None, request: RequestLookup | None) -> Rewritten:
        """The reply after the first matching mapper and the body format. `record` describes the request as the
        access log would now (its response code is set here); `headers` (the reply's own) may gain headers."""
        record.response_code = status
        body_format = self.body_format
        for mapper in self.mappers:
            if mapper.matches(record):
                if not mapper.headers.empty:
                    mapper.headers.apply(headers, downstream, request)
                if mapper.status is not None:
                    status = record.response_code = mapper.status
                if mapper.body is not None:
                    body = mapper.body
                if mapper.body_format is not None:
                    body_format = mapper.body_format
                break
        if body_format is None:
            return Rewritten(status, body, content_type)
        record.local_reply_body = body
        record.response_headers = headers.items
        return Rewritten(status, body_format.format(record), body_format.content_type)
