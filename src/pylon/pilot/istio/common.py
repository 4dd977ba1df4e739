"""Field types shared by Istio's resources, and the decoder that reads them.

Istio reads its YAML through protobuf's legacy JSON mapping, whose Duration
parser is Go's `time.ParseDuration`: "10s", "1.5s", "100ms", "1m30s" and "1h"
are all valid there, so `GoDuration` accepts that grammar (a plain number of
seconds is not a duration in Istio and is rejected). Durations become floats of
seconds, like the Envoy model's `Duration`, so the generators can compute with them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import re2
import yaml

from pylon.config.errors import ConfigError, split_validation_error

StructT = TypeVar("StructT")
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Int32 = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
NonNegativeInt32 = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
PortNumber = Annotated[int, msgspec.Meta(ge=1, le=65535)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]


class GoDuration(float):
    """A google.protobuf.Duration as Istio's YAML writes it (Go syntax), in seconds."""


class NotImplementedField:
    """Annotation for an Istio field pylon pilot recognises but does not implement: setting one is an error."""


_GO_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def check_regex(pattern: str) -> None:
    """ValueError with RE2's reason if Envoy (RE2) would reject `pattern`."""
    try:
        re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"invalid regex {pattern!r}: {reason}") from None


def parse_go_duration(value: object) -> GoDuration:
    """A non-negative duration from Go syntax ("1h2m3.5s", "250ms", "0"); ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError(f'invalid duration {value!r}: expected a string like "10s" or "250ms"')
    text = value.strip()
    if text in ("0", "+0"):
        return GoDuration(0.0)
    if text.startswith("-"):
        raise ValueError(f"invalid duration {value!r}: must not be negative")
    body = text[1:] if text.startswith("+") else text
    total, position = 0.0, 0
    while position < len(body):
        match = _GO_DURATION_PART.match(body, position)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f'invalid duration {value!r}: expected Go syntax such as "10s", "1.5s", "100ms", "1m30s"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not body:
        raise ValueError(f"invalid duration {value!r}: empty")
    return GoDuration(total)


def format_duration(seconds: float) -> str:
    """A proto-JSON duration in seconds: 1.0 -> "1s", 0.25 -> "0.25s" (protobuf parses any fraction)."""
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def _dec_hook(type_: type, obj: Any) -> Any:
    if type_ is GoDuration:
        return parse_go_duration(obj)
    if type_ is NotImplementedField:
        raise ValueError("not supported by pylon pilot yet")
    raise NotImplementedError(f"no decoder for {type_!r}")


def convert(data: Any, struct_type: type[StructT]) -> StructT:
    """Decode parsed YAML into `struct_type`; raises msgspec.ValidationError with a `$.`-path.

    Strict typing, as Kubernetes' schema validation applies to Istio's CRDs: a
    port given as the string "80" is an error, not silently converted.
    """
    return msgspec.convert(data, struct_type, dec_hook=_dec_hook)


class IstioStruct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, rename="camel"):
    """Base of every Istio message: camelCase names, unknown fields are errors, immutable.

    msgspec inherits `forbid_unknown_fields`, `frozen` and `rename` but not
    `kw_only`, so subclasses repeat `kw_only=True`.
    """


class Percent(IstioStruct, kw_only=True):
    """networking.v1alpha3.Percent: a double in [0, 100]."""

    value: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0


class StringMatch(IstioStruct, kw_only=True):
    """networking.v1alpha3.StringMatch: one of exact, prefix, regex (RE2); none set means "present"."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None

    def __post_init__(self) -> None:
        at_most_one(self, "exact", "prefix", "regex")
        if self.regex is not None:
            check_regex(self.regex)


class PortSelector(IstioStruct, kw_only=True):
    number: PortNumber


def camel(name: str) -> str:
    """The YAML spelling of a Struct field name: `http_status` -> `httpStatus`."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def exactly_one(struct: msgspec.Struct, *names: str) -> None:
    """Raise ValueError unless exactly one of the oneof members `names` is set (named as in YAML)."""
    given = [camel(name) for name in names if getattr(struct, name) is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise ValueError(f"exactly one of {', '.join(camel(n) for n in names)} must be set{got}")


def at_most_one(struct: msgspec.Struct, *names: str) -> None:
    """Raise ValueError if more than one of the oneof members `names` is set (named as in YAML)."""
    given = [camel(name) for name in names if getattr(struct, name) is not None]
    if len(given) > 1:
        raise ValueError(f"at most one of {', '.join(camel(n) for n in names)} may be set (got {', '.join(given)})")


def read_yaml_file(path: Path) -> Any:
    """One YAML document from `path`; ConfigError naming the file when it cannot be read or parsed."""
    source = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, "", f"invalid YAML: {exc}".replace("\n", " ")) from None


def load_struct_file(path: Path, struct_type: type[StructT], what: str) -> StructT:
    """A file holding one `what` (MeshConfig, ProxyConfig), decoded strictly; an empty file gives the defaults.
    ConfigError naming the file and the field path."""
    data = read_yaml_file(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"expected a {what} mapping, got {type(data).__name__}")
    try:
        return convert(data, struct_type)
    except msgspec.ValidationError as exc:
        field_path, message = split_validation_error(exc)
        raise ConfigError(str(path), field_path, message) from None
