"""The subset of Envoy's v3 API that pylon runs, as msgspec Structs.

Field names, defaults and oneof rules are Envoy's, so an Envoy bootstrap that
uses only these fields loads unchanged. Every Struct forbids unknown fields:
a field pylon does not implement is an error at its path, never ignored.
Fields pylon recognises but does not implement yet are typed `NotSupportedYet`
so the error says so instead of "unknown field".

Proto details, mapped once here:
- Duration -> `Duration` (a float of seconds) from "1.5s" or {seconds, nanos};
- protoc-gen-validate rules -> field types: `msgspec.Meta` bounds where msgspec
  has the rule, else the constrained types of `constraints.py` (Duration ranges,
  byte lengths, header characters); a field's type is where its rule is read;
- wrapper types (UInt32Value, BoolValue) -> plain values; Percent -> `Percent`;
- enums -> Literal strings of Envoy's names, read in any letter case as Envoy
  reads them (`convert`: `lb_policy: round_robin` is ROUND_ROBIN);
- `typed_config` (protobuf Any) -> the Struct registered for its `@type` in the
  registry category of that position (see `registry.py`); core extensions are
  registered at the bottom of this module.

Decode with `convert(data, Bootstrap)`; the loader
(`loader.py`) adds file names, cross-reference checks and DataSource reads.
"""

from __future__ import annotations

import ctypes
import ipaddress
import math
import re
from collections.abc import Callable, Iterator
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, NoReturn, TypeVar

import msgspec
import msgspec.inspect
import re2
from msgspec.structs import force_setattr

from pylon import regex
from pylon.config import registry, runtime
from pylon.config.constraints import (
    AtLeastOneMs,
    ConstrainedStr,
    DnsRefreshRate,
    Duration,
    HeaderKey,
    HeaderValueText,
    HttpText,
    NonEmptyHttpText,
    NonEmptyStrictHttpText,
    PositiveDuration,
    QueryParameterName,
    SessionTimeout,
    StatsFlushInterval,
    StrictHttpText,
    parse_duration,
)
from pylon.config.datasource import DataSource
from pylon.config.errors import FieldError, join_path, split_validation_error

StructT = TypeVar("StructT")
UINT32_MAX = 2**32 - 1
UInt32 = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
PositiveUInt32 = Annotated[int, msgspec.Meta(ge=1, le=UINT32_MAX)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
NonEmptyStr = Annotated[str, msgspec.Meta(min_length=1)]
Percentage = Annotated[int, msgspec.Meta(ge=0, le=100)]
#: PGV `repeated: {max_items: 1000}` of the header add lists.
HeadersToAdd = Annotated[list["HeaderValueOption"], msgspec.Meta(max_length=1000)]


# --------------------------------------------------------------------------- field types


class RegexPattern(str):
    """A regular expression that RE2 (Envoy's default engine) accepted at load time."""


class NotSupportedYet:
    """Annotation for Envoy fields pylon recognises but does not implement: setting one is an error."""


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes into the ConfigError, not to stderr


def check_regex(pattern: str) -> None:
    """ValueError with RE2's reason unless RE2 takes `pattern`, as Envoy checks a config's regexes.

    The verdict is remembered per process: a route update decodes every regex of its table again (in the
    supervisor and in each worker), and re2's own cache holds 128 patterns; 5,000 regexes took ~120 ms.
    """
    error = _REGEX_VERDICTS.get(pattern, _UNSEEN)
    if error is _UNSEEN:
        error = None
        try:
            re2.compile(pattern, options=_RE2_OPTIONS)
        except re2.error as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            error = f"invalid regex {pattern!r}: {reason}"
        if len(_REGEX_VERDICTS) >= _REGEX_VERDICTS_MAX:
            _REGEX_VERDICTS.clear()  # patterns come from configs: bound the memo, keep it simple
        _REGEX_VERDICTS[pattern] = error
    if error is not None:
        raise ValueError(error)


_UNSEEN = object()
_REGEX_VERDICTS: dict[str, Any] = {}  # pattern -> None (taken) or why RE2 refuses it
_REGEX_VERDICTS_MAX = 100_000


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec decode hook for pylon's proto-derived field types."""
    if issubclass(type_, Duration):
        return parse_duration(obj, type_)
    if issubclass(type_, ConstrainedStr):
        return type_.parse(obj)
    if type_ is RegexPattern:
        if not isinstance(obj, str):
            raise ValueError(f"expected a regex string, got {type(obj).__name__}")
        check_regex(obj)
        return RegexPattern(obj)
    if type_ is NotSupportedYet:
        raise ValueError("not supported yet")
    raise NotImplementedError(f"no decoder for {type_!r}")


def convert(data: Any, struct_type: type[StructT]) -> StructT:
    """Decode parsed YAML/JSON into `struct_type` the way Envoy's proto-JSON parser reads it.

    Non-strict mode lets numbers arrive as strings (`port_value: "8080"`), which
    protobuf's JSON mapping accepts. Enum names are read in any letter case
    (`lb_policy: round_robin`), as Envoy reads them: a document that fails to
    decode is decoded once more with each enum value spelled as the model
    declares it (`_EnumSpelling`), so documents in Envoy's own spelling (every
    one pylon writes, and the xDS it is sent) pay nothing for it. Raises
    msgspec.ValidationError; a value that is no enum name, in any case, is
    reported at its path with the names accepted there.
    """
    try:
        return msgspec.convert(data, struct_type, strict=False, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        respelled, unknown = _ENUM_SPELLING.respell(data, struct_type)
        if respelled is data:
            _raise_with_accepted_names(exc, unknown)
        try:
            return msgspec.convert(respelled, struct_type, strict=False, dec_hook=dec_hook)
        except msgspec.ValidationError as again:
            _raise_with_accepted_names(again, unknown)


_INVALID_ENUM = re.compile(r"^Invalid enum value (?P<value>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)


def _raise_with_accepted_names(exc: msgspec.ValidationError, unknown: dict[str, tuple[str, ...]]) -> NoReturn:
    """Raise `exc`, with the accepted names added when it is about an enum value that matches none of them.

    Any other error is raised as it is: its `__cause__` (a FieldError) carries the path below a typed_config.
    """
    match = _INVALID_ENUM.match(str(exc))
    if match is None or match["path"] not in unknown:
        raise exc
    names = ", ".join(unknown[match["path"]])
    raise msgspec.ValidationError(
        f"Invalid enum value {match['value']}; accepted: {names} (in any letter case) - at `${match['path']}`"
    ) from None


class _EnumSpelling:
    """Envoy's enum names in any letter case: protobuf's JSON parser, as Envoy configures it
    (case-insensitive enum parsing), takes `round_robin`, `Round_Robin` and `ROUND_ROBIN` alike,
    and published configs use all of them. Every enum of the model is a `Literal` of Envoy's
    names, so the one rule lives here rather than in each Literal.

    The walk also takes each message field by its protobuf JSON name (lowerCamelCase, `remoteJwks`), as
    Envoy's parser does; a key that is a field's own name stays as it is (both at once: the camel one is
    unknown). It applies protobuf's other JSON rule that msgspec lacks: `null` for a message's
    field means the field is unset (its default), whatever its type - published configs write
    `listener_filters:` with nothing after it. A null stays where the model takes any JSON value
    (google.protobuf.Value/Struct positions), where it is a value of its own.

    `respell(data, struct_type)` walks the document along the model's types (msgspec's
    type information, built once per Struct type) and returns it with each string at a
    Literal position replaced by the name it matches, ignoring ASCII case; the document
    itself is never changed (untouched parts are shared, changed ones copied), and null fields
    are left out of the copy. Positions
    inside `typed_config` (protobuf Any) are not walked here: their Struct is decoded by a
    `convert` of its own. Also returns, by msgspec's path (`.a.b[0]`, dict values `[...]`),
    the accepted names of each string that matches none.
    """

    def __init__(self) -> None:
        self._types: dict[type, Any] = {}
        self._fields: dict[type, dict[str, Any]] = {}
        self._names: dict[tuple[str, ...], dict[str, str]] = {}
        self._camel: dict[type, dict[str, str]] = {}

    def respell(self, data: Any, struct_type: type) -> tuple[Any, dict[str, tuple[str, ...]]]:
        kind = self._types.get(struct_type)
        if kind is None:
            kind = self._types[struct_type] = msgspec.inspect.type_info(struct_type)  # ~10 ms for Bootstrap
        unknown: dict[str, tuple[str, ...]] = {}
        return self._walk(data, kind, "", unknown), unknown

    def _walk(self, value: Any, kind: Any, path: str, unknown: dict[str, tuple[str, ...]]) -> Any:
        inspect = msgspec.inspect
        if isinstance(kind, inspect.UnionType):
            kind = self._member_for(value, kind)
        if isinstance(kind, inspect.LiteralType):
            return self._spelled(value, kind.values, path, unknown) if isinstance(value, str) else value
        if isinstance(kind, inspect.StructType) and isinstance(value, dict):
            fields = self._struct_fields(kind)
            camel = self._camel_names(kind.cls, fields)
            if any(key in camel and camel[key] not in value for key in value):
                value = {(camel[key] if key in camel and camel[key] not in value else key): item
                         for key, item in value.items()}
            unset = [key for key, item in value.items()
                     if item is None and key in fields and not isinstance(fields[key], inspect.AnyType)]
            if unset:
                value = {key: item for key, item in value.items() if key not in unset}
            return self._mapped(value, {key: (fields[key], f"{path}.{key}") for key in value if key in fields},
                                unknown)
        if isinstance(kind, inspect.DictType) and isinstance(value, dict):
            return self._mapped(value, {key: (kind.value_type, f"{path}[...]") for key in value}, unknown)
        if isinstance(kind, (inspect.ListType, inspect.VarTupleType)) and isinstance(value, list):
            items = [self._walk(item, kind.item_type, f"{path}[{i}]", unknown) for i, item in enumerate(value)]
            return value if all(new is old for new, old in zip(items, value)) else items
        return value

    def _mapped(self, value: dict[str, Any], kinds: dict[str, tuple[Any, str]],
                unknown: dict[str, tuple[str, ...]]) -> dict[str, Any]:
        out = value
        for key, (kind, path) in kinds.items():
            new = self._walk(value[key], kind, path, unknown)
            if new is not value[key]:
                if out is value:
                    out = dict(value)
                out[key] = new
        return out

    @staticmethod
    def _member_for(value: Any, union: Any) -> Any:
        """The member of a union (in practice `X | None`) that a JSON value of this kind decodes as."""
        inspect = msgspec.inspect
        wanted: tuple[type, ...] = ()
        if isinstance(value, str):
            wanted = (inspect.LiteralType,)
        elif isinstance(value, dict):
            wanted = (inspect.StructType, inspect.DictType)
        elif isinstance(value, list):
            wanted = (inspect.ListType, inspect.VarTupleType)
        return next((member for member in union.types if isinstance(member, wanted)), None)

    def _struct_fields(self, kind: Any) -> dict[str, Any]:
        fields = self._fields.get(kind.cls)
        if fields is None:
            fields = self._fields[kind.cls] = {field.encode_name: field.type for field in kind.fields}
        return fields

    def _camel_names(self, cls: type, fields: dict[str, Any]) -> dict[str, str]:
        """A Struct's fields by their protobuf JSON names (lowerCamelCase: `remoteJwks` for `remote_jwks`), which
        Envoy's parser takes as well as the field names."""
        names = self._camel.get(cls)
        if names is None:
            names = self._camel[cls] = {}
            for field in fields:
                head, *rest = field.split("_")
                json_name = head + "".join(part[:1].upper() + part[1:] for part in rest)
                if json_name != field:
                    names[json_name] = field
        return names

    def _spelled(self, value: str, names: tuple[str, ...], path: str, unknown: dict[str, tuple[str, ...]]) -> str:
        by_upper = self._names.get(names)
        if by_upper is None:
            by_upper = self._names[names] = {name.upper(): name for name in names}
        # protobuf upper-cases ASCII letters only; a non-ASCII character matches no enum name.
        name = by_upper.get(value.upper()) if value.isascii() else None
        if name is None:
            unknown[path] = names
            return value
        return name


_ENUM_SPELLING = _EnumSpelling()


class EnvoyStruct(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """Base of every Envoy message: unknown fields are errors, instances are immutable.

    msgspec inherits `forbid_unknown_fields` and `frozen` but not `kw_only`, so
    subclasses repeat `kw_only=True` (it lets required fields follow defaulted ones
    in Envoy's field order).
    """


# --------------------------------------------------------------------------- validation helpers


def _set_fields(struct: msgspec.Struct, names: tuple[str, ...]) -> list[str]:
    return [name for name in names if getattr(struct, name) is not None]


def _exactly_one(struct: msgspec.Struct, *names: str) -> None:
    given = _set_fields(struct, names)
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise ValueError(f"exactly one of {', '.join(names)} must be set{got}")


def _at_most_one(struct: msgspec.Struct, *names: str) -> None:
    given = _set_fields(struct, names)
    if len(given) > 1:
        raise ValueError(f"at most one of {', '.join(names)} may be set (got {', '.join(given)})")


def _explain_unknown_type(category: str, type_url: str) -> str:
    what = registry.CATEGORY_NAMES[category]
    elsewhere = sorted(registry.CATEGORY_NAMES[c] for c in registry.categories_of(type_url))
    if elsewhere:
        head = f"{type_url} is registered as {' and '.join(elsewhere)}, but this position takes {what}s"
    else:
        head = f"unknown {what} type {type_url}"
    accepted = sorted(registry.type_urls(category))
    if not accepted:
        return f"{head}; {what}s are not supported yet"
    return f"{head}; accepted here: {', '.join(accepted)}"


def decode_typed(category: str, raw: Any) -> msgspec.Struct:
    """The registered Struct for a `typed_config` value in `category`.

    Raises FieldError with a path relative to the typed_config ("@type",
    "route_config.virtual_hosts[0]", ...). A Struct built in code is accepted if
    its type is registered in `category`.
    """
    if isinstance(raw, msgspec.Struct):
        url = registry.type_url_of(type(raw))
        if url is None or registry.lookup(category, url) is not type(raw):
            raise FieldError("", f"{type(raw).__qualname__} is not a registered {registry.CATEGORY_NAMES[category]}")
        return raw
    if not isinstance(raw, dict):
        raise FieldError("", f"expected an object with @type, got {type(raw).__name__}")
    type_url = raw.get("@type")
    if not isinstance(type_url, str) or not type_url:
        raise FieldError("@type", "missing required field")
    if registry.message_name(type_url) in TYPED_STRUCTS:
        body = _typed_struct_body(raw)
        try:
            return decode_typed(category, body)
        except FieldError as exc:
            where = "type_url" if exc.rel_path == "@type" else join_path("value", exc.rel_path)
            raise FieldError(where, exc.message) from None
    struct_type = registry.lookup(category, type_url)
    if struct_type is None:
        raise FieldError("@type", _explain_unknown_type(category, type_url))
    body = {key: value for key, value in raw.items() if key != "@type"}
    try:
        return convert(body, struct_type)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise FieldError(path, message) from None


#: An extension's config as a JSON object beside its message's type URL (xds.type.v3.TypedStruct, and the older
#: udpa one): for control planes that do not have the message. Envoy takes one wherever it takes the message's Any,
#: finds the extension by the inner `type_url` and reads `value` as that message's JSON.
TYPED_STRUCTS = frozenset({"xds.type.v3.TypedStruct", "udpa.type.v1.TypedStruct"})


def _typed_struct_body(raw: dict[str, Any]) -> dict[str, Any]:
    """A TypedStruct as the `{"@type": type_url, **value}` Any it stands for."""
    for key in raw:
        if key not in ("@type", "type_url", "value"):
            raise FieldError(key, "unknown field")
    type_url = raw.get("type_url")
    if not isinstance(type_url, str) or not type_url:
        raise FieldError("type_url", "missing required field")
    value = raw.get("value")
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise FieldError("value", f"expected an object, got {type(value).__name__}")
    if "@type" in value:
        raise FieldError("value.@type", "unknown field")
    return {"@type": type_url, **value}


def _resolve_typed_field(struct: msgspec.Struct, field: str, category: str) -> None:
    """Replace the raw Any in `field` by its decoded Struct (errors located through the field)."""
    try:
        decoded = decode_typed(category, getattr(struct, field))
    except FieldError as exc:
        raise FieldError(join_path(field, exc.rel_path), exc.message) from None
    force_setattr(struct, field, decoded)


class FilterConfig(EnvoyStruct, kw_only=True):
    """config.route.v3.FilterConfig, a per-route wrapper: the filter's own per-route `config`, and `disabled`, which
    turns the filter off for the route (proxy/filter_chain.py). `is_optional` only matters to Envoy for a config
    type it does not know; pylon decodes `config` whatever it says, so an unknown type is an error here."""

    config: Any = None
    is_optional: bool = False
    disabled: bool = False

    def __post_init__(self) -> None:
        if self.config is not None:
            _resolve_typed_field(self, "config", registry.HTTP_FILTER_PER_ROUTE)
            if isinstance(self.config, FilterConfig):
                raise FieldError("config", "a FilterConfig cannot wrap another")


def _resolve_per_filter_configs(struct: msgspec.Struct) -> None:
    """Decode each `typed_per_filter_config` value as the per-route config of its @type. A FilterConfig is
    unwrapped: its `config` takes its place, a `disabled` one stays as the level's mark that the filter is off,
    an enabled one without config leaves nothing at that level."""
    configs = getattr(struct, "typed_per_filter_config")
    for name, raw in list(configs.items()):
        try:
            decoded = decode_typed(registry.HTTP_FILTER_PER_ROUTE, raw)
        except FieldError as exc:
            raise FieldError(join_path(f"typed_per_filter_config[{name}]", exc.rel_path), exc.message) from None
        if isinstance(decoded, FilterConfig) and not decoded.disabled:
            if decoded.config is None:
                del configs[name]
                continue
            decoded = decoded.config
        configs[name] = decoded


class _TypedExtension(EnvoyStruct, kw_only=True):
    """Envoy's {name, typed_config} pair; each subclass fixes the registry category of its position."""

    category: ClassVar[str]
    name: NonEmptyStr
    typed_config: Any

    def __post_init__(self) -> None:
        _resolve_typed_field(self, "typed_config", self.category)


# --------------------------------------------------------------------------- core types


class SocketAddress(EnvoyStruct, kw_only=True):
    """config.core.v3.SocketAddress; only TCP (a listener's may say UDP: `ListenerSocketAddress`) and numeric
    `port_value` (no named ports). `network_namespace_filepath` only on a listener's address (the namespace its
    socket is made in, proxy/netns.py); elsewhere it is refused by name."""

    protocol: Literal["TCP", "UDP"] = "TCP"
    address: NonEmptyStr
    port_value: Port
    ipv4_compat: bool = False
    network_namespace_filepath: str = ""

    def __post_init__(self) -> None:
        if self.protocol != "TCP":
            raise FieldError("protocol", f"{self.protocol} is not supported yet (only a listener's address may "
                                         "say UDP)")
        if self.network_namespace_filepath:
            # Envoy 1.40 also makes upstream connections from a namespaced upstream_bind_config source address
            raise FieldError("network_namespace_filepath", "a network namespace is supported on a listener's "
                                                           "address only (not supported yet here)")


class EndpointSocketAddress(SocketAddress, kw_only=True):
    """A cluster endpoint's SocketAddress: a network namespace is refused with Envoy 1.40's words (its hosts
    connect from the proxy's namespace; only a source address may name one)."""

    def __post_init__(self) -> None:
        if self.network_namespace_filepath:
            raise FieldError("network_namespace_filepath", "Invalid host configuration: hosts cannot specify network "
                                                           "namespaces with their address")
        super().__post_init__()


class ListenerSocketAddress(SocketAddress, kw_only=True):
    """A listener's SocketAddress: `protocol: UDP` makes it a UDP listener (its datagrams go to its UDP listener
    filters, the UDP proxy); everywhere else an address is TCP's. `network_namespace_filepath`: its socket is
    created in that Linux network namespace (the file is opened when the proxy binds, not in validate mode, as
    Envoy's)."""

    def __post_init__(self) -> None:
        pass  # a listener's address may say UDP and name a network namespace


class Pipe(EnvoyStruct, kw_only=True):
    """config.core.v3.Pipe: a Unix domain socket path (a leading `@`: Linux's abstract namespace). `mode` is the
    permission of a socket a listener creates; pylon connects to pipes only (gRPC clusters), where Envoy does
    not use it either."""

    path: NonEmptyStr
    mode: Annotated[int, msgspec.Meta(ge=0, le=0o777)] = 0


class EnvoyInternalAddress(EnvoyStruct, kw_only=True):
    """config.core.v3.EnvoyInternalAddress: an internal listener by name (a cluster endpoint's address: the
    connection stays inside the worker, proxy/internal_listener.py). `endpoint_id` tells apart endpoints that name
    the same listener; Envoy prints the address as `envoy://<server_listener_name>/<endpoint_id>`."""

    server_listener_name: NonEmptyStr
    endpoint_id: str = ""


class Address(EnvoyStruct, kw_only=True):
    """config.core.v3.Address: `socket_address`, or `pipe` where pylon connects through grpcio (the clusters of
    xDS and SDS, as Istio's bootstrap writes them: `xds-grpc`, `sds-grpc`); a pipe anywhere else is an error
    naming it (see `SocketAddress` users). `envoy_internal_address`: a cluster endpoint's internal listener."""

    socket_address: SocketAddress | None = None
    pipe: Pipe | None = None
    envoy_internal_address: EnvoyInternalAddress | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "socket_address", "pipe", "envoy_internal_address")

    @property
    def grpc_target(self) -> str:
        """This address as a grpcio target: `host:port`, `[v6]:port`, `unix:/path` or `unix-abstract:name`."""
        if self.pipe is not None:
            path = self.pipe.path
            return f"unix-abstract:{path[1:]}" if path.startswith("@") else f"unix:{path}"
        assert self.socket_address is not None
        sa = self.socket_address
        host = f"[{sa.address}]" if ":" in sa.address else sa.address
        return f"{host}:{sa.port_value}"



class ListenerAddress(Address, kw_only=True):
    """A listener's Address: its socket_address may be UDP."""

    socket_address: ListenerSocketAddress | None = None


class EndpointAddress(Address, kw_only=True):
    """A cluster endpoint's Address: its socket_address names no network namespace (Envoy's rule)."""

    socket_address: EndpointSocketAddress | None = None


class FractionalPercent(EnvoyStruct, kw_only=True):
    """type.v3.FractionalPercent: numerator over 100, 10,000 or 1,000,000 (a numerator above it means all)."""

    numerator: UInt32 = 0
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"

    @property
    def fraction(self) -> float:
        scale = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[self.denominator]
        return min(self.numerator, scale) / scale


class RuntimeFractionalPercent(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimeFractionalPercent: `default_value` unless the runtime has `runtime_key`.

    pylon's layered runtime refuses every key it does not implement (config/runtime.py), and it
    implements none of these, so the default is always what applies - as in Envoy without the key.
    """

    default_value: FractionalPercent
    runtime_key: str = ""


class RuntimeFeatureFlag(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimeFeatureFlag: on or off by `default_value` (required), unless the runtime has
    `runtime_key` - which pylon's runtime never has (see RuntimeFractionalPercent)."""

    default_value: bool
    runtime_key: str = ""


class Percent(EnvoyStruct, kw_only=True):
    """type.v3.Percent."""

    value: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0


class HeaderValue(EnvoyStruct, kw_only=True):
    key: HeaderKey
    value: HeaderValueText = HeaderValueText("")


AppendAction = Literal["APPEND_IF_EXISTS_OR_ADD", "ADD_IF_ABSENT", "OVERWRITE_IF_EXISTS_OR_ADD", "OVERWRITE_IF_EXISTS"]


class HeaderValueOption(EnvoyStruct, kw_only=True):
    """config.core.v3.HeaderValueOption; `append` is the deprecated form of `append_action`."""

    header: HeaderValue
    append: bool | None = None
    append_action: AppendAction = "APPEND_IF_EXISTS_OR_ADD"
    keep_empty_value: bool = False

    def __post_init__(self) -> None:
        if self.append is not None and self.append_action != "APPEND_IF_EXISTS_OR_ADD":
            raise ValueError("append and append_action cannot both be set")

    @property
    def effective_action(self) -> AppendAction:
        """The action to apply, folding the deprecated `append: false` into OVERWRITE_IF_EXISTS_OR_ADD."""
        return "OVERWRITE_IF_EXISTS_OR_ADD" if self.append is False else self.append_action


class _HeaderMutations(EnvoyStruct, kw_only=True):
    """The four header add/remove lists shared by routes, virtual hosts, route configs and weighted clusters.

    Names to remove may be empty here (route configs, weighted clusters); routes and
    virtual hosts narrow them to `min_len: 1` (`_NonEmptyHeaderRemovals`), as Envoy's protos do.
    """

    request_headers_to_add: HeadersToAdd = []
    request_headers_to_remove: list[HttpText] = []
    response_headers_to_add: HeadersToAdd = []
    response_headers_to_remove: list[HttpText] = []


class _NonEmptyHeaderRemovals(_HeaderMutations, kw_only=True):
    """Routes' and virtual hosts' header mutations: names to remove are non-empty."""

    request_headers_to_remove: list[NonEmptyHttpText] = []
    response_headers_to_remove: list[NonEmptyHttpText] = []


# --------------------------------------------------------------------------- matchers


class GoogleRe2(EnvoyStruct, kw_only=True):
    """The (deprecated, empty) RE2 engine selector of a RegexMatcher."""


class RegexMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.RegexMatcher; the pattern is compiled with RE2 at load time."""

    google_re2: GoogleRe2 | None = None
    regex: RegexPattern


class StringMatcher(EnvoyStruct, kw_only=True):
    """type.matcher.v3.StringMatcher: exactly one of the match kinds."""

    exact: str | None = None
    prefix: NonEmptyStr | None = None
    suffix: NonEmptyStr | None = None
    safe_regex: RegexMatcher | None = None
    contains: NonEmptyStr | None = None
    ignore_case: bool = False

    def __post_init__(self) -> None:
        _exactly_one(self, "exact", "prefix", "suffix", "safe_regex", "contains")


class HeaderMatcher(EnvoyStruct, kw_only=True):
    """config.route.v3.HeaderMatcher; with no match kind set it matches on presence, as in Envoy."""

    name: NonEmptyHttpText
    exact_match: str | None = None
    safe_regex_match: RegexMatcher | None = None
    present_match: bool | None = None
    prefix_match: NonEmptyStr | None = None
    suffix_match: NonEmptyStr | None = None
    contains_match: NonEmptyStr | None = None
    string_match: StringMatcher | None = None
    invert_match: bool = False
    treat_missing_header_as_empty: bool = False

    def __post_init__(self) -> None:
        _at_most_one(
            self, "exact_match", "safe_regex_match", "present_match", "prefix_match",
            "suffix_match", "contains_match", "string_match",
        )  # fmt: skip


class QueryParameterMatcher(EnvoyStruct, kw_only=True):
    """config.route.v3.QueryParameterMatcher; with neither kind set it matches on presence."""

    name: QueryParameterName
    string_match: StringMatcher | None = None
    present_match: bool | None = None

    def __post_init__(self) -> None:
        _at_most_one(self, "string_match", "present_match")


# --------------------------------------------------------------------------- routes


class GrpcRouteMatchOptions(EnvoyStruct, kw_only=True):
    """RouteMatch.grpc: no options in Envoy 1.40; its presence limits the route to gRPC requests."""


class ConnectMatcher(EnvoyStruct, kw_only=True):
    """RouteMatch.ConnectMatcher (no fields): the route takes CONNECT requests, and only them."""


class RouteMatch(EnvoyStruct, kw_only=True):
    prefix: str | None = None
    path: str | None = None
    safe_regex: RegexMatcher | None = None
    case_sensitive: bool = True
    headers: list[HeaderMatcher] = []
    query_parameters: list[QueryParameterMatcher] = []
    #: set: only gRPC requests match (POST with content-type application/grpc or application/grpc+...)
    grpc: GrpcRouteMatchOptions | None = None
    #: set: only CONNECT requests match (they have no path, so no other path matcher takes them)
    connect_matcher: ConnectMatcher | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "prefix", "path", "safe_regex", "connect_matcher")


#: retry_on conditions Envoy evaluates on the response's `grpc-status` header, with the code each names.
GRPC_RETRY_ON = MappingProxyType(
    {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8, "internal": 13, "unavailable": 14}
)
RETRY_ON_CONDITIONS = frozenset(
    {
        "5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes",
        "refused-stream", "retriable-4xx", "envoy-ratelimited", *GRPC_RETRY_ON,
    }
)  # fmt: skip


class Metadata(EnvoyStruct, kw_only=True):
    """config.core.v3.Metadata: opaque data for filters, tracers and loggers.

    Read where Envoy's readers read it: `envoy.transport_socket_match` (an
    endpoint's transport socket), `envoy.lb` (an endpoint's subset values, a
    route's `metadata_match`), and a route's and a virtual host's by the Lua
    filter (metadata(), route():metadata(), virtualHost():metadata()). The rest
    only rides along, as in Envoy without readers for it. `typed_filter_metadata` values are decoded by their
    `@type` among the types some reader knows (registry category `envoy.typed_metadata`: gcp_authn's Audience on a
    cluster); any other is an error naming it.
    """

    filter_metadata: dict[str, dict[str, Any]] = {}
    typed_filter_metadata: dict[str, Any] = {}

    def __post_init__(self) -> None:
        for name, raw in list(self.typed_filter_metadata.items()):
            try:
                self.typed_filter_metadata[name] = decode_typed(registry.TYPED_METADATA, raw)
            except FieldError as exc:
                raise FieldError(join_path(f"typed_filter_metadata[{name}]", exc.rel_path), exc.message) from None


class PreviousHostsPredicate(EnvoyStruct, kw_only=True):
    """extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate: a retry avoids the hosts already tried."""


class OmitCanaryHostsPredicate(EnvoyStruct, kw_only=True):
    """extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate: a retry avoids canary hosts (an
    endpoint whose `envoy.lb` metadata says `canary: true`)."""


class OmitHostMetadataConfig(EnvoyStruct, kw_only=True):
    """extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig: a retry avoids hosts whose `envoy.lb`
    metadata has every value of `metadata_match.filter_metadata["envoy.lb"]` (other namespaces are not read, as
    in Envoy; with no values nothing is avoided)."""

    metadata_match: Metadata | None = None

    @property
    def labels(self) -> dict[str, Any]:
        """The `envoy.lb` values a host must all carry to be avoided."""
        return dict(self.metadata_match.filter_metadata.get("envoy.lb", {})) if self.metadata_match else {}


#: The retry host predicates pylon runs, by their config message (Envoy's `envoy.retry_host_predicates`).
RETRY_HOST_PREDICATES: dict[str, type[EnvoyStruct]] = {
    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate": PreviousHostsPredicate,
    "envoy.extensions.retry.host.omit_canary_hosts.v3.OmitCanaryHostsPredicate": OmitCanaryHostsPredicate,
    "envoy.extensions.retry.host.omit_host_metadata.v3.OmitHostMetadataConfig": OmitHostMetadataConfig,
}


def _decode_small_extension(typed_config: dict[str, Any], known: dict[str, type[EnvoyStruct]],
                            what: str) -> EnvoyStruct:
    """A small extension's typed_config (retry predicates and priorities, DNS resolvers) as its Struct; an unknown
    @type or field is an error naming it."""
    type_url = typed_config.get("@type")
    struct_type = known.get(registry.message_name(type_url)) if isinstance(type_url, str) else None
    if struct_type is None:
        accepted = ", ".join(registry.TYPE_URL_PREFIX + name for name in known)
        raise FieldError("typed_config.@type", f"unsupported {what} {type_url!r}; supported: {accepted}")
    try:
        return convert({k: v for k, v in typed_config.items() if k != "@type"}, struct_type)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise FieldError(join_path("typed_config", path), message) from None


class RetryHostPredicate(EnvoyStruct, kw_only=True):
    """config.route.v3.RetryPolicy.RetryHostPredicate: previous_hosts, omit_canary_hosts or omit_host_metadata.
    As in Envoy they act on retries only, and only with `host_selection_retry_max_attempts` above 0: a host a
    predicate refuses is picked again up to that many times, then the last pick stands."""

    name: NonEmptyStr
    typed_config: dict[str, Any]

    def __post_init__(self) -> None:
        self.decoded()

    def decoded(self) -> EnvoyStruct:
        """The predicate's config message (checked when the policy is read, decoded again where it is run)."""
        return _decode_small_extension(self.typed_config, RETRY_HOST_PREDICATES, "retry host predicate")


class PreviousPrioritiesConfig(EnvoyStruct, kw_only=True):
    """extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig: after every `update_frequency`
    attempts, a retry's priority load leaves out the priorities already tried (proxy/upstream/retry_priority.py)."""

    update_frequency: Annotated[int, msgspec.Meta(gt=0, le=2**31 - 1)] = 1


#: The retry priorities pylon runs (Envoy has this one).
RETRY_PRIORITIES: dict[str, type[EnvoyStruct]] = {
    "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig": PreviousPrioritiesConfig,
}


class RetryPriority(EnvoyStruct, kw_only=True):
    """config.route.v3.RetryPolicy.RetryPriority: Envoy's one retry priority, previous_priorities."""

    name: NonEmptyStr
    typed_config: dict[str, Any]

    def __post_init__(self) -> None:
        self.decoded()

    def decoded(self) -> PreviousPrioritiesConfig:
        """The priority's config message (checked when the policy is read, decoded again where it is run)."""
        decoded = _decode_small_extension(self.typed_config, RETRY_PRIORITIES, "retry priority")
        assert isinstance(decoded, PreviousPrioritiesConfig)
        return decoded


class RetryBackOff(EnvoyStruct, kw_only=True):
    base_interval: PositiveDuration
    max_interval: PositiveDuration | None = None

    def __post_init__(self) -> None:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise FieldError("max_interval", "must not be less than base_interval")


class RetryPolicy(EnvoyStruct, kw_only=True):
    """config.route.v3.RetryPolicy; `retry_on` is Envoy's comma-separated condition list."""

    retry_on: str = ""
    num_retries: UInt32 = 1
    per_try_timeout: Duration | None = None
    retriable_status_codes: list[UInt32] = []
    retry_back_off: RetryBackOff | None = None
    retry_host_predicate: list[RetryHostPredicate] = []
    retry_priority: RetryPriority | None = None
    #: extra host selections when a predicate refuses the chosen host (Envoy: 0, one selection and no more)
    host_selection_retry_max_attempts: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0

    def __post_init__(self) -> None:
        for condition in self.conditions:
            if condition not in RETRY_ON_CONDITIONS:
                raise FieldError(
                    "retry_on",
                    f"unsupported retry condition {condition!r}; supported: {', '.join(sorted(RETRY_ON_CONDITIONS))}",
                )

    @property
    def conditions(self) -> frozenset[str]:
        """The retry conditions named in `retry_on`."""
        return frozenset(token.strip() for token in self.retry_on.split(",") if token.strip())


class HashPolicyHeader(EnvoyStruct, kw_only=True):
    header_name: NonEmptyHttpText


class HashPolicyConnectionProperties(EnvoyStruct, kw_only=True):
    source_ip: bool = False


class HashPolicyQueryParameter(EnvoyStruct, kw_only=True):
    name: NonEmptyStr


class HashPolicyCookie(EnvoyStruct, kw_only=True):
    """The request's cookie `name`; without it and with a `ttl`, Envoy makes one (from the connection's addresses)
    and sets it on the response (`Max-Age` unless the ttl is 0, `Path` if given, HttpOnly)."""

    name: NonEmptyStr
    ttl: Duration | None = None
    path: str = ""
    attributes: NotSupportedYet | None = None


class HashPolicy(EnvoyStruct, kw_only=True):
    """config.route.v3.RouteAction.HashPolicy: a request header, the client's address, a query parameter, a cookie.

    Each policy that finds its value adds it to the request's hash key, in order; a
    `terminal` one that found it ends the list (Envoy's rules). A policy that finds
    nothing adds nothing; with no value at all the balancer picks as without a key.
    """

    header: HashPolicyHeader | None = None
    connection_properties: HashPolicyConnectionProperties | None = None
    query_parameter: HashPolicyQueryParameter | None = None
    cookie: HashPolicyCookie | None = None
    filter_state: NotSupportedYet | None = None
    terminal: bool = False

    def __post_init__(self) -> None:
        _exactly_one(self, "header", "connection_properties", "query_parameter", "cookie", "filter_state")


class ClusterWeight(_HeaderMutations, kw_only=True):
    name: NonEmptyStr
    weight: UInt32 | None = None
    #: its `envoy.lb` values merged over the route's (these win), for a subset load balancer
    metadata_match: Metadata | None = None
    #: the most specific level of per-filter configs: a request sent to this cluster sees these first
    typed_per_filter_config: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _resolve_per_filter_configs(self)


class WeightedCluster(EnvoyStruct, kw_only=True):
    clusters: Annotated[list[ClusterWeight], msgspec.Meta(min_length=1)]
    total_weight: UInt32 | None = None

    def __post_init__(self) -> None:
        total = sum(cluster.weight or 0 for cluster in self.clusters)
        if total == 0:
            raise FieldError("clusters", "the sum of weights must be greater than 0")
        if self.total_weight is not None and self.total_weight != total:
            raise FieldError("total_weight", f"is {self.total_weight} but the weights sum to {total}")


class RegexRewrite(EnvoyStruct, kw_only=True):
    pattern: RegexMatcher
    substitution: HttpText


class CorsPolicy(EnvoyStruct, kw_only=True, weakref=True):
    """config.route.v3.CorsPolicy, field for field the same as extensions.filters.http.cors.v3.CorsPolicy.

    One Struct for both: the route's and virtual host's deprecated `cors` (still accepted by Envoy 1.40,
    with a warning) and the CORS filter's per-route config, which the filter module registers. Envoy
    does not check the header texts; pylon refuses NUL, CR and LF in them (they would break the
    response head). Weak-referenceable: the filter caches what it compiles from one, per route table.
    """

    allow_origin_string_match: list[StringMatcher] = []
    allow_methods: HttpText = HttpText("")
    allow_headers: HttpText = HttpText("")
    expose_headers: HttpText = HttpText("")
    max_age: HttpText = HttpText("")
    allow_credentials: bool | None = None
    filter_enabled: RuntimeFractionalPercent | None = None
    shadow_enabled: RuntimeFractionalPercent | None = None
    allow_private_network_access: bool | None = None
    forward_not_matching_preflights: bool | None = None


class RequestMirrorPolicy(EnvoyStruct, kw_only=True):
    """RouteAction.request_mirror_policies[]: a copy of the request to another cluster, its answer dropped.

    `trace_sampled` is read only where a tracer propagates a sampling decision (see proxy/mirror.py).
    The newer `request_headers_mutations` and `host_rewrite_literal` are not supported yet.
    """

    cluster: str = ""
    cluster_header: HttpText = HttpText("")
    runtime_fraction: RuntimeFractionalPercent | None = None
    trace_sampled: bool | None = None
    disable_shadow_host_suffix_append: bool = False
    request_headers_mutations: NotSupportedYet | None = None
    host_rewrite_literal: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        # Envoy's ShadowPolicyImpl checks, with its words
        if self.cluster and self.cluster_header:
            raise ValueError("only one of cluster or cluster_header in request mirror policy can be specified")
        if not self.cluster and not self.cluster_header:
            raise ValueError("exactly one of cluster or cluster_header in request mirror policy need to be specified")


class ConnectConfig(EnvoyStruct, kw_only=True):
    """RouteAction.UpgradeConfig.ConnectConfig: terminate CONNECT here, the payload going upstream as raw TCP."""

    proxy_protocol_config: NotSupportedYet | None = None
    #: a POST on the route is terminated too: its body goes to the host as raw TCP, the host's bytes come back as
    #: the 200's body (Envoy's "forwarding POST payload as raw TCP"; proxy/connect.py)
    allow_post: bool = False


class RouteUpgradeConfig(EnvoyStruct, kw_only=True):
    """RouteAction.upgrade_configs[]: allow or forbid one upgrade type on this route, over the HCM's list."""

    upgrade_type: NonEmptyStr
    enabled: bool = True
    #: set on a CONNECT upgrade: the proxy terminates the CONNECT (answers 200 and relays raw TCP to the host)
    connect_config: ConnectConfig | None = None

    def __post_init__(self) -> None:
        if self.connect_config is not None and self.upgrade_type.lower() != "connect":
            raise FieldError("connect_config", "only a CONNECT upgrade can be terminated (upgrade_type: CONNECT)")


class ClusterSpecifierExtension(_TypedExtension, kw_only=True):
    category = registry.CLUSTER_SPECIFIER


class ClusterSpecifierPlugin(EnvoyStruct, kw_only=True):
    """config.route.v3.ClusterSpecifierPlugin: an extension that picks a request's cluster (the Lua one)."""

    extension: ClusterSpecifierExtension
    is_optional: bool = False


class RouteMaxStreamDuration(EnvoyStruct, kw_only=True):
    """RouteAction.MaxStreamDuration: Envoy's newer route timeouts (the route's `timeout` and max_grpc_timeout
    then no longer apply; see proxy/grpc_timeout.py)."""

    max_stream_duration: Duration | None = None
    #: set: a request's `grpc-timeout`, capped by this (0: no cap), limits the stream instead
    grpc_timeout_header_max: Duration | None = None
    #: taken off the grpc-timeout (down to 0) when grpc_timeout_header_max is set
    grpc_timeout_header_offset: Duration | None = None


#: RouteAction.ClusterNotFoundResponseCode: the router's answer when the route's cluster does not exist
ClusterNotFoundResponseCode = Literal["SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR"]


class RouteAction(EnvoyStruct, kw_only=True):
    cluster: NonEmptyStr | None = None
    #: the request header whose (first) value names the cluster, per request (proxy/cluster_specifier.py)
    cluster_header: NonEmptyHttpText | None = None
    weighted_clusters: WeightedCluster | None = None
    #: the name of one of the route configuration's `cluster_specifier_plugins`
    cluster_specifier_plugin: NonEmptyStr | None = None
    inline_cluster_specifier_plugin: ClusterSpecifierPlugin | None = None
    prefix_rewrite: HttpText | None = None
    regex_rewrite: RegexRewrite | None = None
    host_rewrite_literal: HttpText | None = None
    timeout: Duration = Duration(15)
    idle_timeout: Duration | None = None
    retry_policy: RetryPolicy | None = None
    hash_policy: list[HashPolicy] = []
    #: set: a gRPC request's `grpc-timeout` (capped by this, 0 = no cap) replaces `timeout`
    max_grpc_timeout: Duration | None = None
    #: subtracted from `grpc-timeout` when smaller than it (only with max_grpc_timeout, as in Envoy)
    grpc_timeout_offset: Duration | None = None
    max_stream_duration: RouteMaxStreamDuration | None = None
    #: deprecated in Envoy (the CORS filter's per-route config replaces it) but still honoured by its filter
    cors: CorsPolicy | None = None
    request_mirror_policies: list[RequestMirrorPolicy] = []
    upgrade_configs: list[RouteUpgradeConfig] = []
    #: the `envoy.lb` values a subset load balancer picks the subset by (proxy/upstream/subset.py)
    metadata_match: Metadata | None = None
    #: descriptors for rate limit filters (local_ratelimit's `descriptors` match them)
    rate_limits: list[RateLimit] = []
    #: the virtual host's rate_limits apply too, whatever the filter's vh_rate_limits says
    include_vh_rate_limits: bool = False
    #: the router's status when the picked cluster does not exist (a cluster_header naming none, a cluster CDS
    #: has not given): 503, 404 or 500
    cluster_not_found_response_code: ClusterNotFoundResponseCode = "SERVICE_UNAVAILABLE"

    def __post_init__(self) -> None:
        _exactly_one(self, "cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin",
                     "inline_cluster_specifier_plugin")
        _at_most_one(self, "prefix_rewrite", "regex_rewrite")


RedirectResponseCode = Literal[
    "MOVED_PERMANENTLY", "FOUND", "SEE_OTHER", "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"
]


class RedirectAction(EnvoyStruct, kw_only=True):
    https_redirect: bool | None = None
    scheme_redirect: str | None = None
    host_redirect: HttpText | None = None
    port_redirect: UInt32 = 0  # no PGV bound: Envoy takes any uint32 here
    path_redirect: HttpText | None = None
    prefix_rewrite: HttpText | None = None
    response_code: RedirectResponseCode = "MOVED_PERMANENTLY"
    strip_query: bool = False

    def __post_init__(self) -> None:
        _at_most_one(self, "https_redirect", "scheme_redirect")
        _at_most_one(self, "path_redirect", "prefix_rewrite")


class DirectResponseAction(EnvoyStruct, kw_only=True):
    status: Annotated[int, msgspec.Meta(ge=200, lt=600)]
    body: DataSource | None = None


class Decorator(EnvoyStruct, kw_only=True):
    """config.route.v3.Decorator: the span name, and whether egress requests carry it upstream
    (x-envoy-decorator-operation); read only when the HCM has `tracing`, as in Envoy."""

    operation: NonEmptyStr
    propagate: bool | None = None


class _DescriptorValue(EnvoyStruct, kw_only=True):
    """What generic_key and header_value_match put in a descriptor entry: Envoy formats `descriptor_value` as a
    substitution format; pylon takes it literally and refuses `%` (a literal has no `%` to format)."""

    descriptor_value: NonEmptyStr
    descriptor_key: str = ""
    default_value: str = ""  # only used when the formatted value is empty: never, for a literal

    def __post_init__(self) -> None:
        if "%" in self.descriptor_value:
            raise FieldError("descriptor_value", "substitution formats are not supported here yet")


class RateLimitGenericKey(_DescriptorValue, kw_only=True):
    """RateLimit.Action.GenericKey: the entry (descriptor_key or `generic_key`, descriptor_value)."""


class RateLimitHeaderValueMatch(_DescriptorValue, kw_only=True):
    """RateLimit.Action.HeaderValueMatch: the entry (descriptor_key or `header_match`, descriptor_value) when the
    request's headers match all `headers` (or none of them with expect_match false), else no descriptor."""

    expect_match: bool = True
    headers: Annotated[list[HeaderMatcher], msgspec.Meta(min_length=1)]


class RateLimitRequestHeaders(EnvoyStruct, kw_only=True):
    """RateLimit.Action.RequestHeaders: (descriptor_key, the header's first value); a missing header drops the
    descriptor unless skip_if_absent (then only the entry is left out)."""

    header_name: NonEmptyHttpText
    descriptor_key: NonEmptyStr
    skip_if_absent: bool = False


class RateLimitQueryParameters(EnvoyStruct, kw_only=True):
    """RateLimit.Action.QueryParameters: (descriptor_key or `query_param`, the parameter's first decoded value)."""

    query_parameter_name: NonEmptyStr
    descriptor_key: NonEmptyStr
    skip_if_absent: bool = False


class RateLimitMaskedRemoteAddress(EnvoyStruct, kw_only=True):
    """RateLimit.Action.MaskedRemoteAddress: (`masked_remote_address`, the client's network as a CIDR range)."""

    v4_prefix_mask_len: Annotated[int, msgspec.Meta(ge=0, le=32)] = 32
    v6_prefix_mask_len: Annotated[int, msgspec.Meta(ge=0, le=128)] = 128


class RateLimitAction(EnvoyStruct, kw_only=True):
    """config.route.v3.RateLimit.Action: one entry of a rate limit descriptor (proxy/rate_limits.py)."""

    source_cluster: dict[str, Any] | None = None
    destination_cluster: dict[str, Any] | None = None
    request_headers: RateLimitRequestHeaders | None = None
    query_parameters: RateLimitQueryParameters | None = None
    remote_address: dict[str, Any] | None = None
    generic_key: RateLimitGenericKey | None = None
    header_value_match: RateLimitHeaderValueMatch | None = None
    masked_remote_address: RateLimitMaskedRemoteAddress | None = None
    dynamic_metadata: NotSupportedYet | None = None
    metadata: NotSupportedYet | None = None
    extension: NotSupportedYet | None = None
    query_parameter_value_match: NotSupportedYet | None = None
    remote_address_match: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "source_cluster", "destination_cluster", "request_headers", "query_parameters",
                     "remote_address", "generic_key", "header_value_match", "masked_remote_address")
        for name in ("source_cluster", "destination_cluster", "remote_address"):
            if getattr(self, name):
                raise FieldError(f"{name}.{next(iter(getattr(self, name)))}", "unknown field")


class RateLimit(EnvoyStruct, kw_only=True):
    """config.route.v3.RateLimit: the actions that make one descriptor (a route's, a virtual host's or a local
    rate limit filter's own `rate_limits`)."""

    stage: Annotated[int, msgspec.Meta(ge=0, le=10)] = 0
    #: set: the local rate limit filter leaves this rate limit out (the runtime key is never consulted)
    disable_key: str = ""
    actions: Annotated[list[RateLimitAction], msgspec.Meta(min_length=1)]
    x_ratelimit_option: Literal["UNSPECIFIED", "OFF", "DRAFT_VERSION_03"] = "UNSPECIFIED"
    limit: NotSupportedYet | None = None
    hits_addend: NotSupportedYet | None = None
    apply_on_stream_done: bool = False

    def __post_init__(self) -> None:
        if self.apply_on_stream_done:
            raise FieldError("apply_on_stream_done", "not supported yet")


class Route(_NonEmptyHeaderRemovals, kw_only=True):
    name: str = ""
    match: RouteMatch
    route: RouteAction | None = None
    redirect: RedirectAction | None = None
    direct_response: DirectResponseAction | None = None
    metadata: Metadata | None = None
    decorator: Decorator | None = None
    #: filter name -> that filter's per-route config (its own @type), overriding the filter's config
    typed_per_filter_config: dict[str, Any] = {}

    def __post_init__(self) -> None:
        _exactly_one(self, "route", "redirect", "direct_response")
        _resolve_per_filter_configs(self)


class VirtualHost(_NonEmptyHeaderRemovals, kw_only=True):
    name: NonEmptyStr
    domains: Annotated[list[HttpText], msgspec.Meta(min_length=1)]
    routes: list[Route] = []
    retry_policy: RetryPolicy | None = None
    #: xds.type.matcher.v3.Matcher choosing the route instead of `routes` (decoded by config/matcher.py in
    #: `__post_init__`, its actions Route and RouteList, its inputs request headers)
    matcher: Any = None
    #: read by filters (Lua's virtualHost():metadata())
    metadata: Metadata | None = None
    #: send `x-envoy-attempt-count` (1, 2, ... per attempt) on upstream requests
    include_request_attempt_count: bool = False
    typed_per_filter_config: dict[str, Any] = {}
    #: deprecated in Envoy (the CORS filter's per-route config replaces it) but still honoured by its filter
    cors: CorsPolicy | None = None
    #: descriptors for rate limit filters, for routes without their own (local_ratelimit's vh_rate_limits)
    rate_limits: list[RateLimit] = []

    def __post_init__(self) -> None:
        _resolve_per_filter_configs(self)
        if self.matcher is not None:
            from pylon.config import matcher  # noqa: PLC0415  (it builds on this module)

            if self.routes:
                raise FieldError("matcher", "cannot set both matcher and routes on virtual host")
            matcher.decode_field(self, "matcher", inputs=registry.ROUTE_MATCH_INPUT, actions=registry.ROUTE_MATCH_ACTION)

    def all_routes(self) -> Iterator[tuple[str, Route]]:
        """(field path below the virtual host, route) of its `routes`, or of its matcher's Route and RouteList
        actions."""
        if self.matcher is None:
            yield from ((f"routes[{j}]", route) for j, route in enumerate(self.routes))
            return
        from pylon.config import matcher  # noqa: PLC0415  (it builds on this module)

        for path, kind, extension in matcher.extensions(self.matcher, "matcher"):
            if kind != "action":
                continue
            action = extension.typed_config
            where = join_path(path, "typed_config")
            if isinstance(action, RouteList):
                yield from ((join_path(where, f"routes[{j}]"), route) for j, route in enumerate(action.routes))
            else:
                yield where, action


class MatcherRoute(Route, kw_only=True):
    """A Route as a virtual host matcher's action (envoy.config.route.v3.Route under its @type). Its own class, so
    that only a matcher's actions carry the @type when a config is re-encoded, never a `routes` entry."""


class RouteList(EnvoyStruct, kw_only=True):
    """config.route.v3.RouteList: a matcher's action trying its routes in order, the first that matches wins."""

    routes: list[Route] = []


class RouteConfiguration(_HeaderMutations, kw_only=True):
    name: str = ""
    virtual_hosts: list[VirtualHost] = []
    #: True: a route to a cluster the proxy does not know rejects the configuration (RDS only: an HCM's
    #: inline route_config refuses the field). None is Envoy's default, false for RDS.
    validate_clusters: bool | None = None
    #: the least specific level of per-filter configs (a virtual host's, then a route's, override it)
    typed_per_filter_config: dict[str, Any] = {}
    #: named cluster specifiers routes refer to by `route.cluster_specifier_plugin`
    cluster_specifier_plugins: list[ClusterSpecifierPlugin] = []

    def __post_init__(self) -> None:
        _resolve_per_filter_configs(self)
        plugins = {plugin.extension.name for plugin in self.cluster_specifier_plugins}
        if len(plugins) != len(self.cluster_specifier_plugins):
            raise FieldError("cluster_specifier_plugins", "two plugins have the same extension name")
        for i, vhost in enumerate(self.virtual_hosts):
            for path, route in vhost.all_routes():
                wanted = route.route.cluster_specifier_plugin if route.route is not None else None
                if wanted is not None and wanted not in plugins:
                    raise FieldError(f"virtual_hosts[{i}].{path}.route.cluster_specifier_plugin",
                                     f"unknown cluster specifier plugin name: {wanted}")
        seen: dict[str, str] = {}
        for i, vhost in enumerate(self.virtual_hosts):
            for j, domain in enumerate(vhost.domains):
                key = domain.lower()
                if key in seen:
                    raise FieldError(
                        f"virtual_hosts[{i}].domains[{j}]",
                        f"duplicate domain {domain!r} (already in virtual host {seen[key]!r})",
                    )
                seen[key] = vhost.name


# --------------------------------------------------------------------------- access logs


class SubstitutionFormatString(EnvoyStruct, kw_only=True):
    """config.core.v3.SubstitutionFormatString: a text format (DataSource, or the deprecated inline `text_format`)
    or a JSON object format."""

    text_format: str | None = None
    text_format_source: DataSource | None = None
    json_format: dict[str, Any] | None = None
    omit_empty_values: bool = False
    content_type: HttpText = HttpText("")

    def __post_init__(self) -> None:
        _exactly_one(self, "text_format", "text_format_source", "json_format")
        if self.json_format is not None:
            _check_json_format(self.json_format, "json_format")


def _check_json_format(node: dict[str, Any], path: str) -> None:
    for key, value in node.items():
        where = f"{path}.{key}"
        if isinstance(value, dict):
            _check_json_format(value, where)
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise FieldError(where, f"values must be strings, numbers or nested objects, got {type(value).__name__}")


class FileAccessLog(EnvoyStruct, kw_only=True):
    path: NonEmptyStr
    log_format: SubstitutionFormatString | None = None


class StdoutAccessLog(EnvoyStruct, kw_only=True):
    log_format: SubstitutionFormatString | None = None


class StderrAccessLog(EnvoyStruct, kw_only=True):
    log_format: SubstitutionFormatString | None = None


class RuntimeUInt32(EnvoyStruct, kw_only=True):
    """config.core.v3.RuntimeUInt32: a number a runtime key may override.

    pylon's runtime refuses every key it does not implement (runtime.py), so no layer can set this one and
    `default_value` is the value: what Envoy uses while no layer has the key."""

    default_value: UInt32 = 0
    runtime_key: str = ""


class ComparisonFilter(EnvoyStruct, kw_only=True):
    """config.accesslog.v3.ComparisonFilter."""

    op: Literal["EQ", "GE", "LE", "NE"] = "EQ"
    value: RuntimeUInt32


class StatusCodeFilter(EnvoyStruct, kw_only=True):
    comparison: ComparisonFilter


class DurationFilter(EnvoyStruct, kw_only=True):
    """Total request duration in milliseconds."""

    comparison: ComparisonFilter


class NotHealthCheckFilter(EnvoyStruct, kw_only=True):
    """Requests the health_check filter did not take as a health check."""


class HeaderFilter(EnvoyStruct, kw_only=True):
    header: HeaderMatcher


#: The flags `ResponseFlagFilter.flags` may name (Envoy's validation list).
RESPONSE_FLAG_NAMES = frozenset({
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC", "URX", "SI",
    "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR", "UDO",
})


class ResponseFlagFilter(EnvoyStruct, kw_only=True):
    """Any of `flags` is set (any flag at all when the list is empty)."""

    flags: list[str] = []

    def __post_init__(self) -> None:
        for i, flag in enumerate(self.flags):
            if flag not in RESPONSE_FLAG_NAMES:
                raise FieldError(f"flags[{i}]", f"{flag!r} is not a response flag (one of "
                                                f"{', '.join(sorted(RESPONSE_FLAG_NAMES))})")


class AndFilter(EnvoyStruct, kw_only=True):
    filters: Annotated[list[AccessLogFilter], msgspec.Meta(min_length=2)]


class OrFilter(EnvoyStruct, kw_only=True):
    filters: Annotated[list[AccessLogFilter], msgspec.Meta(min_length=2)]


class AccessLogFilter(EnvoyStruct, kw_only=True):
    """config.accesslog.v3.AccessLogFilter: exactly one kind (proxy/access_log_filter.py evaluates them)."""

    status_code_filter: StatusCodeFilter | None = None
    duration_filter: DurationFilter | None = None
    not_health_check_filter: NotHealthCheckFilter | None = None
    traceable_filter: NotSupportedYet | None = None
    runtime_filter: NotSupportedYet | None = None
    and_filter: AndFilter | None = None
    or_filter: OrFilter | None = None
    header_filter: HeaderFilter | None = None
    response_flag_filter: ResponseFlagFilter | None = None
    grpc_status_filter: NotSupportedYet | None = None
    extension_filter: NotSupportedYet | None = None
    metadata_filter: NotSupportedYet | None = None
    log_type_filter: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "status_code_filter", "duration_filter", "not_health_check_filter", "traceable_filter",
                     "runtime_filter", "and_filter", "or_filter", "header_filter", "response_flag_filter",
                     "grpc_status_filter", "extension_filter", "metadata_filter", "log_type_filter")


class AccessLog(EnvoyStruct, kw_only=True):
    """config.accesslog.v3.AccessLog: a logger, and the filter a request must pass to be logged by it."""

    name: str = ""
    filter: AccessLogFilter | None = None
    typed_config: Any

    def __post_init__(self) -> None:
        _resolve_typed_field(self, "typed_config", registry.ACCESS_LOGGER)


# --------------------------------------------------------------------------- HTTP connection manager


class HttpProtocolOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.HttpProtocolOptions (HCM `common_http_protocol_options`)."""

    idle_timeout: Duration = Duration(3600)
    max_connection_duration: Duration | None = None
    max_headers_count: PositiveUInt32 = 100
    max_stream_duration: Duration | None = None
    headers_with_underscores_action: Literal["ALLOW", "REJECT_REQUEST", "DROP_HEADER"] = "ALLOW"


class ResponseMapper(EnvoyStruct, kw_only=True):
    """HttpConnectionManager's ResponseMapper: what a matching local reply becomes."""

    filter: AccessLogFilter
    status_code: Annotated[int, msgspec.Meta(ge=200, lt=600)] | None = None
    body: DataSource | None = None
    body_format_override: SubstitutionFormatString | None = None
    headers_to_add: Annotated[list[HeaderValueOption], msgspec.Meta(max_length=1000)] = []


class LocalReplyConfig(EnvoyStruct, kw_only=True):
    """HttpConnectionManager.local_reply_config: the first matching mapper rewrites a local reply, then
    `body_format` (or the mapper's override) formats its body (proxy/local_reply_mapper.py)."""

    mappers: list[ResponseMapper] = []
    body_format: SubstitutionFormatString | None = None


class HttpFilter(_TypedExtension, kw_only=True):
    category: ClassVar[str] = registry.HTTP_FILTER


class UpstreamCodec(EnvoyStruct, kw_only=True):
    """extensions.filters.http.upstream_codec.v3.UpstreamCodec: the end of an upstream filter chain (the
    upstream connection's codec)."""

    terminal_filter: ClassVar[bool] = True


#: HTTP filters Envoy 1.40 also runs upstream (its validate accepts them there) that pylon runs only ahead of the
#: router, with why: refused by name in an upstream chain rather than taken for unknown.
_NOT_UPSTREAM_YET = {
    "envoy.extensions.filters.http.compressor.v3.Compressor":
        "pylon's compressor transforms bodies ahead of the router, not an attempt's request body or its "
        "upstream's response before the router reads it",
}


class UpstreamHttpFilter(_TypedExtension, kw_only=True):
    """An entry of the router's `upstream_http_filters` or a cluster's `http_filters`
    (proxy/filters/upstream.py runs them)."""

    category: ClassVar[str] = registry.UPSTREAM_HTTP_FILTER

    def __post_init__(self) -> None:
        type_url = self.typed_config.get("@type") if isinstance(self.typed_config, dict) else None
        reason = _NOT_UPSTREAM_YET.get(registry.message_name(type_url)) if isinstance(type_url, str) else None
        if reason is not None:
            raise FieldError("typed_config", f"{type_url}: Envoy runs it as an upstream HTTP filter, pylon does not "
                                             f"yet ({reason})")
        super().__post_init__()


_UPSTREAM_CODEC = "the upstream codec filter (envoy.filters.http.upstream_codec)"


class Router(EnvoyStruct, kw_only=True):
    """extensions.filters.http.router.v3.Router: the terminal HTTP filter."""

    terminal_filter: ClassVar[bool] = True
    #: filters between the router and each upstream request (the cluster's own `http_filters` win)
    upstream_http_filters: list[UpstreamHttpFilter] = []
    #: false: the router charges none of the per-response cluster stats (`upstream_rq_<code>`, `upstream_rq_<N>xx`,
    #: the `upstream_rq_time` histogram), as Envoy's `dynamic_stats: false`
    dynamic_stats: bool = True
    suppress_envoy_headers: bool = False
    #: with HCM tracing: a CLIENT span of its own for the upstream request ("router <cluster> egress")
    start_child_span: bool = False

    def __post_init__(self) -> None:
        if self.upstream_http_filters:
            _check_terminal_last(self.upstream_http_filters, "upstream_http_filters", _UPSTREAM_CODEC)


class WatchedDirectory(EnvoyStruct, kw_only=True):
    path: NonEmptyStr


class PathConfigSource(EnvoyStruct, kw_only=True):
    """config.core.v3.PathConfigSource: a file holding a DiscoveryResponse, replaced by atomic rename."""

    path: NonEmptyStr
    watched_directory: WatchedDirectory | None = None


class AggregatedConfigSource(EnvoyStruct, kw_only=True):
    """config.core.v3.AggregatedConfigSource (`ads: {}`): the resources come over the bootstrap's ADS stream."""


class ConfigSource(EnvoyStruct, kw_only=True):
    """config.core.v3.ConfigSource: where dynamic resources come from: a watched file, the ADS stream, or a
    gRPC stream of their own (`api_config_source`, e.g. SDS from Istio's agent over `sds-grpc`)."""

    path: str = ""  # deprecated spelling of path_config_source.path, still accepted by Envoy
    path_config_source: PathConfigSource | None = None
    ads: AggregatedConfigSource | None = None
    api_config_source: ApiConfigSource | None = None
    # Envoy's default: how long start-up waits for the first update; 0 waits for ever (Istio's choice).
    initial_fetch_timeout: Duration = Duration(15)
    resource_api_version: Literal["V3"] = "V3"

    def __post_init__(self) -> None:
        names = ("path", "path_config_source", "ads", "api_config_source")
        given = [name for name in names if getattr(self, name)]
        if len(given) != 1:
            got = f" (got {', '.join(given)})" if given else ""
            raise FieldError("path_config_source", f"exactly one of {', '.join(names)} is required{got}")

    @property
    def file(self) -> str:
        """The file whose content is the current DiscoveryResponse ("" for ADS)."""
        return self.path_config_source.path if self.path_config_source is not None else self.path


class ScopedRoutesKvElement(EnvoyStruct, kw_only=True):
    """ScopedRoutes.ScopeKeyBuilder.FragmentBuilder.HeaderValueExtractor.KvElement: the value of `key` in a
    `key<separator>value` element."""

    separator: NonEmptyStr
    key: NonEmptyStr


class ScopedRoutesHeaderValueExtractor(EnvoyStruct, kw_only=True):
    """A scope key fragment from a request header: its `index`-th element, or the value of a key=value element,
    the value split by `element_separator` (proxy/scoped_routes.py)."""

    name: NonEmptyStr
    element_separator: str = ""
    index: UInt32 | None = None
    element: ScopedRoutesKvElement | None = None

    def __post_init__(self) -> None:
        _at_most_one(self, "index", "element")


class ScopedRoutesFragmentBuilder(EnvoyStruct, kw_only=True):
    header_value_extractor: ScopedRoutesHeaderValueExtractor


class ScopeKeyBuilder(EnvoyStruct, kw_only=True):
    fragments: Annotated[list[ScopedRoutesFragmentBuilder], msgspec.Meta(min_length=1)]


class ScopedRouteKeyFragment(EnvoyStruct, kw_only=True):
    string_key: str


class ScopedRouteKey(EnvoyStruct, kw_only=True):
    fragments: Annotated[list[ScopedRouteKeyFragment], msgspec.Meta(min_length=1)]


class ScopedRouteConfiguration(EnvoyStruct, kw_only=True):
    """config.route.v3.ScopedRouteConfiguration, inline: a scope's key and its route configuration. `on_demand`
    matters to scopes whose route configuration comes by RDS; an inline one is always there."""

    on_demand: bool = False
    name: NonEmptyStr
    route_configuration_name: str = ""
    route_configuration: RouteConfiguration | None = None
    key: ScopedRouteKey

    def __post_init__(self) -> None:
        if self.route_configuration_name:
            raise FieldError("route_configuration_name", "scopes whose route configuration comes by RDS are not "
                                                         "supported yet (give route_configuration inline)")
        if self.route_configuration is None:
            raise FieldError("route_configuration", "missing required field (an inline scope's routes)")

    @property
    def key_tuple(self) -> tuple[str, ...]:
        return tuple(fragment.string_key for fragment in self.key.fragments)


class ScopedRouteConfigurationsList(EnvoyStruct, kw_only=True):
    scoped_route_configurations: Annotated[list[ScopedRouteConfiguration], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        seen: dict[tuple[str, ...], str] = {}
        for i, scope in enumerate(self.scoped_route_configurations):
            other = seen.setdefault(scope.key_tuple, scope.name)
            if other != scope.name:
                raise FieldError(f"scoped_route_configurations[{i}].key",
                                 f"scope {scope.name!r} has the same key as scope {other!r}")


class ScopedRoutes(EnvoyStruct, kw_only=True):
    """extensions.filters.network.http_connection_manager.v3.ScopedRoutes: a request's scope (from its headers)
    picks the route configuration it is matched against (proxy/scoped_routes.py). Inline scopes only."""

    name: NonEmptyStr
    scope_key_builder: ScopeKeyBuilder
    rds_config_source: NotSupportedYet | None = None
    scoped_route_configurations_list: ScopedRouteConfigurationsList | None = None
    scoped_rds: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.scoped_route_configurations_list is None:
            raise FieldError("scoped_route_configurations_list", "missing required field (pylon takes inline "
                                                                 "scopes; scoped_rds is not supported yet)")


class Rds(EnvoyStruct, kw_only=True):
    """extensions.filters.network.http_connection_manager.v3.Rds."""

    config_source: ConfigSource
    route_config_name: NonEmptyStr


class UpgradeConfig(EnvoyStruct, kw_only=True):
    """HCM upgrade_configs[]: an HTTP/1.1 Upgrade (e.g. websocket) or CONNECT the connection manager tunnels."""

    upgrade_type: NonEmptyStr
    filters: NotSupportedYet | None = None
    enabled: bool = True


class SetCurrentClientCertDetails(EnvoyStruct, kw_only=True):
    """HCM set_current_client_cert_details: what of the client certificate goes into x-forwarded-client-cert."""

    subject: bool = False
    cert: bool = False
    chain: bool = False
    dns: bool = False
    uri: bool = False

    def __post_init__(self) -> None:
        if self.chain:
            raise FieldError("chain", "not supported yet (the stdlib ssl module of Python 3.11 does not expose "
                                      "the verified chain); use cert")


class PreserveCaseFormatterConfig(EnvoyStruct, kw_only=True):
    """extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig (proxy/http/header_case.py):
    names the proxy adds itself are written lower-case (DEFAULT) or proper-cased."""

    forward_reason_phrase: bool = False
    formatter_type_on_envoy_headers: Literal["DEFAULT", "PROPER_CASE"] = "DEFAULT"

    def __post_init__(self) -> None:
        if self.forward_reason_phrase:
            raise FieldError("forward_reason_phrase", "not supported yet (pylon writes its own reason phrases)")


class StatefulHeaderFormatter(_TypedExtension, kw_only=True):
    category: ClassVar[str] = registry.STATEFUL_HEADER_FORMATTER


class HeaderKeyFormat(EnvoyStruct, kw_only=True):
    """config.core.v3.Http1ProtocolOptions.HeaderKeyFormat: oneof {proper_case_words, stateful_formatter}."""

    proper_case_words: dict[str, Any] | None = None
    stateful_formatter: StatefulHeaderFormatter | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "proper_case_words", "stateful_formatter")
        if self.proper_case_words:
            raise FieldError("proper_case_words", f"ProperCaseWords has no fields (got {sorted(self.proper_case_words)})")

    @property
    def preserve_case(self) -> PreserveCaseFormatterConfig | None:
        return self.stateful_formatter.typed_config if self.stateful_formatter is not None else None


class Http1ProtocolOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.Http1ProtocolOptions: HTTP/1.0 acceptance (downstream) and chunked trailers.

    Envoy reads the HTTP/1.0 fields only on the downstream side and ignores them upstream, as pylon does.
    `enable_trailers` is per side, as Envoy's HTTP/1 codec reads it (checked against Envoy 1.40): on the HCM the
    client's request trailers are read and a response's trailers written to it; on a cluster (the typed
    HttpProtocolOptions' explicit HTTP/1 config) trailers are written to the upstream and read from its
    responses. Off (the default), that codec drops them.
    """

    accept_http_10: bool = False
    default_host_for_http_10: str = ""
    enable_trailers: bool = False
    #: the case of header names on the wire (proxy/http/header_case.py; on the HCM: requests read, responses written;
    #: on a cluster: requests written, responses read)
    header_key_format: HeaderKeyFormat | None = None


class TracingProvider(_TypedExtension, kw_only=True):
    """config.trace.v3.Tracing.Http: the tracer (`envoy.tracers.zipkin`, ...), resolved through the registry."""

    category: ClassVar[str] = registry.TRACER


class LiteralTag(EnvoyStruct, kw_only=True):
    value: NonEmptyStr


class EnvironmentTag(EnvoyStruct, kw_only=True):
    name: NonEmptyStr
    default_value: str = ""


class HeaderTag(EnvoyStruct, kw_only=True):
    name: HeaderKey
    default_value: str = ""


class CustomTag(EnvoyStruct, kw_only=True):
    """type.tracing.v3.CustomTag: a span tag from a literal, an environment variable or a request header
    (metadata tags are refused: pylon has no dynamic metadata to read them from)."""

    tag: NonEmptyStr
    literal: LiteralTag | None = None
    environment: EnvironmentTag | None = None
    request_header: HeaderTag | None = None
    metadata: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "literal", "environment", "request_header")


class Tracing(EnvoyStruct, kw_only=True):
    """HttpConnectionManager.Tracing: which requests are traced (Envoy's sampling percentages) and by what."""

    provider: TracingProvider | None = None
    client_sampling: Percent = msgspec.field(default_factory=lambda: Percent(value=100.0))
    random_sampling: Percent = msgspec.field(default_factory=lambda: Percent(value=100.0))
    overall_sampling: Percent = msgspec.field(default_factory=lambda: Percent(value=100.0))
    verbose: bool = False
    max_path_tag_length: UInt32 = 256
    custom_tags: list[CustomTag] = []
    spawn_upstream_span: bool | None = None

    def __post_init__(self) -> None:
        if self.provider is None:
            raise FieldError("provider", "a tracing config without a provider traces nothing in Envoy 1.40 "
                                         "(the bootstrap-level tracing is not supported); name a provider")
        if self.verbose:
            raise FieldError("verbose", "not supported yet (span logs of the request's events)")
        if self.spawn_upstream_span:
            raise FieldError("spawn_upstream_span", "not supported yet; the router's start_child_span makes "
                                                    "the upstream request's span")


class KeepaliveSettings(EnvoyStruct, kw_only=True):
    """config.core.v3.KeepaliveSettings: HTTP/2 PINGs that find a dead connection (proxy/http/h2_keepalive.py).

    A PING every `interval` (plus up to `interval_jitter` percent of it, 15 by default), or, on a client, before a
    new stream on a connection nothing was received on for `connection_idle_interval`; no ACK within `timeout`
    (any frame received meanwhile extends it) closes the connection and counts `http2.keepalive_timeout`."""

    interval: AtLeastOneMs | None = None
    timeout: AtLeastOneMs
    interval_jitter: Percent | None = None
    connection_idle_interval: AtLeastOneMs | None = None

    def grpc_channel_options(self) -> list[tuple[str, int]]:
        """The same PINGs on a grpcio channel (pylon's xDS and gRPC-service clients of the cluster): grpcio's
        keepalive time and timeout, PINGs with no call open too, as Envoy sends them. Departure: grpcio adds
        no jitter and has no idle-before-stream PING (`connection_idle_interval`)."""
        options = [("grpc.keepalive_timeout_ms", int(float(self.timeout) * 1000)),
                   ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
        if self.interval is not None:
            options.append(("grpc.keepalive_time_ms", int(float(self.interval) * 1000)))
        return options


class HcmHttp2ProtocolOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.Http2ProtocolOptions as the HCM reads it: the downstream HTTP/2 codec's limits.

    Unset fields keep Envoy 1.40's defaults (`pylon.proxy.http.h2_session.H2Settings`); the ranges are Envoy's
    proto rules. The fields pylon's codec does not implement are refused by name when set to anything but
    their default (never parsed and ignored).
    """

    hpack_table_size: UInt32 | None = None
    max_concurrent_streams: Annotated[int, msgspec.Meta(ge=1, le=2147483647)] | None = None
    initial_stream_window_size: Annotated[int, msgspec.Meta(ge=65535, le=2147483647)] | None = None
    initial_connection_window_size: Annotated[int, msgspec.Meta(ge=65535, le=2147483647)] | None = None
    allow_connect: bool = False
    allow_metadata: bool = False
    max_outbound_frames: PositiveUInt32 | None = None
    max_outbound_control_frames: PositiveUInt32 | None = None
    max_consecutive_inbound_frames_with_empty_payload: UInt32 | None = None
    max_inbound_priority_frames_per_stream: UInt32 | None = None
    max_inbound_window_update_frames_per_data_frame_sent: PositiveUInt32 | None = None
    stream_error_on_invalid_http_messaging: bool = False
    override_stream_error_on_invalid_http_message: bool | None = None
    custom_settings_parameters: NotSupportedYet | None = None
    connection_keepalive: KeepaliveSettings | None = None
    use_oghttp2_codec: bool | None = None
    max_metadata_size: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.allow_metadata:
            raise FieldError("allow_metadata", "not supported yet (HTTP/2 METADATA frames)")
        if self.stream_error_on_invalid_http_messaging or self.override_stream_error_on_invalid_http_message:
            field = "stream_error_on_invalid_http_messaging" if self.stream_error_on_invalid_http_messaging \
                else "override_stream_error_on_invalid_http_message"
            raise FieldError(field, "not supported yet: an invalid message ends the HTTP/2 connection, as Envoy's "
                                    "default does")
        if self.use_oghttp2_codec:
            raise FieldError("use_oghttp2_codec", "not supported: pylon's HTTP/2 codec is libnghttp2")


class SchemeHeaderTransformation(EnvoyStruct, kw_only=True):
    """config.core.v3.SchemeHeaderTransformation: `scheme_to_overwrite` is every request's :scheme and
    x-forwarded-proto (what routes, filters, redirects, logs and the upstream see: proxy/hcm.py, stream.py);
    `match_upstream` makes an upstream request's :scheme its connection's (http or https), which is what pylon's
    HTTP/2 upstreams always send. Departure: with scheme_to_overwrite an HTTP/2 upstream still gets its own
    connection's scheme as :scheme, where Envoy sends the overwritten one."""

    scheme_to_overwrite: Literal["http", "https"] | None = None
    match_upstream: bool = False


class HttpConnectionManager(EnvoyStruct, kw_only=True):
    """extensions.filters.network.http_connection_manager.v3.HttpConnectionManager (HTTP/1.1 and HTTP/2).

    `codec_type`: AUTO serves HTTP/2 to a TLS client that negotiated `h2` by ALPN or to a plaintext client
    that opens with the HTTP/2 preface (h2c with prior knowledge), else HTTP/1.1; HTTP1 never speaks
    HTTP/2; HTTP2 always does. HTTP3 is refused.
    """

    terminal_filter: ClassVar[bool] = True
    codec_type: Literal["AUTO", "HTTP1", "HTTP2", "HTTP3"] = "AUTO"
    stat_prefix: NonEmptyStr
    route_config: RouteConfiguration | None = None
    rds: Rds | None = None
    scoped_routes: ScopedRoutes | None = None
    http_filters: list[HttpFilter] = []
    access_log: list[AccessLog] = []
    local_reply_config: LocalReplyConfig | None = None
    common_http_protocol_options: HttpProtocolOptions = msgspec.field(default_factory=HttpProtocolOptions)
    http_protocol_options: Http1ProtocolOptions = msgspec.field(default_factory=Http1ProtocolOptions)
    http2_protocol_options: HcmHttp2ProtocolOptions = msgspec.field(default_factory=HcmHttp2ProtocolOptions)
    max_request_headers_kb: Annotated[int, msgspec.Meta(ge=1, le=8192)] = 60
    request_timeout: Duration = Duration(0)
    request_headers_timeout: Duration = Duration(0)
    stream_idle_timeout: Duration = Duration(300)
    drain_timeout: Duration = Duration(5)
    delayed_close_timeout: Duration = Duration(1)
    use_remote_address: bool = False
    xff_num_trusted_hops: UInt32 = 0
    generate_request_id: bool = True
    preserve_external_request_id: bool = False
    always_set_request_id_in_response: bool = False
    forward_client_cert_details: Literal[
        "SANITIZE", "FORWARD_ONLY", "APPEND_FORWARD", "SANITIZE_SET", "ALWAYS_FORWARD_ONLY"] = "SANITIZE"
    set_current_client_cert_details: SetCurrentClientCertDetails = msgspec.field(
        default_factory=SetCurrentClientCertDetails)
    upgrade_configs: list[UpgradeConfig] = []
    server_name: HttpText = HttpText("envoy")
    server_header_transformation: Literal["OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"] = "OVERWRITE"
    scheme_header_transformation: SchemeHeaderTransformation | None = None
    normalize_path: bool = False
    merge_slashes: bool = False
    path_with_escaped_slashes_action: Literal[
        "IMPLEMENTATION_SPECIFIC_DEFAULT", "KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT",
        "UNESCAPE_AND_FORWARD"] = "IMPLEMENTATION_SPECIFIC_DEFAULT"  # Envoy's default: KEEP_UNCHANGED
    via: HttpText = HttpText("")
    tracing: Tracing | None = None
    #: set user-agent (when missing or empty) and x-envoy-downstream-service-cluster from the node's cluster (even
    #: an empty one, as Envoy), and x-envoy-downstream-service-node from its id (proxy/hcm.py, proxy/stream.py)
    add_user_agent: bool = False

    def __post_init__(self) -> None:
        if self.codec_type == "HTTP3":
            raise FieldError("codec_type", "HTTP3 is not supported yet")
        if sum(source is not None for source in (self.route_config, self.rds, self.scoped_routes)) != 1:
            raise FieldError("route_config", "exactly one of route_config, rds and scoped_routes is required")
        if self.http_filters:  # none at all is accepted, as Envoy: nothing then answers (proxy/hcm.py)
            _check_terminal_last(self.http_filters, "http_filters", "the router filter (envoy.filters.http.router)")

    def inline_route_configs(self) -> list[tuple[str, RouteConfiguration]]:
        """The route configurations given inline, by field path: `route_config`, or each scope's (scoped_routes)."""
        if self.route_config is not None:
            return [("route_config", self.route_config)]
        if self.scoped_routes is None or self.scoped_routes.scoped_route_configurations_list is None:
            return []
        scopes = self.scoped_routes.scoped_route_configurations_list.scoped_route_configurations
        return [(f"scoped_routes.scoped_route_configurations_list.scoped_route_configurations[{i}]"
                 ".route_configuration", scope.route_configuration)  # type: ignore[misc]
                for i, scope in enumerate(scopes)]


def _check_terminal_last(filters: list[_TypedExtension], field: str, what: str) -> None:
    """Envoy's rule: the terminal filter comes last, and nothing terminal comes before it."""
    if not filters:
        raise FieldError(field, f"must end with {what}")
    for i, item in enumerate(filters):
        terminal = getattr(item.typed_config, "terminal_filter", False)
        last = i == len(filters) - 1
        if terminal and not last:
            raise FieldError(f"{field}[{i}]", f"{item.name} is terminal and must be the last filter")
        if last and not terminal:
            raise FieldError(f"{field}[{i}]", f"the last filter must be {what}, got {item.name}")


_NO_SUBSET_LB = ("tcp_proxy's metadata_match (subset load balancing per connection) is not supported yet; HTTP "
                 "routes' metadata_match is, or send to a cluster holding only those endpoints")


class TcpClusterWeight(EnvoyStruct, kw_only=True):
    """TcpProxy.WeightedCluster.ClusterWeight: a cluster and its share of the connections (weight >= 1)."""

    name: NonEmptyStr
    weight: PositiveUInt32
    metadata_match: Metadata | None = None

    def __post_init__(self) -> None:
        if self.metadata_match is not None:
            raise FieldError("metadata_match", _NO_SUBSET_LB)


class TcpWeightedCluster(EnvoyStruct, kw_only=True):
    """TcpProxy.WeightedCluster: each downstream connection goes to one of these clusters, picked by weight."""

    clusters: Annotated[list[TcpClusterWeight], msgspec.Meta(min_length=1)]


class SourceIpHash(EnvoyStruct, kw_only=True):
    """type.v3.HashPolicy.SourceIp (no fields): hash the downstream peer's IP address."""


class FilterStateHash(EnvoyStruct, kw_only=True):
    """type.v3.HashPolicy.FilterState: hash a filter state object (refused: no pylon filter stores one)."""

    key: NonEmptyStr


class TcpHashPolicy(EnvoyStruct, kw_only=True):
    """type.v3.HashPolicy, the key tcp_proxy gives a hashing load balancer (RING_HASH) for each connection."""

    source_ip: SourceIpHash | None = None
    filter_state: FilterStateHash | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "source_ip", "filter_state")
        if self.filter_state is not None:
            raise FieldError("filter_state", "hashing a filter state object is not supported: no pylon network "
                                             "filter stores hashable filter state (use source_ip)")


class TcpTunnelingConfig(EnvoyStruct, kw_only=True):
    """TcpProxy.TunnelingConfig: each downstream connection's bytes go upstream inside one HTTP/1.1 CONNECT (or,
    with use_post, a chunked POST), to a proxy that terminates it (see proxy/tcp_tunneling.py).

    `hostname` and the `headers_to_add` values are substitution format strings (%DOWNSTREAM_LOCAL_PORT% ...),
    as Envoy evaluates them per connection."""

    hostname: NonEmptyStr
    use_post: bool = False
    post_path: str = ""
    headers_to_add: Annotated[list[HeaderValueOption], msgspec.Meta(max_length=1000)] = []
    propagate_response_headers: bool = False
    propagate_response_trailers: bool = False
    request_id_extension: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.post_path and not self.use_post:
            raise FieldError("post_path", "Can't set a post path when POST method isn't used")
        for name in ("propagate_response_headers", "propagate_response_trailers"):
            if getattr(self, name):
                raise FieldError(name, "not supported yet: pylon has no filter state for the response's headers")


class TcpProxy(EnvoyStruct, kw_only=True):
    """extensions.filters.network.tcp_proxy.v3.TcpProxy: to one cluster, or to weighted clusters (one pick per
    downstream connection), with an optional source-IP hash and a maximum connection duration."""

    terminal_filter: ClassVar[bool] = True
    stat_prefix: NonEmptyStr
    cluster: NonEmptyStr | None = None
    weighted_clusters: TcpWeightedCluster | None = None
    metadata_match: Metadata | None = None
    idle_timeout: Duration = Duration(3600)
    access_log: list[AccessLog] = []
    max_connect_attempts: PositiveUInt32 = 1
    hash_policy: Annotated[list[TcpHashPolicy], msgspec.Meta(max_length=1)] = []
    max_downstream_connection_duration: AtLeastOneMs | None = None
    # Raises the duration by a random amount up to this share of it, per connection (ignored without a duration).
    max_downstream_connection_duration_jitter_percentage: Percent | None = None
    #: set: the bytes go to the cluster inside an HTTP/1.1 CONNECT or POST (TCP over HTTP)
    tunneling_config: TcpTunnelingConfig | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "cluster", "weighted_clusters")
        if self.metadata_match is not None:
            raise FieldError("metadata_match", _NO_SUBSET_LB)

    def cluster_references(self) -> Iterator[tuple[str, str]]:
        """(field path below this filter config, cluster name) of every cluster it may connect to."""
        if self.cluster is not None:
            yield "cluster", self.cluster
        if self.weighted_clusters is not None:
            for i, weighted in enumerate(self.weighted_clusters.clusters):
                yield f"weighted_clusters.clusters[{i}].name", weighted.name


# --------------------------------------------------------------------------- TLS


TlsVersion = Literal["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"]
_TLS_ORDER = {"TLSv1_0": 0, "TLSv1_1": 1, "TLSv1_2": 2, "TLSv1_3": 3}


class TlsParameters(EnvoyStruct, kw_only=True):
    tls_minimum_protocol_version: TlsVersion = "TLS_AUTO"
    tls_maximum_protocol_version: TlsVersion = "TLS_AUTO"
    cipher_suites: list[NonEmptyStr] = []
    ecdh_curves: list[NonEmptyStr] = []

    def __post_init__(self) -> None:
        low = _TLS_ORDER.get(self.tls_minimum_protocol_version)
        high = _TLS_ORDER.get(self.tls_maximum_protocol_version)
        if low is not None and high is not None and low > high:
            raise FieldError("tls_minimum_protocol_version", "must not be above tls_maximum_protocol_version")


class PrivateKeyProvider(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.PrivateKeyProvider, resolved via the key provider registry."""

    provider_name: NonEmptyStr
    typed_config: Any
    fallback: bool = False

    def __post_init__(self) -> None:
        _resolve_typed_field(self, "typed_config", registry.KEY_PROVIDER)


class TlsCertificate(EnvoyStruct, kw_only=True):
    """A certificate chain with either its private key or a private key provider."""

    certificate_chain: DataSource
    private_key: DataSource | None = None
    private_key_provider: PrivateKeyProvider | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "private_key", "private_key_provider")


class SubjectAltNameMatcher(EnvoyStruct, kw_only=True):
    san_type: Literal["DNS", "URI", "EMAIL", "IP_ADDRESS"]
    matcher: StringMatcher


class CertificateValidationContext(EnvoyStruct, kw_only=True):
    """What a peer certificate is checked against. SAN matchers and a CRL need a trusted CA: checked where the
    context is final (`check_secure`), since a combined validation context gets its CA from an SDS secret.

    `crl`: PEM CRLs (one or several); a revoked peer certificate fails the handshake. As Envoy (BoringSSL's
    CRL_CHECK + CRL_CHECK_ALL) every certificate of the chain is checked, so each CA of the chain needs its CRL
    here, unless `only_verify_leaf_cert_crl`: then only the leaf, against its issuer's CRL."""

    trusted_ca: DataSource | None = None
    match_typed_subject_alt_names: list[SubjectAltNameMatcher] = []
    match_subject_alt_names: list[StringMatcher] = []
    crl: DataSource | None = None
    only_verify_leaf_cert_crl: bool = False

    def check_secure(self) -> None:
        if self.trusted_ca is None and (self.match_typed_subject_alt_names or self.match_subject_alt_names):
            raise FieldError("trusted_ca", "SAN matching without a trusted CA is insecure and not allowed")
        if self.trusted_ca is None and self.crl is not None:
            raise FieldError("crl", "a CRL without a trusted CA (Envoy: \"Failed to load CRL ... without trusted "
                                    "CA\"): set trusted_ca")


class SdsSecretConfig(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.SdsSecretConfig: a secret by name, from `sds_config` (SDS over ADS,
    a gRPC SDS server or a file), or without it a static secret of the bootstrap (`static_resources.secrets`)."""

    name: NonEmptyStr
    sds_config: ConfigSource | None = None


class CombinedCertificateValidationContext(EnvoyStruct, kw_only=True):
    """A validation context from SDS merged over a static default, as Envoy merges them (proto MergeFrom: the
    secret's fields win, lists are joined). Istio: SPIFFE SAN matchers here, the mesh root (ROOTCA) from SDS."""

    default_validation_context: CertificateValidationContext = msgspec.field(
        default_factory=CertificateValidationContext)
    validation_context_sds_secret_config: SdsSecretConfig


class CommonTlsContext(EnvoyStruct, kw_only=True):
    tls_params: TlsParameters = msgspec.field(default_factory=TlsParameters)
    tls_certificates: list[TlsCertificate] = []
    tls_certificate_sds_secret_configs: list[SdsSecretConfig] = []
    validation_context: CertificateValidationContext | None = None
    validation_context_sds_secret_config: SdsSecretConfig | None = None
    combined_validation_context: CombinedCertificateValidationContext | None = None
    alpn_protocols: list[NonEmptyStr] = []

    def __post_init__(self) -> None:
        _at_most_one(self, "validation_context", "validation_context_sds_secret_config", "combined_validation_context")
        if self.tls_certificates and self.tls_certificate_sds_secret_configs:
            # Envoy: "tls_certificates and tls_certificate_sds_secret_configs are mutually exclusive"
            raise FieldError("tls_certificate_sds_secret_configs", "only one of tls_certificates and "
                                                                    "tls_certificate_sds_secret_configs may be set")
        if self.validation_context is not None:
            try:
                self.validation_context.check_secure()
            except FieldError as exc:
                raise FieldError(join_path("validation_context", exc.rel_path), exc.message) from None

    @property
    def has_certificate(self) -> bool:
        return bool(self.tls_certificates or self.tls_certificate_sds_secret_configs)

    @property
    def has_trusted_ca(self) -> bool:
        """Whether peers are verified against a CA: an inline one, or one an SDS secret brings."""
        if self.validation_context is not None:
            return self.validation_context.trusted_ca is not None
        return self.validation_context_sds_secret_config is not None or self.combined_validation_context is not None

    def secret_configs(self) -> list[tuple[str, SdsSecretConfig]]:
        """(field path below this context, reference) of every SDS secret it names."""
        refs = [(f"tls_certificate_sds_secret_configs[{i}]", ref)
                for i, ref in enumerate(self.tls_certificate_sds_secret_configs)]
        if self.validation_context_sds_secret_config is not None:
            refs.append(("validation_context_sds_secret_config", self.validation_context_sds_secret_config))
        if self.combined_validation_context is not None:
            refs.append(("combined_validation_context.validation_context_sds_secret_config",
                         self.combined_validation_context.validation_context_sds_secret_config))
        return refs


class DownstreamTlsContext(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.DownstreamTlsContext (TLS termination)."""

    common_tls_context: CommonTlsContext = msgspec.field(default_factory=CommonTlsContext)
    require_client_certificate: bool = False
    disable_stateless_session_resumption: bool = False
    disable_stateful_session_resumption: bool = False
    session_timeout: SessionTimeout | None = None

    def __post_init__(self) -> None:
        if not self.common_tls_context.has_certificate:
            raise FieldError("common_tls_context.tls_certificates", "a server TLS context needs a certificate")
        if self.require_client_certificate and not self.common_tls_context.has_trusted_ca:
            raise FieldError("require_client_certificate", "needs common_tls_context.validation_context.trusted_ca "
                                                           "(or a validation context from SDS)")


class UpstreamTlsContext(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.UpstreamTlsContext (TLS origination)."""

    common_tls_context: CommonTlsContext = msgspec.field(default_factory=CommonTlsContext)
    sni: Annotated[str, msgspec.Meta(max_length=255)] = ""
    allow_renegotiation: bool = False


class GenericSecret(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.GenericSecret: opaque bytes a filter uses (credential_injector's
    credential, an OAuth2 client secret); read when the filter uses it. Its `secrets` map is refused by name."""

    secret: DataSource | None = None
    secrets: NotSupportedYet | None = None


class Secret(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.tls.v3.Secret: a static secret of the bootstrap, or one from SDS."""

    name: NonEmptyStr
    tls_certificate: TlsCertificate | None = None
    validation_context: CertificateValidationContext | None = None
    session_ticket_keys: NotSupportedYet | None = None
    generic_secret: GenericSecret | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "tls_certificate", "validation_context", "session_ticket_keys", "generic_secret")


class RawBuffer(EnvoyStruct, kw_only=True):
    """extensions.transport_sockets.raw_buffer.v3.RawBuffer (no fields): plain TCP, as no transport socket."""


class TransportSocket(_TypedExtension, kw_only=True):
    """A listener filter chain's transport socket (downstream)."""

    category: ClassVar[str] = registry.DOWNSTREAM_TRANSPORT_SOCKET


class UpstreamTransportSocket(_TypedExtension, kw_only=True):
    """A cluster's transport socket (upstream)."""

    category: ClassVar[str] = registry.UPSTREAM_TRANSPORT_SOCKET


# --------------------------------------------------------------------------- listeners


class Filter(_TypedExtension, kw_only=True):
    """A network filter of a filter chain."""

    category: ClassVar[str] = registry.NETWORK_FILTER


class ListenerFilter(_TypedExtension, kw_only=True):
    """A listener filter: inspects a new connection's first bytes before a filter chain is chosen; on a UDP listener,
    Envoy's UDP listener filters (the UDP proxy) take its datagrams. Which of the two categories an @type belongs to
    decides how it is read; `Listener` then checks it against the listener's protocol, as Envoy finds a listener
    filter's factory in its protocol's category only."""

    category: ClassVar[str] = registry.LISTENER_FILTER
    filter_disabled: NotSupportedYet | None = None
    config_discovery: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        raw = self.typed_config
        type_url = raw.get("@type") if isinstance(raw, dict) else registry.type_url_of(type(raw))
        udp = isinstance(type_url, str) and registry.UDP_LISTENER_FILTER in registry.categories_of(type_url)
        _resolve_typed_field(self, "typed_config", registry.UDP_LISTENER_FILTER if udp else self.category)

    @property
    def udp(self) -> bool:
        """Whether this is a UDP listener filter (its config registered in that category)."""
        url = registry.type_url_of(type(self.typed_config))
        return url is not None and registry.lookup(registry.UDP_LISTENER_FILTER, url) is type(self.typed_config)


class UdpSocketConfig(EnvoyStruct, kw_only=True):
    """config.core.v3.UdpSocketConfig. `max_rx_datagram_size` (Envoy's default 1500): a longer datagram is dropped,
    as Envoy drops what its receive buffer truncated. `prefer_gro`: Envoy reads coalesced datagrams (GRO) into a
    64 KiB buffer, and then no datagram is too long (observed with Envoy 1.40: a 2200-byte datagram passes a
    2100-byte max_rx_datagram_size with prefer_gro, and is dropped without); pylon reads datagram by datagram (a
    matter of system calls) and keeps that limit. Unset, it is false on a listener, true on the UDP proxy's
    upstream sockets."""

    max_rx_datagram_size: Annotated[int, msgspec.Meta(gt=0, lt=65536)] = 1500
    prefer_gro: bool | None = None

    def rx_limit(self, gro_by_default: bool) -> int:
        """The longest datagram the socket delivers: max_rx_datagram_size, or with GRO the 64 KiB buffer's."""
        gro = self.prefer_gro if self.prefer_gro is not None else gro_by_default
        return GRO_RX_LIMIT if gro else self.max_rx_datagram_size


#: What a socket read with GRO delivers at most (Envoy's 64 KiB GRO buffer, more than any UDP datagram holds).
GRO_RX_LIMIT = 65535


class UdpListenerConfig(EnvoyStruct, kw_only=True):
    """config.listener.v3.UdpListenerConfig: a UDP listener's socket; QUIC is not pylon's."""

    downstream_socket_config: UdpSocketConfig = msgspec.field(default_factory=UdpSocketConfig)
    quic_options: NotSupportedYet | None = None
    udp_packet_packet_writer_config: NotSupportedYet | None = None


class CidrRange(EnvoyStruct, kw_only=True):
    """config.core.v3.CidrRange: an address prefix. As in Envoy, host bits may be set (they are ignored) and an
    IPv4 prefix_len over 32 means 32."""

    address_prefix: NonEmptyStr
    prefix_len: Annotated[int, msgspec.Meta(ge=0, le=128)] = 0

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address_prefix)
        except ValueError:
            raise FieldError("address_prefix", f"malformed IP address: {self.address_prefix}") from None

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        address = ipaddress.ip_address(self.address_prefix)
        return ipaddress.ip_network((address, min(self.prefix_len, address.max_prefixlen)), strict=False)


class FilterChainMatch(EnvoyStruct, kw_only=True):
    """config.listener.v3.FilterChainMatch: which connections a filter chain takes (see proxy/filter_chain_match.py)."""

    destination_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    prefix_ranges: list[CidrRange] = []
    address_suffix: NotSupportedYet | None = None  # not implemented in Envoy either
    suffix_len: NotSupportedYet | None = None
    direct_source_prefix_ranges: list[CidrRange] = []
    source_type: Literal["ANY", "SAME_IP_OR_LOOPBACK", "EXTERNAL"] = "ANY"
    source_prefix_ranges: list[CidrRange] = []
    source_ports: list[Annotated[int, msgspec.Meta(ge=1, le=65535)]] = []
    server_names: list[str] = []
    transport_protocol: str = ""
    application_protocols: list[str] = []

    def __post_init__(self) -> None:
        for i, name in enumerate(self.server_names):
            if "*" in name and not (name.startswith("*.") and "*" not in name[1:]):
                raise FieldError(f"server_names[{i}]", f"{name!r}: partial wildcards are not supported (only a "
                                                       "leading '*.', as in '*.example.com')")


class StringValue(EnvoyStruct, kw_only=True):
    """google.protobuf.StringValue: a filter_chain_matcher's action, the name of the chain it picks."""

    value: str = ""


class FilterChain(EnvoyStruct, kw_only=True):
    name: str = ""
    filter_chain_match: FilterChainMatch | None = None
    filters: list[Filter] = []
    transport_socket: TransportSocket | None = None
    use_proxy_proto: NotSupportedYet | None = None
    transport_socket_connect_timeout: NotSupportedYet | None = None
    # Data only (see Metadata): istiod names there the Sidecar an inbound chain comes from.
    metadata: Metadata | None = None

    def __post_init__(self) -> None:
        what = "a terminal network filter (http_connection_manager, tcp_proxy or redis_proxy)"
        _check_terminal_last(self.filters, "filters", what)


class ExactBalance(EnvoyStruct, kw_only=True):
    """Listener.ConnectionBalanceConfig.ExactBalance (no fields)."""


class ExtendBalance(_TypedExtension, kw_only=True):
    """A TypedExtensionConfig resolved through the connection balancer registry."""

    category: ClassVar[str] = registry.CONNECTION_BALANCER


class ConnectionBalanceConfig(EnvoyStruct, kw_only=True):
    exact_balance: ExactBalance | None = None
    extend_balance: ExtendBalance | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "exact_balance", "extend_balance")


class InternalListenerConfig(EnvoyStruct, kw_only=True):
    """Listener.InternalListenerConfig (no fields): the listener binds nothing; clusters reach it by name
    (`envoy_internal_address`), inside the worker (proxy/internal_listener.py)."""


class AdditionalAddress(EnvoyStruct, kw_only=True):
    """config.listener.v3.AdditionalAddress: one more address the listener binds, served by the same filter chains
    (its own socket options and keepalive are not supported yet)."""

    address: ListenerAddress
    socket_options: NotSupportedYet | None = None
    tcp_keepalive: NotSupportedYet | None = None


class Listener(EnvoyStruct, kw_only=True):
    name: str = ""
    address: ListenerAddress | None = None  # required, except on an internal listener
    #: more addresses, each its own socket (e.g. the same IP and port in other network namespaces)
    additional_addresses: list[AdditionalAddress] = []
    #: a UDP listener's socket (its address says `protocol: UDP`)
    udp_listener_config: UdpListenerConfig | None = None
    #: an internal listener: no address; endpoints name it in their envoy_internal_address
    internal_listener: InternalListenerConfig | None = None
    filter_chains: list[FilterChain] = []
    listener_filters: list[ListenerFilter] = []
    per_connection_buffer_limit_bytes: UInt32 = 1024 * 1024
    connection_balance_config: ConnectionBalanceConfig | None = None
    enable_reuse_port: bool = True
    tcp_backlog_size: UInt32 | None = None  # None: the system's somaxconn, as Envoy
    #: IP_FREEBIND on the listening sockets: the listener may bind an address this host does not have (yet)
    freebind: bool = False
    # Data, as in Envoy, where only tracing reads it (pylon has no tracing: a `tracing` config is refused).
    traffic_direction: Literal["UNSPECIFIED", "INBOUND", "OUTBOUND"] = "UNSPECIFIED"
    max_connections_to_accept_per_socket_event: PositiveUInt32 | None = None  # None: all pending, as Envoy
    #: its connections are not counted against, nor refused by, the global downstream connections limit
    ignore_global_conn_limit: bool = False
    #: xds.type.matcher.v3.Matcher naming each connection's filter chain instead of their filter_chain_match
    #: (decoded by config/matcher.py in `__post_init__`; its actions google.protobuf.StringValue chain names)
    filter_chain_matcher: Any = None
    default_filter_chain: FilterChain | None = None
    listener_filters_timeout: Duration = Duration(15)  # 0: no limit
    continue_on_listener_filters_timeout: bool = False
    # A listener that does not bind only takes connections a use_original_dst listener hands over (a sidecar's
    # per-port outbound listeners behind virtualOutbound).
    bind_to_port: bool = True
    use_original_dst: bool = False

    def __post_init__(self) -> None:
        if self.is_udp:
            self._check_udp()
            return
        for j, listener_filter in enumerate(self.listener_filters):
            if listener_filter.udp:  # Envoy's words: it looks the factory up among the TCP listener filters
                raise FieldError(f"listener_filters[{j}]", f"Didn't find a registered implementation for "
                                 f"'{listener_filter.name}' with type URL: "
                                 f"'{registry.type_url_of(type(listener_filter.typed_config)).rsplit('/', 1)[-1]}' "
                                 "(a UDP listener filter; its listener's address says protocol: UDP)")
        if self.udp_listener_config is not None:
            raise FieldError("udp_listener_config", "a TCP listener has no UDP socket (its address says protocol: "
                                                    "TCP)")
        if not self.filter_chains and self.default_filter_chain is None:
            raise FieldError("filter_chains", "a listener needs a filter chain (or a default_filter_chain)")
        if self.filter_chain_matcher is not None:
            self._resolve_chain_matcher()
        if self.internal_listener is not None:
            self._check_internal()
            return
        self._check_additional_addresses()
        if self.address is None:
            raise FieldError("address", "missing required field (an internal listener sets internal_listener instead)")
        elif self.address.envoy_internal_address is not None:
            raise FieldError("address.envoy_internal_address",
                             f"error adding listener named {self.name!r}: use internal_listener field instead of "
                             "address for internal listeners")  # Envoy's words
        elif self.address.socket_address is None:
            raise FieldError("address.pipe", "pylon listeners bind IP addresses only (socket_address)")
        else:
            self._check_bound()

    def _resolve_chain_matcher(self) -> None:
        """Envoy's rules with a filter_chain_matcher: every chain named, no name twice; their filter_chain_match
        is then ignored (as Envoy ignores it)."""
        from pylon.config import matcher  # noqa: PLC0415  (it builds on this module)

        seen: set[str] = set()
        for j, chain in enumerate(self.filter_chains):
            if not chain.name:
                raise FieldError(f"filter_chains[{j}].name", f"error adding listener {self.name!r}: \"name\" field is "
                                                             "required when using a listener matcher")
            if chain.name in seen:
                raise FieldError(f"filter_chains[{j}].name", f"error adding listener {self.name!r}: \"name\" field is "
                                                             f"duplicated with value {chain.name!r}")
            seen.add(chain.name)
        matcher.decode_field(self, "filter_chain_matcher", inputs=registry.NETWORK_MATCH_INPUT,
                             actions=registry.FILTER_CHAIN_MATCH_ACTION)

    def _check_additional_addresses(self) -> None:
        """Envoy's rules for additional addresses (same socket type, no internal address; its words), and pylon's
        limits: IP addresses, TCP, balanced by the kernel."""
        for j, extra in enumerate(self.additional_addresses):
            path = f"additional_addresses[{j}].address"
            if extra.address.envoy_internal_address is not None:
                raise FieldError(f"{path}.envoy_internal_address",
                                 f"error adding listener named {self.name!r}: use internal_listener field instead of "
                                 "address for internal listeners")  # Envoy's words
            if extra.address.socket_address is None:
                raise FieldError(f"{path}.pipe", "pylon listeners bind IP addresses only (socket_address)")
            if (extra.address.socket_address.protocol == "UDP") != self.is_udp:
                raise FieldError(f"{path}.socket_address.protocol",
                                 f"listener {self.name}: has different socket type. The listener only support same "
                                 "socket type for all the addresses.")  # Envoy's words
            try:
                ipaddress.ip_address(extra.address.socket_address.address)
            except ValueError:
                raise FieldError(f"{path}.socket_address.address", "a listener address must be an IP "
                                                                   "address") from None
        if self.additional_addresses and self.is_udp:
            raise FieldError("additional_addresses", "additional addresses on a UDP listener are not supported yet")
        if self.additional_addresses and self.connection_balance_config is not None:
            raise FieldError("additional_addresses", "additional addresses with a connection_balance_config are not "
                                                     "supported yet (the kernel balances them)")

    @property
    def socket_address(self) -> SocketAddress:
        """The address a listener that is not internal binds (checked at load)."""
        assert self.address is not None and self.address.socket_address is not None
        return self.address.socket_address

    @property
    def socket_addresses(self) -> list[SocketAddress]:
        """Every address a listener that is not internal binds: its `address`, then its additional ones."""
        return [self.socket_address, *(extra.address.socket_address for extra in self.additional_addresses
                                       if extra.address.socket_address is not None)]

    @property
    def is_udp(self) -> bool:
        """A UDP listener: its address says `protocol: UDP`."""
        address = self.address
        return address is not None and address.socket_address is not None \
            and address.socket_address.protocol == "UDP"

    @property
    def udp_config(self) -> UdpListenerConfig:
        """A UDP listener's socket config (Envoy's defaults when it has none)."""
        return self.udp_listener_config or UdpListenerConfig()

    def _check_udp(self) -> None:
        """What a UDP listener is in pylon: its datagrams go to one UDP listener filter (the UDP proxy, the only
        one Envoy has without QUIC); the TCP listener's connection features have nothing to act on."""
        self._check_bound()
        self._check_additional_addresses()
        if self.internal_listener is not None:
            raise FieldError("internal_listener", "an internal listener has no address to be UDP")
        for j, listener_filter in enumerate(self.listener_filters):
            if not listener_filter.udp:
                raise FieldError(f"listener_filters[{j}]", f"{listener_filter.name} is a TCP listener filter; a "
                                                           "UDP listener takes UDP listener filters only")
        if len(self.listener_filters) != 1:
            raise FieldError("listener_filters", "a UDP listener in pylon takes exactly one UDP listener filter "
                                                 "(envoy.filters.udp_listener.udp_proxy)")
        for name, unsupported in (("filter_chains", bool(self.filter_chains)),
                                  ("default_filter_chain", self.default_filter_chain is not None),
                                  ("connection_balance_config", self.connection_balance_config is not None),
                                  ("tcp_backlog_size", self.tcp_backlog_size is not None),
                                  ("use_original_dst", self.use_original_dst),
                                  ("bind_to_port", not self.bind_to_port),
                                  ("filter_chain_matcher", self.filter_chain_matcher is not None)):
            if unsupported:
                raise FieldError(name, "a UDP listener has no connections: its datagrams go to its UDP listener "
                                       "filter (filter chains on a UDP listener are QUIC's, which pylon lacks)")

    def _check_internal(self) -> None:
        """Envoy's rules for an internal listener (no address, none of the TCP listener's socket features), and
        what pylon's internal listeners do not do yet: the connection has no socket to peek at or match on, so no
        listener filters and one filter chain that takes every connection, in plain text."""
        if self.address is not None or self.additional_addresses:
            raise FieldError("address" if self.address is not None else "additional_addresses",
                             f"error adding listener {self.name!r}: address should not be used when an "
                             "internal listener config is provided")  # Envoy's words
        for name, unsupported in (("connection_balance_config", self.connection_balance_config is not None),
                                  ("freebind", self.freebind), ("tcp_backlog_size", self.tcp_backlog_size is not None)):
            if unsupported:
                raise FieldError(name, f"error adding listener named {self.name!r}: has unsupported tcp listener "
                                       "feature")  # Envoy's words
        if self.listener_filters:
            raise FieldError("listener_filters", "listener filters on an internal listener are not supported yet")
        if self.use_original_dst:
            raise FieldError("use_original_dst", "an internal listener's connections have no original destination")
        if self.filter_chain_matcher is not None:
            raise FieldError("filter_chain_matcher", "an internal listener's connections have no socket to match on")
        chains = self.all_filter_chains()
        if len(chains) != 1 or (chains[0][1].filter_chain_match is not None
                                and chains[0][1].filter_chain_match != FilterChainMatch()):
            raise FieldError("filter_chains", "an internal listener with more than one filter chain, or a "
                                              "filter_chain_match, is not supported yet")
        path, chain = chains[0]
        if chain.transport_socket is not None and not isinstance(chain.transport_socket.typed_config, RawBuffer):
            raise FieldError(f"{path}.transport_socket", "TLS on an internal listener is not supported yet")

    def _check_bound(self) -> None:
        try:
            ipaddress.ip_address(self.socket_address.address)
        except ValueError:
            raise FieldError("address.socket_address.address", "a listener address must be an IP address") from None
        if not self.bind_to_port and self.connection_balance_config is not None:
            raise FieldError("connection_balance_config", "a listener that does not bind (bind_to_port: false) "
                                                          "accepts nothing to balance")

    def all_filter_chains(self) -> list[tuple[str, FilterChain]]:
        """(field path below the listener, chain) of every filter chain, the default one last."""
        chains = [(f"filter_chains[{j}]", chain) for j, chain in enumerate(self.filter_chains)]
        if self.default_filter_chain is not None:
            chains.append(("default_filter_chain", self.default_filter_chain))
        return chains


# --------------------------------------------------------------------------- clusters


class HealthCheckConfig(EnvoyStruct, kw_only=True):
    """Endpoint.health_check_config: where active health checks go. pylon checks the endpoint's own address, so
    `port_value` is taken when it is 0 or the endpoint's port (what Envoy then does too) and refused otherwise."""

    port_value: Port = 0
    hostname: NotSupportedYet | None = None
    address: NotSupportedYet | None = None
    disable_active_health_check: NotSupportedYet | None = None


class Endpoint(EnvoyStruct, kw_only=True):
    address: EndpointAddress
    hostname: str = ""
    health_check_config: HealthCheckConfig | None = None

    def __post_init__(self) -> None:
        check = self.health_check_config
        sock = self.address.socket_address
        if check is not None and check.port_value and (sock is None or check.port_value != sock.port_value):
            raise FieldError("health_check_config.port_value",
                             "health checks on another port than the endpoint's are not supported yet")


#: The endpoint metadata namespace a cluster's transport_socket_matches are matched against.
TRANSPORT_SOCKET_MATCH = "envoy.transport_socket_match"


class LbEndpoint(EnvoyStruct, kw_only=True):
    endpoint: Endpoint
    load_balancing_weight: PositiveUInt32 = 1
    health_status: Literal["UNKNOWN", "HEALTHY", "UNHEALTHY", "DRAINING", "TIMEOUT", "DEGRADED"] = "UNKNOWN"
    # Read under `envoy.transport_socket_match` (which transport socket the host gets); data otherwise.
    metadata: Metadata | None = None

    @property
    def socket_match_metadata(self) -> dict[str, Any]:
        """What the cluster's transport_socket_matches are matched against (Istio: {tlsMode: istio})."""
        return self.metadata.filter_metadata.get(TRANSPORT_SOCKET_MATCH, {}) if self.metadata is not None else {}

    @property
    def lb_metadata(self) -> dict[str, Any]:
        """What a subset load balancer groups the endpoint by (its `envoy.lb` metadata)."""
        return self.metadata.filter_metadata.get(ENVOY_LB, {}) if self.metadata is not None else {}

    @property
    def typed_metadata(self) -> dict[str, Any]:
        """Its typed_filter_metadata, decoded (the upstream proxy_protocol socket's per-host TLVs)."""
        return self.metadata.typed_filter_metadata if self.metadata is not None else {}

    def __post_init__(self) -> None:
        if self.health_status == "DEGRADED":
            raise FieldError("health_status", "DEGRADED is not supported yet (Envoy uses degraded hosts only "
                                              "when no healthy one is left)")


class Locality(EnvoyStruct, kw_only=True):
    """Where endpoints run: with `common_lb_config.locality_weighted_lb_config`, each locality entry of a
    priority is picked by its weight first (proxy/upstream/priority.py)."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""


class LocalityLbEndpoints(EnvoyStruct, kw_only=True):
    locality: Locality | None = None
    lb_endpoints: list[LbEndpoint] = []
    load_balancing_weight: PositiveUInt32 | None = None
    #: Envoy's priority levels: 0 takes the load while healthy, lower ones the spill-over (upstream/priority.py)
    priority: UInt32 = 0


class ClusterLoadAssignment(EnvoyStruct, kw_only=True):
    """config.endpoint.v3.ClusterLoadAssignment: inline in a cluster, or an EDS resource named by cluster_name."""

    cluster_name: NonEmptyStr
    endpoints: list[LocalityLbEndpoints] = []

    @property
    def name(self) -> str:
        """The EDS resource name (a cluster's service_name, else its name): how xDS code keys every resource."""
        return self.cluster_name

    def check_ip_addresses(self, path: str, why: str, internal_ok: bool = False) -> None:
        """FieldError naming the first endpoint whose address is not an IP literal (Envoy: "malformed IP address");
        `internal_ok`: an internal listener's address passes (a STATIC cluster's, checked by the cluster)."""
        for i, locality in enumerate(self.endpoints):
            for j, lb_endpoint in enumerate(locality.lb_endpoints):
                if internal_ok and lb_endpoint.endpoint.address.envoy_internal_address is not None:
                    continue
                address = lb_endpoint.endpoint.address.socket_address
                if address is None:
                    where = f"endpoints[{i}].lb_endpoints[{j}].endpoint.address"
                    kind = "pipe" if lb_endpoint.endpoint.address.pipe is not None else "envoy_internal_address"
                    raise FieldError(join_path(path, f"{where}.{kind}"), f"a {kind} is not an IP address ({why})")
                host = address.address
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    where = f"endpoints[{i}].lb_endpoints[{j}].endpoint.address.socket_address.address"
                    raise FieldError(join_path(path, where), f"{host!r} is not an IP address ({why})") from None


class Thresholds(EnvoyStruct, kw_only=True):
    """Circuit breaker limits for one routing priority."""

    priority: Literal["DEFAULT", "HIGH"] = "DEFAULT"
    max_connections: UInt32 = 1024
    max_pending_requests: UInt32 = 1024
    max_requests: UInt32 = 1024
    max_retries: UInt32 = 3
    #: publish `circuit_breakers.<priority>.remaining_{cx,pending,rq,retries}` gauges
    track_remaining: bool = False


class CircuitBreakers(EnvoyStruct, kw_only=True):
    thresholds: list[Thresholds] = []


class Int64Range(EnvoyStruct, kw_only=True):
    """[start, end) as in type.v3.Int64Range."""

    start: int = 0
    end: int = 0

    def __post_init__(self) -> None:
        if not 100 <= self.start < self.end <= 600:
            raise ValueError("expected 100 <= start < end <= 600 (end is exclusive)")


class HttpHealthCheck(EnvoyStruct, kw_only=True):
    host: StrictHttpText = StrictHttpText("")
    path: NonEmptyStrictHttpText
    expected_statuses: list[Int64Range] = []


class TcpHealthCheck(EnvoyStruct, kw_only=True):
    """A connect-only TCP health check (no send/receive payloads)."""


class HealthCheck(EnvoyStruct, kw_only=True):
    timeout: PositiveDuration
    interval: PositiveDuration
    interval_jitter: Duration | None = None
    unhealthy_threshold: UInt32
    healthy_threshold: UInt32
    no_traffic_interval: PositiveDuration = PositiveDuration(60)
    #: the wait before checking a healthy host of a cluster without traffic yet (unset: no_traffic_interval)
    no_traffic_healthy_interval: PositiveDuration | None = None
    http_health_check: HttpHealthCheck | None = None
    tcp_health_check: TcpHealthCheck | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "http_health_check", "tcp_health_check")


class OutlierDetection(EnvoyStruct, kw_only=True):
    consecutive_5xx: UInt32 = 5
    interval: PositiveDuration = PositiveDuration(10)
    base_ejection_time: PositiveDuration = PositiveDuration(30)
    max_ejection_percent: Percentage = 10
    enforcing_consecutive_5xx: Percentage = 100
    consecutive_gateway_failure: UInt32 = 5
    enforcing_consecutive_gateway_failure: Percentage = 0


class LocalityWeightedLbConfig(EnvoyStruct, kw_only=True):
    """CommonLbConfig.locality_weighted_lb_config: pick a locality by its weight first (no options)."""


class CommonLbConfig(EnvoyStruct, kw_only=True):
    healthy_panic_threshold: Percent = msgspec.field(default_factory=lambda: Percent(value=50.0))
    locality_weighted_lb_config: LocalityWeightedLbConfig | None = None
    #: needs the local cluster (cluster_manager.local_cluster_name), which pylon does not have
    zone_aware_lb_config: NotSupportedYet | None = None


#: The metadata namespace the subset load balancer reads: endpoints' subset values, routes' match criteria.
ENVOY_LB = "envoy.lb"


class LbSubsetSelector(EnvoyStruct, kw_only=True):
    """Cluster.LbSubsetConfig.LbSubsetSelector: the keys whose values split the hosts into subsets, and what a
    request whose criteria have exactly these keys gets when no subset has its values."""

    keys: list[str] = []
    single_host_per_subset: bool = False
    fallback_policy: Literal["NOT_DEFINED", "NO_FALLBACK", "ANY_ENDPOINT", "DEFAULT_SUBSET", "KEYS_SUBSET"] = (
        "NOT_DEFINED")
    fallback_keys_subset: list[str] = []

    def __post_init__(self) -> None:
        if self.single_host_per_subset:
            raise FieldError("single_host_per_subset", "single-host subsets are not supported yet")
        # Envoy's SubsetSelector checks, with its messages.
        if self.fallback_policy != "KEYS_SUBSET":
            if self.fallback_keys_subset:
                raise FieldError("fallback_keys_subset",
                                 "fallback_keys_subset can be set only for KEYS_SUBSET fallback_policy")
            return
        if not self.fallback_keys_subset:
            raise FieldError("fallback_keys_subset", "fallback_keys_subset cannot be empty")
        if not set(self.fallback_keys_subset) <= set(self.keys):
            raise FieldError("fallback_keys_subset", "fallback_keys_subset must be a subset of selector keys")
        if len(set(self.fallback_keys_subset)) == len(set(self.keys)):
            raise FieldError("fallback_keys_subset", "fallback_keys_subset cannot be equal to keys")


class LbSubsetConfig(EnvoyStruct, kw_only=True):
    """Cluster.LbSubsetConfig: hosts grouped by their `envoy.lb` metadata, a route's `metadata_match` picking
    the group (proxy/upstream/subset.py). Without selectors it does nothing, as in Envoy."""

    fallback_policy: Literal["NO_FALLBACK", "ANY_ENDPOINT", "DEFAULT_SUBSET"] = "NO_FALLBACK"
    default_subset: dict[str, Any] = {}
    subset_selectors: list[LbSubsetSelector] = []
    locality_weight_aware: bool = False
    scale_locality_weight: bool = False
    panic_mode_any: bool = False
    list_as_any: bool = False
    metadata_fallback_policy: Literal["METADATA_NO_FALLBACK", "FALLBACK_LIST"] = "METADATA_NO_FALLBACK"

    def __post_init__(self) -> None:
        if self.scale_locality_weight:
            raise FieldError("scale_locality_weight", "scaling locality weights by a subset's share of each "
                                                      "locality's hosts is not supported yet")
        if self.metadata_fallback_policy == "FALLBACK_LIST":
            raise FieldError("metadata_fallback_policy", "FALLBACK_LIST (a fallback_list in the request's "
                                                         "metadata criteria) is not supported yet")

    @property
    def enabled(self) -> bool:
        """Envoy's LoadBalancerSubsetInfo.isEnabled: only selectors make subsets."""
        return bool(self.subset_selectors)


RING_SIZE_MAX = 8 * 1024 * 1024
RingSize = Annotated[int, msgspec.Meta(ge=1, le=RING_SIZE_MAX)]


MAGLEV_TABLE_SIZE_MAX = 5000011


class MaglevLbConfig(EnvoyStruct, kw_only=True):
    """config.cluster.v3.Cluster.MaglevLbConfig: the lookup table's size, a prime (Envoy's default 65537)."""

    table_size: Annotated[int, msgspec.Meta(ge=1, le=MAGLEV_TABLE_SIZE_MAX)] = 65537

    def __post_init__(self) -> None:
        if not _is_prime(self.table_size):
            raise FieldError("table_size", "The table size of maglev must be prime number")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


class RingHashLbConfig(EnvoyStruct, kw_only=True):
    minimum_ring_size: RingSize = 1024
    maximum_ring_size: RingSize = RING_SIZE_MAX

    def __post_init__(self) -> None:
        if self.minimum_ring_size > self.maximum_ring_size:
            raise FieldError("minimum_ring_size", "must not exceed maximum_ring_size")


class LeastRequestLbConfig(EnvoyStruct, kw_only=True):
    choice_count: Annotated[int, msgspec.Meta(ge=2, le=UINT32_MAX)] = 2


class Http2ProtocolOptions(HcmHttp2ProtocolOptions, kw_only=True):
    """config.core.v3.Http2ProtocolOptions as a cluster reads it: the upstream HTTP/2 codec's limits.

    The same fields as the HCM's, meaning what Envoy's upstream codec makes of them: `max_concurrent_streams`
    caps the streams pylon opens on one connection (the peer's SETTINGS may lower it further), the windows and
    `hpack_table_size` are what pylon's SETTINGS advertise, and the flood limits guard against the upstream as
    they guard against clients downstream; `allow_connect` is advertised in pylon's SETTINGS as Envoy's upstream
    codec advertises it (whether an upgrade may go as extended CONNECT is the server's SETTINGS' word).
    """


class ExplicitHttpConfig(EnvoyStruct, kw_only=True):
    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None
    http3_protocol_options: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "http_protocol_options", "http2_protocol_options")


class UpstreamCommonHttpProtocolOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.HttpProtocolOptions as a cluster reads it: what its upstream connections may do.

    A different Struct from the HCM's `HttpProtocolOptions` because the same
    message means other things upstream (each as Envoy 1.40 was seen doing it):
    `idle_timeout` closes a pooled connection with no request for that long
    (unset: 1 hour, 0: never; `upstream_cx_idle_timeout`);
    `max_connection_duration` closes a connection that old, after the request it
    is serving if any (unset or 0: no limit; `upstream_cx_max_duration_reached`);
    `max_requests_per_connection` closes it after that many requests (unset or 0:
    no limit; `upstream_cx_max_requests`); `max_headers_count` limits a response
    head (more is a protocol error: 502 UPE, `upstream_cx_protocol_error`);
    `max_stream_duration` limits each request from when it is given a connection:
    then the upstream request is abandoned and the client gets 504 (408 while its
    request is still arriving), flag UMSDR, or a reset once the response began
    (`upstream_rq_max_duration_reached`). Departure: an upgraded (websocket)
    request is not held to it once the upstream switched protocols.
    `headers_with_underscores_action` applies to client requests only: Envoy lets
    underscored headers through a cluster that sets it, both ways, and so does pylon.
    """

    idle_timeout: Duration = Duration(3600)
    max_connection_duration: Duration | None = None
    max_headers_count: PositiveUInt32 = 100
    max_stream_duration: Duration | None = None
    headers_with_underscores_action: Literal["ALLOW", "REJECT_REQUEST", "DROP_HEADER"] = "ALLOW"
    max_requests_per_connection: UInt32 | None = None
    max_response_headers_kb: NotSupportedYet | None = None


class AutoSniOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.UpstreamHttpProtocolOptions: the upstream TLS of each request follows its host.

    `auto_sni`: the SNI of new upstream connections is the request's host (the route's host rewrite, else its
    Host/:authority, without the port; `override_auto_sni_header`'s value instead when the request has it; an
    IP address sets none). `auto_san_validation`: the server certificate must also carry a SAN for that host.
    Connections made for one host never serve another (pools are per host name, as Envoy's are per transport
    socket options). Only HTTP requests use them: tcp_proxy and health checks do not, as in Envoy.
    """

    auto_sni: bool = False
    auto_san_validation: bool = False
    override_auto_sni_header: HttpText = HttpText("")

    @property
    def in_force(self) -> bool:
        """Whether requests change anything (Envoy looks at the host only when one of the two is set)."""
        return self.auto_sni or self.auto_san_validation


class UseDownstreamHttpConfig(EnvoyStruct, kw_only=True):
    """HttpProtocolOptions.UseDownstreamHttpConfig: the upstream request speaks the protocol its client spoke
    (HTTP/2 upstream iff the request came over HTTP/2), each with these options."""

    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None
    http3_protocol_options: NotSupportedYet | None = None


class AutoHttpConfig(EnvoyStruct, kw_only=True):
    """HttpProtocolOptions.AutoHttpConfig: ALPN (`h2`, `http/1.1`) picks the protocol of each new TLS connection;
    a cluster without TLS is refused, as Envoy 1.40 refuses it ("ALPN configured for cluster ... which has a
    non-ALPN transport socket", checked with its validate mode)."""

    http_protocol_options: Http1ProtocolOptions | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None
    http3_protocol_options: NotSupportedYet | None = None
    alternate_protocols_cache_options: NotSupportedYet | None = None


class UpstreamHttpProtocolOptions(EnvoyStruct, kw_only=True):
    """extensions.upstreams.http.v3.HttpProtocolOptions: the upstream protocol (explicit HTTP/1.1 or HTTP/2, the
    downstream's, or ALPN's), the connection limits, and the upstream TLS name per request (auto_sni)."""

    common_http_protocol_options: UpstreamCommonHttpProtocolOptions | None = None
    upstream_http_protocol_options: AutoSniOptions | None = None
    explicit_http_config: ExplicitHttpConfig | None = None
    use_downstream_protocol_config: UseDownstreamHttpConfig | None = None
    auto_config: AutoHttpConfig | None = None
    #: the cluster's upstream HTTP filters, instead of the router's `upstream_http_filters`
    http_filters: list[UpstreamHttpFilter] = []

    def __post_init__(self) -> None:
        _exactly_one(self, "explicit_http_config", "use_downstream_protocol_config", "auto_config")
        if self.http_filters:
            _check_terminal_last(self.http_filters, "http_filters", _UPSTREAM_CODEC)

    @property
    def protocol_config(self) -> "ExplicitHttpConfig | UseDownstreamHttpConfig | AutoHttpConfig":
        """The one of the three protocol choices that is set."""
        return self.explicit_http_config or self.use_downstream_protocol_config or self.auto_config  # type: ignore


#: The key of the typed HttpProtocolOptions in a cluster's typed_extension_protocol_options.
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_DEFAULT_UPSTREAM_OPTIONS = UpstreamCommonHttpProtocolOptions()


class BindConfig(EnvoyStruct, kw_only=True):
    """config.core.v3.BindConfig: the local address upstream connections leave from (Istio's inbound 127.0.0.6)."""

    source_address: SocketAddress
    freebind: NotSupportedYet | None = None
    socket_options: NotSupportedYet | None = None
    extra_source_addresses: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.source_address.address)
        except ValueError:
            raise FieldError("source_address.address", "must be an IP address") from None


# Linux's limits for the keepalive settings (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT): beyond them the
# setsockopt fails, so Envoy's connections would fail at run time; here the config says so at load.
_KEEPALIVE_LIMITS = {"keepalive_time": 32767, "keepalive_interval": 32767, "keepalive_probes": 127}


class TcpKeepalive(EnvoyStruct, kw_only=True):
    """config.core.v3.TcpKeepalive: SO_KEEPALIVE on, and each setting given (seconds; unset: the system's)."""

    keepalive_probes: UInt32 | None = None
    keepalive_time: UInt32 | None = None
    keepalive_interval: UInt32 | None = None

    def __post_init__(self) -> None:
        for field, limit in _KEEPALIVE_LIMITS.items():
            value = getattr(self, field)
            if value is not None and not 1 <= value <= limit:
                raise FieldError(field, f"must be 1..{limit} (Linux's limit); {value} was given")


class UpstreamConnectionOptions(EnvoyStruct, kw_only=True):
    """config.cluster.v3.UpstreamConnectionOptions: TCP keepalive on every upstream connection of the cluster."""

    tcp_keepalive: TcpKeepalive | None = None
    set_local_interface_name_on_upstream_connections: bool = False
    happy_eyeballs_config: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.set_local_interface_name_on_upstream_connections:
            raise FieldError("set_local_interface_name_on_upstream_connections", "not supported yet")


class EdsClusterConfig(EnvoyStruct, kw_only=True):
    """config.cluster.v3.Cluster.EdsClusterConfig: endpoints over the ADS stream, by service_name (else the
    cluster's name). A file source (path_config_source) is not supported yet."""

    eds_config: ConfigSource
    service_name: str = ""

    def __post_init__(self) -> None:
        if self.eds_config.ads is None and self.eds_config.api_config_source is None:
            field = "path_config_source" if self.eds_config.path_config_source is not None else "path"
            raise FieldError(f"eds_config.{field}", "EDS from a file is not supported yet; use ads: {} or an "
                                                    "api_config_source")


class TransportSocketMatch(EnvoyStruct, kw_only=True):
    """config.cluster.v3.Cluster.TransportSocketMatch: hosts whose `envoy.transport_socket_match` metadata holds
    every entry of `match` get this transport socket (the first such match; none: the cluster's own)."""

    name: NonEmptyStr
    match: dict[str, Any] = {}
    transport_socket: UpstreamTransportSocket

    def __post_init__(self) -> None:
        if hasattr(self.transport_socket.typed_config, "transport_socket"):  # a wrapping socket: the tap
            raise FieldError("transport_socket.typed_config", "a tap transport socket in transport_socket_matches "
                                                              "is not supported yet (on the cluster's own it is)")


class Shared(EnvoyStruct, kw_only=True):
    """A config of something the proxy keeps once per key and shares among its users: every config of a key must
    be the same, as Envoy requires (loader.py checks; `conflict` is Envoy's message, with `{name}`: the key)."""

    conflict: ClassVar[str]

    def sharing(self) -> tuple[str, object]:
        """(the key it is shared by, the settings that must be the same for that key)."""
        raise NotImplementedError


class SharedByName(Shared, kw_only=True):
    """Shared by its `name` (the dynamic forward proxy's DNS caches: its clusters and filters name one)."""

    name: NonEmptyStr

    def sharing(self) -> tuple[str, object]:
        return self.name, self


class ClusterTypeConfig(EnvoyStruct, kw_only=True):
    """Base of a custom cluster type's config (`cluster_type.typed_config`), with what it asks of its cluster.

    Envoy's cluster factory for a type checks the cluster it makes (and may fill in defaults); here each type's
    config does it when the cluster decodes, so a bad cluster is a load error at its field path like any other.
    """

    def check_cluster(self, cluster: "Cluster") -> None:
        """Raise FieldError (path below the cluster) for what a cluster of this type does not take."""

    def implied_upstream_options(self) -> "AutoSniOptions | None":
        """The deprecated `upstream_http_protocol_options` the factory gives a cluster that has none (None: none)."""
        return None


class CustomClusterType(_TypedExtension, kw_only=True):
    """config.cluster.v3.Cluster.CustomClusterType: a cluster type of an extension, by its config's @type."""

    category: ClassVar[str] = registry.CLUSTER_TYPE


class DnsResolverOptions(EnvoyStruct, kw_only=True):
    """config.core.v3.DnsResolverOptions."""

    use_tcp_for_dns_lookups: bool = False
    no_default_search_domain: bool = False


class CaresDnsResolverConfig(EnvoyStruct, kw_only=True):
    """extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig: Envoy's c-ares resolver, which pylon
    resolves through too (aiodns over pycares), with these settings on its channel (`channel_options`)."""

    resolvers: list[Address] = []
    use_resolvers_as_fallback: bool = False
    filter_unroutable_families: NotSupportedYet | None = None
    dns_resolver_options: DnsResolverOptions | None = None
    udp_max_queries: NotSupportedYet | None = None
    query_timeout_seconds: Annotated[int, msgspec.Meta(ge=1)] | None = None
    query_tries: Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)] | None = None
    rotate_nameservers: bool = False
    edns0_max_payload_size: NotSupportedYet | None = None
    max_udp_channel_duration: NotSupportedYet | None = None
    reinit_channel_on_timeout: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        for i, resolver in enumerate(self.resolvers):
            if resolver.socket_address is None:
                raise FieldError(f"resolvers[{i}]", "a resolver is a socket_address")
        if self.use_resolvers_as_fallback and not self.resolvers:
            raise FieldError("use_resolvers_as_fallback", "needs resolvers to fall back to")

    def channel_options(self, system_servers: Callable[[], list[str]]) -> dict[str, Any]:
        """pycares.Channel keyword arguments; `system_servers` (resolv.conf's) decides use_resolvers_as_fallback."""
        servers = [(f"[{r.socket_address.address}]:{r.socket_address.port_value}"  # type: ignore[union-attr]
                    if ":" in r.socket_address.address  # type: ignore[union-attr]
                    else f"{r.socket_address.address}:{r.socket_address.port_value}")  # type: ignore[union-attr]
                   for r in self.resolvers]
        options: dict[str, Any] = {}
        if servers and not (self.use_resolvers_as_fallback and system_servers()):
            options["servers"] = servers
        flags = 0
        resolver_options = self.dns_resolver_options
        if resolver_options is not None and resolver_options.use_tcp_for_dns_lookups:
            flags |= 1 << 0  # ARES_FLAG_USEVC
        if resolver_options is not None and resolver_options.no_default_search_domain:
            flags |= 1 << 5  # ARES_FLAG_NOSEARCH
        if flags:
            options["flags"] = flags
        if self.query_timeout_seconds is not None:
            options["timeout"] = float(self.query_timeout_seconds)
        if self.query_tries is not None:
            options["tries"] = self.query_tries
        if self.rotate_nameservers:
            options["rotate"] = True
        return options


#: The DNS resolvers pylon has, by their config message (Envoy's `envoy.network.dns_resolver`).
DNS_RESOLVERS: dict[str, type[EnvoyStruct]] = {
    "envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig": CaresDnsResolverConfig,
}


class TypedDnsResolverConfig(EnvoyStruct, kw_only=True):
    """config.core.v3.TypedExtensionConfig naming a DNS resolver: c-ares only (getaddrinfo and Apple's are
    refused by name)."""

    name: NonEmptyStr
    typed_config: dict[str, Any]

    def __post_init__(self) -> None:
        self.decoded()

    def decoded(self) -> CaresDnsResolverConfig:
        """The resolver's config message."""
        decoded = _decode_small_extension(self.typed_config, DNS_RESOLVERS, "DNS resolver")
        assert isinstance(decoded, CaresDnsResolverConfig)
        return decoded


class OriginalDstLbConfig(EnvoyStruct, kw_only=True):
    """config.cluster.v3.Cluster.OriginalDstLbConfig: where an ORIGINAL_DST cluster's host comes from besides the
    connection's original destination. With `use_http_header`, a request's header (default
    x-envoy-original-dst-host; `:authority` names the request's host) gives `ip:port`; absent or invalid
    (counted in `original_dst_host_invalid`), the connection's destination is used, as in Envoy.
    `upstream_port_override` replaces the port either way. `metadata_key` (dynamic metadata) is refused."""

    use_http_header: bool = False
    http_header_name: str = ""
    upstream_port_override: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    metadata_key: NotSupportedYet | None = None


class Cluster(EnvoyStruct, kw_only=True):
    name: NonEmptyStr
    # One choice with `cluster_type` (Envoy's oneof cluster_discovery_type); STATIC when neither is set.
    type: Literal["STATIC", "STRICT_DNS", "LOGICAL_DNS", "EDS", "ORIGINAL_DST"] | None = None
    cluster_type: CustomClusterType | None = None
    eds_cluster_config: EdsClusterConfig | None = None
    connect_timeout: PositiveDuration = PositiveDuration(5)
    lb_policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV", "CLUSTER_PROVIDED"] = "ROUND_ROBIN"
    load_assignment: ClusterLoadAssignment | None = None
    circuit_breakers: CircuitBreakers | None = None
    health_checks: list[HealthCheck] = []
    outlier_detection: OutlierDetection | None = None
    transport_socket: UpstreamTransportSocket | None = None
    # Per-endpoint transport sockets by endpoint metadata (Istio's auto mTLS: TLS to hosts with tlsMode istio).
    transport_socket_matches: list[TransportSocketMatch] = []
    dns_lookup_family: Literal["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"] = "AUTO"
    dns_refresh_rate: DnsRefreshRate = DnsRefreshRate(5)
    respect_dns_ttl: bool = False  # refresh at the answer's TTL (Istio sets it on DNS clusters)
    typed_dns_resolver_config: TypedDnsResolverConfig | None = None
    common_lb_config: CommonLbConfig = msgspec.field(default_factory=CommonLbConfig)
    ring_hash_lb_config: RingHashLbConfig = msgspec.field(default_factory=RingHashLbConfig)
    maglev_lb_config: MaglevLbConfig = msgspec.field(default_factory=MaglevLbConfig)
    least_request_lb_config: LeastRequestLbConfig = msgspec.field(default_factory=LeastRequestLbConfig)
    per_connection_buffer_limit_bytes: UInt32 = 1024 * 1024
    typed_extension_protocol_options: dict[str, Any] = {}
    max_requests_per_connection: UInt32 | None = None  # deprecated place; 0, like unset, is no limit
    # Deprecated in Envoy, still accepted by 1.40; ignored there next to the typed HttpProtocolOptions (refused here).
    common_http_protocol_options: UpstreamCommonHttpProtocolOptions | None = None
    # Deprecated in Envoy, still accepted by 1.40; ignored there next to the typed HttpProtocolOptions (refused here).
    upstream_http_protocol_options: AutoSniOptions | None = None
    metadata: Metadata | None = None
    http2_protocol_options: Http2ProtocolOptions | None = None  # deprecated in Envoy, still in Istio's bootstraps
    upstream_bind_config: BindConfig | None = None
    upstream_connection_options: UpstreamConnectionOptions | None = None
    # ORIGINAL_DST: hosts unused for this long are dropped (Envoy's default 5 s).
    cleanup_interval: PositiveDuration = PositiveDuration(5)
    original_dst_lb_config: OriginalDstLbConfig | None = None
    lb_subset_config: LbSubsetConfig | None = None

    def __post_init__(self) -> None:
        self._resolve_protocol_options()
        self._check_connection_options()
        self._check_upstream_protocol()
        self._check_discovery_type()
        self._check_eds()
        self._check_endpoints()
        if len(self.health_checks) > 1:
            # Envoy 1.40 runs several when each has a name; pylon runs one health checker per cluster.
            raise FieldError("health_checks[1]", "more than one health check per cluster is not supported yet")
        if self.common_lb_config.locality_weighted_lb_config is not None and self.lb_policy in ("RING_HASH", "MAGLEV"):
            raise FieldError("common_lb_config.locality_weighted_lb_config",
                             f"locality weights with {self.lb_policy} are not supported yet (ROUND_ROBIN, "
                             "LEAST_REQUEST and RANDOM take them)")
        self._check_subsets()

    def _check_subsets(self) -> None:
        subsets = self.lb_subset_config
        if subsets is None or not subsets.enabled:
            return
        if self.lb_policy == "CLUSTER_PROVIDED":
            raise FieldError("lb_subset_config", "LB policy CLUSTER_PROVIDED cannot be combined with lb_subset_config")
        if subsets.locality_weight_aware and self.common_lb_config.locality_weighted_lb_config is None:
            raise FieldError("lb_subset_config.locality_weight_aware", "Locality weight aware subset LB requires "
                                                                       "that a locality_weighted_lb_config be set")

    @property
    def eds_service_name(self) -> str:
        """The ClusterLoadAssignment an EDS cluster asks for ("" for other types)."""
        if self.eds_cluster_config is None:
            return ""
        return self.eds_cluster_config.service_name or self.name

    def _check_discovery_type(self) -> None:
        """`type` or `cluster_type`, never both; a custom type's cluster provides its own load balancing (as Envoy's
        cluster manager requires) and passes its type's own checks."""
        if self.cluster_type is None:
            if self.type is None:
                force_setattr(self, "type", "STATIC")
            return
        if self.type is not None:
            raise FieldError("type", "type and cluster_type are one choice (cluster_discovery_type): set one")
        if self.lb_policy != "CLUSTER_PROVIDED":
            raise FieldError("lb_policy", f"cluster provided LB not specified but cluster {self.name!r} provided one: a "
                                          "cluster_type cluster picks its hosts itself (lb_policy CLUSTER_PROVIDED)")
        self.cluster_type.typed_config.check_cluster(self)

    def _check_eds(self) -> None:
        if self.type == "EDS":
            if self.eds_cluster_config is None:
                raise FieldError("eds_cluster_config", "missing required field (an EDS cluster needs its EDS source)")
            if self.load_assignment is not None:
                raise FieldError("load_assignment", "an EDS cluster takes its endpoints from EDS, not inline")
        elif self.eds_cluster_config is not None:
            raise FieldError("eds_cluster_config", f"only for type EDS, not {self.type or 'a cluster_type cluster'}")

    def _check_internal_endpoint(self, path: str) -> None:
        """An endpoint that is an internal listener: what pylon's internal connections do not carry yet."""
        if self.type != "STATIC":
            raise FieldError(path, f"an internal address in a {self.type} cluster is not supported (STATIC only)")
        if self.health_checks:
            # Envoy 1.40 crashes validating such a config (observed): there is no behaviour to follow.
            raise FieldError("health_checks", "health checks of internal listener endpoints are not supported")
        if self.transport_socket is not None and not isinstance(self.transport_socket.typed_config, RawBuffer):
            raise FieldError("transport_socket", "TLS to an internal listener is not supported yet")
        if self.transport_socket_matches:
            raise FieldError("transport_socket_matches", "transport socket matches with internal listener endpoints "
                                                         "are not supported yet")
        if self.upstream_bind_config is not None:
            raise FieldError("upstream_bind_config", "an internal connection has no source address to bind")
        if self.upstream_connection_options is not None:
            raise FieldError("upstream_connection_options", "an internal connection has no TCP socket to set")

    @property
    def grpc_only(self) -> bool:
        """A static HTTP/2 cluster with pipe endpoints: only grpcio uses it (xDS, SDS); workers build no runtime."""
        return self.http2_field is not None and self.load_assignment is not None and any(
            lb.endpoint.address.pipe is not None for locality in self.load_assignment.endpoints
            for lb in locality.lb_endpoints)

    @property
    def http2_field(self) -> str | None:
        """The field path that makes this cluster speak HTTP/2 upstream, or None (HTTP/1.1)."""
        if self.http2_protocol_options is not None:
            return "http2_protocol_options"
        for key, options in self.typed_extension_protocol_options.items():
            explicit = getattr(options, "explicit_http_config", None)
            if explicit is not None and explicit.http2_protocol_options is not None:
                return f"typed_extension_protocol_options[{key}].explicit_http_config.http2_protocol_options"
        return None

    def _resolve_protocol_options(self) -> None:
        resolved: dict[str, msgspec.Struct] = {}
        for key, raw in self.typed_extension_protocol_options.items():
            where = f"typed_extension_protocol_options[{key}]"
            try:
                value = decode_typed(registry.UPSTREAM_OPTIONS, raw)
            except FieldError as exc:
                raise FieldError(join_path(where, exc.rel_path), exc.message) from None
            expected = registry.message_name(registry.type_url_of(type(value)) or "")
            if key not in (expected, getattr(type(value), "extension_name", expected)):
                raise FieldError(where, f"the key must be the extension name {expected}")
            resolved[key] = value
        force_setattr(self, "typed_extension_protocol_options", resolved)

    @property
    def http_protocol_options(self) -> UpstreamCommonHttpProtocolOptions:
        """The connection options in force: the typed HttpProtocolOptions' common_http_protocol_options, else the
        deprecated cluster field, else Envoy's defaults."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        common = typed.common_http_protocol_options if typed is not None else self.common_http_protocol_options
        return common if common is not None else _DEFAULT_UPSTREAM_OPTIONS

    @property
    def upstream_http_filters(self) -> list[UpstreamHttpFilter]:
        """The cluster's own upstream HTTP filters (its HttpProtocolOptions' `http_filters`; empty: the router's)."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        return typed.http_filters if typed is not None else []

    @property
    def upstream_trailers(self) -> bool:
        """Whether HTTP/1 trailers cross to and from this cluster's hosts (its HTTP/1 config's `enable_trailers`;
        Envoy's default drops them). HTTP/2 always carries them."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if typed is None:
            return False
        http1 = typed.protocol_config.http_protocol_options
        return http1 is not None and http1.enable_trailers

    @property
    def upstream_key_format(self) -> HeaderKeyFormat | None:
        """The header name case of this cluster's HTTP/1 connections (its HTTP/1 config's `header_key_format`)."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if typed is None:
            return None
        http1 = typed.protocol_config.http_protocol_options
        return http1.header_key_format if http1 is not None else None

    @property
    def upstream_protocol(self) -> tuple[str, Http2ProtocolOptions | None]:
        """How this cluster's requests pick their protocol, and the HTTP/2 options when HTTP/2 may be spoken:
        ("http1", None); ("http2", options): always; ("downstream", options): HTTP/2 iff the client's request
        came over HTTP/2; ("auto", options): ALPN decides per connection."""
        if self.http2_protocol_options is not None:
            return "http2", self.http2_protocol_options
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if typed is None:
            return "http1", None
        config = typed.protocol_config
        h2 = config.http2_protocol_options or Http2ProtocolOptions()
        if typed.use_downstream_protocol_config is not None:
            return "downstream", h2
        if typed.auto_config is not None:
            return "auto", h2
        return ("http2", h2) if config.http2_protocol_options is not None else ("http1", None)

    def _check_upstream_protocol(self) -> None:
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if typed is None:
            return
        if typed.auto_config is not None and (
                self.transport_socket is None or not hasattr(self.transport_socket.typed_config, "common_tls_context")):
            raise FieldError(f"typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}].auto_config",
                             f"ALPN configured for cluster {self.name} which has a non-ALPN transport socket "
                             "(auto_config needs a TLS transport_socket, as in Envoy 1.40)")
        if self.http2_protocol_options is not None:
            # Envoy 1.40 validates both and takes the typed options' protocol: an error, not an unused field.
            raise FieldError("http2_protocol_options", f"Envoy ignores this deprecated field when "
                             f"typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}] is set; move it to that "
                             "extension's explicit_http_config")

    @property
    def auto_sni_options(self) -> AutoSniOptions | None:
        """The upstream_http_protocol_options in force (the typed HttpProtocolOptions', else the deprecated cluster
        field's), or None when they set neither auto_sni nor auto_san_validation."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        options = typed.upstream_http_protocol_options if typed is not None else self.upstream_http_protocol_options
        if typed is None and options is None and self.cluster_type is not None:
            options = self.cluster_type.typed_config.implied_upstream_options()  # Envoy's factory fills the field in
        return options if options is not None and options.in_force else None

    @property
    def requests_per_connection_limit(self) -> int:
        """Requests an upstream connection may serve (0: no limit), from whichever of Envoy's two places has it."""
        limit = self.http_protocol_options.max_requests_per_connection
        if limit is None:
            limit = self.max_requests_per_connection
        return limit or 0

    def _check_connection_options(self) -> None:
        """Envoy's rules between the deprecated cluster fields and the typed HttpProtocolOptions."""
        typed = self.typed_extension_protocol_options.get(HTTP_PROTOCOL_OPTIONS)
        if typed is not None and self.common_http_protocol_options is not None:
            # Envoy 1.40 takes the typed options whole and silently drops the deprecated field: an error here,
            # not a setting that looks in force and is not.
            raise FieldError("common_http_protocol_options", f"Envoy ignores this deprecated field when "
                             f"typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}] is set; move it to that "
                             "extension's common_http_protocol_options")
        if typed is not None and self.upstream_http_protocol_options is not None:
            raise FieldError("upstream_http_protocol_options", f"Envoy ignores this deprecated field when "
                             f"typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS}] is set; move it to that "
                             "extension's upstream_http_protocol_options")
        if self.max_requests_per_connection is not None \
                and self.http_protocol_options.max_requests_per_connection is not None:
            raise FieldError("max_requests_per_connection", "only one of max_requests_per_connection from Cluster "
                                                            "or HttpProtocolOptions can be specified")

    def _check_endpoints(self) -> None:
        if self.cluster_type is not None:
            return  # its type's check_cluster said what it takes
        # Envoy's pairing: CLUSTER_PROVIDED is ORIGINAL_DST's policy (and a cluster_type cluster's), and only its.
        if (self.type == "ORIGINAL_DST") != (self.lb_policy == "CLUSTER_PROVIDED"):
            raise FieldError("lb_policy", f"LB policy {self.lb_policy} is not valid for cluster type {self.type}: "
                                          "ORIGINAL_DST clusters and only they use CLUSTER_PROVIDED")
        if self.type == "ORIGINAL_DST" and self.load_assignment is not None and self.load_assignment.endpoints:
            raise FieldError("load_assignment", "an ORIGINAL_DST cluster has no endpoints: it connects where each "
                                                "connection was going")
        if self.typed_dns_resolver_config is not None and self.type not in ("STRICT_DNS", "LOGICAL_DNS"):
            raise FieldError("typed_dns_resolver_config", f"only a DNS cluster resolves (Envoy ignores it on a "
                                                          f"{self.type} cluster); remove it")
        if self.original_dst_lb_config is not None and self.type != "ORIGINAL_DST":
            raise FieldError("original_dst_lb_config", "only an ORIGINAL_DST cluster reads it (Envoy ignores it on a "
                                                       f"{self.type} cluster); remove it")
        if self.load_assignment is None:
            return
        if self.grpc_only:
            if self.type != "STATIC":
                raise FieldError("type", "a cluster with pipe endpoints must be STATIC")
            return
        for i, locality in enumerate(self.load_assignment.endpoints):
            for j, lb_endpoint in enumerate(locality.lb_endpoints):
                if lb_endpoint.endpoint.address.pipe is not None:
                    raise FieldError(f"load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address.pipe",
                                     "pipe endpoints are supported only for gRPC clusters (xDS, SDS), which speak "
                                     "HTTP/2: set http2_protocol_options")
                if lb_endpoint.endpoint.address.envoy_internal_address is not None:
                    self._check_internal_endpoint(
                        f"load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address.envoy_internal_address")
        if self.type == "STATIC":
            self.load_assignment.check_ip_addresses("load_assignment", "STATIC clusters need IPs; use STRICT_DNS for names",
                                                    internal_ok=True)
        count = sum(len(locality.lb_endpoints) for locality in self.load_assignment.endpoints)
        if self.type == "LOGICAL_DNS" and count != 1:
            raise FieldError("load_assignment", f"a LOGICAL_DNS cluster needs exactly one endpoint, got {count}")


# --------------------------------------------------------------------------- bootstrap


class Node(EnvoyStruct, kw_only=True):
    """Identity of this proxy: what it tells a control plane, and its spans' node_id, zone and service name."""

    id: str = ""
    cluster: str = ""
    metadata: dict[str, Any] = {}
    locality: Locality | None = None


class Admin(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.Admin: the admin endpoint and the log of its requests.

    `access_log_path`, deprecated in v3 but in many published configs, is what Envoy
    1.40 still does with it: a file access log of admin requests in Envoy's default
    format, written besides the `access_log` entries when both are set. `profile_path`
    is where Envoy's CPU and heap profilers would write; Envoy's release build has no
    profiler (POST /cpuprofiler answers 500 "failure to start the profiler"), so it is
    never written there either, and pylon, which has no profiler endpoints, takes it as such.
    """

    access_log_path: str = ""
    profile_path: str = ""
    address: Address | None = None
    access_log: list[AccessLog] = []
    #: when set, only request targets (path and query) one of these matches are served: the others get 403
    allow_paths: list[StringMatcher] = []
    socket_options: NotSupportedYet | None = None
    #: pylon's admin endpoint (in the supervisor) is never counted against the global downstream connections limit,
    #: which Envoy's is unless this is true (a departure only when it is false)
    ignore_global_conn_limit: bool = False

    def __post_init__(self) -> None:
        if self.address is not None and self.address.socket_address is None:
            raise FieldError("address.pipe", "pylon's admin endpoint binds an IP address only (socket_address)")

    def access_logs(self) -> list[tuple[str, AccessLog]]:
        """(field path below `admin`, logger) of every admin access log: `access_log`, then `access_log_path`."""
        logs = [(f"access_log[{k}]", entry) for k, entry in enumerate(self.access_log)]
        if self.access_log_path:
            logs.append(("access_log_path", AccessLog(typed_config=FileAccessLog(path=self.access_log_path))))
        return logs


class EnvoyGrpc(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcService.EnvoyGrpc: gRPC to a static cluster of this bootstrap."""

    cluster_name: NonEmptyStr
    authority: NotSupportedYet | None = None  # grpcio's default :authority is the target; not yet settable


class GrpcService(EnvoyStruct, kw_only=True):
    """config.core.v3.GrpcService: only Envoy's own gRPC client (`envoy_grpc`)."""

    envoy_grpc: EnvoyGrpc | None = None
    google_grpc: NotSupportedYet | None = None
    timeout: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.envoy_grpc is None:
            raise FieldError("envoy_grpc", "missing required field")


class ApiConfigSource(EnvoyStruct, kw_only=True):
    """config.core.v3.ApiConfigSource: a gRPC xDS stream (state of the world, or DELTA_GRPC: incremental) to a
    static cluster: the bootstrap's ADS stream (`ads_config`), or a stream of one resource type (a ConfigSource's
    `api_config_source`)."""

    api_type: Literal["DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE", "REST", "GRPC", "DELTA_GRPC",
                      "AGGREGATED_GRPC", "AGGREGATED_DELTA_GRPC"] = "DEPRECATED_AND_UNAVAILABLE_DO_NOT_USE"
    transport_api_version: Literal["AUTO", "V2", "V3"] = "AUTO"
    grpc_services: list[GrpcService] = []
    set_node_on_first_message_only: bool = False
    cluster_names: NotSupportedYet | None = None
    refresh_delay: NotSupportedYet | None = None
    request_timeout: NotSupportedYet | None = None
    rate_limit_settings: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if self.api_type not in ("GRPC", "DELTA_GRPC"):
            raise FieldError("api_type", f"only GRPC and DELTA_GRPC are supported, got {self.api_type}")
        if self.transport_api_version == "V2":  # AUTO, the default, is V3 (the only version Envoy 1.40 speaks)
            raise FieldError("transport_api_version", "V2 xDS is no longer supported: use V3 (or leave it unset)")
        if len(self.grpc_services) != 1:
            raise FieldError("grpc_services", f"exactly one gRPC service is required, got {len(self.grpc_services)}")

    @property
    def cluster_name(self) -> str:
        """The static cluster the stream goes to."""
        envoy_grpc = self.grpc_services[0].envoy_grpc
        assert envoy_grpc is not None  # checked by GrpcService
        return envoy_grpc.cluster_name


class DynamicResources(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.Bootstrap.DynamicResources: LDS and CDS from a file or ADS."""

    lds_config: ConfigSource | None = None
    cds_config: ConfigSource | None = None
    ads_config: ApiConfigSource | None = None


class StaticResources(EnvoyStruct, kw_only=True):
    listeners: list[Listener] = []
    clusters: list[Cluster] = []
    secrets: list[Secret] = []


class RegexEngineGoogleRE2(EnvoyStruct, kw_only=True):
    """extensions.regex_engines.v3.GoogleRE2 (no fields)."""

    engine: ClassVar[str] = regex.DEFAULT_ENGINE


class RegexEngineHyperscan(EnvoyStruct, kw_only=True):
    """extensions.regex_engines.hyperscan.v3alpha.Hyperscan (no fields); RE2 syntax and meaning are kept."""

    engine: ClassVar[str] = regex.HYPERSCAN_ENGINE


class RegexEnginePythonRe(EnvoyStruct, kw_only=True):
    """pylon's Python `re` engine (no fields)."""

    engine: ClassVar[str] = regex.PYTHON_RE_ENGINE


class RegexEngineConfig(_TypedExtension, kw_only=True):
    """Bootstrap.default_regex_engine: a TypedExtensionConfig resolved through the regex engine registry."""

    category: ClassVar[str] = registry.REGEX_ENGINE


class AdminLayer(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.RuntimeLayer.AdminLayer (no fields): the layer /runtime_modify writes (see runtime.py)."""


class RuntimeLayer(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.RuntimeLayer: static and admin layers; RTDS and disk layers are not supported yet."""

    name: NonEmptyStr
    static_layer: dict[str, Any] | None = None
    disk_layer: NotSupportedYet | None = None
    admin_layer: AdminLayer | None = None
    rtds_layer: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "static_layer", "disk_layer", "admin_layer", "rtds_layer")
        if self.static_layer is not None:
            try:
                runtime.layer_entries(self.static_layer)
            except runtime.RuntimeValueError as exc:
                raise FieldError(f"static_layer.{exc.key}", exc.message) from None


class LayeredRuntime(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.LayeredRuntime: layers in order, later ones overriding (keys pylon takes: runtime.py)."""

    layers: list[RuntimeLayer] = []

    def __post_init__(self) -> None:
        names: dict[str, int] = {}
        admin: int | None = None
        for i, layer in enumerate(self.layers):
            if layer.name in names:
                raise FieldError(f"layers[{i}].name",
                                 f"duplicate layer name {layer.name!r} (already layers[{names[layer.name]}])")
            names[layer.name] = i
            if layer.admin_layer is not None:
                if admin is not None:
                    raise FieldError(f"layers[{i}].admin_layer",
                                     f"at most one admin layer may be specified (already layers[{admin}])")
                admin = i


#: Envoy's default Bootstrap.stats_flush_interval.
DEFAULT_STATS_FLUSH_INTERVAL = 5.0


class ClusterManager(EnvoyStruct, kw_only=True):
    """config.bootstrap.v3.ClusterManager: settings of the cluster manager itself. pylon has none of them yet, so
    only an empty one loads (`cluster_manager: {}`, as in Envoy's own original-dst example): Envoy's defaults."""

    local_cluster_name: NotSupportedYet | None = None
    outlier_detection: NotSupportedYet | None = None
    upstream_bind_config: NotSupportedYet | None = None
    load_stats_config: NotSupportedYet | None = None
    enable_deferred_cluster_creation: NotSupportedYet | None = None
# --------------------------------------------------------------------------- overload manager

#: The overload actions pylon takes (proxy/overload.py), by Envoy's names.
STOP_ACCEPTING_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
DISABLE_HTTP_KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"
STOP_ACCEPTING_CONNECTIONS = "envoy.overload_actions.stop_accepting_connections"
REJECT_INCOMING_CONNECTIONS = "envoy.overload_actions.reject_incoming_connections"
SHRINK_HEAP = "envoy.overload_actions.shrink_heap"
OVERLOAD_ACTIONS = (STOP_ACCEPTING_REQUESTS, DISABLE_HTTP_KEEPALIVE, STOP_ACCEPTING_CONNECTIONS,
                    REJECT_INCOMING_CONNECTIONS, SHRINK_HEAP)
#: Envoy's other actions, each refused with the reason.
_REFUSED_ACTIONS = MappingProxyType({
    "envoy.overload_actions.reduce_timeouts": "not supported yet",
    "envoy.overload_actions.reset_high_memory_stream": "not supported yet (pylon does not account memory by stream)",
})
#: The resource monitor whose pressure is the downstream connections across workers, and the runtime key that
#: still sets the same limit in Envoy 1.40 (deprecated).
GLOBAL_DOWNSTREAM_MAX_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"


class FixedHeapConfig(EnvoyStruct, kw_only=True):
    """resource_monitors.fixed_heap.v3.FixedHeapConfig: pressure is memory in use over this. Envoy's is tcmalloc's
    heap; pylon's is the resident memory of the proxy's processes (proxy/overload_monitor.py)."""

    max_heap_size_bytes: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] = 0  # a uint64; msgspec stops at int64

    def __post_init__(self) -> None:
        if self.max_heap_size_bytes <= 0:
            raise FieldError("max_heap_size_bytes", "fixed_heap: max heap size must be greater than 0")


class DownstreamConnectionsConfig(EnvoyStruct, kw_only=True):
    """resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig: a connection past this many
    open ones, counted across all workers, is closed as it is accepted."""

    max_active_downstream_connections: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class CpuUtilizationConfig(EnvoyStruct, kw_only=True):
    """resource_monitors.cpu_utilization.v3.CpuUtilizationConfig: pressure is the CPU in use, of the host
    (/proc/stat) or of the container's cgroup (v2 or v1), smoothed as Envoy's (proxy/cpu_utilization.py)."""

    mode: Literal["HOST", "CONTAINER"] = "HOST"


class ResourceMonitor(_TypedExtension, kw_only=True):
    category: ClassVar[str] = registry.RESOURCE_MONITOR


class ThresholdTrigger(EnvoyStruct, kw_only=True):
    value: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0


class ScaledTrigger(EnvoyStruct, kw_only=True):
    scaling_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    saturation_threshold: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def __post_init__(self) -> None:
        if self.scaling_threshold >= self.saturation_threshold:
            raise ValueError("scaling_threshold must be less than saturation_threshold")


class Trigger(EnvoyStruct, kw_only=True):
    """overload.v3.Trigger: a monitor's pressure turning an action on (threshold) or up by degrees (scaled)."""

    name: NonEmptyStr
    threshold: ThresholdTrigger | None = None
    scaled: ScaledTrigger | None = None

    def __post_init__(self) -> None:
        _exactly_one(self, "threshold", "scaled")


def _check_unique(names: list[str], field: str, message: Callable[[str], str]) -> None:
    """FieldError at `<field>[i].name` for the first name that came before, with `message(name)`."""
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise FieldError(f"{field}[{i}].name", message(name))
        seen.add(name)


class OverloadAction(EnvoyStruct, kw_only=True):
    name: NonEmptyStr
    triggers: Annotated[list[Trigger], msgspec.Meta(min_length=1)]
    typed_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.name in _REFUSED_ACTIONS:
            raise FieldError("name", f"{self.name}: {_REFUSED_ACTIONS[self.name]}")
        if self.name not in OVERLOAD_ACTIONS:
            raise FieldError("name", f"Unknown Overload Manager Action {self.name}")
        if self.name == SHRINK_HEAP and not hasattr(ctypes.CDLL(None), "malloc_trim"):
            raise FieldError("name", f"{self.name} releases free heap memory with glibc's malloc_trim, which this C "
                                     "library lacks; remove the action")
        if self.typed_config is not None:
            raise FieldError("typed_config", f"{self.name} takes no typed_config")
        _check_unique([t.name for t in self.triggers], "triggers",
                      lambda _: f"Duplicate trigger resource for overload action {self.name}")


class OverloadManager(EnvoyStruct, kw_only=True):
    """config.overload.v3.OverloadManager: monitors measured every refresh_interval by the supervisor, actions
    the workers take while a monitor's pressure triggers them (proxy/overload.py)."""

    refresh_interval: PositiveDuration = PositiveDuration(1)
    resource_monitors: list[ResourceMonitor] = []
    actions: list[OverloadAction] = []
    buffer_factory_config: NotSupportedYet | None = None
    loadshed_points: NotSupportedYet | None = None

    def __post_init__(self) -> None:
        if not self.resource_monitors:
            raise FieldError("resource_monitors", "value must contain at least 1 item(s)")
        names = [m.name for m in self.resource_monitors]
        _check_unique(names, "resource_monitors", lambda name: f"Duplicate resource monitor {name}")
        for i, action in enumerate(self.actions):
            for j, trigger in enumerate(action.triggers):
                if trigger.name not in names:
                    raise FieldError(f"actions[{i}].triggers[{j}].name", f"Unknown trigger resource {trigger.name} "
                                                                         f"for overload action {action.name}")

    def monitor(self, config_type: type) -> Any:
        """The typed config of the monitor of that type, or None."""
        return next((m.typed_config for m in self.resource_monitors if isinstance(m.typed_config, config_type)),
                    None)


# --------------------------------------------------------------------------- stats sinks


class SinkSocketAddress(EnvoyStruct, kw_only=True):
    """A statsd sink's address: config.core.v3.SocketAddress, sent UDP datagrams whatever its `protocol` says (as
    Envoy's statsd sink does; a listener's or cluster's SocketAddress refuses UDP)."""

    protocol: Literal["TCP", "UDP"] = "TCP"
    address: NonEmptyStr
    port_value: Port
    ipv4_compat: bool = False

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise FieldError("address", f"{self.address!r} is not an IP address") from None


class SinkAddress(EnvoyStruct, kw_only=True):
    socket_address: SinkSocketAddress


class StatsdSink(EnvoyStruct, kw_only=True):
    """config.metrics.v3.StatsdSink: counters (deltas), gauges and timers in statsd's line format to a UDP address
    at each stats flush (proxy/stats_sinks.py). `prefix` defaults to Envoy's `envoy`."""

    #: DogStatsD's lines carry the stat's tags (Envoy's tag-extracted name, then `|#tag:value,...`)
    tagged: ClassVar[bool] = False
    address: SinkAddress | None = None
    tcp_cluster_name: NotSupportedYet | None = None
    prefix: str = ""

    def __post_init__(self) -> None:
        if self.address is None:
            raise FieldError("address", "missing required field (pylon's statsd sink sends over UDP to an address)")


class DogStatsdSink(EnvoyStruct, kw_only=True):
    """config.metrics.v3.DogStatsdSink: statsd lines with DogStatsD's tags, to a UDP address."""

    tagged: ClassVar[bool] = True
    address: SinkAddress
    prefix: str = ""
    max_bytes_per_datagram: NotSupportedYet | None = None  # Envoy then packs several lines into a datagram


class StatsSink(_TypedExtension, kw_only=True):
    """Bootstrap.stats_sinks[]: statsd and dog_statsd; another sink's @type (metrics_service, hystrix, wasm,
    open_telemetry) is an unknown stats sink type, named in the error."""

    category: ClassVar[str] = registry.STATS_SINK


# --------------------------------------------------------------------------- bootstrap extensions

INTERNAL_LISTENER_EXTENSION = "envoy.extensions.bootstrap.internal_listener.v3.InternalListener"

#: Envoy's bootstrap extensions that its docs configure and pylon does not have, each with why.
_BOOTSTRAP_EXTENSIONS = MappingProxyType({
    "envoy.extensions.wasm.v3.WasmService": "pylon runs no Wasm",
    "envoy.extensions.bootstrap.reverse_tunnel.downstream_socket_interface.v3."
    "DownstreamReverseConnectionSocketInterface": "pylon has no reverse tunnels",
    "envoy.extensions.bootstrap.reverse_tunnel.upstream_socket_interface.v3.UpstreamReverseConnectionSocketInterface":
        "pylon has no reverse tunnels",
    "envoy.extensions.vcl.v3alpha.VclSocketInterface": "pylon has no VPP/VCL socket interface",
})


class InternalListenerExtension(EnvoyStruct, kw_only=True):
    """extensions.bootstrap.internal_listener.v3.InternalListener: internal listeners exist only with it (Envoy
    refuses an `internal_listener` without it). `buffer_size_kb` (1-8192, Envoy's default 1024): how much an
    internal connection's side holds unread before its writer is told to stop (proxy/user_space.py)."""

    buffer_size_kb: Annotated[int, msgspec.Meta(ge=1, le=8192)] | None = None

    @property
    def buffer_size(self) -> int:
        """In bytes."""
        return (1024 if self.buffer_size_kb is None else self.buffer_size_kb) * 1024


class IoUringOptions(EnvoyStruct, kw_only=True):
    """extensions.network.socket_interface.v3.IoUringOptions (its settings' ranges; see DefaultSocketInterface)."""

    io_uring_size: UInt32 | None = None
    enable_submission_queue_polling: bool = False
    read_buffer_size: UInt32 | None = None
    write_timeout_ms: UInt32 | None = None


class DefaultSocketInterface(EnvoyStruct, kw_only=True):
    """extensions.network.socket_interface.v3.DefaultSocketInterface: the kernel's sockets, which are pylon's
    anyway. With `io_uring_options` Envoy uses io_uring where its build and kernel support it, and falls back to
    these sockets silently where not; pylon's workers run on uvloop's epoll, so they always take the fallback, and
    say so when they start (proxy/server.py)."""

    io_uring_options: IoUringOptions | None = None


class BootstrapExtension(EnvoyStruct, kw_only=True):
    """Bootstrap.bootstrap_extensions[] (core.v3.TypedExtensionConfig). Envoy's published examples use none; its
    docs configure the internal listener (`InternalListenerExtension`, decoded into `typed_config`) and the ones in
    `_BOOTSTRAP_EXTENSIONS`, which pylon does not have: an error naming the @type and why (an unknown @type too)."""

    name: NonEmptyStr
    typed_config: Any

    def __post_init__(self) -> None:
        raw = self.typed_config
        if isinstance(raw, dict) and isinstance(raw.get("@type"), str):
            name = registry.message_name(raw["@type"])
            if name not in TYPED_STRUCTS and registry.lookup(registry.BOOTSTRAP_EXTENSION, name) is None:
                reason = _BOOTSTRAP_EXTENSIONS.get(name, "not a bootstrap extension pylon knows")
                raise FieldError("typed_config.@type", f"bootstrap extension {raw['@type']} is not supported: {reason}")
        _resolve_typed_field(self, "typed_config", registry.BOOTSTRAP_EXTENSION)


class Bootstrap(EnvoyStruct, kw_only=True):
    node: Node | None = None
    admin: Admin | None = None
    static_resources: StaticResources = msgspec.field(default_factory=StaticResources)
    dynamic_resources: DynamicResources | None = None
    cluster_manager: ClusterManager | None = None
    default_regex_engine: RegexEngineConfig | None = None
    # How often the supervisor gathers the workers' stats into the merged view (Envoy: how often
    # stats are flushed to sinks); None: Envoy's 5 s. `stats_flush_on_admin` (only `true` may be
    # set): only when the admin endpoint is asked, no timer.
    stats_flush_interval: StatsFlushInterval | None = None
    stats_flush_on_admin: bool | None = None
    layered_runtime: LayeredRuntime | None = None
    overload_manager: OverloadManager | None = None
    #: where the stats go at each stats_flush_interval (statsd over UDP)
    stats_sinks: list[StatsSink] = []
    bootstrap_extensions: list[BootstrapExtension] = []
    #: the socket interface every socket uses. pylon has Envoy's default one (the kernel's sockets) only; a name
    #: that is no socket interface leaves the default in place, as Envoy's server does (it looks the name up and
    #: keeps its default when nothing answers to it; its validate mode accepts any name)
    default_socket_interface: str = ""

    def __post_init__(self) -> None:
        if self.stats_flush_on_admin is False:
            raise FieldError("stats_flush_on_admin", "must be true when set (leave it out to gather stats on a timer)")
        if self.stats_flush_on_admin and self.stats_flush_interval is not None:
            raise FieldError("stats_flush_interval",
                             "only one of stats_flush_interval or stats_flush_on_admin may be set")
        if self.layered_runtime is not None:
            self._check_runtime_keys(self.layered_runtime)
        if self.overload_manager is not None:
            self._check_overload(self.overload_manager)
        if self.internal_listener is None:
            for i, listener in enumerate(self.static_resources.listeners):
                if listener.internal_listener is not None:
                    raise FieldError(f"static_resources.listeners[{i}].internal_listener",
                                     f"error adding listener named {listener.name!r}: InternalListener bootstrap "
                                     "extension is mandatory")  # Envoy's words
        if self.dynamic_resources is not None and self.dynamic_resources.cds_config is not None:
            node = self.node
            if node is None or not node.id or not node.cluster:
                # Envoy's rule for CDS: the node names itself to whoever serves the clusters.
                raise FieldError("node", "node id and cluster are required with dynamic_resources.cds_config")

    def _check_overload(self, overload: OverloadManager) -> None:
        """stop_accepting_connections pauses the workers' own accepting; a balanced listener is accepted by the
        supervisor, which does not pause."""
        for i, action in enumerate(overload.actions):
            if action.name != STOP_ACCEPTING_CONNECTIONS:
                continue
            for listener in self.static_resources.listeners:
                if listener.connection_balance_config is not None:
                    raise FieldError(f"overload_manager.actions[{i}].name",
                                     f"{action.name} with a listener's connection_balance_config (listener "
                                     f"{listener.name!r}) is not supported yet: its connections are accepted by "
                                     "pylon's supervisor, which does not stop")

    def _check_runtime_keys(self, layered: LayeredRuntime) -> None:
        listener_names = [listener.name for listener in self.static_resources.listeners]
        has_lds = self.dynamic_resources is not None and self.dynamic_resources.lds_config is not None
        for i, layer in enumerate(layered.layers):
            for key, value in runtime.layer_entries(layer.static_layer or {}).items():
                try:
                    runtime.check_entry(key, value, listener_names, has_lds)
                except runtime.RuntimeValueError as exc:
                    raise FieldError(f"layered_runtime.layers[{i}].static_layer.{key}", exc.message) from None

    @property
    def asks_io_uring(self) -> bool:
        """Whether a DefaultSocketInterface extension asks for io_uring (which pylon never uses: see there)."""
        return any(isinstance(e.typed_config, DefaultSocketInterface) and e.typed_config.io_uring_options is not None
                   for e in self.bootstrap_extensions)

    @property
    def internal_listener(self) -> InternalListenerExtension | None:
        """The internal listener bootstrap extension, if configured (internal listeners need it)."""
        for extension in self.bootstrap_extensions:
            if isinstance(extension.typed_config, InternalListenerExtension):
                return extension.typed_config
        return None

    @property
    def stats_refresh_interval(self) -> float | None:
        """Seconds between the supervisor's stats refreshes; None: only when the admin endpoint asks."""
        if self.stats_flush_on_admin:
            return None
        return DEFAULT_STATS_FLUSH_INTERVAL if self.stats_flush_interval is None else float(self.stats_flush_interval)

    @property
    def runtime(self) -> runtime.Runtime:
        """The layered runtime's values (checked at load; empty without `layered_runtime`)."""
        return runtime.Runtime.from_layers(self.layered_runtime.layers if self.layered_runtime is not None else [])

    @property
    def regex_engine_name(self) -> str | None:
        """The regex engine the bootstrap chooses (None: Envoy's default, Google RE2)."""
        chosen = self.default_regex_engine
        return None if chosen is None else chosen.typed_config.engine


# --------------------------------------------------------------------------- core extensions by name

_CORE_EXTENSIONS: tuple[tuple[str, str, type], ...] = (
    (registry.BOOTSTRAP_EXTENSION, registry.TYPE_URL_PREFIX + INTERNAL_LISTENER_EXTENSION, InternalListenerExtension),
    (registry.BOOTSTRAP_EXTENSION,
     "type.googleapis.com/envoy.extensions.network.socket_interface.v3.DefaultSocketInterface",
     DefaultSocketInterface),
    (
        registry.NETWORK_FILTER,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        HttpConnectionManager,
    ),
    (registry.NETWORK_FILTER, "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy", TcpProxy),
    (registry.HTTP_FILTER, "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", Router),
    (registry.UPSTREAM_HTTP_FILTER, "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec",
     UpstreamCodec),
    (registry.STATS_SINK, "type.googleapis.com/envoy.config.metrics.v3.StatsdSink", StatsdSink),
    (registry.STATS_SINK, "type.googleapis.com/envoy.config.metrics.v3.DogStatsdSink", DogStatsdSink),
    (registry.RESOURCE_MONITOR, "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
     FixedHeapConfig),
    (registry.RESOURCE_MONITOR,
     "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
     DownstreamConnectionsConfig),
    (registry.RESOURCE_MONITOR,
     "type.googleapis.com/envoy.extensions.resource_monitors.cpu_utilization.v3.CpuUtilizationConfig",
     CpuUtilizationConfig),
    (
        registry.ACCESS_LOGGER,
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        FileAccessLog,
    ),
    (
        registry.ACCESS_LOGGER,
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        StdoutAccessLog,
    ),
    (
        registry.ACCESS_LOGGER,
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog",
        StderrAccessLog,
    ),
    (
        registry.DOWNSTREAM_TRANSPORT_SOCKET,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        DownstreamTlsContext,
    ),
    (
        registry.UPSTREAM_TRANSPORT_SOCKET,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        UpstreamTlsContext,
    ),
    (
        registry.DOWNSTREAM_TRANSPORT_SOCKET,
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        RawBuffer,
    ),
    (
        registry.UPSTREAM_TRANSPORT_SOCKET,
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer",
        RawBuffer,
    ),
    (
        registry.UPSTREAM_OPTIONS,
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        UpstreamHttpProtocolOptions,
    ),
    (registry.REGEX_ENGINE, "type.googleapis.com/envoy.extensions.regex_engines.v3.GoogleRE2", RegexEngineGoogleRE2),
    (
        registry.REGEX_ENGINE,
        "type.googleapis.com/envoy.extensions.regex_engines.hyperscan.v3alpha.Hyperscan",
        RegexEngineHyperscan,
    ),
    (registry.REGEX_ENGINE, "type.googleapis.com/pylon.extensions.regex_engines.v1.PythonRe", RegexEnginePythonRe),
    (
        registry.STATEFUL_HEADER_FORMATTER,
        "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig",
        PreserveCaseFormatterConfig,
    ),
    (registry.ROUTE_MATCH_ACTION, "type.googleapis.com/envoy.config.route.v3.Route", MatcherRoute),
    (registry.ROUTE_MATCH_ACTION, "type.googleapis.com/envoy.config.route.v3.RouteList", RouteList),
    (registry.FILTER_CHAIN_MATCH_ACTION, "type.googleapis.com/google.protobuf.StringValue", StringValue),
    (registry.HTTP_FILTER_PER_ROUTE, "type.googleapis.com/envoy.config.route.v3.FilterConfig", FilterConfig),
)

for _category, _type_url, _struct_type in _CORE_EXTENSIONS:
    registry.register_typed(_category, _type_url, _struct_type)
