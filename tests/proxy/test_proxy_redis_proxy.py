"""Integration: the redis_proxy network filter in front of real redis-servers, through pylon and through Envoy
1.40 with the same config and the same assertions (replies, what redis holds afterwards, stats).

Two redis-servers, each its own cluster, so that a split command (MGET, MSET, DEL) lands on both by prefix route
and its joined reply is deterministic in both proxies. The second server wants a password (requirepass), which
the cluster's RedisProtocolOptions give.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import free_port, stop_process_group, wait_for_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, wait_until

REDIS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy"
OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions"
UPSTREAM_PASSWORD = "up-secret"

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")


class Redis:
    """A redis-server on a free loopback port, nothing saved; stopped by PID."""

    def __init__(self, password: str | None = None) -> None:
        self.port = free_port()
        self.password = password
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if password:
            args += ["--requirepass", password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for_port(self.port, proc=self.proc)

    def command(self, *args: str) -> bytes:
        """One command straight to the server (authenticated if it wants it): its raw reply."""
        with RespClient(self.port) as client:
            if self.password:
                assert client.call("AUTH", self.password) == b"+OK\r\n"
            return client.call(*args)

    def close(self) -> None:
        stop_process_group(self.proc)


class RespClient:
    """A raw-socket RESP client: sends commands, reads exactly one reply each."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def __enter__(self) -> "RespClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sock.close()

    def send(self, *args: str) -> None:
        self.sock.sendall(encode(*args))

    def call(self, *args: str) -> bytes:
        self.send(*args)
        return self.reply()

    def reply(self) -> bytes:
        while True:
            end = _reply_end(self.buf, 0)
            if end is not None:
                reply, self.buf = self.buf[:end], self.buf[end:]
                return reply
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed; got {self.buf!r}")
            self.buf += data


def encode(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)


def _reply_end(buf: bytes, at: int) -> int | None:
    line_end = buf.find(b"\r\n", at)
    if line_end < 0:
        return None
    kind, head = buf[at:at + 1], buf[at + 1:line_end]
    after = line_end + 2
    if kind in (b"+", b"-", b":"):
        return after
    if kind == b"$":
        size = int(head)
        return after if size < 0 else (after + size + 2 if len(buf) >= after + size + 2 else None)
    assert kind == b"*", buf
    for _ in range(max(int(head), 0)):
        end = _reply_end(buf, after)
        if end is None:
            return None
        after = end
    return after


@pytest.fixture
def servers() -> Iterator[tuple[Redis, Redis]]:
    plain, locked = Redis(), Redis(UPSTREAM_PASSWORD)
    yield plain, locked
    plain.close()
    locked.close()


def cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "connect_timeout": "2s", "type": "STATIC", "load_assignment": {
        "cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
            "address": "127.0.0.1", "port_value": port}}}}]}]}, **extra}  # fmt: skip


def redis_listener(port: int, **fields: Any) -> dict[str, Any]:
    config = {"@type": REDIS_TYPE, "stat_prefix": "rs", "settings": {"op_timeout": "5s"},
              "prefix_routes": {"routes": [{"prefix": "b:", "cluster": "locked"}],
                                "catch_all_route": {"cluster": "plain"}}, **fields}
    return {"name": "redis", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.redis_proxy", "typed_config": config}]}]}


def start(launcher: ProxyLauncher, implementation: str, servers: tuple[Redis, Redis],
          **fields: Any) -> tuple[RunningProxy, int]:
    plain, locked = servers
    port = free_port()
    options = {"envoy.filters.network.redis_proxy": {"@type": OPTIONS_TYPE,
                                                     "auth_password": {"inline_string": UPSTREAM_PASSWORD}}}
    proxy = launcher.start([redis_listener(port, **fields)],
                           [cluster("plain", plain.port), cluster("locked", locked.port,
                                                                  typed_extension_protocol_options=options)],
                           implementation=implementation)
    wait_for_port(port)
    return proxy, port


@pytest.fixture(params=["pylon", "envoy"])
def implementation(request: pytest.FixtureRequest) -> str:
    return request.param


def command_stats(proxy: RunningProxy) -> dict[str, int]:
    return {name: value for name, value in proxy.stats().items()
            if name.startswith("redis.rs.") and value and "_bytes_" not in name and "_active" not in name}


def test_commands_split_and_joined(launcher: ProxyLauncher, implementation: str,
                                   servers: tuple[Redis, Redis]) -> None:
    proxy, port = start(launcher, implementation, servers)
    plain, locked = servers
    exchanges = [
        (("SET", "a:1", "x"), b"+OK\r\n"),
        (("SET", "b:1", "y"), b"+OK\r\n"),  # to the server that wants AUTH: the proxy sent it
        (("MSET", "a:2", "p", "b:2", "q"), b"+OK\r\n"),
        (("MGET", "a:1", "b:1", "a:2", "b:2", "none"), b"*5\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\np\r\n$1\r\nq\r\n$-1\r\n"),
        (("EXISTS", "a:1", "b:1", "none"), b":2\r\n"),
        (("DEL", "a:2", "b:2", "none"), b":2\r\n"),
        (("INCR", "b:n"), b":1\r\n"),
        (("HSET", "{h}a", "f", "v"), b":1\r\n"),
        (("PING",), b"+PONG\r\n"),
        (("ECHO", "hi"), b"$2\r\nhi\r\n"),
        (("GET",), b"-invalid request\r\n"),
        (("MSET", "a:3"), b"-wrong number of arguments for 'MSET' command\r\n"),
        (("EVAL", "return 1", "0"), b"-wrong number of arguments for 'EVAL' command\r\n"),
        (("EVAL", "return redis.call('get', KEYS[1])", "1", "a:1"), b"$1\r\nx\r\n"),
        (("FOO", "bar"), b"-ERR unknown command 'FOO', with args beginning with: bar\r\n"),
        (("AUTH", "x"), b"-ERR Client sent AUTH, but no password is set\r\n"),
        (("HELLO", "3"), b"-NOPROTO unsupported protocol version\r\n"),
    ]
    with RespClient(port) as client:
        for args, _ in exchanges:  # all at once: the replies come back in order (pipelining)
            client.send(*args)
        got = [client.reply() for _ in exchanges]
        assert got == [expected for _, expected in exchanges]
        assert client.call("QUIT") == b"+OK\r\n"
    assert plain.command("GET", "a:1") == b"$1\r\nx\r\n"
    assert plain.command("EXISTS", "a:2", "b:1") == b":0\r\n"
    assert locked.command("GET", "b:1") == b"$1\r\ny\r\n"
    assert locked.command("EXISTS", "b:2", "a:1") == b":0\r\n"
    assert locked.command("GET", "b:n") == b"$1\r\n1\r\n"
    assert plain.command("HGET", "{h}a", "f") == b"$1\r\nv\r\n"
    expected = {
        "redis.rs.downstream_cx_total": 1, "redis.rs.downstream_rq_total": len(exchanges) + 1,
        "redis.rs.command.set.total": 2, "redis.rs.command.set.success": 2,
        "redis.rs.command.mset.total": 2, "redis.rs.command.mset.success": 1, "redis.rs.command.mset.error": 1,
        "redis.rs.command.mget.total": 1, "redis.rs.command.mget.success": 1,
        "redis.rs.command.exists.total": 1, "redis.rs.command.exists.success": 1,
        "redis.rs.command.del.total": 1, "redis.rs.command.del.success": 1,
        "redis.rs.command.incr.total": 1, "redis.rs.command.incr.success": 1,
        "redis.rs.command.hset.total": 1, "redis.rs.command.hset.success": 1,
        "redis.rs.command.eval.total": 2, "redis.rs.command.eval.success": 1, "redis.rs.command.eval.error": 1,
        "redis.rs.command.hello.total": 1, "redis.rs.command.hello.error": 1,
        "redis.rs.splitter.invalid_request": 1, "redis.rs.splitter.unsupported_command": 1,
    }
    wait_until(lambda: command_stats(proxy) == expected, timeout=15)
    assert "redis.rs.command.zscore.total" in proxy.stats()  # every command's stats exist from the start


def test_downstream_auth(launcher: ProxyLauncher, implementation: str, servers: tuple[Redis, Redis]) -> None:
    proxy, port = start(launcher, implementation, servers,
                        downstream_auth_passwords=[{"inline_string": "one"}, {"inline_string": "two"}])
    with RespClient(port) as client:
        assert client.call("GET", "a:1") == b"-NOAUTH Authentication required.\r\n"
        assert client.call("PING") == b"-NOAUTH Authentication required.\r\n"
        assert client.call("SET", "a:1", "v") == b"-NOAUTH Authentication required.\r\n"
        assert client.call("AUTH", "wrong") == b"-ERR invalid password\r\n"
        assert client.call("AUTH", "two") == b"+OK\r\n"
        assert client.call("SET", "a:1", "v") == b"+OK\r\n"
        assert client.call("AUTH", "user", "two") == b"-WRONGPASS invalid username-password pair\r\n"
        assert client.call("GET", "a:1") == b"-NOAUTH Authentication required.\r\n"  # a failed AUTH takes it back
        assert client.call("AUTH", "one") == b"+OK\r\n"
        assert client.call("GET", "a:1") == b"$1\r\nv\r\n"
    assert servers[0].command("GET", "a:1") == b"$1\r\nv\r\n"
    wait_until(lambda: command_stats(proxy).get("redis.rs.command.set.total") == 1, timeout=15)


def test_downstream_auth_with_username(launcher: ProxyLauncher, implementation: str,
                                       servers: tuple[Redis, Redis]) -> None:
    _, port = start(launcher, implementation, servers, downstream_auth_username={"inline_string": "me"},
                    downstream_auth_passwords=[{"inline_string": "pw"}])
    with RespClient(port) as client:
        assert client.call("AUTH", "other", "pw") == b"-WRONGPASS invalid username-password pair\r\n"
        assert client.call("GET", "a:1") == b"-NOAUTH Authentication required.\r\n"
        assert client.call("AUTH", "me", "pw") == b"+OK\r\n"
        assert client.call("GET", "a:1") == b"$-1\r\n"


def test_upstream_failure_and_no_route(launcher: ProxyLauncher, implementation: str,
                                       servers: tuple[Redis, Redis]) -> None:
    servers[1].close()  # the "b:" cluster's server is gone
    _, port = start(launcher, implementation, servers)
    with RespClient(port) as client:
        assert client.call("GET", "b:1") == b"-upstream failure\r\n"
        assert client.call("MGET", "a:1", "b:1") == b"*2\r\n$-1\r\n-upstream failure\r\n"
        assert client.call("DEL", "a:1", "b:1") == b"-finished with 1 error(s)\r\n"
        assert client.call("MSET", "a:1", "1", "b:1", "2") == b"-finished with 1 error(s)\r\n"
        assert client.call("GET", "a:1") == b"$1\r\n1\r\n"


def test_error_fault(launcher: ProxyLauncher, implementation: str, servers: tuple[Redis, Redis]) -> None:
    proxy, port = start(launcher, implementation, servers, faults=[{
        "fault_type": "ERROR", "commands": ["get"],
        "fault_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}])
    with RespClient(port) as client:
        assert client.call("SET", "a:1", "v") == b"+OK\r\n"
        assert client.call("GET", "a:1") == b"-Fault Injected: Error\r\n"
    wait_until(lambda: command_stats(proxy).get("redis.rs.command.get.error_fault") == 1, timeout=15)
    assert command_stats(proxy).get("redis.rs.command.get.total") == 1


def test_delay_fault(launcher: ProxyLauncher, implementation: str, servers: tuple[Redis, Redis]) -> None:
    """A delay fault holds the reply (the command itself goes upstream): at least the delay, never an error."""
    proxy, port = start(launcher, implementation, servers, faults=[{
        "fault_type": "DELAY", "delay": "1s", "commands": ["GET"],
        "fault_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}}])
    with RespClient(port) as client:
        assert client.call("SET", "a:1", "v") == b"+OK\r\n"
        started = time.monotonic()
        assert client.call("GET", "a:1") == b"$1\r\nv\r\n"
        assert time.monotonic() - started >= 0.95
    wait_until(lambda: command_stats(proxy).get("redis.rs.command.get.delay_fault") == 1, timeout=15)
    assert command_stats(proxy).get("redis.rs.command.get.success") == 1


def test_upstream_credentials_per_address(launcher: ProxyLauncher, implementation: str,
                                          servers: tuple[Redis, Redis]) -> None:
    """`credentials` for the host's address win over the cluster's own (wrong here) username and password."""
    plain, locked = servers
    port = free_port()
    options = {"envoy.filters.network.redis_proxy": {
        "@type": OPTIONS_TYPE, "auth_username": {"inline_string": "default"},
        "auth_password": {"inline_string": "wrong"},
        "credentials": [{"address": {"socket_address": {"address": "127.0.0.1", "port_value": locked.port}},
                         "auth_username": {"inline_string": "default"},
                         "auth_password": {"inline_string": UPSTREAM_PASSWORD}}]}}
    launcher.start([redis_listener(port)], [cluster("plain", plain.port), cluster(
        "locked", locked.port, typed_extension_protocol_options=options)], implementation=implementation)
    wait_for_port(port)
    with RespClient(port) as client:
        assert client.call("SET", "b:1", "v") == b"+OK\r\n"
    assert locked.command("GET", "b:1") == b"$1\r\nv\r\n"


def test_wrong_upstream_password_shows_in_the_replies(launcher: ProxyLauncher, implementation: str,
                                                      servers: tuple[Redis, Redis]) -> None:
    """The AUTH reply is passed over: the commands get the upstream's NOAUTH (and count as answered)."""
    plain, locked = servers
    port = free_port()
    options = {"envoy.filters.network.redis_proxy": {"@type": OPTIONS_TYPE,
                                                     "auth_password": {"inline_string": "wrong"}}}
    launcher.start([redis_listener(port)], [cluster("plain", plain.port), cluster(
        "locked", locked.port, typed_extension_protocol_options=options)], implementation=implementation)
    wait_for_port(port)
    with RespClient(port) as client:
        assert client.call("SET", "b:1", "v").startswith(b"-NOAUTH")
    assert locked.command("EXISTS", "b:1") == b":0\r\n"


def test_op_timeout(launcher: ProxyLauncher, implementation: str, servers: tuple[Redis, Redis]) -> None:
    """An upstream that never answers: after op_timeout the command fails, and the next one gets a new connection."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (the kernel does) and never answers
    try:
        port = free_port()
        launcher.start([redis_listener(port, settings={"op_timeout": "0.5s"})],
                       [cluster("plain", servers[0].port), cluster("locked", silent.getsockname()[1])],
                       implementation=implementation)
        wait_for_port(port)
        with RespClient(port) as client:
            started = time.monotonic()
            assert client.call("GET", "b:1") == b"-upstream failure\r\n"
            assert time.monotonic() - started >= 0.45
            assert client.call("SET", "a:1", "v") == b"+OK\r\n"  # the other cluster was never held up
    finally:
        silent.close()
