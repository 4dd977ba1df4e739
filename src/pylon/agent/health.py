"""The agent's readiness endpoint (`/healthz/ready`, Istio's :15021): ready when the workload has
a certificate and the proxy says it is ready (its admin `/ready`), so traffic is only sent to a
workload that can terminate mTLS."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

_RESPONSES = {True: b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
              False: b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"}  # fmt: skip
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


async def serve_paths(host: str, port: int, pages: Mapping[bytes, Callable[[], Awaitable[bytes]]]) -> asyncio.Server:
    """A tiny HTTP/1.1 server for the agent's local endpoints: GET of a path in `pages` answers what its function
    returns (a whole response), anything else 404; one request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            parts = request_line.split()
            page = pages.get(parts[1].split(b"?")[0]) if len(parts) >= 2 and parts[0] == b"GET" else None
            writer.write(await page() if page is not None else _NOT_FOUND)
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def serve_health(host: str, port: int, ready: Callable[[], Awaitable[bool]]) -> asyncio.Server:
    async def page() -> bytes:
        return _RESPONSES[await ready()]

    return await serve_paths(host, port, {b"/healthz/ready": page})


async def http_status(host: str, port: int, path: str, method: str = "GET", timeout: float = 2.0) -> int | None:
    """The status code of a tiny HTTP/1.1 request to the proxy's admin, None when unreachable."""
    return (await http_request(host, port, path, method, timeout))[0]


async def http_request(host: str, port: int, path: str, method: str = "GET",
                       timeout: float = 2.0) -> tuple[int | None, bytes]:  # fmt: skip
    """(status, body) of a request to the proxy's admin (read to the connection's close); (None, b"") if
    unreachable."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return None, b""
    try:
        writer.write(f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                     .encode())  # fmt: skip
        response = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError):
        return None, b""
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    parts = head.split(b"\r\n", 1)[0].split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return status, body


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return bytes(out)
