"""AuthorizationPolicy principals under the mesh's trust domain and its aliases (istiod's trust domain bundle).

A principal is written `<td>/ns/<ns>/sa/<sa>`. Istio treats the trust domain
`cluster.local` in a policy as "this mesh": with MeshConfig `trustDomain:
example.org` the principal `cluster.local/ns/a/sa/b` matches
`spiffe://example.org/ns/a/sa/b`, so policies written for the default keep
working after a rename. With `trustDomainAliases` (a migration: certificates of
the old domain still in use), a principal of the trust domain or any alias
becomes one principal per domain, any of which matches. A principal of another
trust domain is kept as written (istiod warns), so is one whose trust domain is
`*` or that is not five `/`-separated parts (nothing to rewrite). A trust domain
written with a leading `*` (`*.local/ns/a/sa/b`) stays as written for the
domains it already covers. Applied to `source.principals`, `notPrincipals` and
`when` `source.principal` values. Source: istio/istio
`pilot/pkg/security/trustdomain/bundle.go` (ReplaceTrustDomainAliases) and
`pilot/pkg/security/authz/model/model.go` (MigrateTrustDomain).
"""

from __future__ import annotations

from collections.abc import Iterable

CLUSTER_LOCAL = "cluster.local"


def with_trust_domains(principals: Iterable[str], trust_domains: tuple[str, ...]) -> list[str]:
    """`principals` rewritten for the mesh's `trust_domains` (its trust domain first, then its aliases)."""
    out: list[str] = []
    for principal in principals:
        parts = principal.split("/")
        if len(parts) != 5 or parts[0] == "*":
            out.append(principal)
            continue
        written = parts[0]
        if written != CLUSTER_LOCAL and not any(_overlaps(written, domain) for domain in trust_domains):
            out.append(principal)
            continue
        expanded: list[str] = []
        for domain in trust_domains:
            candidate = principal if _suffix_match(domain, written) else "/".join([domain, *parts[1:]])
            if candidate not in expanded:
                expanded.append(candidate)
        out += expanded
    return out


def _overlaps(written: str, domain: str) -> bool:
    """Istio's stringMatch of a principal's trust domain against one domain (either side may carry a `*`)."""
    return (written == domain or _prefix_match(domain, written) or _prefix_match(written, domain)
            or _suffix_match(domain, written) or _suffix_match(written, domain))  # fmt: skip


def _prefix_match(value: str, pattern: str) -> bool:
    return pattern.endswith("*") and value.startswith(pattern[:-1])


def _suffix_match(value: str, pattern: str) -> bool:
    return pattern.startswith("*") and value.endswith(pattern[1:])
