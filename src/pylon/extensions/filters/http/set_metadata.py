"""envoy.filters.http.set_metadata: fixed values put into the stream's dynamic metadata when a request decodes.

Why: the values then steer what reads dynamic metadata - the subset load balancer (`envoy.lb`), the access log's
and header formatters' %DYNAMIC_METADATA(...)% - without a script. As Envoy 1.40's filter does, each entry in
order: a namespace not yet in the stream's metadata takes the entry's `value`; one that is there is merged with
it only under `allow_overwrite` (StructUtil::update: structs recursively, lists appended, scalars replaced;
proxy/dynamic_metadata.py), else left alone and counted in `http.<prefix>.set_metadata.overwrite_denied`. The
deprecated `metadata_namespace` + `value` pair is one more entry, first, that may always merge.

`typed_value` (an Any) goes to the stream's typed metadata whole (replaced under `allow_overwrite`, else counted
the same way), where Envoy keeps it too: neither Envoy's formatters nor anything in pylon reads it, so it is
visible only through that counter. Departure: Envoy parses the Any and refuses an @type it does not know; pylon
keeps it as written. An entry with both `value` and `typed_value` (Envoy then silently takes `value`) or with
neither (Envoy warns and skips it) is refused, as is a deprecated `value` without its namespace.
"""

from __future__ import annotations

from typing import Any

import msgspec

from pylon.config import registry
from pylon.config.envoy import EnvoyStruct
from pylon.proxy import dynamic_metadata
from pylon.proxy.filters.http import register_filter

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config"


class MetadataEntry(EnvoyStruct, kw_only=True):
    """extensions.filters.http.set_metadata.v3.Metadata."""

    metadata_namespace: str
    allow_overwrite: bool = False
    value: dict[str, Any] | None = None
    typed_value: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.metadata_namespace:
            raise ValueError("metadata_namespace: must not be empty")
        if (self.value is None) == (self.typed_value is None):
            raise ValueError("exactly one of value, typed_value must be set")
        if self.typed_value is not None and not isinstance(self.typed_value.get("@type"), str):
            raise ValueError("typed_value: an Any needs its @type")


class SetMetadataConfig(EnvoyStruct, kw_only=True):
    """extensions.filters.http.set_metadata.v3.Config."""

    metadata_namespace: str = ""
    value: dict[str, Any] | None = None
    metadata: list[MetadataEntry] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.value is not None and not self.metadata_namespace:
            raise ValueError("value: the deprecated value needs its metadata_namespace")

    def entries(self) -> list[MetadataEntry]:
        """Every entry in Envoy's order: the deprecated pair (always allowed to merge) first."""
        own = [MetadataEntry(metadata_namespace=self.metadata_namespace, allow_overwrite=True, value=self.value)] \
            if self.value is not None else []
        return own + self.metadata


class SetMetadataFilter:
    """One HCM's set_metadata filter in one worker."""

    def __init__(self, name: str, config: SetMetadataConfig, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        entries = config.entries()
        self.untyped = [(e.metadata_namespace, e.allow_overwrite, e.value) for e in entries if e.value is not None]
        self.typed = [(e.metadata_namespace, e.allow_overwrite, e.typed_value) for e in entries
                      if e.typed_value is not None]
        self.overwrite_denied = stats.counter(f"http.{stat_prefix}.set_metadata.overwrite_denied")

    def decode_headers(self, stream: Any) -> bool:
        if self.untyped:
            namespaces = stream.dynamic_metadata_namespaces()
            for namespace, allow_overwrite, value in self.untyped:
                existing = namespaces.get(namespace)
                if existing is None:
                    namespaces[namespace] = dynamic_metadata.struct_copy(value)
                elif allow_overwrite:
                    dynamic_metadata.struct_update(existing, value)
                else:
                    self.overwrite_denied.inc()
        if self.typed:
            if stream.typed_dynamic_metadata is None:
                stream.typed_dynamic_metadata = {}
            typed = stream.typed_dynamic_metadata
            for namespace, allow_overwrite, value in self.typed:
                if namespace not in typed or allow_overwrite:
                    typed[namespace] = value
                else:
                    self.overwrite_denied.inc()
        return True


registry.register_typed(registry.HTTP_FILTER, TYPE_URL, SetMetadataConfig)
register_filter(SetMetadataConfig, SetMetadataFilter)
