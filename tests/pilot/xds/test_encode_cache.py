"""EncodeCache: each distinct content packed once, and never an old encoding for changed content."""

from __future__ import annotations

import pytest

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from pylon.pilot.gen.types import CLUSTER, ENDPOINT
from pylon.pilot.xds import encode
from pylon.pilot.xds.delta import resource_version
from pylon.pilot.xds.encode import EncodeCache, EncodeError


def cluster(name: str, timeout: str = "1s") -> dict:
    return {"name": name, "type": "EDS", "connect_timeout": timeout}


def unpacked(packed) -> Cluster:  # type: ignore[no-untyped-def]
    message = Cluster()
    assert packed.Unpack(message)
    return message


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The resources actually encoded (ParseDict), by name."""
    seen: list[str] = []
    real = encode.to_any

    def counting(type_url: str, resource: dict):  # type: ignore[no-untyped-def]
        seen.append(resource.get("name") or resource.get("cluster_name"))
        return real(type_url, resource)

    monkeypatch.setattr(encode, "to_any", counting)
    return seen


def test_equal_content_is_encoded_once_across_objects_and_versions(parses: list[str]) -> None:
    cache = EncodeCache()
    first = cache.encode(CLUSTER, cluster("a"), "v1")
    assert cache.encode(CLUSTER, cluster("a"), "v1") is first  # another proxy's generation, same content
    assert cache.encode(CLUSTER, cluster("a"), "v2") is first  # the next config left it as it was
    assert parses == ["a"] and first.version == resource_version(cluster("a"))


def test_changed_content_is_never_served_from_the_cache(parses: list[str]) -> None:
    cache = EncodeCache()
    old = cache.encode(CLUSTER, cluster("a", "1s"), "v1")
    new = cache.encode(CLUSTER, cluster("a", "2s"), "v2")
    assert new.version != old.version and unpacked(new.packed).connect_timeout.seconds == 2
    # Two proxies of one version with different content under the same name (generated apart).
    assert unpacked(cache.encode(CLUSTER, cluster("b", "3s"), "v2").packed).connect_timeout.seconds == 3
    assert unpacked(cache.encode(CLUSTER, cluster("b", "4s"), "v2").packed).connect_timeout.seconds == 4
    assert parses == ["a", "a", "b", "b"]


def test_objects_freed_within_a_version_do_not_lend_their_identity() -> None:
    cache = EncodeCache()
    for i in range(200):  # temporaries: without the cache keeping them alive, CPython would reuse their ids
        timeout = f"{i + 1}s"
        assert unpacked(cache.encode(CLUSTER, cluster("a", timeout), "v1").packed).connect_timeout.seconds == i + 1


def test_same_json_of_another_type_is_another_encoding() -> None:
    cache = EncodeCache()
    assert cache.encode(ENDPOINT, {"cluster_name": "a"}, "v1").packed.type_url.endswith("ClusterLoadAssignment")
    with pytest.raises(EncodeError):
        cache.encode(CLUSTER, {"cluster_name": "a"}, "v1")  # not a Cluster field: still checked, never cached


def test_selection_is_shared_for_the_same_resources_and_names() -> None:
    cache = EncodeCache()
    resources = {"b": cluster("b"), "a": cluster("a")}
    everything = cache.select(CLUSTER, resources, None, "v1")
    assert list(everything.encoded) == ["a", "b"] and cache.select(CLUSTER, resources, None, "v1") is everything
    some = cache.select(CLUSTER, resources, frozenset({"b", "gone"}), "v1")
    assert list(some.versions) == ["b"] and some.versions["b"] == everything.versions["b"]


def test_a_piece_kept_across_versions_is_not_serialized_again(monkeypatch: pytest.MonkeyPatch) -> None:
    keys: list[bytes] = []
    real = encode.content_key
    monkeypatch.setattr(encode, "content_key", lambda resource: keys.append(real(resource)) or real(resource))
    cache, kept = EncodeCache(), cluster("kept")
    first = cache.encode(CLUSTER, kept, "v1")
    assert cache.encode(CLUSTER, kept, "v2") is first and cache.encode(CLUSTER, kept, "v3") is first
    assert len(keys) == 1
    # a new object with changed content under the same name, in the next version: encoded afresh
    assert unpacked(cache.encode(CLUSTER, cluster("kept", "5s"), "v4").packed).connect_timeout.seconds == 5


def test_objects_of_older_versions_do_not_lend_their_identity() -> None:
    cache = EncodeCache()
    for i in range(200):  # one temporary per version: dropped objects' ids may be reused by the next one
        encoded = cache.encode(CLUSTER, cluster("a", f"{i + 1}s"), f"v{i}")
        assert unpacked(encoded.packed).connect_timeout.seconds == i + 1
