import pytest

from pylon.identity.spiffe import SpiffeError, SpiffeId


def test_round_trip() -> None:
    identity = SpiffeId.parse("spiffe://cluster.local/ns/default/sa/web")
    assert identity == SpiffeId("cluster.local", "default", "web")
    assert identity.uri == "spiffe://cluster.local/ns/default/sa/web"


@pytest.mark.parametrize("uri", [
    "http://cluster.local/ns/default/sa/web",
    "spiffe://cluster.local/ns/default",
    "spiffe://cluster.local/sa/web/ns/default",
    "spiffe://cluster.local/ns/default/sa/web/extra",
    "spiffe://cluster.local/ns//sa/web",
    "spiffe://cluster.local/ns/Default/sa/web",
    "spiffe://cluster.local/ns/default/sa/we:b",
    "spiffe:///ns/default/sa/web",
])  # fmt: skip
def test_refuses_what_is_not_a_workload_id(uri: str) -> None:
    with pytest.raises(SpiffeError):
        SpiffeId.parse(uri)
