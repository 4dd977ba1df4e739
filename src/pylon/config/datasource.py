"""Envoy's DataSource: bytes given inline, in a file, or in an environment variable.

Certificates, keys, direct-response bodies and log formats all arrive this way.
The loader reads every DataSource once at load time (`read_bytes`) so that a
missing cert file is a config error naming its field path, not a failure when
the first TLS handshake happens.
"""

from __future__ import annotations

import os

import msgspec


class DataSourceError(Exception):
    """The bytes of a DataSource cannot be obtained (unreadable file, unset variable)."""


class DataSource(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Exactly one of `filename`, `inline_bytes` (base64 in JSON), `inline_string`, `environment_variable`."""

    filename: str | None = None
    inline_bytes: bytes | None = None
    inline_string: str | None = None
    environment_variable: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in self.__struct_fields__ if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "exactly one of filename, inline_bytes, inline_string, environment_variable must be set"
                + (f" (got {', '.join(given)})" if given else "")
            )


def read_bytes(source: DataSource) -> bytes:
    """The content of `source`; relative filenames resolve against the current directory, as in Envoy."""
    if source.filename is not None:
        try:
            with open(source.filename, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise DataSourceError(f"cannot read {source.filename}: {exc.strerror or exc}") from exc
        except ValueError as exc:  # a NUL in the name: no file can have it
            raise DataSourceError(f"cannot read {source.filename!r}: {exc}") from exc
    if source.environment_variable is not None:
        value = os.environ.get(source.environment_variable)
        if value is None:
            raise DataSourceError(f"environment variable {source.environment_variable} is not set")
        return value.encode()
    if source.inline_string is not None:
        return source.inline_string.encode()
    assert source.inline_bytes is not None  # guaranteed by __post_init__
    return source.inline_bytes
