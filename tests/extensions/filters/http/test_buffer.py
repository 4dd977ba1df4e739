"""The buffer filter's config as Envoy validates it: max_request_bytes required and positive, a per-route oneof."""

from __future__ import annotations

import msgspec
import pytest

from pylon.extensions.filters.http.buffer import Buffer, BufferPerRoute


def test_max_request_bytes_is_required_and_positive() -> None:
    assert msgspec.convert({"max_request_bytes": 5}, Buffer).max_request_bytes == 5
    with pytest.raises(msgspec.ValidationError, match="max_request_bytes"):
        msgspec.convert({}, Buffer)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"max_request_bytes": 0}, Buffer)


@pytest.mark.parametrize("fields", [{}, {"disabled": False}, {"disabled": True, "buffer": {"max_request_bytes": 1}}])
def test_per_route_needs_exactly_one_of_disabled_and_buffer(fields: dict) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(fields, BufferPerRoute)


def test_unknown_fields_are_errors() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown"):
        msgspec.convert({"max_request_bytes": 5, "max_request_time": "1s"}, Buffer)
