"""AuthorizationPolicy -> Envoy RBAC filters, with Istio's semantics and names.

Which policies apply (istiod's `AuthorizationPolicies.ListAuthorizationPolicies`):
those in the root namespace (MeshConfig `rootNamespace`) and in the proxy's namespace whose
`selector.matchLabels` are a subset of its labels (no selector: every workload
of the namespace; in the root namespace: every workload of the mesh).

Evaluation order is Istio's, one Envoy filter per action, in this order:
AUDIT (RBAC action LOG: marks, never denies), DENY, ALLOW. CUSTOM is refused
when the resource is decoded. Once any ALLOW policy applies, the ALLOW filter
exists and a request no ALLOW rule matches is denied (Envoy's ALLOW with no
matching policy denies) — also when those policies have no rules at all: a
policy without rules matches nothing, Istio's "deny all" shape.

Each rule becomes one Envoy policy named `ns[<ns>]-policy[<name>]-rule[<i>]`:
`from` entries are ORed (one principal each), `to` entries are ORed (one
permission each), `when` conditions are ANDed into every principal or
permission by the side they belong to; within a field the values are ORed and
`notX` is NOT(any of X). Values match exactly, by prefix (`abc*`), suffix
(`*abc`) or presence (`*`). Principals (`cluster.local/ns/NS/sa/SA`) are the
peer certificate's URI SAN, so Istio adds `spiffe://`, after mapping their trust
domain to the mesh's and its aliases (gen/trust_domains.py); namespaces match the
`/ns/<ns>/` segment of that SAN. Both need mTLS on the inbound side: without a
peer certificate they never match.

TCP chains get `envoy.filters.network.rbac` (stat prefix `tcp.`). A rule using
HTTP-only fields (requestPrincipals, hosts, methods, paths, request headers,
request.auth.*) cannot be checked on TCP: in an ALLOW policy it is dropped (it
allows nothing), in a DENY or AUDIT policy its HTTP-only conditions are
dropped, so it denies more rather than less.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pylon.pilot.gen.trust_domains import with_trust_domains
from pylon.pilot.gen.types import RBAC_HTTP, RBAC_NETWORK, Json
from pylon.pilot.istio.resources import Resource
from pylon.pilot.istio.security import HEADER_KEY, Condition, Operation, Rule, Source
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot

SPIFFE = "spiffe://"
ENVOY_ACTIONS = {"AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}
AUTHN_METADATA = "istio_authn"  # where Istio's authn filter puts request.auth.* (RequestAuthentication)
TCP_STAT_PREFIX = "tcp."
Matcher = Callable[[str], Json]


@dataclass(frozen=True)
class SelectedPolicies:
    """The AuthorizationPolicies selecting one proxy (iterating gives them in order), with the trust domains
    their principals stand for: they are translated together, and a principal means nothing without them."""

    policies: tuple[Resource, ...]
    trust_domains: tuple[str, ...]

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.policies)


def policies_for(proxy: Proxy, snapshot: Snapshot) -> SelectedPolicies:
    """The AuthorizationPolicies selecting `proxy`, root namespace first, each namespace by name."""
    root = snapshot.mesh.root_namespace
    selected = []
    for policy in sorted(snapshot.authorization_policies, key=lambda p: (p.namespace != root, p.namespace, p.name)):
        if policy.namespace not in (root, proxy.namespace):
            continue
        selector = policy.spec.selector
        if selector is None or all(proxy.labels.get(k) == v for k, v in selector.match_labels.items()):
            selected.append(policy)
    return SelectedPolicies(tuple(selected), snapshot.mesh.trust_domains)


def http_rbac_filters(policies: SelectedPolicies) -> list[Json]:
    """`envoy.filters.http.rbac` filters in Istio's order (AUDIT, DENY, ALLOW); none without policies."""
    return [{"name": "envoy.filters.http.rbac", "typed_config": {"@type": RBAC_HTTP, "rules": rules}}
            for rules in _rules_by_action(policies, tcp=False)]  # fmt: skip


def network_rbac_filters(policies: SelectedPolicies) -> list[Json]:
    """`envoy.filters.network.rbac` filters for TCP chains, same order."""
    return [{"name": "envoy.filters.network.rbac",
             "typed_config": {"@type": RBAC_NETWORK, "stat_prefix": TCP_STAT_PREFIX, "rules": rules}}
            for rules in _rules_by_action(policies, tcp=True)]  # fmt: skip


def _rules_by_action(policies: SelectedPolicies, tcp: bool) -> list[Json]:
    out = []
    for action in ("AUDIT", "DENY", "ALLOW"):
        chosen = [p for p in policies if p.spec.action == action]
        if not chosen:
            continue
        envoy_policies: Json = {}
        for policy in chosen:
            for index, rule in enumerate(policy.spec.rules):
                translated = _policy(rule, action, tcp, policies.trust_domains)
                if translated is not None:
                    envoy_policies[f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{index}]"] = translated
        out.append({"action": ENVOY_ACTIONS[action], "policies": envoy_policies})
    return out


# --------------------------------------------------------------------------- one rule


def _policy(rule: Rule, action: str, tcp: bool, trust_domains: tuple[str, ...]) -> Json | None:
    """The Envoy policy of one rule; None when, on TCP, an ALLOW rule needs HTTP to be checked."""
    if tcp and action == "ALLOW" and _uses_http(rule):
        return None
    sources = [entry.source for entry in rule.from_] or [Source()]
    operations = [entry.operation for entry in rule.to] or [Operation()]
    when_ids = [c for cond in rule.when if _is_principal_key(cond.key)
                for c in _when_principal(cond, tcp, trust_domains)]  # fmt: skip
    when_perms = [c for cond in rule.when if not _is_principal_key(cond.key) for c in _when_permission(cond)]
    return {
        "permissions": [_and("and_rules", "rules", _operation(op, tcp) + when_perms) for op in operations],
        "principals": [_and("and_ids", "ids", _source(src, tcp, trust_domains) + when_ids) for src in sources],
    }


def _uses_http(rule: Rule) -> bool:
    http_source = any(e.source.request_principals or e.source.not_request_principals for e in rule.from_)
    http_operation = any(getattr(e.operation, f) for e in rule.to for f in
                         ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths"))  # fmt: skip
    return http_source or http_operation or any(_http_key(c.key) for c in rule.when)


def _http_key(key: str) -> bool:
    return key.startswith(HEADER_KEY) or key.startswith("request.auth.")


def _is_principal_key(key: str) -> bool:
    return key.startswith(HEADER_KEY) or key.startswith("request.auth.") or key.startswith(("source.", "remote."))


def _and(kind: str, field: str, items: list[Json]) -> Json:
    if not items:
        return {"any": True}
    return items[0] if len(items) == 1 else {kind: {field: items}}


def _field(values: list[str], negated: list[str], matcher: Matcher, or_kind: str, or_field: str,
           not_kind: str) -> list[Json]:
    """AND of: any of `values` (if given), none of `negated` (if given)."""
    out = []
    if values:
        out.append(_or(or_kind, or_field, [matcher(v) for v in values]))
    if negated:
        out.append({not_kind: _or(or_kind, or_field, [matcher(v) for v in negated])})
    return out


def _or(kind: str, field: str, items: list[Json]) -> Json:
    return items[0] if len(items) == 1 else {kind: {field: items}}


def _ids(values: list[str], negated: list[str], matcher: Matcher) -> list[Json]:
    return _field(values, negated, matcher, "or_ids", "ids", "not_id")


def _perms(values: list[str], negated: list[str], matcher: Matcher) -> list[Json]:
    return _field(values, negated, matcher, "or_rules", "rules", "not_rule")


def _source(source: Source, tcp: bool, trust_domains: tuple[str, ...]) -> list[Json]:
    out = _ids(with_trust_domains(source.principals, trust_domains),
               with_trust_domains(source.not_principals, trust_domains), _principal)  # fmt: skip
    if not tcp:
        out += _ids(source.request_principals, source.not_request_principals,
                    lambda v: _authn_metadata("request.auth.principal", v))  # fmt: skip
    out += _ids(source.namespaces, source.not_namespaces, _namespace)
    out += _ids(source.ip_blocks, source.not_ip_blocks, lambda v: {"direct_remote_ip": _cidr(v)})
    out += _ids(source.remote_ip_blocks, source.not_remote_ip_blocks, lambda v: {"remote_ip": _cidr(v)})
    return out


def _operation(operation: Operation, tcp: bool) -> list[Json]:
    out = []
    if not tcp:
        out += _perms(operation.hosts, operation.not_hosts, lambda v: _header(":authority", v, ignore_case=True))
        out += _perms(operation.methods, operation.not_methods, lambda v: _header(":method", v))
        out += _perms(operation.paths, operation.not_paths, lambda v: {"url_path": {"path": _string(v)}})
    out += _perms(operation.ports, operation.not_ports, lambda v: {"destination_port": int(v)})
    return out


def _when_principal(cond: Condition, tcp: bool, trust_domains: tuple[str, ...]) -> list[Json]:
    key = cond.key
    if tcp and _http_key(key):
        return []
    if key == "source.principal":
        return _ids(with_trust_domains(cond.values, trust_domains), with_trust_domains(cond.not_values, trust_domains),
                    _principal)  # fmt: skip
    if key.startswith(HEADER_KEY):
        name = key[len(HEADER_KEY) + 1:-1]
        return _ids(cond.values, cond.not_values, lambda v: _header(name, v))
    matchers = {
        "source.ip": lambda v: {"direct_remote_ip": _cidr(v)},
        "remote.ip": lambda v: {"remote_ip": _cidr(v)},
        "source.namespace": _namespace,
    }
    matcher = matchers.get(key) or (lambda v: _authn_metadata(key, v))
    return _ids(cond.values, cond.not_values, matcher)


def _when_permission(cond: Condition) -> list[Json]:
    matchers = {
        "destination.ip": lambda v: {"destination_ip": _cidr(v)},
        "destination.port": lambda v: {"destination_port": int(v)},
        "connection.sni": lambda v: {"requested_server_name": _string(v)},
    }
    return _perms(cond.values, cond.not_values, matchers[cond.key])


# --------------------------------------------------------------------------- value matchers


def _string(value: str, prefix: str = "", ignore_case: bool = False) -> Json:
    """Istio's value forms: `*` present, `*abc` suffix, `abc*` prefix, else exact (`prefix` prepended)."""
    if value == "*":
        out: Json = {"safe_regex": {"regex": ".+"}}
    elif value.startswith("*"):
        out = {"suffix": value[1:]}
    elif value.endswith("*"):
        out = {"prefix": prefix + value[:-1]}
    else:
        out = {"exact": prefix + value}
    if ignore_case and "safe_regex" not in out:
        out["ignore_case"] = True
    return out


def _header(name: str, value: str, ignore_case: bool = False) -> Json:
    if value == "*":
        return {"header": {"name": name, "present_match": True}}
    return {"header": {"name": name, "string_match": _string(value, ignore_case=ignore_case)}}


def _principal(value: str) -> Json:
    return {"authenticated": {"principal_name": _string(value, prefix=SPIFFE)}}


def _namespace(value: str) -> Json:
    """The namespace segment of the peer's SPIFFE id: `spiffe://<td>/ns/<ns>/sa/<sa>`."""
    if value == "*":
        segment = "[^/]+"
    elif value.startswith("*"):
        segment = "[^/]*" + re.escape(value[1:])
    elif value.endswith("*"):
        segment = re.escape(value[:-1]) + "[^/]*"
    else:
        segment = re.escape(value)
    return {"authenticated": {"principal_name": {"safe_regex": {"regex": f".*/ns/{segment}/.*"}}}}


def _authn_metadata(key: str, value: str) -> Json:
    """request.auth.* as Istio matches it: dynamic metadata of its authn filter (set by RequestAuthentication;
    without one nothing sets it, so these conditions never match, as in Istio)."""
    return {"metadata": {"filter": AUTHN_METADATA, "path": [{"key": key}], "value": {"string_match": _string(value)}}}


def _cidr(value: str) -> Json:
    network = ipaddress.ip_network(value, strict=False)
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}
