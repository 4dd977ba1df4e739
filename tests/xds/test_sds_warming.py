"""DynamicConfig and SDS (no sockets): CDS clusters naming secrets warm, and are checked before the secrets come."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.discovery import CLUSTERS, Discovered, Update
from pylon.config.envoy import Cluster, convert
from pylon.config.errors import ConfigError
from tests.proxy.conftest import UPSTREAM_TLS_TYPE, static_cluster
from tests.xds.test_bootstrap_ads import dynamic_config


def tls_cluster(**tls_params: Any) -> Cluster:
    common = {"tls_certificate_sds_secret_configs": [{"name": "client", "sds_config": {"ads": {}}}],
              "tls_params": tls_params}
    return convert(static_cluster("up", [9000], transport_socket={"name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}}), Cluster)  # fmt: skip


def offer(dynamic: Any, cluster: Cluster) -> None:
    dynamic.offer(CLUSTERS, [], lambda: Update(CLUSTERS, Discovered("1", {"up": cluster}), frozenset(), "ads"))


def test_a_cluster_warms_until_its_secret_comes_or_times_out() -> None:
    dynamic = dynamic_config()
    offer(dynamic, tls_cluster())
    assert dynamic.secret_sources().keys() == {"client"}
    assert dynamic.document()["clusters"] == {} and dynamic.stats.gauge("cluster_manager.warming_clusters").value == 1
    assert dynamic.expire_secret("client") and not dynamic.expire_secret("client")
    assert list(dynamic.document()["clusters"]) == ["up"]  # serves; its connects fail closed
    assert dynamic.stats.snapshot()["counters"]["sds.client.init_fetch_timeout"] == 1


def test_the_rest_of_the_context_is_checked_before_the_secret_comes() -> None:
    dynamic = dynamic_config()
    with pytest.raises(ConfigError, match=r"resources\[0\]\.transport_socket\.typed_config\.common_tls_context\."
                                          r"tls_params\.cipher_suites"):
        offer(dynamic, tls_cluster(cipher_suites=["NOT-A-CIPHER"]))
    assert dynamic.clusters == {}
