"""WorkloadGroup auto-registration: a workload whose agent connects with `AUTO_REGISTER_GROUP` gets a
WorkloadEntry, and loses it when it stays away; sans-IO (times are passed in).

As istiod's autoregistration controller (pilot/pkg/autoregistration/controller.go):

- the entry is named `<group>-<ip>` (`:` of an IPv6 address as `-`, `-<network>` appended when
  the node has one), in the proxy's namespace, from the group's template with the proxy's first IP;
  labels are the template's, then the group's metadata labels, then the node's LABELS, each winning
  over the one before; annotation `istio.io/autoRegistrationGroup` names the group;
- only a proxy whose identity was verified (pilot's TLS port) registers, and the identity must be
  the template's service account when the template names one (a workload cannot register as
  another); a WorkloadEntry of the same name in the config is left alone;
- a disconnected workload's entry stays for the grace period (Istio's
  PILOT_WORKLOAD_ENTRY_GRACE_PERIOD, 10 s), so a reconnect does not churn endpoints; then it goes.
  Entries of a WorkloadGroup that was deleted go with it (Kubernetes' owner references).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pylon.pilot.istio.networking import WorkloadEntrySpec, WorkloadGroupSpec
from pylon.pilot.istio.resources import NETWORKING_VERSIONS, ObjectMeta, Resource
from pylon.pilot.proxy import Proxy

log = logging.getLogger("pylon.pilot.autoregistration")

GROUP_METADATA = "AUTO_REGISTER_GROUP"
GROUP_ANNOTATION = "istio.io/autoRegistrationGroup"
DEFAULT_GRACE_PERIOD = 10.0


@dataclass
class _Registration:
    entry: Resource
    group: tuple[str, str]  # (namespace, name)
    connections: int = 0
    disconnected_at: float | None = None


def entry_name(group: str, proxy: Proxy) -> str:
    network = proxy.metadata.get("NETWORK")
    name = f"{group}-{proxy.ip_addresses[0].replace(':', '-')}"
    return f"{name}-{network}" if isinstance(network, str) and network else name


class AutoRegistration:
    """The WorkloadEntries registered by connected (or recently connected) workloads."""

    def __init__(self, grace_period: float = DEFAULT_GRACE_PERIOD) -> None:
        self.grace_period = grace_period
        self._registered: dict[tuple[str, str], _Registration] = {}

    def resources(self, config: list[Resource]) -> list[Resource]:
        """The registered entries, but for any the config now defines itself (the config's wins)."""
        defined = {(r.namespace, r.name) for r in config if r.kind == "WorkloadEntry"}
        return [registration.entry for key, registration in self._registered.items() if key not in defined]

    def connect(self, proxy: Proxy, config: list[Resource]) -> bool:
        """Register `proxy` if it asks to; True if the set of entries changed."""
        group_name = proxy.metadata.get(GROUP_METADATA)
        if not group_name:
            return False
        refusal = _refusal(proxy, str(group_name), config)
        if isinstance(refusal, str):
            log.warning("auto-registration of %s in WorkloadGroup %s/%s refused: %s", proxy.node_id, proxy.namespace,
                        group_name, refusal)  # fmt: skip
            return False
        group = refusal
        key = (proxy.namespace, entry_name(group.name, proxy))
        entry = _entry_from_group(key[1], proxy, group)
        registration = self._registered.get(key)
        if registration is None:
            registration = self._registered[key] = _Registration(entry=entry, group=(group.namespace, group.name))
            log.info("auto-registered WorkloadEntry %s/%s for %s", key[0], key[1], proxy.node_id)
            changed = True
        else:
            changed = registration.entry.spec != entry.spec or registration.entry.meta != entry.meta
            registration.entry = entry
        registration.connections += 1
        registration.disconnected_at = None
        return changed

    def disconnect(self, proxy: Proxy, now: float) -> None:
        """The proxy's stream ended: its entry starts its grace period once no stream of it is left."""
        group_name = proxy.metadata.get(GROUP_METADATA)
        if not group_name or not proxy.ip_addresses:
            return
        registration = self._registered.get((proxy.namespace, entry_name(str(group_name), proxy)))
        if registration is None:
            return
        registration.connections = max(registration.connections - 1, 0)
        if registration.connections == 0:
            registration.disconnected_at = now

    def expire(self, now: float, config: list[Resource]) -> bool:
        """Drop entries disconnected for the grace period, and those whose group is gone; True if any went."""
        groups = {(r.namespace, r.name) for r in config if r.kind == "WorkloadGroup"}
        gone = [key for key, registration in self._registered.items()
                if registration.group not in groups
                or (registration.disconnected_at is not None
                    and now - registration.disconnected_at >= self.grace_period)]  # fmt: skip
        for key in gone:
            log.info("removed auto-registered WorkloadEntry %s/%s", *key)
            del self._registered[key]
        return bool(gone)


def _refusal(proxy: Proxy, group_name: str, config: list[Resource]) -> Resource | str:
    """The WorkloadGroup to register in, or why not."""
    if proxy.identity is None:
        return "the workload's identity is not verified (connect to pilot's TLS port with its token or certificate)"
    group = next((r for r in config if r.kind == "WorkloadGroup" and r.namespace == proxy.namespace
                  and r.name == group_name), None)  # fmt: skip
    if group is None:
        return "no such WorkloadGroup"
    spec: WorkloadGroupSpec = group.spec
    account = spec.template.service_account
    if account and proxy.identity.service_account != account:
        return f"the workload is service account {proxy.identity.service_account!r}, the group's template {account!r}"
    name = entry_name(group_name, proxy)
    if any(r.kind == "WorkloadEntry" and r.namespace == proxy.namespace and r.name == name for r in config):
        return f"a WorkloadEntry {name} is already defined in the config"
    return group


def _entry_from_group(name: str, proxy: Proxy, group: Resource) -> Resource:
    spec: WorkloadGroupSpec = group.spec
    template = spec.template
    labels: dict[str, str] = {**template.labels, **spec.metadata.labels, **proxy.labels}
    network: Any = proxy.metadata.get("NETWORK")
    entry = WorkloadEntrySpec(address=proxy.ip_addresses[0], ports=dict(template.ports), labels=labels,
                              network=network if isinstance(network, str) and network else template.network,
                              locality=template.locality, weight=template.weight,
                              service_account=template.service_account)  # fmt: skip
    annotations = {**spec.metadata.annotations, GROUP_ANNOTATION: group.name}
    return Resource(kind="WorkloadEntry", api_version=NETWORKING_VERSIONS[0],
                    meta=ObjectMeta(name=name, namespace=proxy.namespace, labels=labels, annotations=annotations),
                    spec=entry, source=f"auto-registered for {proxy.node_id} (WorkloadGroup {group.namespace}/{group.name})")
