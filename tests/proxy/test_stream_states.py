"""The active stream's state machines without sockets (h11's test_connection.py is the model).

The real connection manager, stream, pool and HTTP/1 codecs run on test doubles: a loop whose clock the test
moves and whose callbacks and tasks it runs, transports that record what is written, and a connect that hands
the pool a connection at once. Bytes go in as a client and an upstream would send them; the stream class is
`stream_states.checked(Stream)`, which validates every state change against the tables and logs it, so each
test asserts the sequence of states a scenario goes through. That needs the interpreted Stream: compiled, a state
store is a C struct store no `__setattr__` sees, so there the rig makes plain streams and the tests that read the
log are skipped; tests/compiled runs this file interpreted (PYLON_PURE_PYTHON=1) in every run.
"""

from __future__ import annotations

import collections
from typing import Any, Callable

import msgspec
import pytest

from pylon import compiled
from pylon.config.envoy import Cluster as ClusterConfig
from pylon.config.envoy import HttpConnectionManager, convert
from pylon.proxy import hcm as hcm_module
from pylon.proxy import stream as stream_module
from pylon.proxy import stream_states as ss
from pylon.proxy.overload import WorkerOverload
from pylon.proxy.deadlines import DeadlineWheel
from pylon.proxy.hcm import HcmRuntime, HttpConnection
from pylon.proxy.stream import Stream
from pylon.proxy.upstream import pool as pool_module
from pylon.proxy.upstream import pool_base
from pylon.proxy.upstream.cluster import Cluster
from pylon.proxy.upstream.connect import ConnectError
from pylon.proxy.upstream.pool_registry import PoolRegistry
from pylon.stats.store import StatsStore

R, U, S = ss.RequestState, ss.UpstreamState, ss.ResponseState
OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
#: the checked class logs the transitions only where every state store is a Python attribute store
CHECKED = not compiled.is_compiled(stream_module)
CheckedStream = ss.checked(Stream) if CHECKED else Stream
needs_log = pytest.mark.skipif(not CHECKED, reason="compiled Stream: its state stores are C stores the checked class "
                               "cannot see (tests/compiled runs this file interpreted)")


# ---------------------------------------------------------------------------- test doubles


class FakeLoop:
    """The event loop as the proxy uses it: a clock the test moves, callbacks and tasks the test runs."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.ready: collections.deque[Callable[[], Any]] = collections.deque()
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.ready.append(lambda: callback(*args))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> "FakeTimer":
        timer = FakeTimer(self.now + delay, lambda: callback(*args))
        self.timers.append(timer)
        return timer

    def create_task(self, coro: Any) -> "FakeTask":
        task = FakeTask(coro)
        self.ready.append(task.step)
        return task

    def run(self) -> None:
        """Run what is ready (callbacks, task steps), and what that makes ready."""
        while self.ready:
            self.ready.popleft()()

    def fire_due_timers(self) -> None:
        for timer in [t for t in self.timers if t.when <= self.now and not t.cancelled]:
            self.timers.remove(timer)
            timer.callback()


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTask:
    """A coroutine run to its end in one step (the fake connect never waits)."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro

    def step(self) -> None:
        try:
            self.coro.send(None)
        except StopIteration:
            return
        raise AssertionError("a task waited on something the fake loop cannot give it")

    def add_done_callback(self, callback: Callable[[Any], Any]) -> None:
        pass


class FakeTransport:
    """What a connection writes, and whether it closed or paused reading."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.written = b""
        self.closed = False
        self.paused = False
        self.protocol: Any = None

    def get_extra_info(self, name: str) -> Any:
        return {"peername": self.peer, "sockname": ("127.0.0.1", 8080)}.get(name)

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def take(self) -> bytes:
        data, self.written = self.written, b""
        return data

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_reading(self) -> bool:
        return not self.paused

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol


class FakeWorker:
    """The worker as a connection manager reads it."""

    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.deadlines = DeadlineWheel(0.02)
        self.read_budget = self
        self.access_log_writer = None
        self.health_check_failed = False
        self.overload = WorkerOverload()  # every overload action off
        self.ids = 0

    def spend(self) -> bool:  # the read budget: never exhausted here
        return True

    def next_connection_id(self) -> int:
        self.ids += 1
        return self.ids

    def connection_opened(self, conn: Any) -> None:
        pass

    def connection_closed(self, conn: Any, opened_at: float) -> None:
        pass

    def wall_time(self, loop_time: float) -> float:
        return loop_time


class Rig:
    """A connection manager with one client connection, and the upstream connections the pool opens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, route: dict[str, Any], *, hcm: dict[str, Any] | None = None,
                 http1: dict[str, Any] | None = None, http2: dict[str, Any] | None = None) -> None:
        """`http1` / `http2`: the cluster's explicit HTTP/1.1 options, or HTTP/2 upstream with these options."""
        self.loop = FakeLoop()
        self.worker = FakeWorker(self.loop)
        self.upstreams: list[tuple[pool_module.UpstreamConnection, FakeTransport]] = []
        self.refuse = 0  # connects still to fail
        explicit = {"http_protocol_options": http1 or {}} if http2 is None else {"http2_protocol_options": http2}
        cluster = {"name": "up", "connect_timeout": "1s", "load_assignment": {"cluster_name": "up", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]},
            "typed_extension_protocol_options": {OPTIONS_KEY: {
                "@type": f"type.googleapis.com/{OPTIONS_KEY}", "explicit_http_config": explicit}}}
        stats = StatsStore()
        self.cluster = Cluster(_convert(cluster, ClusterConfig), stats)
        config = _convert({"stat_prefix": "main", "http_filters": [ROUTER], "route_config": {"virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [route]}]}, **(hcm or {})}, HttpConnectionManager)
        pools = PoolRegistry(self.loop, self.worker.deadlines.arm, self.worker.deadlines.disarm)  # type: ignore[arg-type]
        self.hcm = HcmRuntime(config, {"up": self.cluster}, pools, stats, self.worker,  # type: ignore[arg-type]
                              "listener.127.0.0.1_10000")
        monkeypatch.setattr(pool_base, "open_upstream", self._open_upstream)
        self.streams: list[Any] = []  # every stream the connection made, finished ones too
        monkeypatch.setattr(hcm_module, "Stream", self._new_stream)
        self.conn = HttpConnection(self.hcm)
        self.client = FakeTransport(("127.0.0.1", 5555))
        self.conn.connection_made(self.client)  # type: ignore[arg-type]

    async def _open_upstream(self, address: Any, tls: Any, timeout: float, factory: Callable[[], Any],
                             *rest: Any) -> tuple[FakeTransport, Any]:
        """The connection's other settings (source, keepalive, tap, preamble) do not matter here."""
        if self.refuse:
            self.refuse -= 1
            raise ConnectError("connection refused")
        conn = factory()
        transport = FakeTransport(("127.0.0.1", 40000 + len(self.upstreams)))
        conn.connection_made(transport)
        self.upstreams.append((conn, transport))
        return transport, conn

    def send(self, data: bytes) -> None:
        """Bytes from the client, then whatever they set off (connects)."""
        self.conn.data_received(data)
        self.loop.run()

    def answer(self, data: bytes, index: int = -1) -> None:
        """Bytes from an upstream connection (the latest by default)."""
        self.upstreams[index][0].data_received(data)
        self.loop.run()

    def advance(self, seconds: float) -> None:
        """Time passes: timers fire and the deadline wheel looks, in 10 ms steps."""
        end = self.loop.now + seconds
        while self.loop.now < end:
            self.loop.now = min(end, self.loop.now + 0.01)
            self.loop.fire_due_timers()
            self.worker.deadlines.expire(self.loop.now)
            self.loop.run()

    def _new_stream(self, conn: HttpConnection, now: float) -> Any:
        stream = CheckedStream(conn, now)
        self.streams.append(stream)
        return stream

    @property
    def stream(self) -> Any:
        """The stream of the latest request (active or finished)."""
        return self.streams[-1]


def _convert(data: dict[str, Any], kind: type) -> Any:
    return convert(msgspec.json.decode(msgspec.json.encode(data)), kind)


def rig(monkeypatch: pytest.MonkeyPatch, **route: Any) -> Rig:
    return Rig(monkeypatch, {"match": {"prefix": "/"}, "route": {"cluster": "up", **route}})


def machine(stream: Any, attribute: str) -> list[tuple[Any, Any]]:
    """One machine's transitions, in order."""
    return [(old, new) for name, old, new in stream.transitions if name == attribute]


GET = b"GET /a HTTP/1.1\r\nhost: svc\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
REQUEST_DONE = [(R.RECEIVING_HEADERS, R.RECEIVING_BODY), (R.RECEIVING_BODY, R.DONE)]


# ---------------------------------------------------------------------------- the tables


def test_a_forbidden_transition_is_an_error_and_the_checked_class_refuses_it() -> None:
    ss.check("up_state", ss.UP_SENDING, ss.UP_AWAITING)
    with pytest.raises(ss.ForbiddenTransition, match="up_state: DONE -> CONNECTING"):
        ss.check("up_state", ss.UP_DONE, ss.UP_CONNECTING)
    with pytest.raises(ss.ForbiddenTransition, match="rs_state: DONE -> SENDING_BODY"):
        ss.check("rs_state", ss.RS_DONE, ss.RS_SENDING)

    class Toy:
        def __init__(self) -> None:
            self.rs_state = ss.RS_NOT_STARTED

    toy = ss.checked(Toy)()
    toy.rs_state = ss.RS_SENDING
    with pytest.raises(ss.ForbiddenTransition):
        toy.rs_state = ss.RS_NOT_STARTED
    assert toy.transitions == [("rs_state", S.NOT_STARTED, S.SENDING_BODY)]


def test_every_table_names_only_its_own_states_and_final_states_have_no_way_out() -> None:
    for states, table in ss.MACHINES.values():
        for source, targets in table.items():
            assert isinstance(source, states) and all(isinstance(t, states) for t in targets)
    assert S.DONE not in ss.RESPONSE and S.RESET not in ss.RESPONSE and R.DONE not in ss.REQUEST
    assert U.DONE not in ss.UPSTREAM and U.UPGRADED not in ss.UPSTREAM


def test_the_production_stream_pays_no_check() -> None:
    """Transitions on the hot path are plain slot stores of exact ints: no __setattr__, no enum."""
    assert Stream.__setattr__ is object.__setattr__
    assert all(type(value) is int for value in (ss.RQ_DONE, ss.UP_RECEIVING, ss.RS_SENDING, ss.RS_RESET))


# ---------------------------------------------------------------------------- scenarios


@needs_log
def test_a_normal_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(GET)
    (upstream, transport), = r.upstreams
    assert transport.take().startswith(b"GET /a HTTP/1.1\r\nhost: svc\r\n")
    r.answer(OK)
    assert r.client.take().startswith(b"HTTP/1.1 200 OK\r\n")
    stream = r.stream
    assert [(n, o.name, v.name) for n, o, v in stream.transitions] == [
        ("rq_state", "RECEIVING_HEADERS", "RECEIVING_BODY"),
        ("up_state", "IDLE", "CONNECTING"),
        ("rq_state", "RECEIVING_BODY", "DONE"),
        ("up_state", "CONNECTING", "AWAITING_RESPONSE"),
        ("up_state", "AWAITING_RESPONSE", "RECEIVING_RESPONSE"),
        ("rs_state", "NOT_STARTED", "SENDING_BODY"),
        ("up_state", "RECEIVING_RESPONSE", "DONE"),
        ("rs_state", "SENDING_BODY", "DONE"),
    ]
    assert r.conn.active is None and not r.client.closed


@needs_log
def test_a_body_that_arrives_after_the_connection_is_sent_then_awaited(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(b"POST /a HTTP/1.1\r\nhost: svc\r\ncontent-length: 4\r\n\r\nab")
    assert r.stream.up_state == ss.UP_SENDING
    r.send(b"cd")
    r.answer(OK)
    assert machine(r.stream, "up_state") == [(U.IDLE, U.CONNECTING), (U.CONNECTING, U.SENDING),
                                             (U.SENDING, U.AWAITING_RESPONSE),
                                             (U.AWAITING_RESPONSE, U.RECEIVING_RESPONSE),
                                             (U.RECEIVING_RESPONSE, U.DONE)]
    assert r.upstreams[0][1].written.endswith(b"\r\n\r\nabcd")


@needs_log
def test_a_retry_starts_a_new_attempt_from_reset(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch, retry_policy={"retry_on": "5xx", "num_retries": 1})
    r.send(GET)
    r.answer(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
    assert r.stream.up_state == ss.UP_RESET and r.stream.rs_state == ss.RS_NOT_STARTED
    r.advance(0.1)  # the back-off (at most 25 ms for a first retry)
    assert len(r.upstreams) == 2 and r.upstreams[0][1].closed
    r.answer(OK)
    assert machine(r.stream, "up_state") == [
        (U.IDLE, U.CONNECTING), (U.CONNECTING, U.AWAITING_RESPONSE), (U.AWAITING_RESPONSE, U.RESET),
        (U.RESET, U.CONNECTING), (U.CONNECTING, U.AWAITING_RESPONSE), (U.AWAITING_RESPONSE, U.RECEIVING_RESPONSE),
        (U.RECEIVING_RESPONSE, U.DONE)]
    assert machine(r.stream, "rs_state") == [(S.NOT_STARTED, S.SENDING_BODY), (S.SENDING_BODY, S.DONE)]
    assert r.client.take().startswith(b"HTTP/1.1 200 OK\r\n")


@needs_log
def test_a_connect_failure_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch, retry_policy={"retry_on": "connect-failure", "num_retries": 1})
    r.refuse = 1
    r.send(GET)
    assert r.stream.up_state == ss.UP_RESET
    r.advance(0.1)
    r.answer(OK)
    assert machine(r.stream, "up_state")[:3] == [(U.IDLE, U.CONNECTING), (U.CONNECTING, U.RESET),
                                                 (U.RESET, U.CONNECTING)]
    assert r.stream.rs_state == ss.RS_DONE


@needs_log
def test_a_local_reply_before_any_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Rig(monkeypatch, {"match": {"prefix": "/"}, "direct_response": {"status": 403, "body": {"inline_string": "no"}}})
    r.send(GET)
    assert r.client.take().startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert r.stream.transitions == [("rq_state", R.RECEIVING_HEADERS, R.RECEIVING_BODY),
                                    ("rs_state", S.NOT_STARTED, S.DONE),
                                    ("rq_state", R.RECEIVING_BODY, R.DONE)]
    assert r.upstreams == []


@needs_log
def test_an_upstream_reset_mid_body_resets_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(GET)
    r.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    upstream, _ = r.upstreams[0]
    upstream.connection_lost(ConnectionResetError())
    assert machine(r.stream, "up_state")[-2:] == [(U.AWAITING_RESPONSE, U.RECEIVING_RESPONSE),
                                                  (U.RECEIVING_RESPONSE, U.RESET)]
    assert machine(r.stream, "rs_state") == [(S.NOT_STARTED, S.SENDING_BODY), (S.SENDING_BODY, S.RESET)]
    assert r.stream.flags == "UC" and r.client.closed


@needs_log
def test_a_downstream_disconnect_mid_response(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch)
    r.send(GET)
    r.answer(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
    r.conn.connection_lost(None)
    assert machine(r.stream, "up_state")[-1] == (U.RECEIVING_RESPONSE, U.RESET)
    assert machine(r.stream, "rs_state") == [(S.NOT_STARTED, S.SENDING_BODY), (S.SENDING_BODY, S.RESET)]
    assert r.stream.flags == "DC" and r.upstreams[0][1].closed  # the upstream connection is abandoned


@needs_log
def test_a_per_try_timeout_then_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch, retry_policy={"retry_on": "5xx", "num_retries": 1, "per_try_timeout": "0.1s"})
    r.send(GET)
    r.advance(0.12)  # the first attempt's time is up (the wheel looks at most 20 ms late): given up on
    assert r.upstreams[0][1].closed
    while len(r.upstreams) < 2:  # the retry, after its back-off (at most 25 ms)
        r.advance(0.01)
    r.answer(OK)
    assert machine(r.stream, "up_state") == [
        (U.IDLE, U.CONNECTING), (U.CONNECTING, U.AWAITING_RESPONSE), (U.AWAITING_RESPONSE, U.RESET),
        (U.RESET, U.CONNECTING), (U.CONNECTING, U.AWAITING_RESPONSE), (U.AWAITING_RESPONSE, U.RECEIVING_RESPONSE),
        (U.RECEIVING_RESPONSE, U.DONE)]
    assert r.stream.rs_state == ss.RS_DONE and r.client.take().startswith(b"HTTP/1.1 200 OK\r\n")


@needs_log
def test_a_per_try_timeout_without_retries_answers_504(monkeypatch: pytest.MonkeyPatch) -> None:
    r = rig(monkeypatch, retry_policy={"retry_on": "5xx", "num_retries": 0, "per_try_timeout": "0.1s"})
    r.send(GET)
    r.advance(0.15)
    assert r.client.take().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
    assert machine(r.stream, "up_state")[-1] == (U.AWAITING_RESPONSE, U.RESET)
    assert machine(r.stream, "rs_state") == [(S.NOT_STARTED, S.DONE)]


def test_trailers_cross_a_stream_both_ways_with_enable_trailers(monkeypatch: pytest.MonkeyPatch) -> None:
    r = Rig(monkeypatch, {"match": {"prefix": "/"}, "route": {"cluster": "up"}},
            hcm={"http_protocol_options": {"enable_trailers": True}}, http1={"enable_trailers": True})
    r.send(b"POST /a HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nx-sum: 7\r\n\r\n")
    assert r.upstreams[0][1].take().endswith(b"2\r\nhi\r\n0\r\nx-sum: 7\r\n\r\n")
    r.answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert r.client.take().endswith(b"2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n")
    assert r.stream.rs_state == ss.RS_DONE


def test_the_access_record_of_a_stream_sets_every_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """HcmRuntime.access_record makes its record without __init__ (cheaper): a field it forgot to store would
    be an AttributeError in whatever format or filter reads it."""
    from pylon.proxy.access_log import AccessLogRecord

    r = rig(monkeypatch)
    r.send(GET)
    r.answer(OK)
    record = r.hcm.access_record(r.stream, 0.002)
    missing = [name for name in AccessLogRecord.__slots__ if not hasattr(record, name)]
    assert missing == []
    assert (record.method, record.path, record.response_code, record.upstream_host, record.duration) == \
        ("GET", "/a", 200, "127.0.0.1:9", 2.0)
