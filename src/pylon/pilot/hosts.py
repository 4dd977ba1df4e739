"""Istio's hostname rules, sans-IO: short-name resolution, wildcards, exportTo visibility.

- A host without a dot is a Kubernetes short name, resolved in the namespace of
  the resource that names it: `reviews` in namespace `default` is
  `reviews.default.svc.cluster.local` (Istio's ResolveShortnameToFQDN).
- `*.example.com` matches any name ending in `.example.com`, at any depth; `*`
  matches everything.
- `exportTo` (empty means `*`): `.` is the resource's own namespace, `*` every
  namespace, `~` none, anything else a namespace name.
"""

from __future__ import annotations

from collections.abc import Iterable

DOMAIN_SUFFIX = "cluster.local"


def resolve_short_name(host: str, namespace: str) -> str:
    """The FQDN Istio uses for `host` written in a resource of `namespace`."""
    if host == "*" or "." in host:
        return host
    return f"{host}.{namespace}.svc.{DOMAIN_SUFFIX}"


def matches(pattern: str, host: str) -> bool:
    """Whether `pattern` (a name or a wildcard) covers `host` (a name or a narrower wildcard)."""
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        suffix = pattern[1:]
        return host == pattern or (host.endswith(suffix) and len(host) > len(suffix))
    return pattern == host


def intersection(first: Iterable[str], second: Iterable[str]) -> list[str]:
    """The narrower name of every pair that overlaps, in first-seen order without duplicates.

    Gateway servers expose hosts, VirtualServices claim hosts; where a wildcard
    on one side covers a name on the other, the virtual host is the name.
    """
    found: list[str] = []
    second = list(second)
    for a in first:
        for b in second:
            if matches(a, b):
                narrow = b
            elif matches(b, a):
                narrow = a
            else:
                continue
            if narrow not in found:
                found.append(narrow)
    return found


def is_visible(export_to: Iterable[str], owner_namespace: str, viewer_namespace: str) -> bool:
    """Whether a resource of `owner_namespace` exported to `export_to` is visible from `viewer_namespace`."""
    targets = list(export_to) or ["*"]
    for target in targets:
        if target == "*" or (target == "." and owner_namespace == viewer_namespace) or target == viewer_namespace:
            return True
    return False
