"""Sans-IO parts of connection balancing: the policies, the load table, the DLB/dispatcher configs."""

from __future__ import annotations

import os
import socket

import pytest

from pylon.config.errors import ConfigError
from pylon.config.loader import load_bootstrap
from pylon.proxy.balance import Dispatcher, Dlb, NoDlbFallback, balance_kind, balancer_for
from pylon.proxy.balance.dispatcher import DispatcherPolicy
from pylon.proxy.balance.exact import ExactPolicy
from pylon.proxy.balance.handoff import HandoffBalancer
from pylon.proxy.balance.kernel import KernelBalancer
from pylon.proxy.balance.loadtable import CX_ACTIVE, RQ_ACTIVE, TAKEN, LoadTable
from pylon.proxy.validate import validate_runtime
from tests.proxy.conftest import http_listener, route, static_cluster

DLB_TYPE = "type.googleapis.com/envoy.extensions.network.connection_balance.dlb.v3alpha.Dlb"
DISPATCHER_TYPE = "type.googleapis.com/pylon.connection_balance.v1.Dispatcher"


def test_exact_picks_fewest_connections_and_rotates_ties() -> None:
    policy = ExactPolicy()
    assert policy.pick([0, 1, 2], [3, 1, 2], [0, 9, 0]) == 1  # in-flight requests do not matter to exact
    # All tied: successive picks walk round the workers instead of always taking worker 0.
    picks = [policy.pick([0, 1, 2], [0, 0, 0], [0, 0, 0]) for _ in range(6)]
    assert picks == [2, 0, 1, 2, 0, 1]


def test_exact_fills_workers_evenly() -> None:
    policy, counts = ExactPolicy(), [0, 0, 0, 0]
    for _ in range(13):
        counts[policy.pick([0, 1, 2, 3], counts, [0] * 4)] += 1
    assert sorted(counts) == [3, 3, 3, 4]


def test_dispatcher_uses_in_flight_requests_among_the_least_connected() -> None:
    policy = DispatcherPolicy()
    assert policy.pick([0, 1, 2], [2, 2, 3], [5, 1, 0]) == 1  # worker 2 is idle but has more connections
    assert policy.pick([0, 1, 2], [2, 2, 2], [5, 1, 0]) == 2
    assert policy.pick([0, 1], [1, 1], [0, 0]) == 0  # rotation after picking 2


def test_policies_only_choose_live_workers() -> None:
    for policy in (ExactPolicy(), DispatcherPolicy()):
        assert {policy.pick([1, 3], [0, 0], [0, 0]) for _ in range(4)} == {1, 3}


def test_load_table_is_shared_through_its_fd() -> None:
    table = LoadTable.create(2, 3)
    other = LoadTable(os.dup(table.fd), 2, 3)  # what a worker does with the inherited fd
    try:
        other.slot(1, 2)[CX_ACTIVE] = 7
        other.slot(1, 2)[RQ_ACTIVE] = 3
        assert table.slot(1, 2)[CX_ACTIVE] == 7 and table.slot(1, 2)[RQ_ACTIVE] == 3
        assert table.slot(0, 2)[CX_ACTIVE] == 0 and table.slot(1, 1)[CX_ACTIVE] == 0
        table.slot(1, 2).reset()
        assert other.slot(1, 2)[CX_ACTIVE] == 0
    finally:
        other.close()
        table.close()


def _handoff_with_workers(workers: int) -> tuple[HandoffBalancer, list[socket.socket]]:
    balancer = HandoffBalancer(ExactPolicy(), 0, 128)
    balancer.table = LoadTable.create(1, workers)
    ends = [balancer.worker_socket(w) for w in range(workers)]
    for w in range(workers):
        balancer.worker_ready(w)
    return balancer, ends


def _recv_all(end: socket.socket) -> list[int]:
    got: list[int] = []
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(end, 1, 64)
        except BlockingIOError:
            return got
        got.extend(fds)
        if not data:
            return got


def test_handoff_counts_in_transit_connections_and_spreads_a_batch() -> None:
    balancer, ends = _handoff_with_workers(2)
    pairs = [socket.socketpair() for _ in range(4)]
    balancer._dispatch([a.fileno() for a, _ in pairs])  # sent fds are dup'ed into the channel, ours closed
    for a, _ in pairs:
        a.detach()
    received = [_recv_all(end) for end in ends]
    assert [len(r) for r in received] == [2, 2]
    assert balancer.loads([0, 1]) == ([2, 2], [0, 0])  # handed, not yet taken
    balancer.slots[0][TAKEN] = 2
    balancer.slots[0][CX_ACTIVE] = 1  # one was adopted and is open, one failed its handshake
    assert balancer.loads([0, 1]) == ([1, 2], [0, 0])
    for fd in received[0] + received[1]:
        os.close(fd)
    for _, b in pairs:
        b.close()
    balancer.close()


def test_handoff_takes_back_what_a_dead_worker_never_read() -> None:
    balancer, ends = _handoff_with_workers(2)
    pairs = [socket.socketpair() for _ in range(2)]
    balancer._send(1, [pairs[0][0].detach()])
    balancer._send(1, [pairs[1][0].detach()])
    balancer.handed[1] = 2
    balancer.worker_gone(1)  # its end is still held by the supervisor: the queued fds come back
    assert balancer.live == [0]
    rescued = _recv_all(ends[0])
    assert len(rescued) == 2
    for fd, (_, peer) in zip(rescued, pairs):  # each rescued fd is still the same connection
        os.write(fd, b"x")
        assert peer.recv(1) == b"x"
        os.close(fd)
        peer.close()
    balancer.close()


def test_handoff_without_live_workers_holds_connections_until_one_is_ready() -> None:
    balancer = HandoffBalancer(DispatcherPolicy(), 0, 128)
    balancer.table = LoadTable.create(1, 1)
    end = balancer.worker_socket(0)
    a, b = socket.socketpair()
    balancer._dispatch([a.detach()])
    assert len(balancer.pending) == 1
    balancer.worker_ready(0)
    assert not balancer.pending and len(_recv_all(end)) == 1
    b.close()
    balancer.close()


# --------------------------------------------------------------------------- configs


def _bootstrap(tmp_path, balance: dict | None) -> object:
    listener = http_listener("main", 10000, [route("/", "u")])
    if balance is not None:
        listener["connection_balance_config"] = balance
    import yaml

    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"static_resources": {"listeners": [listener], "clusters": [static_cluster("u", [1])]}}))
    return load_bootstrap(str(path), None), str(path)


def _dlb(**fields) -> dict:
    return {"extend_balance": {"name": "envoy.network.connection_balance.dlb", "typed_config": {"@type": DLB_TYPE, **fields}}}


@pytest.mark.parametrize(("balance", "kind", "cls"), [
    (None, "kernel", KernelBalancer),
    ({"exact_balance": {}}, "exact", HandoffBalancer),
    ({"extend_balance": {"name": "pylon.connection_balance.dispatcher", "typed_config": {"@type": DISPATCHER_TYPE}}},
     "dispatcher", HandoffBalancer),
    (_dlb(fallback_policy="ExactConnectionBalance"), "exact", HandoffBalancer),
    (_dlb(fallback_policy="NopConnectionBalance", id=2, max_retries=3), "kernel", KernelBalancer),
])
def test_balance_config_selects_the_balancer(tmp_path, balance, kind, cls) -> None:
    bootstrap, _ = _bootstrap(tmp_path, balance)
    listener = bootstrap.static_resources.listeners[0]
    assert balance_kind(listener) == kind
    balancer = balancer_for(listener, 0)
    assert isinstance(balancer, cls) and balancer.name == kind


def test_dlb_and_dispatcher_configs_decode_to_their_structs(tmp_path) -> None:
    bootstrap, _ = _bootstrap(tmp_path, _dlb(id=1, max_retries=2, fallback_policy="NopConnectionBalance"))
    typed = bootstrap.static_resources.listeners[0].connection_balance_config.extend_balance.typed_config
    assert typed == Dlb(id=1, max_retries=2, fallback_policy="NopConnectionBalance")
    bootstrap, _ = _bootstrap(tmp_path, {"extend_balance": {"name": "d", "typed_config": {"@type": DISPATCHER_TYPE}}})
    assert isinstance(bootstrap.static_resources.listeners[0].connection_balance_config.extend_balance.typed_config,
                      Dispatcher)


def test_dlb_without_fallback_is_refused_naming_the_field(tmp_path) -> None:
    bootstrap, source = _bootstrap(tmp_path, _dlb())
    with pytest.raises(NoDlbFallback):
        balance_kind(bootstrap.static_resources.listeners[0])
    with pytest.raises(ConfigError) as info:
        validate_runtime(bootstrap, source)
    assert info.value.path == ("static_resources.listeners[0].connection_balance_config.extend_balance."
                               "typed_config.fallback_policy")
    assert "no DLB device" in str(info.value) and "ExactConnectionBalance" in str(info.value)


def test_dlb_fallback_warns_once(tmp_path, caplog) -> None:
    bootstrap, source = _bootstrap(tmp_path, _dlb(fallback_policy="ExactConnectionBalance"))
    with caplog.at_level("WARNING", logger="pylon.main"):
        validate_runtime(bootstrap, source)
    dlb_warnings = [r for r in caplog.records if "DLB" in r.getMessage()]
    assert len(dlb_warnings) == 1 and "→ exact" in dlb_warnings[0].getMessage()
