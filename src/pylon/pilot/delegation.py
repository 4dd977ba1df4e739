"""VirtualService delegation, as istiod merges it (sans-IO).

A root VirtualService (one with `hosts`) may hand an HTTP route to a delegate VirtualService (one without
`hosts`, often owned by another team's namespace): `http: [{match: [...], delegate: {name, namespace}}]`. Before
anything is generated, the root's route is replaced by the delegate's routes, each narrowed by the root's
match: a delegate match must fit inside one of the root's (a root prefix `/api` admits `/api/v1`, not `/web`),
and the two are merged field by field, the delegate's value winning where both set one. A delegate route whose
match fits none of the root's is dropped with a warning, as istiod drops it; so is a delegate that does not
exist or is not exported to the root's namespace. The root route's rewrite, timeout, retries, fault, mirrors,
corsPolicy and header rules apply to the delegate's routes that set none. Delegation is one level deep (a delegate's
route cannot delegate: refused when the delegate is decoded).

Destinations in a delegate are short names of the delegate's namespace: they are made full names here, so the
merged routes mean the same wherever the root lives.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import msgspec

from pylon.pilot.hosts import is_visible, resolve_short_name
from pylon.pilot.istio.common import StringMatch
from pylon.pilot.istio.networking import Destination, HTTPMatchRequest, HTTPRoute
from pylon.pilot.istio.resources import Resource

log = logging.getLogger("pylon.pilot.delegation")

#: What a delegate route takes from its root route when it sets none itself (istiod's mergeHTTPRoute).
_INHERITED = ("rewrite", "direct_response", "timeout", "retries", "fault", "mirror", "mirror_percent",
              "mirror_percentage", "cors_policy", "mirrors", "headers")  # fmt: skip


def is_delegate(vs: Resource) -> bool:
    return not vs.spec.hosts


def merge_delegates(virtual_services: Sequence[Resource], default_export_to: Sequence[str] = ()) -> list[Resource]:
    """The VirtualServices generation sees: roots with their delegated routes merged in, other VirtualServices
    as they are (the same objects), delegates left out."""
    delegates = {(vs.namespace, vs.name): vs for vs in virtual_services if is_delegate(vs)}
    out = []
    for vs in virtual_services:
        if is_delegate(vs):
            continue
        if not any(route.delegate is not None for route in vs.spec.http):
            out.append(vs)
            continue
        routes: list[HTTPRoute] = []
        for route in vs.spec.http:
            if route.delegate is None:
                routes.append(route)
                continue
            namespace = route.delegate.namespace or vs.namespace
            delegate = delegates.get((namespace, route.delegate.name))
            if delegate is None:
                log.warning("delegate virtual service %s/%s of %s/%s not found", namespace, route.delegate.name,
                            vs.namespace, vs.name)  # fmt: skip
                continue
            if not is_visible(delegate.spec.export_to or default_export_to, delegate.namespace, vs.namespace):
                log.warning("delegate virtual service %s/%s of %s/%s is not exported to %s", namespace,
                            route.delegate.name, vs.namespace, vs.name, vs.namespace)  # fmt: skip
                continue
            routes += merge_http_routes(route, [_qualified(r, delegate.namespace) for r in delegate.spec.http])
        if not (routes or vs.spec.tcp or vs.spec.tls):
            log.warning("virtual service %s/%s has no route left after delegation", vs.namespace, vs.name)
            continue
        out.append(msgspec.structs.replace(vs, spec=msgspec.structs.replace(vs.spec, http=routes)))
    return out


def merge_http_routes(root: HTTPRoute, delegated: Iterable[HTTPRoute]) -> list[HTTPRoute]:
    """The delegate's routes narrowed by the root route; one whose match conflicts with the root's is dropped."""
    out = []
    for route in delegated:
        merged = _merge_route(root, route)
        if merged is None:
            log.warning("HTTP match conflict: root route %r, delegate route %r; the delegate route is dropped",
                        root.name, route.name)  # fmt: skip
            continue
        out.append(merged)
    return out


def _merge_route(root: HTTPRoute, route: HTTPRoute) -> HTTPRoute | None:
    match = _merge_matches(root.match, route.match)
    if match is None:
        return None
    changes: dict[str, object] = {"match": match, "delegate": None}
    if root.name:
        changes["name"] = f"{root.name}-{route.name}" if route.name else root.name
    for field in _INHERITED:
        if getattr(route, field) in (None, []) and getattr(root, field) not in (None, []):
            changes[field] = getattr(root, field)
    return msgspec.structs.replace(route, **changes)  # type: ignore[arg-type]


def _merge_matches(root: list[HTTPMatchRequest], delegated: list[HTTPMatchRequest]) -> list[HTTPMatchRequest] | None:
    """Every delegate match merged with each root match it fits; None (a conflict) if one fits no root match."""
    if not root:
        return delegated
    if not delegated:
        return root
    out = []
    for leaf in delegated:
        fitting = [_merge_match(parent, leaf) for parent in root if not _conflicts(parent, leaf)]
        if not fitting:
            return None
        out += fitting
    return out


def _merge_match(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> HTTPMatchRequest:
    return msgspec.structs.replace(
        leaf,
        name=f"{root.name}-{leaf.name}" if root.name and leaf.name else leaf.name or root.name,
        uri=leaf.uri or root.uri, scheme=leaf.scheme or root.scheme, method=leaf.method or root.method,
        authority=leaf.authority or root.authority, port=leaf.port or root.port,
        headers={**root.headers, **leaf.headers}, without_headers={**root.without_headers, **leaf.without_headers},
        query_params={**root.query_params, **leaf.query_params},
        source_labels={**root.source_labels, **leaf.source_labels},
        source_namespace=leaf.source_namespace or root.source_namespace,
        gateways=leaf.gateways or root.gateways, stat_prefix=leaf.stat_prefix or root.stat_prefix,
    )  # fmt: skip


def _conflicts(root: HTTPMatchRequest, leaf: HTTPMatchRequest) -> bool:
    """Whether `leaf` asks for something `root` does not admit (istiod's hasConflict)."""
    pairs = [(root.uri, leaf.uri), (root.scheme, leaf.scheme), (root.method, leaf.method),
             (root.authority, leaf.authority)]  # fmt: skip
    pairs += [(root.headers.get(name), match) for name, match in leaf.headers.items()]
    pairs += [(root.without_headers.get(name), match) for name, match in leaf.without_headers.items()]
    pairs += [(root.query_params.get(name), match) for name, match in leaf.query_params.items()]
    if any(_string_match_conflicts(parent, child) for parent, child in pairs):
        return True
    if root.ignore_uri_case != leaf.ignore_uri_case:
        return True
    if root.port and leaf.port and root.port != leaf.port:
        return True
    if root.source_namespace and leaf.source_namespace != root.source_namespace:
        return True
    if any(name in root.source_labels and root.source_labels[name] != value for name, value in leaf.source_labels.items()):
        return True
    if root.gateways and leaf.gateways and not set(leaf.gateways) <= set(root.gateways):
        return True
    return False


def _string_match_conflicts(root: StringMatch | None, leaf: StringMatch | None) -> bool:
    """Whether `leaf` can match a value `root` cannot: only narrower exact/prefix matches fit a prefix root,
    only the same exact value an exact root; a regex on either side fits nothing else; an unset match admits
    anything, a root match with nothing set nothing (istiod's stringMatchConflict)."""
    if root is None or leaf is None:
        return False
    if root.regex and (leaf.regex or leaf.prefix or leaf.exact):
        return True
    if leaf.regex and (root.regex or root.prefix or root.exact):
        return True
    if root.exact:
        return bool(leaf.prefix) or leaf.exact != root.exact
    if root.prefix:
        if leaf.prefix:
            return not leaf.prefix.startswith(root.prefix)
        if leaf.exact:
            return not leaf.exact.startswith(root.prefix)
    return True


def _qualified(route: HTTPRoute, namespace: str) -> HTTPRoute:
    """`route` with every destination host a full name, as the delegate's namespace resolves it."""
    def full(destination: Destination) -> Destination:
        return msgspec.structs.replace(destination, host=resolve_short_name(destination.host, namespace))

    return msgspec.structs.replace(
        route,
        route=[msgspec.structs.replace(d, destination=full(d.destination)) for d in route.route],
        mirror=full(route.mirror) if route.mirror is not None else None,
        mirrors=[msgspec.structs.replace(m, destination=full(m.destination)) for m in route.mirrors],
    )
