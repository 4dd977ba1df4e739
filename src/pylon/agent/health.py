"""The agent's readiness endpoint (`/healthz/ready`, Istio's :15021): ready when the workload has
a certificate and the proxy says it is ready (its admin `/ready`), so traffic is only sent to a
workload that can terminate mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

_RESPONSES = {True: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
              False: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"}  # fmt: skip
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


async def serve_health(host: str, port: int, ready: Callable[[], Awaitable[bool]]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            parts = request_line.split()
            if len(parts) >= 2 and parts[0] == b"GET" and parts[1] == b"/healthz/ready":
                writer.write(_RESPONSES[await ready()])
            else:
                writer.write(_NOT_FOUND)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def http_status(host: str, port: int, path: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """The status code of a tiny HTTP/1.1 request to the proxy's admin, None when unreachable."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (OSError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()
