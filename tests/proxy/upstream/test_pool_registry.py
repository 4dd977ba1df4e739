"""The worker's pools: dropped at the wheel's next look once they hold nothing, kept while they hold anything (sans-IO:
the test's clock and the real deadline wheel)."""

from __future__ import annotations

from pylon.proxy.deadlines import DeadlineWheel
from pylon.proxy.upstream.cluster import Cluster
from pylon.proxy.upstream.pool import HostPool, UpstreamConnection
from pylon.proxy.upstream.pool_registry import PoolRegistry
from tests.proxy.upstream.test_pool import OK, Clock, Exchange, Rig, Transport


class Worker:
    """The worker's part: its clock and deadline wheel, ticked by hand."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.wheel = DeadlineWheel(0.02)
        self.registry = PoolRegistry(self.clock, self.wheel.arm, self.wheel.disarm)  # type: ignore[arg-type]
        self.cluster: Cluster = Rig().cluster
        self.host = self.cluster.hosts[0]

    def tick(self, seconds: float = 0.05) -> None:
        self.clock.now += seconds
        self.wheel.expire(self.clock.now)

    def pool(self) -> HostPool:
        return self.registry.get(self.cluster, self.host)


def open_connection(pool: HostPool) -> UpstreamConnection:
    """A connection to the pool's host comes up (as `_connect` hands it over)."""
    conn = UpstreamConnection(pool)
    conn.connection_made(Transport())  # type: ignore[arg-type]
    assert pool.cluster.circuit_breakers.connections.try_acquire()
    pool.connected(conn)
    return conn


def test_one_pool_per_host() -> None:
    worker = Worker()
    assert worker.pool() is worker.pool()


def test_a_pool_nothing_used_is_dropped_at_the_next_look() -> None:
    worker = Worker()
    worker.pool()  # e.g. its request overflowed the circuit breakers
    worker.tick()
    assert worker.registry.pools == {}
    assert not worker.wheel  # and nothing stays armed while nothing happens


def test_a_pool_is_kept_while_it_holds_a_connection_and_dropped_once_the_last_closed() -> None:
    worker = Worker()
    pool = worker.pool()
    conn = open_connection(pool)  # idle in the pool
    for _ in range(5):
        worker.tick()
    assert worker.registry.pools == {worker.host: pool}
    conn.connection_lost(None)  # the server closed it
    assert worker.registry.pools == {worker.host: pool}  # not in the middle of the close: at the next look
    worker.tick()
    assert worker.registry.pools == {}
    assert worker.pool() is not pool  # a request after that gets a new pool


def test_a_pool_kept_by_a_waiting_request() -> None:
    worker = Worker()
    pool = worker.pool()
    conn = open_connection(pool)
    exchange = Exchange()
    pool.acquire(exchange)
    conn.connection_lost(None)  # lost under the request: the request is told, the pool is empty...
    assert exchange.events == [("reset", "connection termination")] and pool.empty
    second = open_connection(pool)  # ...and used again before the look (a retry on a new connection)
    again = Exchange()
    pool.acquire(again)
    assert again.conn is second
    worker.tick()
    assert worker.registry.pools == {worker.host: pool}
    second.data_received(OK)
    assert again.events[-1] == "complete"


def test_a_retired_pool_emptying_later_leaves_the_new_pool_of_its_host_alone() -> None:
    worker = Worker()
    old = worker.pool()
    conn = open_connection(old)
    exchange = Exchange()
    old.acquire(exchange)  # busy when its cluster is replaced (CDS)
    worker.registry.retire_cluster(worker.cluster)
    assert worker.registry.pools == {}
    new = worker.pool()
    open_connection(new)  # the new pool of the same host holds a connection
    worker.tick()
    conn.data_received(OK)  # the retired pool's last exchange ends: its connection closes, the old pool is empty
    assert exchange.events[-1] == "complete" and conn.closed and old.empty
    worker.tick()
    assert worker.registry.pools == {worker.host: new}
