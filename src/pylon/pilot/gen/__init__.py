"""Envoy resources per proxy, with Istio's names and shapes; one generator per proxy type.

A generator is a pure function of (proxy, snapshot) returning Envoy v3 resources
as proto-JSON dicts keyed by type URL and resource name. Gateways (`router~…`)
are served by `gateway.GatewayGenerator`, sidecars (`sidecar~…`) by
`sidecar.SidecarGenerator` (virtualOutbound/virtualInbound); both share
`routes`, `clusters` and `endpoints`.

`SharedGenerations` generates once per snapshot for all proxies with the same
`generation_key`: a hundred replicas of a deployment get one generation, not a hundred.
After a change of endpoints alone it builds only each key's EDS (`Generator.endpoints`)
and keeps the rest of the key's last generation, as istiod's EDS-only pushes do.
"""

from __future__ import annotations

import json
from typing import Protocol

from pylon.pilot.gen.accesslog import add_access_logs
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen.envoyfilter import apply_envoy_filters
from pylon.pilot.gen.gateway import GatewayGenerator
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import ENDPOINT, Json, Resources
from pylon.pilot.proxy import Proxy
from pylon.pilot.gen.names import subset_key_host
from pylon.pilot.snapshot import Snapshot, changed_hostnames


class Generator(Protocol):
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        """Every resource of every type this proxy should have."""
        ...

    def endpoints(self, proxy: Proxy, snapshot: Snapshot, hostnames: frozenset[str]) -> dict[str, Json]:
        """The assignments of `generate(proxy, snapshot)[ENDPOINT]` for the services of `hostnames`, without
        building the rest."""
        ...


class Patched:
    """A generator whose output gets the mesh's access logs (gen/accesslog.py), then the proxy's EnvoyFilter
    patches, istiod's last step (so a patch sees, and may change, the access logs as in Istio)."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        resources = add_access_logs(self.inner.generate(proxy, snapshot), snapshot.mesh)
        return apply_envoy_filters(proxy, snapshot, resources)

    def endpoints(self, proxy: Proxy, snapshot: Snapshot, hostnames: frozenset[str]) -> dict[str, Json]:
        """Access logs and EnvoyFilters (listeners, routes, clusters) never touch EDS: the inner generator's."""
        return self.inner.endpoints(proxy, snapshot, hostnames)


GENERATORS: dict[str, Generator] = {"router": Patched(GatewayGenerator()), "sidecar": Patched(SidecarGenerator())}


def generator_for(proxy: Proxy) -> Generator:
    """The generator for the proxy's type; ValueError naming the type if pylon pilot cannot serve it yet."""
    try:
        return GENERATORS[proxy.type]
    except KeyError:
        raise ValueError(
            f"{proxy.type} proxies are not supported by pylon pilot yet (supported: {', '.join(sorted(GENERATORS))})"
        ) from None


# The node metadata generators read (sidecar.py: how traffic is captured; credentials.py: PROXY_CONFIG's
# privateKeyProvider). A generator that reads more of the metadata, or another Proxy field, must add it to
# `generation_key`: it sees only what the key holds.
GENERATION_METADATA = ("INTERCEPTION_MODE", "PROXY_CONFIG")

GenerationKey = tuple[str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], SpiffeId | None,
                      tuple[str, ...]]


def generation_key(proxy: Proxy, snapshot: Snapshot) -> GenerationKey:
    """What a proxy's generated config can depend on: type, namespace, the metadata generators read (and the
    keys EnvoyFilter proxy matches read, `Snapshot.selector_metadata_keys`), the
    labels any selector of the snapshot could look at (`Snapshot.selector_label_keys`), the identity it
    proved on the TLS port (gateway secrets are served to verified proxies only), and a sidecar's IPs when a
    Sidecar's ingress listeners read them (`Snapshot.sidecars_read_instance_ips`).

    Node id, pod name, IPs and the other labels and metadata differ between replicas but no generator reads
    them (IPs aside, as said), so proxies with equal keys get identical config - istiod's per-namespace
    SidecarScope taken as far as it provably goes.
    """
    labels = tuple(sorted((k, v) for k, v in proxy.labels.items() if k in snapshot.selector_label_keys))
    read = sorted(set(GENERATION_METADATA) | snapshot.selector_metadata_keys)
    metadata = tuple((k, json.dumps(proxy.metadata[k], sort_keys=True)) for k in read if k in proxy.metadata)
    ips = proxy.ip_addresses if proxy.type == "sidecar" and snapshot.sidecars_read_instance_ips else ()
    return proxy.type, proxy.namespace, labels, metadata, proxy.identity, ips


def key_proxy(key: GenerationKey) -> Proxy:
    """The proxy generators see for a key: only what the key holds (no node id or pod, IPs only when read), so
    that a generation is a function of its key and can be shared by construction, not by audit alone."""
    proxy_type, namespace, labels, metadata, identity, ips = key
    return Proxy(node_id="", type=proxy_type, ip_addresses=ips, id="", dns_domain="", namespace=namespace,
                 labels=dict(labels), metadata={k: json.loads(v) for k, v in metadata}, identity=identity)  # fmt: skip


class SharedGenerations:
    """The current snapshot's generations by `generation_key`; dropped when the snapshot changes.

    `advance(snapshot, endpoints_only=True)` (the config changed in workload addresses alone:
    `snapshot.endpoints_only_change`) keeps each key's last generation as the base of its next one, with the
    hostnames whose Services changed since (`snapshot.changed_hostnames`, accumulated while the base is
    carried over): only those hosts' load assignments are built again, from the new snapshot. That is sound
    because such a change leaves every other type as it was (what makes the push EDS-only in the first place),
    leaves generation keys as they were (workload labels are not selector labels), and leaves every other
    host's Service the same object, so its assignments too. Any other new snapshot is generated afresh.

    The resources returned are shared between proxies: callers must not change them.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._by_key: dict[GenerationKey, Resources] = {}
        # last generations, valid but for the load assignments of the hosts changed since
        self._bases: dict[GenerationKey, tuple[Resources, frozenset[str]]] = {}

    def advance(self, snapshot: Snapshot, endpoints_only: bool) -> None:
        """Serve `snapshot` from now on; `endpoints_only`: it differs from the current one in endpoints alone."""
        if snapshot is self._snapshot:
            return
        if endpoints_only and self._snapshot is not None:
            changed = changed_hostnames(self._snapshot, snapshot)
            bases = {key: (resources, since | changed) for key, (resources, since) in self._bases.items()}
            bases.update((key, (resources, changed)) for key, resources in self._by_key.items())
            self._bases = bases
        else:
            self._bases = {}
        self._snapshot, self._by_key = snapshot, {}

    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        if snapshot is not self._snapshot:
            self.advance(snapshot, endpoints_only=False)
        key = generation_key(proxy, snapshot)
        resources = self._by_key.get(key)
        if resources is None:
            resources = self._by_key[key] = self._generate(key, snapshot)
        return resources

    def _generate(self, key: GenerationKey, snapshot: Snapshot) -> Resources:
        proxy = key_proxy(key)
        generator = generator_for(proxy)
        base = self._bases.pop(key, None)
        if base is None:
            return generator.generate(proxy, snapshot)
        resources, changed = base
        endpoints = {name: cla for name, cla in resources[ENDPOINT].items() if subset_key_host(name) not in changed}
        endpoints.update(generator.endpoints(proxy, snapshot, changed))
        return {**resources, ENDPOINT: endpoints}
