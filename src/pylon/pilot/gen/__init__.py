"""Envoy resources per proxy, with Istio's names and shapes; one generator per proxy type.

A generator is a pure function of (proxy, snapshot) returning Envoy v3 resources
as proto-JSON dicts keyed by type URL and resource name. Gateways (`router~…`)
are served by `gateway.GatewayGenerator`, sidecars (`sidecar~…`) by
`sidecar.SidecarGenerator` (virtualOutbound/virtualInbound); both share
`routes`, `clusters` and `endpoints`.

`SharedGenerations` generates once per snapshot for all proxies with the same
`generation_key`: a hundred replicas of a deployment get one generation, not a hundred.
"""

from __future__ import annotations

import json
from typing import Protocol

from pylon.pilot.gen.accesslog import add_access_logs
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.gen.envoyfilter import apply_envoy_filters
from pylon.pilot.gen.gateway import GatewayGenerator
from pylon.pilot.gen.sidecar import SidecarGenerator
from pylon.pilot.gen.types import Resources
from pylon.pilot.proxy import Proxy
from pylon.pilot.snapshot import Snapshot


class Generator(Protocol):
    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        """Every resource of every type this proxy should have."""
        ...


class Patched:
    """A generator whose output gets the mesh's access logs (gen/accesslog.py), then the proxy's EnvoyFilter
    patches, istiod's last step (so a patch sees, and may change, the access logs as in Istio)."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner

    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        resources = add_access_logs(self.inner.generate(proxy, snapshot), snapshot.mesh)
        return apply_envoy_filters(proxy, snapshot, resources)


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

GenerationKey = tuple[str, str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], SpiffeId | None]


def generation_key(proxy: Proxy, snapshot: Snapshot) -> GenerationKey:
    """What a proxy's generated config can depend on: type, namespace, the metadata generators read (and the
    keys EnvoyFilter proxy matches read, `Snapshot.selector_metadata_keys`), the
    labels any selector of the snapshot could look at (`Snapshot.selector_label_keys`), and the identity it
    proved on the TLS port (gateway secrets are served to verified proxies only).

    Node id, pod name, IPs and the other labels and metadata differ between replicas but no generator reads
    them, so proxies with equal keys get identical config - istiod's per-namespace SidecarScope taken as far
    as it provably goes.
    """
    labels = tuple(sorted((k, v) for k, v in proxy.labels.items() if k in snapshot.selector_label_keys))
    read = sorted(set(GENERATION_METADATA) | snapshot.selector_metadata_keys)
    metadata = tuple((k, json.dumps(proxy.metadata[k], sort_keys=True)) for k in read if k in proxy.metadata)
    return proxy.type, proxy.namespace, labels, metadata, proxy.identity


def key_proxy(key: GenerationKey) -> Proxy:
    """The proxy generators see for a key: only what the key holds (no node id, pod or IPs), so that a
    generation is a function of its key and can be shared by construction, not by audit alone."""
    proxy_type, namespace, labels, metadata, identity = key
    return Proxy(node_id="", type=proxy_type, ip_addresses=(), id="", dns_domain="", namespace=namespace,
                 labels=dict(labels), metadata={k: json.loads(v) for k, v in metadata}, identity=identity)  # fmt: skip


class SharedGenerations:
    """The current snapshot's generations by `generation_key`; dropped when the snapshot changes.

    The resources returned are shared between proxies: callers must not change them.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._by_key: dict[GenerationKey, Resources] = {}

    def generate(self, proxy: Proxy, snapshot: Snapshot) -> Resources:
        if snapshot is not self._snapshot:
            self._snapshot, self._by_key = snapshot, {}
        key = generation_key(proxy, snapshot)
        resources = self._by_key.get(key)
        if resources is None:
            resources = self._by_key[key] = generator_for(proxy).generate(key_proxy(key), snapshot)
        return resources
