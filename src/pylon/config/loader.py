"""Load an Envoy v3 bootstrap (YAML or JSON) into `envoy.Bootstrap`, or fail with one clear error.

Loading is pure: it reads the config file and the files DataSources name, and
nothing else, so a config is either fully valid before anything starts or
rejected with `ConfigError` naming the file and the field path.

Beyond what the Structs check field by field, the loader checks what spans
objects: names referenced by routes and tcp_proxy exist, names are unique, no
two listeners bind the same address, and every DataSource can be read.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import msgspec
import yaml

from pylon.config import registry
from pylon.config.datasource import DataSource, DataSourceError, read_bytes
from pylon.config.constraints import Duration, format_duration
from pylon.config.envoy import (
    ApiConfigSource, Bootstrap, Cluster, ConfigSource, HttpConnectionManager, Listener, RouteConfiguration,
    SdsSecretConfig, Shared, TcpProxy, convert,
)
from pylon.config.errors import ConfigError, join_path, split_validation_error
from pylon.config.secrets import (
    cluster_secret_refs,
    listener_secret_refs,
    source_conflicts,
    static_secret_problems,
    tls_context,
)

CONFIG_YAML_SOURCE = "<config-yaml>"

#: Deepest nesting of objects and lists Envoy parses (protobuf's JSON parser stops at 100 levels).
MAX_NESTING = 100


def load_bootstrap(config_path: str | None = None, config_yaml: str | None = None) -> Bootstrap:
    """The bootstrap in `config_path` (YAML or JSON by content), with `config_yaml` deep-merged over it.

    Like Envoy's `-c` / `--config-yaml`: either or both may be given; when both
    are, the YAML string's values override the file's (objects merge key by key,
    lists are appended, as protobuf's MergeFrom does).
    """
    if config_path is None and config_yaml is None:
        raise ConfigError("<none>", "", "no config given: pass a config file (-c) or --config-yaml")
    data: dict[str, Any] = {}
    if config_path is not None:
        try:
            with open(config_path, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(config_path, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
        data = parse_document(text, config_path)
    if config_yaml is not None:
        data = merge_configs(data, parse_document(config_yaml, CONFIG_YAML_SOURCE))
    if config_path is None:
        source = CONFIG_YAML_SOURCE
    elif config_yaml is None:
        source = config_path
    else:
        source = f"{config_path} (merged with --config-yaml)"
    return parse_bootstrap(data, source)


def parse_document(text: str, source: str) -> dict[str, Any]:
    """The top-level mapping of a YAML or JSON document; duplicate keys are errors (YAML keeps the last)."""
    try:
        data = json.loads(text, object_pairs_hook=_json_object) if text.lstrip().startswith("{") else _NOT_JSON
    except json.JSONDecodeError:
        data = _NOT_JSON  # e.g. a YAML flow mapping "{admin: {...}}": let YAML parse it
    except _DuplicateKey as exc:
        raise ConfigError(source, "", str(exc)) from None
    except RecursionError:
        raise ConfigError(source, "", f"nested more than {MAX_NESTING} levels deep") from None
    if data is _NOT_JSON:
        try:
            data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            raise ConfigError(source, "", _describe_yaml_error(exc)) from None
        except RecursionError:
            raise ConfigError(source, "", f"nested more than {MAX_NESTING} levels deep") from None
    if data is None:
        raise ConfigError(source, "", "the config is empty")
    if not isinstance(data, dict):
        raise ConfigError(source, "", f"expected a mapping at the top level, got {type(data).__name__}")
    return data


def merge_configs(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base` with protobuf MergeFrom semantics."""
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = merge_configs(old, value)
        elif isinstance(old, list) and isinstance(value, list):
            merged[key] = old + value
        else:
            merged[key] = value
    return merged


def parse_bootstrap(data: dict[str, Any], source: str) -> Bootstrap:
    """Decode and validate an already-parsed bootstrap; `source` names it in errors."""
    for path, message in _document_problems(data):
        raise ConfigError(source, path, message)
    try:
        bootstrap = convert(data, Bootstrap)
    except msgspec.ValidationError as exc:
        path, message = split_validation_error(exc)
        raise ConfigError(source, path, message) from None
    for path, message in _cross_reference_problems(bootstrap):
        raise ConfigError(source, path, message)
    for path, value in walk(bootstrap):
        if isinstance(value, DataSource):
            try:
                read_bytes(value)
            except DataSourceError as exc:
                raise ConfigError(source, path, str(exc)) from None
    return bootstrap


def _document_problems(data: Any) -> Iterator[tuple[str, str]]:
    """What Envoy's JSON parser refuses before any field is read: nesting deeper than
    MAX_NESTING, and strings that are not Unicode text (a lone surrogate from a `\\udcff` escape).

    Checked iteratively up front, so nothing recursive (decoding, `walk`) meets a
    deep document and nothing that encodes text meets a surrogate. Paths are kept
    as (parent, key) links and spelled out only for an error: this walk sees every node.
    """
    stack: list[tuple[Any, int, Any]] = [(data, 1, None)]
    while stack:
        node, depth, trail = stack.pop()
        if isinstance(node, str):
            if not _is_text(node):
                yield _spell(trail), f"{node!r} is not valid Unicode text (a lone surrogate)"
            continue
        if isinstance(node, dict):
            items: Any = node.items()
            for key in node:
                if isinstance(key, str) and not _is_text(key):
                    yield _spell(trail), f"the key {key!r} is not valid Unicode text (a lone surrogate)"
        elif isinstance(node, list):
            items = enumerate(node)
        else:
            continue
        if depth > MAX_NESTING:
            yield _spell(trail), f"nested more than {MAX_NESTING} levels deep"
            return
        stack.extend((child, depth + 1, (trail, key)) for key, child in items)


def _spell(trail: Any) -> str:
    """`a.b[0]` from the (parent, key) links of `_document_problems`."""
    keys = []
    while trail is not None:
        trail, key = trail
        keys.append(key)
    path = ""
    for key in reversed(keys):
        path = f"{path}[{key}]" if isinstance(key, int) else join_path(path, str(key))
    return path


def _is_text(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of a decoded config with its field path, parents before children."""
    yield path, value
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            yield from walk(getattr(value, name), join_path(path, name))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}[{key}]")


def _cross_reference_problems(bootstrap: Bootstrap) -> Iterator[tuple[str, str]]:
    resources = bootstrap.static_resources
    yield from _duplicates("static_resources.clusters", [c.name for c in resources.clusters], "cluster")
    yield from _duplicates("static_resources.listeners", [l.name for l in resources.listeners], "listener")
    yield from _shared_addresses(resources.listeners)
    yield from _grpc_problems(bootstrap)
    yield from _secret_problems(bootstrap)
    yield from shared_name_problems(shared_configs(resources.listeners, "static_resources.listeners",
                                                   resources.clusters, "static_resources.clusters"))
    dynamic = bootstrap.dynamic_resources
    if dynamic is not None and dynamic.cds_config is not None:
        return  # clusters come and go at run time: a route to a missing one answers 503 (NC), as in Envoy
    clusters = {cluster.name for cluster in resources.clusters}
    for i, listener in enumerate(resources.listeners):
        for rel, chain in listener.all_filter_chains():
            for k, network_filter in enumerate(chain.filters):
                base = f"static_resources.listeners[{i}].{rel}.filters[{k}].typed_config"
                config = network_filter.typed_config
                if isinstance(config, TcpProxy):
                    for rel_path, name in config.cluster_references():
                        if name not in clusters:
                            yield f"{base}.{rel_path}", f"unknown cluster {name!r}"
                elif isinstance(config, HttpConnectionManager):
                    for rel_route, route_config in config.inline_route_configs():
                        if route_config.validate_clusters is not False:
                            # Envoy checks an inline route table's clusters unless validate_clusters is false
                            # (then a route to an unknown cluster answers 503 NC).
                            yield from _route_cluster_problems(route_config, f"{base}.{rel_route}", clusters)


def _route_cluster_problems(route_config: RouteConfiguration, base: str, clusters: set[str]
                            ) -> Iterator[tuple[str, str]]:
    for path, name in route_cluster_references(route_config):
        if name not in clusters:
            yield join_path(base, path), f"unknown cluster {name!r}"


def route_cluster_references(route_config: RouteConfiguration) -> Iterator[tuple[str, str]]:
    """(field path below the route configuration, cluster name) for every cluster its routes send to."""
    for v, vhost in enumerate(route_config.virtual_hosts):
        for r, route in enumerate(vhost.routes):
            action = route.route
            where = f"virtual_hosts[{v}].routes[{r}].route"
            if action is None:
                continue
            if action.cluster is not None:
                yield f"{where}.cluster", action.cluster
            if action.weighted_clusters is not None:
                for w, weighted in enumerate(action.weighted_clusters.clusters):
                    yield f"{where}.weighted_clusters.clusters[{w}].name", weighted.name
            for m, mirror in enumerate(action.request_mirror_policies):
                if mirror.cluster:  # Envoy checks a named shadow cluster too (a cluster_header one is per request)
                    yield f"{where}.request_mirror_policies[{m}].cluster", mirror.cluster


def http_connection_managers(bootstrap: Bootstrap) -> Iterator[tuple[str, HttpConnectionManager]]:
    """(field path, config) of every HTTP connection manager of the static listeners."""
    return listener_hcms(bootstrap.static_resources.listeners, "static_resources.listeners")


def listener_hcms(listeners: Iterable[Listener], base: str) -> Iterator[tuple[str, HttpConnectionManager]]:
    """(field path, config) of every HTTP connection manager of `listeners`, paths below `base`."""
    for i, listener in enumerate(listeners):
        for rel, chain in listener.all_filter_chains():
            for k, network_filter in enumerate(chain.filters):
                if isinstance(network_filter.typed_config, HttpConnectionManager):
                    yield f"{base}[{i}].{rel}.filters[{k}].typed_config", network_filter.typed_config


def shared_configs(listeners: Iterable[Listener], listener_base: str, clusters: Iterable[Cluster],
                   cluster_base: str) -> Iterator[tuple[str, Shared]]:
    """(field path, config) of every config shared by a key (`Shared`) in custom cluster types, network
    filters ahead of a terminal one and HTTP filters, where Envoy's extensions name them; only those configs are
    walked."""
    for i, cluster in enumerate(clusters):
        if cluster.cluster_type is not None:
            yield from _shared_in(cluster.cluster_type.typed_config, f"{cluster_base}[{i}].cluster_type.typed_config")
    for i, listener in enumerate(listeners):
        for rel, chain in listener.all_filter_chains():
            for k, network_filter in enumerate(chain.filters[:-1]):
                yield from _shared_in(network_filter.typed_config, f"{listener_base}[{i}].{rel}.filters[{k}].typed_config")
    for path, hcm in listener_hcms(listeners, listener_base):
        for k, http_filter in enumerate(hcm.http_filters):
            yield from _shared_in(http_filter.typed_config, f"{path}.http_filters[{k}].typed_config")


def _shared_in(config: Any, base: str) -> Iterator[tuple[str, Shared]]:
    for path, value in walk(config, base):
        if isinstance(value, Shared):
            yield path, value


def shared_name_problems(found: Iterable[tuple[str, Shared]]) -> Iterator[tuple[str, str]]:
    """Envoy's refusal of a key given two different configs, at each later one that differs from the first."""
    first: dict[tuple[type, str], object] = {}
    for path, config in found:
        key, settings = config.sharing()
        if first.setdefault((type(config), key), settings) != settings:
            yield path, config.conflict.format(name=key)


def grpc_clusters(bootstrap: Bootstrap) -> frozenset[str]:
    """The static clusters only grpcio talks to (xDS, SDS): those with pipe endpoints (no data-plane runtime), and
    those a gRPC config source of the bootstrap names (grpcio's channel, not the data plane's pools, holds their
    connections), so routes and tcp_proxy may not use them. Other HTTP/2 clusters are the data plane's."""
    names = {c.name for c in bootstrap.static_resources.clusters if c.grpc_only}
    dynamic = bootstrap.dynamic_resources
    if dynamic is not None and dynamic.ads_config is not None:
        names.add(dynamic.ads_config.cluster_name)
    names.update(source.api_config_source.cluster_name for _, source in bootstrap_config_sources(bootstrap)
                 if source.api_config_source is not None)
    return frozenset(names)


def bootstrap_config_sources(bootstrap: Bootstrap) -> Iterator[tuple[str, ConfigSource]]:
    """(field path, config source) of every dynamic resource the bootstrap subscribes to: LDS, CDS, its HCMs' RDS
    and the SDS secrets of its listeners and clusters."""
    dynamic = bootstrap.dynamic_resources
    for name in ("lds_config", "cds_config"):
        source = getattr(dynamic, name) if dynamic is not None else None
        if source is not None:
            yield f"dynamic_resources.{name}", source
    for path, hcm in http_connection_managers(bootstrap):
        if hcm.rds is not None:
            yield f"{path}.rds.config_source", hcm.rds.config_source
    for path, ref in bootstrap_secret_refs(bootstrap):
        if ref.sds_config is not None:
            yield f"{path}.sds_config", ref.sds_config
    for i, cluster in enumerate(bootstrap.static_resources.clusters):
        if cluster.eds_cluster_config is not None:
            yield f"static_resources.clusters[{i}].eds_cluster_config.eds_config", cluster.eds_cluster_config.eds_config


def bootstrap_secret_refs(bootstrap: Bootstrap) -> Iterator[tuple[str, SdsSecretConfig]]:
    """(field path, reference) of every SDS secret the static listeners and clusters name."""
    resources = bootstrap.static_resources
    for i, listener in enumerate(resources.listeners):
        for rel, ref in listener_secret_refs(listener):
            yield f"static_resources.listeners[{i}].{rel}", ref
    for i, cluster in enumerate(resources.clusters):
        for rel, ref in cluster_secret_refs(cluster):
            yield f"static_resources.clusters[{i}].{rel}", ref


def config_source_problems(sources: Iterable[tuple[str, ConfigSource]], static_clusters: Iterable[Cluster],
                           has_ads: bool) -> Iterator[tuple[str, str]]:
    """`ads: {}` needs `ads_config`; an `api_config_source` goes to a static cluster with an endpoint."""
    clusters = {cluster.name: cluster for cluster in static_clusters}
    for path, source in sources:
        if source.ads is not None and not has_ads:
            yield f"{path}.ads", "needs dynamic_resources.ads_config"
        if source.api_config_source is not None:
            yield from grpc_cluster_problems(source.api_config_source, f"{path}.api_config_source", clusters)


def grpc_cluster_problems(api: ApiConfigSource, path: str, clusters: dict[str, Cluster]) -> Iterator[tuple[str, str]]:
    name = api.cluster_name
    cluster = clusters.get(name)
    if cluster is None:
        yield (f"{path}.grpc_services[0].envoy_grpc.cluster_name",
               f"unknown cluster {name!r} (a gRPC config source's cluster must be a static cluster)")
    elif not (cluster.load_assignment and any(locality.lb_endpoints for locality in cluster.load_assignment.endpoints)):
        yield f"{path}.grpc_services[0].envoy_grpc.cluster_name", f"cluster {name!r} has no endpoint"


def _grpc_problems(bootstrap: Bootstrap) -> Iterator[tuple[str, str]]:
    """Config sources reach their streams; routes do not use gRPC clusters."""
    dynamic = bootstrap.dynamic_resources
    ads_config = dynamic.ads_config if dynamic is not None else None
    clusters = bootstrap.static_resources.clusters
    yield from config_source_problems(bootstrap_config_sources(bootstrap), clusters, ads_config is not None)
    if ads_config is not None:
        yield from grpc_cluster_problems(ads_config, "dynamic_resources.ads_config", {c.name: c for c in clusters})
    grpc = grpc_clusters(bootstrap)
    for path, hcm in http_connection_managers(bootstrap):
        for rel_route, route_config in hcm.inline_route_configs():
            for rel, name in route_cluster_references(route_config):
                if name in grpc:
                    yield f"{path}.{rel_route}.{rel}", grpc_cluster_message(name)
        yield from _called_cluster_problems(hcm, path, {c.name: c for c in clusters}, grpc)


def _called_cluster_problems(hcm: HttpConnectionManager, path: str, clusters: dict[str, Cluster],
                             grpc: frozenset[str]) -> Iterator[tuple[str, str]]:
    """A tracer's collector cluster, or a cluster an HTTP filter calls (ext_authz's service), must suit pylon's
    transport: HTTP/1.1 for an HTTP export (the pool), cleartext for a gRPC call (grpcio gets no TLS credentials
    from a cluster yet). A cluster that is not (yet) there is no error, as in Envoy: the call finds no host."""
    tracing = hcm.tracing
    if tracing is not None:
        yield from _service_cluster_problems(tracing.provider.typed_config, f"{path}.tracing.provider.typed_config",
                                             clusters, grpc)
    for i, http_filter in enumerate(hcm.http_filters):
        yield from _service_cluster_problems(http_filter.typed_config, f"{path}.http_filters[{i}].typed_config",
                                             clusters, grpc)


def _service_cluster_problems(config: Any, base: str, clusters: dict[str, Cluster], grpc: frozenset[str]
                              ) -> Iterator[tuple[str, str]]:
    """The clusters an extension calls itself (its `cluster_references()`: field path, cluster, "grpc" or
    "http"), checked against pylon's transports."""
    references = getattr(config, "cluster_references", None)
    if references is None:
        return
    for rel, name, transport in references():
        cluster = clusters.get(name)
        if transport == "http" and name in grpc:
            yield f"{base}.{rel}", grpc_cluster_message(name)
        elif transport == "grpc" and cluster is not None and (
                tls_context(cluster.transport_socket) is not None or cluster.transport_socket_matches):
            yield (f"{base}.{rel}", f"cluster {name!r} has a TLS transport socket (or transport_socket_matches): "
                                    "pylon's gRPC client to a cluster speaks cleartext HTTP/2 only (not supported yet)")
        elif transport == "grpc" and cluster is not None and _has_internal_endpoints(cluster):
            yield (f"{base}.{rel}", f"cluster {name!r} has envoy_internal_address endpoints: pylon's gRPC client "
                                    "(grpcio) dials sockets, it cannot reach an internal listener (not supported yet)")


def _has_internal_endpoints(cluster: Cluster) -> bool:
    assignment = cluster.load_assignment
    return assignment is not None and any(
        lb_endpoint.endpoint.address.envoy_internal_address is not None
        for locality in assignment.endpoints for lb_endpoint in locality.lb_endpoints)


def grpc_cluster_message(name: str) -> str:
    return (f"cluster {name!r} is for pylon's gRPC client only (xDS, SDS: a config source names it, or it has pipe "
            "endpoints); routes and tcp_proxy cannot use it")


def _secret_problems(bootstrap: Bootstrap) -> Iterator[tuple[str, str]]:
    secrets = bootstrap.static_resources.secrets
    yield from _duplicates("static_resources.secrets", [s.name for s in secrets], "secret")
    static = {secret.name: secret for secret in secrets}
    refs = list(bootstrap_secret_refs(bootstrap))
    yield from static_secret_problems(refs, static)
    yield from source_conflicts(refs, dict.fromkeys(static))


def _shared_addresses(listeners: list[Listener]) -> Iterator[tuple[str, str]]:
    """Listeners that bind the same IP and port in the same network namespace, which Envoy refuses.

    Left alone, SO_REUSEPORT would let both bind and the kernel would split the
    traffic between two unrelated listeners. IPs compare by value (`::1` is
    `0:0::1`); port 0 picks a fresh port per listener, so it never clashes. A
    wildcard and a specific IP on one port (0.0.0.0:P, 127.0.0.1:P) are different
    addresses, as in Envoy; whether they can both bind is up to the kernel. So are
    one IP and port in two network namespaces (`network_namespace_filepath`): two sockets of two stacks.
    """
    first: dict[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int, str, str], int] = {}
    for i, listener in enumerate(listeners):
        if listener.internal_listener is not None:
            continue  # binds nothing
        paths = ["address", *(f"additional_addresses[{k}].address" for k in range(len(listener.additional_addresses)))]
        for rel, socket_address in zip(paths, listener.socket_addresses):
            if socket_address.port_value == 0:
                continue
            ip = ipaddress.ip_address(socket_address.address)  # an IP: checked by Listener
            # a TCP and a UDP listener on one port are two sockets of two protocols
            key = (ip, socket_address.port_value, socket_address.protocol, socket_address.network_namespace_filepath)
            j = first.setdefault(key, i)
            if j != i:  # one listener may name an address twice, as Envoy 1.40 takes it (both sockets bind)
                host = f"[{ip}]" if ip.version == 6 else str(ip)
                namespace = socket_address.network_namespace_filepath
                yield (
                    f"static_resources.listeners[{i}].{rel}",
                    f"listener {_listener_name(listener)} has the same address {host}:{socket_address.port_value}"
                    f"{f' in network namespace {namespace}' if namespace else ''} as listener "
                    f"{_listener_name(listeners[j])} (static_resources.listeners[{j}]); "
                    "two listeners cannot bind one address and port",
                )


def _listener_name(listener: Listener) -> str:
    return repr(listener.name) if listener.name else "(unnamed)"


def _duplicates(base: str, names: list[str], what: str) -> Iterator[tuple[str, str]]:
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name:
            continue
        if name in first:
            yield f"{base}[{i}].name", f"duplicate {what} name {name!r} (also {base}[{first[name]}])"
        first.setdefault(name, i)


def bootstrap_to_dict(bootstrap: Bootstrap) -> dict[str, Any]:
    """Envoy-shaped JSON of a bootstrap: defaults left out, `@type` back in typed configs.

    Used by the admin `/config_dump`; loading the result again gives an equal Bootstrap.
    """
    return to_envoy_dict(bootstrap)


def to_envoy_dict(message: msgspec.Struct) -> dict[str, Any]:
    """Envoy-shaped JSON of any config message (a bootstrap, a cluster, a route configuration).

    `convert(to_envoy_dict(m), type(m)) == m`: how configs travel to workers and into `/config_dump`.
    """
    encoded = _to_builtins(message)
    assert isinstance(encoded, dict)
    return encoded


@functools.cache
def _fields(struct_type: type) -> tuple[Any, ...]:
    """A Struct type's fields, once per type: msgspec works them out from the annotations on every call, which
    made re-encoding 1,000 clusters take about a second on each config change."""
    return msgspec.structs.fields(struct_type)


def _to_builtins(value: Any) -> Any:
    if isinstance(value, msgspec.Struct):
        out: dict[str, Any] = {}
        type_url = registry.type_url_of(type(value))
        if type_url is not None:
            out["@type"] = type_url
        for field in _fields(type(value)):
            item = getattr(value, field.name)
            if item is None or _is_default(field, item):
                continue
            out[field.encode_name] = _to_builtins(item)
        return out
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, str):
        return str(value)  # a constrained str subclass (HttpText, RegexPattern) as the plain text JSON encoders take
    if isinstance(value, list):
        return [_to_builtins(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_builtins(item) for key, item in value.items()}
    return value


def _is_default(field: msgspec.structs.FieldInfo, value: Any) -> bool:
    if field.default is not msgspec.NODEFAULT:
        return bool(value == field.default)
    if field.default_factory is not msgspec.NODEFAULT:
        return bool(value == field.default_factory())
    return False


# --------------------------------------------------------------------------- parsing details

_NOT_JSON = object()


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate key {key!r}")
        result[key] = value
    return result


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line: where in the text and what the YAML parser found."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        context = f"{exc.context}, " if exc.context else ""
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {context}{exc.problem}"
    return f"invalid YAML: {exc}".replace("\n", " ")


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """A safe YAML loader (libyaml's C parser where present: ~3x faster on large route tables)
    that rejects duplicate mapping keys instead of keeping the last one, and leaves out keys tagged `!ignore`."""


#: Envoy's YAML loader drops every mapping key tagged `!ignore`, with its value: a place for content outside the
#: schema, typically anchors that the config proper refers to by alias (Envoy's docs, "Special YAML usage").
IGNORE_TAG = "!ignore"


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    # Aliases were resolved when the document was composed, so dropping the ignored pairs here keeps their anchors.
    node.value = [(key_node, value) for key_node, value in node.value if key_node.tag != IGNORE_TAG]
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<:` merges may be overridden by explicit keys; that is YAML, not a duplicate
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, Hashable):
            continue  # construct_mapping reports unhashable keys itself
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
