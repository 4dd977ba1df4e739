"""The redis_proxy terminal: a client connection's commands, served in order (Envoy's ProxyFilter).

Each command is answered by the proxy (AUTH, PING, ECHO, TIME, QUIT, HELLO, refusals), or split into upstream
commands (`splitter.py`) sent on the worker's connection to the host the cluster's balancer picks for the key
(`client.py`). Replies go back in request order whatever order the upstreams answer in (pipelining). With
`downstream_auth_password(s)`, every command but AUTH and QUIT is answered NOAUTH until the client's AUTH matched,
with Envoy's texts; a failed AUTH takes back an earlier success, as in Envoy.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import Any

from pylon.config.datasource import read_bytes
from pylon.extensions.filters.network.redis_proxy import resp
from pylon.extensions.filters.network.redis_proxy.client import UpstreamClient
from pylon.extensions.filters.network.redis_proxy.commands import SUPPORTED, kind
from pylon.extensions.filters.network.redis_proxy.config import OPTIONS_KEY, RedisProxy
from pylon.extensions.filters.network.redis_proxy.faults import Faults
from pylon.extensions.filters.network.redis_proxy.splitter import (
    INVALID_REQUEST,
    NO_UPSTREAM_HOST,
    UPSTREAM_FAILURE,
    Router,
    Split,
    join,
    split,
    unknown_command,
)
from pylon.proxy.connection_info import ConnectionInfo
from pylon.proxy.filters.network import run_filters
from pylon.proxy.tls_stats import tls_accepted

NOAUTH = "NOAUTH Authentication required."


class CommandStats:
    __slots__ = ("total", "success", "error", "error_fault", "delay_fault")

    def __init__(self, stats: Any, prefix: str) -> None:
        for name in self.__slots__:
            setattr(self, name, stats.counter(prefix + name))


class RedisRuntime:
    """One redis_proxy config compiled for one worker (and one filter chain)."""

    def __init__(self, config: RedisProxy, worker: Any) -> None:
        self.worker = worker
        self.clusters = worker.clusters  # kept current by CDS: looked up per command
        self.settings = config.settings
        self.router = Router(config.prefix_routes)
        self.hashtagging = config.settings.enable_hashtagging  # type: ignore[union-attr]
        passwords = list(config.downstream_auth_passwords)
        if config.downstream_auth_password is not None:
            passwords.append(config.downstream_auth_password)
        self.passwords = {read_bytes(source) for source in passwords}
        self.username = read_bytes(config.downstream_auth_username) \
            if config.downstream_auth_username is not None else None
        self.faults = Faults(config.faults, random.Random())
        # this filter's connection per upstream host (its op_timeout and flush settings are the filter's own, as
        # Envoy keeps a connection pool per filter config and cluster)
        self.clients: dict[tuple[int, Any], UpstreamClient] = {}
        stats = worker.stats
        prefix = f"redis.{config.stat_prefix}."
        for name in ("downstream_cx_total", "downstream_cx_rx_bytes_total", "downstream_cx_tx_bytes_total",
                     "downstream_cx_protocol_error", "downstream_cx_drain_close", "downstream_rq_total",
                     "downstream_rq_noproto"):
            setattr(self, name, stats.counter(prefix + name))
        for name in ("downstream_cx_active", "downstream_rq_active", "downstream_cx_rx_bytes_buffered",
                     "downstream_cx_tx_bytes_buffered"):
            setattr(self, name, stats.gauge(prefix + name))
        self.rq_active = self.downstream_rq_active  # the worker's load estimate reads it
        self.invalid_request = stats.counter(prefix + "splitter.invalid_request")
        self.unsupported_command = stats.counter(prefix + "splitter.unsupported_command")
        self.commands = {name: CommandStats(stats, f"{prefix}command.{name}.") for name in SUPPORTED}
        self.peer_check: Any = None  # set by the listener when TLS validates client certificates
        self.tls_stats: Any = None  # set by the listener on a TLS chain
        self.network_filters: list[Any] = []

    def upstream_auth(self, cluster: Any, host: Any) -> list[bytes] | None:
        """The AUTH command a new connection to `host` sends first (RedisProtocolOptions), or None."""
        options = cluster.config.typed_extension_protocol_options.get(OPTIONS_KEY)
        if options is None:
            return None
        username, password = options.auth_username, options.auth_password
        for entry in options.credentials:
            where = entry.address.socket_address
            if where.port_value == host.address[1] and where.address in (host.address[0], host.hostname):
                username, password = entry.auth_username, entry.auth_password
                break
        if password is None:
            return None
        args = [b"auth"]
        if username is not None:
            args.append(read_bytes(username))
        args.append(read_bytes(password))
        return args

    def client(self, cluster_name: str, hash_key: bytes) -> UpstreamClient | None:
        cluster = self.clusters.get(cluster_name)
        if cluster is None:
            return None
        host = cluster.choose_host(hash_key)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            return None
        key = (id(cluster), host.address)
        client = self.clients.get(key)
        if client is None:
            client = self.clients[key] = UpstreamClient(cluster, host, self.upstream_auth(cluster, host),
                                                        self.settings, self.clients)
        return client


class Pending:
    """One client command in flight: its fragments' replies, then the reply the client gets."""

    __slots__ = ("plan", "replies", "failures", "remaining", "reply", "close_after", "stats", "delay")

    def __init__(self, plan: Split | None, reply: resp.Reply | None = None, close_after: bool = False) -> None:
        self.plan = plan
        self.replies: list[resp.Reply | None] = [None] * len(plan.fragments) if plan is not None else []
        self.failures = 0
        self.remaining = len(self.replies)
        self.reply = reply
        self.close_after = close_after
        self.stats: CommandStats | None = None
        self.delay = 0.0  # a delay fault: the reply waits this long once it is there


class RedisSession(asyncio.Protocol):
    def __init__(self, runtime: RedisRuntime) -> None:
        self.runtime = runtime
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.decoder = resp.Decoder()  # clients may send any RESP value: what is no command is refused
        self.authenticated = not runtime.passwords
        self.pending: deque[Pending] = deque()
        self.closed = False
        self.connection_id = 0
        self.runtime_listener: Any = None
        self.detected: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        rt = self.runtime
        worker = rt.worker
        self.connection_id = worker.next_connection_id()
        rt.downstream_cx_total.value += 1
        rt.downstream_cx_active.value += 1
        worker.connection_opened(self)
        if rt.tls_stats is not None and not tls_accepted(transport, rt.peer_check, rt.tls_stats):
            self.close()
            return
        if rt.network_filters and run_filters(rt.network_filters, _info(self)) is False:
            self.close()

    def data_received(self, data: bytes) -> None:
        rt = self.runtime
        rt.downstream_cx_rx_bytes_total.value += len(data)
        try:
            values = self.decoder.feed(data)
        except resp.ProtocolError:
            rt.downstream_cx_protocol_error.value += 1
            self.close()
            return
        for value in values:
            if self.closed:
                return
            rt.downstream_rq_total.value += 1
            self._command(value)
        self._write_ready()

    def _command(self, value: resp.Reply) -> None:
        rt = self.runtime
        args = _arguments(value)
        if not args:
            rt.invalid_request.value += 1
            self._answer(resp.error(INVALID_REQUEST))
            return
        name = args[0].decode("utf-8", "replace").lower()
        if name == "auth":
            self._answer(self._auth(args))
            return
        if name == "quit":
            self.pending.append(Pending(None, resp.simple("OK"), close_after=True))
            return
        if kind(name) == "unknown":
            rt.unsupported_command.value += 1
            self._answer(resp.error(unknown_command(args)))
            return
        if not self.authenticated:
            self._answer(resp.error(NOAUTH))
            return
        if name == "ping":
            self._answer(resp.simple("PONG"))
        elif name == "echo":
            if len(args) != 2:
                rt.invalid_request.value += 1
            self._answer(resp.bulk(args[1]) if len(args) == 2 else resp.error(INVALID_REQUEST))
        elif name == "time":
            now = time.time()
            self._answer(resp.array([resp.bulk(b"%d" % int(now)), resp.bulk(b"%d" % int(now * 1_000_000))]))
        elif name == "hello":
            stats = rt.commands["hello"]
            stats.total.value += 1
            stats.error.value += 1
            self._answer(resp.error("NOPROTO unsupported protocol version"))
        else:
            self._split(args)

    def _auth(self, args: list[bytes]) -> resp.Reply:
        rt = self.runtime
        if len(args) not in (2, 3):
            rt.invalid_request.value += 1
            return resp.error(INVALID_REQUEST)
        if not rt.passwords:
            return resp.error("ERR Client sent AUTH, but no password is set")
        if len(args) == 2:
            self.authenticated = rt.username is None and args[1] in rt.passwords
            return resp.simple("OK") if self.authenticated else resp.error("ERR invalid password")
        self.authenticated = args[1] == rt.username and args[2] in rt.passwords
        return resp.simple("OK") if self.authenticated else resp.error("WRONGPASS invalid username-password pair")

    def _split(self, args: list[bytes]) -> None:
        rt = self.runtime
        plan = split(args, rt.router, rt.hashtagging)
        if plan.unsupported:
            rt.unsupported_command.value += 1
        if plan.invalid:
            rt.invalid_request.value += 1
        stats = rt.commands.get(plan.command) if plan.command else None
        if stats is not None:
            stats.total.value += 1
        if plan.reply is not None:
            if stats is not None:
                stats.error.value += 1
            self._answer(plan.reply)
            return
        pending = Pending(plan)
        pending.stats = stats
        self.pending.append(pending)
        rt.downstream_rq_active.value += 1
        fault = rt.faults.pick(plan.command)
        if fault is not None and fault.error:
            if stats is not None:
                stats.error_fault.value += 1
            self._finish(pending, resp.error("Fault Injected: Error"), success=False)
            return
        if fault is not None:
            if stats is not None:
                stats.delay_fault.value += 1
            pending.delay = fault.delay
        self._send(pending)

    def _send(self, pending: Pending) -> None:
        rt = self.runtime
        assert pending.plan is not None
        for index, fragment in enumerate(pending.plan.fragments):
            client = rt.client(fragment.cluster, fragment.hash_key) if fragment.cluster else None
            if client is None:
                self._fragment_done(pending, index, None, NO_UPSTREAM_HOST)
            else:
                client.send(fragment.args, lambda reply, i=index: self._fragment_done(pending, i, reply))

    def _fragment_done(self, pending: Pending, index: int, reply: resp.Reply | None,
                       failure: str = UPSTREAM_FAILURE) -> None:
        if reply is None:
            reply = resp.error(failure)
            pending.failures += 1
        pending.replies[index] = reply
        pending.remaining -= 1
        if pending.remaining or pending.reply is not None:
            return
        assert pending.plan is not None
        joined, success = join(pending.plan, pending.replies, pending.failures)  # type: ignore[arg-type]
        if pending.delay:
            self.runtime.worker.loop.call_later(pending.delay, self._delayed, pending, joined, success)
            return
        self._finish(pending, joined, success)
        self._write_ready()

    def _delayed(self, pending: Pending, joined: resp.Reply, success: bool) -> None:
        if pending.reply is None:  # else the client left meanwhile
            self._finish(pending, joined, success)
            self._write_ready()

    def _finish(self, pending: Pending, reply: resp.Reply, success: bool) -> None:
        self.runtime.downstream_rq_active.value -= 1
        if pending.stats is not None:
            (pending.stats.success if success else pending.stats.error).value += 1
        pending.reply = reply

    def _answer(self, reply: resp.Reply) -> None:
        self.pending.append(Pending(None, reply))

    def _write_ready(self) -> None:
        """Write the replies now known at the head of the queue (the ones behind a slower command wait)."""
        if self.closed:
            return
        out = []
        close = False
        pending = self.pending
        while pending and pending[0].reply is not None:
            done = pending.popleft()
            out.append(done.reply.raw)  # type: ignore[union-attr]
            if done.close_after:
                close = True
                break
        if out:
            data = b"".join(out)
            self.runtime.downstream_cx_tx_bytes_total.value += len(data)
            self.transport.write(data)
        if close:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        rt = self.runtime
        if self.connection_id == 0:
            return
        self.closed = True
        for pending in self.pending:
            if pending.reply is None and pending.plan is not None:
                rt.downstream_rq_active.value -= 1
                pending.reply = resp.error(UPSTREAM_FAILURE)  # its late replies change nothing now
        rt.downstream_cx_active.value -= 1
        rt.worker.connection_closed(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def drain(self, close_idle: bool = True) -> None:
        """Like TCP, RESP has no way to ask a client to leave: the connection runs until the drain time ends."""


def _arguments(value: resp.Reply) -> list[bytes] | None:
    """A request's arguments: an array of bulk strings, else None (Envoy's "invalid request")."""
    if value.kind != resp.ARRAY or not value.value:
        return None
    args = []
    for item in value.value:  # type: ignore[union-attr]
        if item.kind != resp.BULK or item.value is None:
            return None
        args.append(item.value)
    return args


def _info(session: RedisSession) -> ConnectionInfo:
    transport = session.transport
    detected = session.detected
    return ConnectionInfo(session.connection_id, transport.get_extra_info("sockname"),
                          transport.get_extra_info("peername"), transport.get_extra_info("ssl_object"),
                          detected.server_name if detected is not None else "", transport.get_extra_info("peername"))
