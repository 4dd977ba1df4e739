"""SPIFFE ids of mesh workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

The CA writes exactly one of these into every workload certificate, and every peer check
reads it back, so both directions live here and refuse anything that is not that shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"

# Kubernetes names: namespaces are DNS labels, service accounts DNS subdomains.
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL)
_SERVICE_ACCOUNT = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")


class SpiffeError(ValueError):
    """Text that is not a mesh workload identity."""


@dataclass(frozen=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise SpiffeError(f"invalid trust domain {self.trust_domain!r}")
        if not _NAMESPACE.fullmatch(self.namespace):
            raise SpiffeError(f"invalid namespace {self.namespace!r}: expected a DNS label")
        if len(self.service_account) > 253 or not _SERVICE_ACCOUNT.fullmatch(self.service_account):
            raise SpiffeError(f"invalid service account {self.service_account!r}: expected a DNS subdomain")

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """The id in `uri`; SpiffeError unless it is exactly a workload id."""
        prefix = "spiffe://"
        if not uri.startswith(prefix):
            raise SpiffeError(f"{uri!r} is not a spiffe:// URI")
        parts = uri[len(prefix):].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa":
            raise SpiffeError(f"{uri!r} is not a workload id spiffe://<trust-domain>/ns/<ns>/sa/<sa>")
        return cls(trust_domain=parts[0], namespace=parts[2], service_account=parts[4])
