"""A stream's dynamic metadata (Envoy's StreamInfo dynamicMetadata), sans-IO: namespaces of Struct values that
filters set while a request passes and the access log, header formatters and the subset load balancer read.

A stream holds `None` until a filter sets something (`Stream.set_dynamic_metadata`), so a stream that never
does pays nothing. The metadata itself is a plain dict: namespace -> the fields of its Struct (JSON-like
values: str, int/float, bool, None, list, dict).

Two ways of writing, as Envoy has two:
- `merge` is StreamInfo::setDynamicMetadata (the namespace's Struct MergeFrom the new one): each top-level field
  of the new values replaces the old field whole (header_to_metadata, json_to_metadata).
- `struct_update` is StructUtil::update (set_metadata's `allow_overwrite`): fields merge recursively, a list is
  extended by the new list's items, a field whose kind changes takes the new value.

Reading: `lookup` walks a namespace and a path of keys as Envoy's Metadata::metadataValue (a step through
anything but a struct finds nothing), and `render_text` prints a found value as Envoy's formatters do: a string
as it is, everything else as compact JSON with object keys sorted and integral numbers without a fraction
(observed beside Envoy 1.40: `{"q":3,"x":"y"}`, `["a",2]`, `true`).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["MISSING", "canonical", "lookup", "merge", "render_text", "struct_copy", "struct_update"]

#: What `lookup` answers when the namespace or a key on the path is absent (None is a JSON null, also "unset").
MISSING: Any = object()

_encode = msgspec.json.Encoder().encode


def merge(metadata: dict[str, dict[str, Any]], namespace: str, values: dict[str, Any]) -> None:
    """StreamInfo::setDynamicMetadata: the namespace's top-level fields replaced by `values`' (copied)."""
    existing = metadata.get(namespace)
    if existing is None:
        metadata[namespace] = dict(values)
    else:
        existing.update(values)


def _kind(value: Any) -> type:
    # bool is an int in Python, a kind of its own in protobuf; ints and floats are one number kind.
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    return type(value)


def struct_update(target: dict[str, Any], update: dict[str, Any]) -> None:
    """StructUtil::update: `update` merged into `target` in place (structs recursively, lists appended, scalars
    and a changed kind replaced)."""
    for key, value in update.items():
        old = target.get(key, MISSING)
        if old is MISSING or _kind(old) is not _kind(value):
            target[key] = struct_copy(value)
        elif isinstance(value, dict):
            struct_update(old, value)
        elif isinstance(value, list):
            old.extend(struct_copy(value))
        else:
            target[key] = value


def struct_copy(value: Any) -> Any:
    """A deep copy of a JSON-like value: the config's values are shared by every stream and must not change."""
    if isinstance(value, dict):
        return {k: struct_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [struct_copy(v) for v in value]
    return value


def lookup(metadata: dict[str, dict[str, Any]] | None, namespace: str, path: tuple[str, ...]) -> Any:
    """The value at `path` in `namespace` (the namespace's whole Struct for an empty path), or MISSING."""
    if metadata is None:
        return MISSING
    value: Any = metadata.get(namespace, MISSING)
    for key in path:
        if not isinstance(value, dict):
            return MISSING
        value = value.get(key, MISSING)
    return value


def canonical(value: Any) -> Any:
    """A value as Envoy serializes a protobuf Value: object keys sorted, integral numbers as integers."""
    if isinstance(value, dict):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def render_text(value: Any) -> str | None:
    """A found value in a text position: a string as it is, others as compact JSON; None for MISSING or null
    (Envoy prints `-` for both)."""
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    return _encode(canonical(value)).decode()
