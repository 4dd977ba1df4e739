"""Generated x-request-id values are well-formed, distinct UUID4 strings across batch boundaries."""

from __future__ import annotations

import collections
import uuid

from pylon.proxy.request_ids import new_request_id


def test_every_id_is_a_uuid4_string_and_none_repeats() -> None:
    ids = [new_request_id() for _ in range(1000)]  # several batches of 128
    for value in ids:
        parsed = uuid.UUID(value.decode())
        assert (parsed.version, parsed.variant, str(parsed).encode()) == (4, uuid.RFC_4122, value)
    assert len(set(ids)) == len(ids)


def test_the_random_digits_take_every_value() -> None:
    """Each random column draws from all 16 digits (a column copied from the wrong place would not)."""
    ids = [new_request_id() for _ in range(2000)]
    for column in (0, 7, 9, 15, 20, 35):
        assert len(collections.Counter(value[column] for value in ids)) == 16, column
    assert {value[19:20] for value in ids} == {b"8", b"9", b"a", b"b"}
