"""Envoy's layered runtime (`Bootstrap.layered_runtime`), key by key.

Why a module of its own: runtime keys are free-form. Envoy reads whichever key
a component asks for and keeps every other key without complaint, so a typo or
a key for a feature that is not there loads silently. The config model cannot
state with field types which keys exist, so pylon's rule — a field that parses
does what Envoy does, or is an error naming its field path — is kept here, in
one table: the keys pylon implements, each with its value rule and where it
takes effect, and for every other key the reason it is refused, reported at
`layered_runtime.layers[i].static_layer.<key>`.

The layers (the Structs are `RuntimeLayer` and `LayeredRuntime` in `envoy.py`):
- `static_layer`: values from the bootstrap. Nested objects are flattened into
  dotted keys (`{re2: {max_program_size: {error_level: 1000}}}` is
  `re2.max_program_size.error_level`), as Envoy does; lists and null are not
  runtime values (Envoy: "Invalid runtime entry value for <key>").
- `admin_layer`: empty at start; in Envoy `/runtime_modify` writes to it. pylon
  has no `/runtime_modify` yet (its admin endpoint answers 503 and says so), so
  this layer stays empty, which is what it is at start in Envoy too.
- `rtds_layer`, `disk_layer`: refused by name (not supported yet).
Later layers override earlier ones. Values are read once, when a process loads
its bootstrap, which is when Envoy reads the implemented key too (RE2 limits
apply when a regex is compiled).

Keys pylon implements:
- `re2.max_program_size.error_level` (a non-negative integer): the largest RE2
  program a regex of the Google RE2 engine may compile to (Envoy's default is
  100; see `regex/re2_engine.py`).
- `overload.global_downstream_max_connections` (a non-negative integer): the
  open downstream connections across workers past which a new one is closed as
  it is accepted, as the overload manager's global_downstream_max_connections
  monitor does (which wins when both are set; see `proxy/overload.py`).
- `envoy.resource_limits.listener.<name>.connection_limit` where no listener can
  be called <name> (no static listener has that name and there is no LDS): it
  limits nothing in Envoy either. Envoy's front-proxy example ships one of these,
  for `example_listener_name`. A limit that names a listener is refused (not
  supported yet).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

#: The RE2 program size limit (Envoy's `re2.max_program_size.error_level`).
RE2_MAX_PROGRAM_SIZE = "re2.max_program_size.error_level"
#: The downstream connections limit across workers: deprecated in Envoy 1.40 for the overload manager's
#: global_downstream_max_connections monitor, and still honoured by it (observed).
GLOBAL_DOWNSTREAM_MAX_CONNECTIONS = "overload.global_downstream_max_connections"

_LISTENER_CONNECTION_LIMIT = re.compile(r"^envoy\.resource_limits\.listener\.(?P<name>.+)\.connection_limit$")
_FEATURE_FLAG = re.compile(r"^envoy\.(reloadable|restart)_features\.")

_NOT_SUPPORTED_YET = {
    "re2.max_program_size.warn_level":
        "not supported yet: pylon enforces re2.max_program_size.error_level only",
}


class RuntimeValueError(ValueError):
    """A static layer entry that is no runtime value, or a key pylon refuses; `key` is the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def flatten(static_layer: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every entry of a static layer, nested objects flattened as Envoy does."""
    for name, value in static_layer.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from flatten(value, key + ".")
        elif value is None or isinstance(value, list):
            raise RuntimeValueError(key, f"invalid runtime entry value {value!r}: a runtime value is a string, "
                                         "a number, a boolean or an object of them (Envoy refuses lists and null)")
        else:
            yield key, value


def layer_entries(static_layer: dict[str, Any]) -> dict[str, Any]:
    """A static layer's entries by dotted key; one key set twice (nested and dotted) is an error."""
    entries: dict[str, Any] = {}
    for key, value in flatten(static_layer):
        if key in entries:
            raise RuntimeValueError(key, "set twice in this layer (as a dotted key and as nested objects)")
        entries[key] = value
    return entries


def check_entry(key: str, value: Any, listener_names: Iterable[str], has_lds: bool) -> None:
    """RuntimeValueError unless pylon does with `key` what Envoy does."""
    if key in (RE2_MAX_PROGRAM_SIZE, GLOBAL_DOWNSTREAM_MAX_CONNECTIONS):
        _non_negative_int(key, value)
        return
    limit = _LISTENER_CONNECTION_LIMIT.match(key)
    if limit is not None:
        if has_lds:
            raise RuntimeValueError(key, "per-listener connection limits are not supported yet (and with LDS "
                                         f"a listener called {limit['name']!r} may arrive)")
        if limit["name"] in set(listener_names):
            raise RuntimeValueError(key, f"per-listener connection limits are not supported yet (listener "
                                         f"{limit['name']!r} is in this config)")
        return  # names no listener: it limits nothing, in Envoy either
    if key in _NOT_SUPPORTED_YET:
        raise RuntimeValueError(key, _NOT_SUPPORTED_YET[key])
    if _FEATURE_FLAG.match(key):
        raise RuntimeValueError(key, "Envoy feature flags are not supported: pylon behaves as Envoy 1.40 does "
                                     "with every flag at its default")
    raise RuntimeValueError(key, f"not a runtime key pylon supports (it implements {RE2_MAX_PROGRAM_SIZE} and "
                                 f"{GLOBAL_DOWNSTREAM_MAX_CONNECTIONS})")


def _non_negative_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    else:
        number = None
    if number is None or number < 0:
        raise RuntimeValueError(key, f"must be a non-negative integer, got {value!r}")
    return number


class Runtime:
    """The runtime a bootstrap configures: its layers in order and each key's final value.

    Build with `from_layers`; the entries were checked when the bootstrap loaded.
    """

    def __init__(self, layers: list[tuple[str, dict[str, Any]]]) -> None:
        self.layers = layers  # (name, entries by dotted key); the admin layer has none
        self.values: dict[str, Any] = {}
        for _name, entries in layers:
            self.values.update(entries)

    @classmethod
    def from_layers(cls, layers: Iterable[Any]) -> Runtime:
        """From `RuntimeLayer`s (static and admin layers; the model refuses the others)."""
        return cls([(layer.name, layer_entries(layer.static_layer) if layer.static_layer is not None else {})
                    for layer in layers])

    @property
    def re2_max_program_size(self) -> int | None:
        """`re2.max_program_size.error_level` (None: the engine's default, Envoy's 100)."""
        value = self.values.get(RE2_MAX_PROGRAM_SIZE)
        return None if value is None else _non_negative_int(RE2_MAX_PROGRAM_SIZE, value)

    @property
    def global_downstream_max_connections(self) -> int | None:
        """`overload.global_downstream_max_connections` (None: unset, no limit from the runtime)."""
        value = self.values.get(GLOBAL_DOWNSTREAM_MAX_CONNECTIONS)
        return None if value is None else _non_negative_int(GLOBAL_DOWNSTREAM_MAX_CONNECTIONS, value)

    def admin_view(self) -> dict[str, Any]:
        """Envoy's `/runtime` JSON: the layer names, and each key's value in every layer ("" where unset) and final."""
        entries = {
            key: {"layer_values": [_text(entries[key]) if key in entries else "" for _name, entries in self.layers],
                  "final_value": _text(self.values[key])}
            for key in sorted(self.values)
        }
        return {"entries": entries, "layers": [name for name, _entries in self.layers]}


def _text(value: Any) -> str:
    """A runtime value as Envoy's /runtime prints it (booleans in lower case; 10000 and 2.0 as written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
