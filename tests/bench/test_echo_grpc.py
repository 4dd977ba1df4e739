"""`pylon echo -grpc-port`: Fortio's ping and health services, called by a grpcio client (not pylon's)."""

from __future__ import annotations

import time

import grpc
import pytest

from pylon.bench.grpc_messages import (
    HEALTH_METHOD, PING_METHOD, HealthCheckRequest, HealthCheckResponse, PingMessage,
)
from tests.conftest import free_port, wait_for_port


def start_grpc_echo(start_echo, *args: str):
    grpc_port = free_port()
    echo = start_echo("-grpc-port", str(grpc_port), *args)
    wait_for_port(grpc_port, proc=echo.proc)
    return echo, grpc.insecure_channel(f"127.0.0.1:{grpc_port}")


def test_ping_returns_the_message_with_the_server_time_after_the_delay(start_echo) -> None:
    echo, channel = start_grpc_echo(start_echo)
    with channel:
        ping = channel.unary_unary(PING_METHOD, request_serializer=PingMessage.SerializeToString,
                                   response_deserializer=PingMessage.FromString)
        before = time.time_ns()
        reply = ping(PingMessage(seq=42, ts=7, payload="hello fortio", delayNanos=0), timeout=10)
        assert (reply.seq, reply.payload, reply.delayNanos) == (42, "hello fortio", 0)
        assert before <= reply.ts <= time.time_ns()
        started = time.monotonic()
        reply = ping(PingMessage(seq=43, delayNanos=200_000_000), timeout=10)
        assert time.monotonic() - started >= 0.2 and reply.seq == 43 and reply.delayNanos == 200_000_000
    assert echo.stats()["grpc_rq_total"] == 2


def test_health_as_fortio_registers_it(start_echo) -> None:
    echo, channel = start_grpc_echo(start_echo)
    with channel:
        check = channel.unary_unary(HEALTH_METHOD, request_serializer=HealthCheckRequest.SerializeToString,
                                    response_deserializer=HealthCheckResponse.FromString)
        assert check(HealthCheckRequest(service=""), timeout=10).status == 1  # SERVING
        assert check(HealthCheckRequest(service="ping"), timeout=10).status == 1
        assert check(HealthCheckRequest(service="ping_down"), timeout=10).status == 2  # NOT_SERVING
        with pytest.raises(grpc.RpcError) as err:
            check(HealthCheckRequest(service="nope"), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary("/fgrpc.PingServer/Nope")(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert echo.stats()["grpc_rq_total"] == 4


def test_grpc_beside_forked_http_workers(start_echo) -> None:
    """With --concurrency the gRPC server starts after the fork, in the parent; both sides serve and count."""
    echo, channel = start_grpc_echo(start_echo, "--concurrency", "2")
    with channel:
        ping = channel.unary_unary(PING_METHOD, request_serializer=PingMessage.SerializeToString,
                                   response_deserializer=PingMessage.FromString)
        assert [ping(PingMessage(seq=i), timeout=10).seq for i in range(5)] == list(range(5))
    stats = echo.stats()
    assert stats["grpc_rq_total"] == 5 and stats["downstream_rq_total"] == 0
    assert "grpc_rq_total 5" in echo.stop()


def test_a_taken_grpc_port_is_a_clear_error(start_echo, spawn) -> None:
    import socket
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = spawn([sys.executable, "-m", "pylon.bench.cli", "echo", "--host", "127.0.0.1", "--port",
                      str(free_port()), "--grpc-port", str(port)])
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0 and b"gRPC port" in out
