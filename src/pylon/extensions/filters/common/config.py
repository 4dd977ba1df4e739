"""Envoy messages several HTTP filters share (ext_authz, local_ratelimit) that the core config has no use for."""

from __future__ import annotations

from envoy.type.v3 import http_status_pb2

from pylon.config.envoy import EnvoyStruct
from pylon.config.errors import FieldError


class RuntimeFeatureFlag(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimeFeatureFlag (its runtime key never applies: pylon's runtime refuses it)."""

    default_value: bool
    runtime_key: str = ""


class HttpStatus(EnvoyStruct, kw_only=True):
    """type.v3.HttpStatus: a status Envoy's StatusCode enum names (by name or number)."""

    code: int | str

    def __post_init__(self) -> None:
        try:
            number = self.number
        except ValueError:
            raise FieldError("code", f"{self.code!r} is not an HTTP status Envoy's StatusCode defines") from None
        if not number:
            raise FieldError("code", "must not be Empty (0)")

    @property
    def number(self) -> int:
        enum = http_status_pb2.StatusCode
        if isinstance(self.code, str):
            return enum.Value(self.code)
        enum.Name(self.code)  # ValueError unless the enum defines it
        return self.code
