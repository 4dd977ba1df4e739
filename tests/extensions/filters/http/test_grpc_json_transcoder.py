"""grpc_json_transcoder's config: its descriptor and services checked at load, fields not done refused by name."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import parse_bootstrap
from tests.extensions.filters.common.bookstore import descriptor_set
from tests.proxy.conftest import http_listener, route, static_cluster

TYPE = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
BIN = base64.b64encode(descriptor_set()).decode()


def load(**config: Any) -> None:
    listener = http_listener("main", 10000, [route("/", "a")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.grpc_json_transcoder", "typed_config": {"@type": TYPE, **config}})
    parse_bootstrap({"static_resources": {"listeners": [listener], "clusters": [static_cluster("a", [1])]}}, "b.yaml")


def error(**config: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        load(**config)
    return str(raised.value)


def test_a_descriptor_file_or_bytes_with_its_services(tmp_path: Path) -> None:
    (tmp_path / "d.pb").write_bytes(descriptor_set())
    load(proto_descriptor=str(tmp_path / "d.pb"), services=["bookstore.Bookstore"])
    load(proto_descriptor_bin=BIN, services=["bookstore.Bookstore"], auto_mapping=True,
         print_options={"add_whitespace": True, "preserve_proto_field_names": True})


def test_descriptor_problems_name_the_field(tmp_path: Path) -> None:
    assert "typed_config.descriptor_set: exactly one of proto_descriptor" in error(services=["bookstore.Bookstore"])
    assert "typed_config.proto_descriptor: unable to read the proto descriptor" in error(
        proto_descriptor=str(tmp_path / "missing.pb"), services=["bookstore.Bookstore"])
    assert "typed_config.proto_descriptor_bin: could not find 'bookstore.Nope'" in error(
        proto_descriptor_bin=BIN, services=["bookstore.Nope"])


@pytest.mark.parametrize("field, value", [
    ("convert_grpc_status", True), ("query_param_unescape_plus", True), ("match_unregistered_custom_verb", True),
    ("case_insensitive_enum_parsing", True), ("capture_unknown_query_parameters", True),
    ("url_unescape_spec", "ALL_CHARACTERS"), ("request_validation_options", {"reject_unknown_method": True}),
    ("max_request_body_size", 10), ("print_options", {"stream_newline_delimited": True}),
])
def test_fields_not_done_are_refused_by_name(field: str, value: Any) -> None:
    assert f"typed_config.{field}" in error(proto_descriptor_bin=BIN, services=["bookstore.Bookstore"], **{field: value})
