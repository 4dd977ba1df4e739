"""`pylon echo -grpc-port`: Fortio's gRPC ping and health services, on grpcio.

What `fortio server` registers on its gRPC port (fgrpc/pingsrv.go):
- `/fgrpc.PingServer/Ping` answers the message it got with `ts` replaced by
  the server's receive time (ns since the epoch), after sleeping `delayNanos`
  when it is positive (here a coroutine sleeps, not a thread);
- `/grpc.health.v1.Health/Check`: the overall service "" and "ping" are
  SERVING, "ping_down" is NOT_SERVING, any other name is NOT_FOUND, as
  grpc-go's health server answers.

The server runs grpc.aio on an asyncio loop in a thread of its own, so the
HTTP side's uvloop workers are untouched. gRPC keeps threads and locks that
a fork would copy half-held, so the echo process starts it only after
forking its HTTP workers (and imports grpcio only then). Each call counts in
the shared `grpc_rq_total` counter, so a load run can be checked against it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

from pylon.bench.grpc_messages import (
    NOT_SERVING, SERVING, HealthCheckRequest, HealthCheckResponse, PingMessage,
)

#: Fortio's health statuses: its default health service name "ping", and "ping_down".
HEALTH_STATUSES = {"": SERVING, "ping": SERVING, "ping_down": NOT_SERVING}


class GrpcPingServer:
    """The gRPC services on `host:port` (0 picks a free port), served from a background thread."""

    def __init__(self, host: str, port: int, count: Callable[[], None]) -> None:
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.count = count
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-ping", daemon=True)
        self._server: Any = None

    def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises OSError when the port cannot be bound."""
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.port

    async def _start(self) -> int:
        import grpc  # imported here: never in a process that forks afterwards

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler("fgrpc.PingServer", {
                "Ping": grpc.unary_unary_rpc_method_handler(
                    self._ping, request_deserializer=PingMessage.FromString,
                    response_serializer=PingMessage.SerializeToString)}),
            grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
                "Check": grpc.unary_unary_rpc_method_handler(
                    self._check, request_deserializer=HealthCheckRequest.FromString,
                    response_serializer=HealthCheckResponse.SerializeToString)}),
        ])
        try:
            port = server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpcio's way of saying the bind failed
            raise OSError(f"cannot bind gRPC port {self.address}: {exc}") from None
        await server.start()
        self._server = server
        return port

    async def _ping(self, request: Any, context: Any) -> Any:
        self.count()
        reply = PingMessage()
        reply.CopyFrom(request)
        reply.ts = time.time_ns()
        if request.delayNanos > 0:
            await asyncio.sleep(request.delayNanos / 1e9)
        return reply

    async def _check(self, request: Any, context: Any) -> Any:
        import grpc

        self.count()
        status = HEALTH_STATUSES.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return HealthCheckResponse(status=status)

    def stop(self) -> None:
        """Stop serving (calls in flight get a second) and end the thread."""
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.stop(1.0), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
