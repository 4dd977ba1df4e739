"""HeaderList and Envoy's header add/remove rules (HeaderOps)."""

from __future__ import annotations

import pytest

from pylon.config.envoy import HeaderValue, HeaderValueOption
from pylon.proxy.headers import (
    HeaderList,
    HeaderOps,
    RequestHeaders,
    check_scripted_header,
    compile_header_level,
    request_lookup,
)
from pylon.proxy.access_log import AccessLogRecord


def opt(key: str, value: str, action: str = "APPEND_IF_EXISTS_OR_ADD", **kw) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append_action=action, **kw)


def ops(*levels) -> HeaderOps:
    return HeaderOps([compile_header_level(adds, removes) for adds, removes in levels])


# --------------------------------------------------------------------------- HeaderList


def test_headerlist_uses_the_callers_list_without_copying():
    items = [(b"a", b"1")]
    h = HeaderList(items)
    h.add(b"b", b"2")
    assert items == [(b"a", b"1"), (b"b", b"2")]
    assert RequestHeaders is HeaderList


def test_get_returns_the_first_value_and_get_all_every_one():
    h = HeaderList([(b"x", b"1"), (b"y", b"q"), (b"x", b"2"), (b"x", b"3")])
    assert h.get(b"x") == b"1"
    assert h.get_all(b"x") == [b"1", b"2", b"3"]
    assert h.get(b"z") is None and h.get_all(b"z") == []
    assert b"y" in h and b"z" not in h


def test_set_replaces_first_in_place_and_drops_the_rest():
    items = [(b"x", b"1"), (b"y", b"q"), (b"x", b"2")]
    h = HeaderList(items)
    h.set(b"x", b"new")
    assert list(h) == [(b"x", b"new"), (b"y", b"q")]
    assert h.items is items  # the caller's list, changed in place
    h.set(b"z", b"added")
    assert list(h) == [(b"x", b"new"), (b"y", b"q"), (b"z", b"added")]
    assert len(h) == 3


def test_remove_drops_every_value():
    h = HeaderList([(b"x", b"1"), (b"y", b"q"), (b"x", b"2")])
    h.remove(b"x")
    h.remove(b"absent")
    assert list(h) == [(b"y", b"q")]


# --------------------------------------------------------------------------- append actions


@pytest.mark.parametrize(
    "action, existing, expected",
    [
        ("APPEND_IF_EXISTS_OR_ADD", [(b"x", b"old")], [(b"x", b"old"), (b"x", b"v")]),
        ("APPEND_IF_EXISTS_OR_ADD", [], [(b"x", b"v")]),
        ("ADD_IF_ABSENT", [(b"x", b"old")], [(b"x", b"old")]),
        ("ADD_IF_ABSENT", [], [(b"x", b"v")]),
        ("OVERWRITE_IF_EXISTS_OR_ADD", [(b"x", b"old"), (b"x", b"old2")], [(b"x", b"v")]),
        ("OVERWRITE_IF_EXISTS_OR_ADD", [], [(b"x", b"v")]),
        ("OVERWRITE_IF_EXISTS", [(b"x", b"old")], [(b"x", b"v")]),
        ("OVERWRITE_IF_EXISTS", [], []),
    ],
)
def test_append_actions(action, existing, expected):
    h = HeaderList(list(existing))
    ops(([opt("X", "v", action)], [])).apply(h)
    assert list(h) == expected


@pytest.mark.parametrize("append, expected", [(True, [(b"x", b"old"), (b"x", b"v")]), (False, [(b"x", b"v")])])
def test_legacy_append_flag(append, expected):
    h = HeaderList([(b"x", b"old")])
    ops(([HeaderValueOption(header=HeaderValue(key="x", value="v"), append=append)], [])).apply(h)
    assert list(h) == expected


def test_empty_value_is_dropped_unless_keep_empty_value():
    h = HeaderList()
    ops(([opt("a", ""), opt("b", "", keep_empty_value=True)], [])).apply(h)
    assert list(h) == [(b"b", b"")]


def test_removes_run_before_adds_of_the_same_level():
    h = HeaderList([(b"x", b"old"), (b"keep", b"1")])
    ops(([opt("x", "new", "ADD_IF_ABSENT")], ["X"])).apply(h)
    assert list(h) == [(b"keep", b"1"), (b"x", b"new")]


def test_decisions_use_the_headers_from_before_the_level():
    # Envoy collects a level's additions first: both ADD_IF_ABSENT see "x" absent, and
    # OVERWRITE_IF_EXISTS does not see the header the same level appends.
    h = HeaderList()
    ops(([opt("x", "1", "ADD_IF_ABSENT"), opt("x", "2", "ADD_IF_ABSENT"), opt("y", "a"),
          opt("y", "b", "OVERWRITE_IF_EXISTS")], [])).apply(h)
    assert list(h) == [(b"x", b"1"), (b"x", b"2"), (b"y", b"a")]


def test_later_levels_win():
    h = HeaderList()
    ops(([opt("x", "route", "OVERWRITE_IF_EXISTS_OR_ADD")], []),
        ([opt("x", "vhost", "OVERWRITE_IF_EXISTS_OR_ADD")], []),
        ([opt("x", "config", "ADD_IF_ABSENT")], [])).apply(h)
    assert list(h) == [(b"x", b"vhost")]


def test_empty_ops_say_so():
    assert HeaderOps().empty and HeaderOps([None, None]).empty
    assert not ops(([], ["x"])).empty
    assert compile_header_level([], []) is None


# --------------------------------------------------------------------------- values


def test_percent_escape_and_downstream_operators():
    level = [opt("a", "100%%"), opt("b", "%DOWNSTREAM_REMOTE_ADDRESS%"),
             opt("c", "ip=%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%;")]
    h = HeaderList()
    ops((level, [])).apply(h, downstream=("10.0.0.1", 5555))
    assert list(h) == [(b"a", b"100%"), (b"b", b"10.0.0.1:5555"), (b"c", b"ip=10.0.0.1;")]
    h6 = HeaderList()
    ops((level, [])).apply(h6, downstream=("::1", 80))
    assert h6.get(b"b") == b"[::1]:80" and h6.get(b"c") == b"ip=::1;"


def test_dynamic_value_without_downstream_is_empty_and_dropped():
    h = HeaderList()
    ops(([opt("b", "%DOWNSTREAM_REMOTE_ADDRESS%")], [])).apply(h)
    assert list(h) == []


def test_req_operator_reads_the_request():
    level = [opt("a", "%REQ(user-agent)%"), opt("b", "%REQ(x-none?User-Agent):3%"), opt("c", "[%REQ(x-none)%]"),
             opt("d", "%REQ(x-none)%"), opt("e", "%REQ(:authority)%"), opt("f", "%REQ(Host)%")]
    compiled = ops((level, []))
    assert compiled.reads_request and not ops(([opt("a", "1")], [])).reads_request
    request = request_lookup([(b"user-agent", b"curl/8")], {b":authority": b"example.com"})
    h = HeaderList()
    compiled.apply(h, request=request)
    assert list(h) == [(b"a", b"curl/8"), (b"b", b"cur"), (b"c", b"[]"), (b"e", b"example.com"),
                       (b"f", b"example.com")]
    bound = HeaderList()
    compiled.bound(request).apply(bound)
    assert list(bound) == list(h)
    unbound = HeaderList()
    compiled.apply(unbound)
    assert list(unbound) == [(b"c", b"[]")]


@pytest.mark.parametrize("value, message", [
    ("%UPSTREAM_HOST%", "unsupported substitution operator %UPSTREAM_HOST%"),
    ("50%", "unescaped '%'"),
    ("%REQ(a?b?c)%", "malformed %REQ"),
    ("%REQ(a):x%", "malformed %REQ"),
    ("%REQ()%", "malformed %REQ"),
    ("%REQ(a%", "malformed %REQ"),
])
def test_bad_values_fail_at_build_time(value, message):
    with pytest.raises(ValueError, match=message):
        compile_header_level([opt("x", value)], [])


def test_route_rules_read_the_stream_record() -> None:
    """A route's rules may use any access-log operator; unset values are empty (the header is skipped)."""
    rules = HeaderOps([compile_header_level(
        [opt("x-code", "%RESPONSE_CODE%"), opt("x-md", "v=%DYNAMIC_METADATA(ns:k)%/%DYNAMIC_METADATA(ns:n)%"),
         opt("x-missing", "%DYNAMIC_METADATA(ns:none)%"), opt("x-flags", "%RESPONSE_FLAGS%")], [], stream_facts=True)])
    assert rules.reads_stream and not rules.reads_request
    made: list[int] = []

    def facts() -> AccessLogRecord:
        made.append(1)
        return AccessLogRecord(response_code=503, response_flags="UH", dynamic_metadata={"ns": {"k": "a", "n": 2}})

    headers = HeaderList()
    rules.apply(headers, None, None, facts)
    assert headers.items == [(b"x-code", b"503"), (b"x-md", b"v=a/2"), (b"x-flags", b"UH")]
    assert made == [1], "the record is made once per apply"
    unset = HeaderList()
    rules.apply(unset)
    assert unset.items == [(b"x-md", b"v=/")]


@pytest.mark.parametrize("name", [":path", "host", "Host"])
def test_pseudo_headers_and_host_cannot_be_modified(name):
    with pytest.raises(ValueError, match="may not be modified"):
        compile_header_level([opt(name, "v")], [])
    with pytest.raises(ValueError, match="may not be modified"):
        compile_header_level([], [name])


@pytest.mark.parametrize(("name", "value", "accepted"), [
    (b"x-team", b"blue, green", True), (b":authority", b"a.example", True), (b"x-a", b"", True),
    (b"x-a", b"b\r\nx-injected: 1", False), (b"x-a", b"b\nc", False), (b"x-a", b"b\x00", False),
    (b"X-A", b"b", False), (b"x a", b"b", False), (b"", b"b", False), (b"x-a\r\n", b"b", False),
])
def test_check_scripted_header_refuses_what_would_split_a_header(name: bytes, value: bytes, accepted: bool) -> None:
    if accepted:
        check_scripted_header(name, value)
    else:
        with pytest.raises(ValueError, match="invalid header"):
            check_scripted_header(name, value)
