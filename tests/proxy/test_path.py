"""Path normalisation without sockets: each expectation was observed on Envoy 1.40 (normalize_path, merge_slashes)."""

from __future__ import annotations

import pytest

from pylon.proxy.path import PathRejected, normalized_target

#: target -> what the upstream gets with normalize_path and merge_slashes on (None: 400).
ENVOY_NORMALIZED = {
    b"/a/../b": b"/b",
    b"/a/./b": b"/a/b",
    b"/a/%2e%2e/b": b"/b",
    b"/a/%2E%2E/b": b"/b",
    b"/%41%7e%5f": b"/A~_",
    b"/a//b": b"/a/b",
    b"/a///b/": b"/a/b/",
    b"/a\\b": b"/a/b",
    b"/..": b"/",
    b"/../..": b"/",
    b"/a/%2F/b": b"/a/%2F/b",
    b"/a/%2f..%2fb": b"/a/%2f..%2fb",
    b"/a?x=/../": b"/a?x=/../",
    b"/a/b/..": b"/a/",
    b"/a/b/.": b"/a/b/",
    b"/%zz": b"/%zz",
    b"/a/%00/b": None,
    b"/a;b/../c": b"/c",
    b"/a%20b": b"/a%20b",
}

#: The same with normalize_path alone (merge_slashes off).
ENVOY_NORMALIZED_ONLY = {
    b"/x/..//admin": b"/admin",
    b"/x/%2e%2e//admin": b"/admin",
    b"/x/.//admin": b"/x//admin",
    b"/x//..//admin": b"/x//admin",
    b"/a/..///b": b"/b",
    b"//a": b"/a",
    b"///a/b": b"/a/b",
    b"/a/..": b"/",
    b"/a//": b"/a//",
    b"/.//a": b"/a",
    b"/..//a": b"/a",
    b"/a/b/..//c": b"/a//c",
    b"/a//../b?q=//": b"/a/b?q=//",
}


@pytest.mark.parametrize("target", sorted(ENVOY_NORMALIZED))
def test_normalize_and_merge_as_envoy(target: bytes) -> None:
    expected = ENVOY_NORMALIZED[target]
    if expected is None:
        with pytest.raises(PathRejected):
            normalized_target(target, True, True)
    else:
        assert normalized_target(target, True, True) == (expected, False)


@pytest.mark.parametrize("target", sorted(ENVOY_NORMALIZED_ONLY))
def test_normalize_alone_as_envoy(target: bytes) -> None:
    assert normalized_target(target, True, False) == (ENVOY_NORMALIZED_ONLY[target], False)


def test_merge_slashes_alone_leaves_dots_and_query() -> None:
    assert normalized_target(b"/a//../b?q=//", False, True) == (b"/a/../b?q=//", False)
    assert normalized_target(b"/x/%2e%2e//admin", False, True) == (b"/x/%2e%2e/admin", False)
