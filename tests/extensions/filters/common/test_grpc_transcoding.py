"""JSON/HTTP ↔ gRPC transcoding without a proxy: templates, bindings, messages both ways."""

from __future__ import annotations

import pytest

from pylon.extensions.filters.common import grpc_transcoding as gt
from tests.extensions.filters.common.bookstore import classes, descriptor_set


def transcoder(**kwargs: object) -> gt.Transcoder:
    return gt.Transcoder(descriptor_set(), ["bookstore.Bookstore"], kwargs.pop("auto_mapping", False),  # type: ignore[arg-type]
                         gt.PrintOptions(**kwargs))  # type: ignore[arg-type]


def binding(template: str) -> gt.Binding:
    segments, variables, verb = gt.parse_template(template)
    method = transcoder().bindings[0].method
    return gt.Binding("GET", segments, variables, verb, "", "", method)


@pytest.mark.parametrize("template, path, expected", [
    ("/v1/shelves/{shelf}", "/v1/shelves/12", {("shelf",): "12"}),
    ("/v1/shelves/{shelf}", "/v1/shelves/12/books", None),
    ("/v1/{name=shelves/*}", "/v1/shelves/3", {("name",): "shelves/3"}),
    ("/v1/{name=shelves/*}/books", "/v1/shelves/3/books", {("name",): "shelves/3"}),
    ("/v1/files/{path=**}", "/v1/files/a/b%2Fc/d", {("path",): "a/b%2Fc/d"}),
    ("/v1/{a.b}/x", "/v1/%41%20b/x", {("a", "b"): "A b"}),
    ("/v1/items:batch", "/v1/items:batch", {}),
    ("/v1/items:batch", "/v1/items", None),
    ("/v1/items", "/v1/items:batch", None),
    ("/v1/*/items", "/v1/any/items", {}),
])
def test_templates_match_as_google_api_http_says(template: str, path: str, expected: object) -> None:
    assert binding(template).match(path) == expected


@pytest.mark.parametrize("template", ["v1/x", "/v1/{x", "/v1/**/x", "/v1/a{b}", "/v1//x"])
def test_bad_templates_are_refused(template: str) -> None:
    with pytest.raises(gt.DescriptorError):
        gt.parse_template(template)


def test_rules_additional_bindings_and_auto_mapping_are_bindings() -> None:
    plain = {(b.http_method, b.method.name) for b in transcoder().bindings}
    assert ("PUT", "Echo") in plain and ("POST", "Echo") in plain and ("POST", "Hidden") not in plain
    mapped = transcoder(auto_mapping=True)
    assert mapped.match("POST", "/bookstore.Bookstore/Hidden")[0].grpc_path == b"/bookstore.Bookstore/Hidden"


def test_a_request_from_body_path_and_query() -> None:
    t = transcoder()
    found = t.match("POST", "/v1/shelves")
    framed = t.request(found[0], found[1], "", b'{"theme": "x", "tags": ["a"], "unknown": 1}')
    assert framed[:5] == b"\x00" + (len(framed) - 5).to_bytes(4, "big")
    assert classes()["CreateShelfRequest"].FromString(framed[5:]).shelf.theme == "x"
    found = t.match("GET", "/v1/shelves/7/books")
    request = classes()["ListBooksRequest"].FromString(t.request(found[0], found[1], "author=bo%20b&page_size=2",
                                                                 b"")[5:])
    assert (request.shelf, request.author, request.page_size) == (7, "bo b", 2)


def test_unknown_query_parameters_do_not_fit_unless_ignored() -> None:
    t = transcoder()
    found = t.match("GET", "/v1/shelves/7/books")[0]
    assert t.query_fits(found, "author=a&page_size=1") and not t.query_fits(found, "nope=1")
    ignoring = gt.Transcoder(descriptor_set(), ["bookstore.Bookstore"], False, gt.PrintOptions(), ["nope"])
    assert ignoring.query_fits(ignoring.match("GET", "/v1/shelves/7/books")[0], "nope=1")


def test_bad_values_are_400_in_envoys_words() -> None:
    t = transcoder()
    found = t.match("GET", "/v1/shelves/x")
    with pytest.raises(gt.TranscodingError, match='shelf: invalid value "x" for type TYPE_INT64'):
        t.request(found[0], found[1], "", b"")


def test_responses_become_json_with_the_print_options() -> None:
    shelf = classes()["Shelf"](id=3, theme="t").SerializeToString()
    framed = b"\x00" + len(shelf).to_bytes(4, "big") + shelf
    t = transcoder()
    get = t.match("GET", "/v1/shelves/3")[0]
    assert t.response(get, framed) == b'{"id":"3","theme":"t"}'
    assert transcoder(always_print_primitive_fields=True).response(get, framed) == b'{"id":"3","theme":"t","tags":[]}'
    book = classes()["Book"](id=1).SerializeToString()
    stream = t.match("GET", "/v1/shelves/3/books:stream")[0]
    assert t.response(stream, (b"\x00" + len(book).to_bytes(4, "big") + book) * 2) == b'[{"id":"1"},{"id":"1"}]'


def test_descriptor_problems_are_config_errors() -> None:
    with pytest.raises(gt.DescriptorError, match="unable to parse"):
        gt.Transcoder(b"\xff\xff", ["x"], False, gt.PrintOptions())
    with pytest.raises(gt.DescriptorError, match="could not find 'bookstore.Nope'"):
        gt.Transcoder(descriptor_set(), ["bookstore.Nope"], False, gt.PrintOptions())
