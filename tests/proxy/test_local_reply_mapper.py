"""local_reply_config, sans-IO: the first matching mapper rewrites a local reply, then the body format."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.envoy import LocalReplyConfig, convert
from pylon.proxy.access_log import AccessLogRecord, compile_text_format
from pylon.proxy.headers import HeaderList
from pylon.proxy.local_reply_mapper import LocalReplyMapper, Rewritten
from pylon.regex import get_engine

NR = {"response_flag_filter": {"flags": ["NR"]}}
UH = {"response_flag_filter": {"flags": ["UH"]}}


def rewrite(config: dict[str, Any], status: int, flags: str, body: bytes = b"",
            headers: HeaderList | None = None) -> Rewritten:
    mapper = LocalReplyMapper(convert(config, LocalReplyConfig), get_engine())
    record = AccessLogRecord(response_flags=flags, path="/p", request_headers=[(b"x-who", b"me")])
    return mapper.rewrite(record, status, body, b"text/plain", headers if headers is not None else HeaderList([]),
                          ("127.0.0.1", 9), None)


def test_the_first_matching_mapper_alone_applies() -> None:
    config = {"mappers": [{"filter": NR, "status_code": 403, "body": {"inline_string": "first"}},
                          {"filter": NR, "status_code": 410, "body": {"inline_string": "second"}}]}
    assert rewrite(config, 404, "NR") == Rewritten(403, b"first", b"text/plain")


def test_no_match_leaves_the_reply_alone() -> None:
    config = {"mappers": [{"filter": UH, "status_code": 502}]}
    assert rewrite(config, 404, "NR", b"") == Rewritten(404, b"", b"text/plain")


def test_status_filters_see_the_reply_status_and_headers_are_added() -> None:
    config = {"mappers": [{"filter": {"status_code_filter": {"comparison": {"op": "EQ", "value": {
        "default_value": 503, "runtime_key": "k"}}}},
        "headers_to_add": [{"header": {"key": "x-down", "value": "%DOWNSTREAM_REMOTE_ADDRESS%"}}]}]}
    headers = HeaderList([])
    assert rewrite(config, 503, "UH", b"no healthy upstream", headers).status == 503
    assert headers.items == [(b"x-down", b"127.0.0.1:9")]


@pytest.mark.parametrize("body_format, body, content_type", [
    ({"text_format": "%RESPONSE_CODE%: %LOCAL_REPLY_BODY%"}, b"410: gone", b"text/plain"),
    ({"json_format": {"code": "%RESPONSE_CODE%", "body": "%LOCAL_REPLY_BODY%"}},
     b'{"code":410,"body":"gone"}\n', b"application/json"),
    ({"text_format": "%LOCAL_REPLY_BODY%", "content_type": "text/html"}, b"gone", b"text/html"),
])
def test_the_body_format_sees_the_rewritten_status_and_body(body_format: dict[str, Any], body: bytes,
                                                           content_type: bytes) -> None:
    config = {"mappers": [{"filter": NR, "status_code": 410, "body": {"inline_string": "gone"}}],
              "body_format": body_format}
    assert rewrite(config, 404, "NR") == Rewritten(410, body, content_type)


def test_a_mapper_override_replaces_the_body_format() -> None:
    config = {"mappers": [{"filter": NR, "body_format_override": {"text_format": "override %REQ(x-who)%"}}],
              "body_format": {"text_format": "general"}}
    assert rewrite(config, 404, "NR").body == b"override me"
    assert rewrite(config, 503, "UH").body == b"general"


def test_local_reply_body_is_refused_in_access_logs() -> None:
    with pytest.raises(ValueError, match="LOCAL_REPLY_BODY"):
        compile_text_format("%LOCAL_REPLY_BODY%")
