"""Config errors that name the file and the full field path of the problem.

msgspec reports a failure as "<message> - at `$.a.b[0]`". Users of Envoy think in
field paths (`static_resources.listeners[0].address`), so every failure is turned
into a `ConfigError(source, path, message)` whose one-line `str()` is
`config error in <source>: <path>: <message>`.

Two details make paths precise:
- an unknown field is reported by msgspec at the enclosing object; we append the
  field's name so the path ends with the offending key;
- validation in `__post_init__` can only fail at the struct itself, so it raises
  `FieldError(rel_path, message)` to point deeper (at one field, or through a
  nested `typed_config`). msgspec keeps the original exception as `__cause__`,
  which is where we read `rel_path` back.
"""

from __future__ import annotations

import re

import msgspec

_AT = re.compile(r"^(?P<message>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`$")


class ConfigError(Exception):
    """A config that cannot be loaded: which file, which field, what is wrong."""

    def __init__(self, source: str, path: str, message: str) -> None:
        self.source = source
        self.path = path
        self.message = message
        where = f"{path}: " if path else ""
        super().__init__(f"config error in {source}: {where}{message}")


class FieldError(ValueError):
    """A validation failure found in a Struct's `__post_init__`, located below the struct.

    `rel_path` is relative to the struct raising it: a field name ("regex"), or a
    longer path ("typed_config.route_config.virtual_hosts[0]").
    """

    def __init__(self, rel_path: str, message: str) -> None:
        self.rel_path = rel_path
        self.message = message
        super().__init__(f"{rel_path}: {message}" if rel_path else message)


def join_path(base: str, rel: str) -> str:
    """Join two field paths: `a.b` + `c[0]` -> `a.b.c[0]`; `a` + `[1]` -> `a[1]`."""
    if not base:
        return rel
    if not rel:
        return base
    return base + rel if rel.startswith("[") else f"{base}.{rel}"


def split_validation_error(exc: msgspec.ValidationError) -> tuple[str, str]:
    """The (field path, message) a msgspec ValidationError is about, paths without `$.`."""
    text = str(exc)
    match = _AT.match(text)
    path, message = (match["path"].lstrip("."), match["message"]) if match else ("", text)
    cause = exc.__cause__
    if isinstance(cause, FieldError):
        return join_path(path, cause.rel_path), cause.message
    if (unknown := _UNKNOWN.match(message)) is not None:
        return join_path(path, unknown["name"]), "unknown field"
    if (missing := _MISSING.match(message)) is not None:
        return join_path(path, missing["name"]), "missing required field"
    return path, message
