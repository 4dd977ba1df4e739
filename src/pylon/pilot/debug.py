"""istiod's HTTP side: `/ready` and `/debug/*` on the debug port (8080), `/metrics` on monitoring (15014).

`DebugHandler` is sans-IO (method and target in, status/type/body out);
`serve_http` is the thin asyncio server in front of it: one request per
connection, answered and closed (these are tools' and humans' endpoints).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pylon.pilot.gen.types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from pylon.pilot.metrics import PilotMetrics
from pylon.pilot.xds.server import AdsServer

log = logging.getLogger("pylon.pilot.debug")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Reply(NamedTuple):
    status: int
    content_type: str
    body: bytes


def _json(status: int, value: Any) -> Reply:
    return Reply(status, "application/json", json.dumps(value, indent=2, sort_keys=False).encode() + b"\n")


def _text(status: int, text: str) -> Reply:
    return Reply(status, "text/plain; charset=utf-8", text.encode() + b"\n")


class DebugHandler:
    """Answers the debug and monitoring endpoints from the ADS server's connections and the current config."""

    def __init__(self, ads: AdsServer, metrics: PilotMetrics, ready: Callable[[], bool], version: Callable[[], str]) -> None:
        self.ads = ads
        self.metrics = metrics
        self.ready = ready
        self.version = version

    def handle(self, method: str, target: str) -> Reply:
        if method not in ("GET", "HEAD"):
            return _text(405, "only GET is supported")
        url = urlsplit(target)
        query = parse_qs(url.query)
        routes: dict[str, Callable[[dict[str, list[str]]], Reply]] = {
            "/ready": self._ready,
            "/debug/syncz": self._syncz,
            "/debug/connections": self._connections,
            "/debug/config_dump": self._config_dump,
            "/metrics": self._metrics,
        }
        endpoint = routes.get(url.path)
        if endpoint is None:
            return _text(404, f"no such endpoint {url.path}; try {', '.join(routes)}")
        return endpoint(query)

    def _ready(self, query: dict[str, list[str]]) -> Reply:
        return _text(200, "ready") if self.ready() else _text(503, "no config loaded yet")

    def _syncz(self, query: dict[str, list[str]]) -> Reply:
        """Istio's sync status: per proxy and type, the version sent, the version ACKed and the last NACK."""
        out = []
        for connection in self.ads.connections.values():
            proxy = connection.stream.proxy
            assert proxy is not None
            out.append({"proxy": proxy.node_id, "connection": connection.id, "config_version": self.version(),
                        "types": connection.stream.status()})  # fmt: skip
        return _json(200, out)

    def _connections(self, query: dict[str, list[str]]) -> Reply:
        out = []
        for connection in self.ads.connections.values():
            proxy = connection.stream.proxy
            assert proxy is not None
            out.append({"connection": connection.id, "peer": connection.peer, "proxy": proxy.node_id, "type": proxy.type,
                        "namespace": proxy.namespace, "labels": proxy.labels,
                        "connected_at": connection.stream.connected_at})  # fmt: skip
        return _json(200, out)

    def _config_dump(self, query: dict[str, list[str]]) -> Reply:
        """The resources pilot generates for a connected proxy; `proxyID` is `pod.namespace` or the full node id."""
        wanted = (query.get("proxyID") or [""])[0]
        if not wanted:
            return _text(400, "give ?proxyID=<pod>.<namespace> (or the full node id)")
        for connection in self.ads.connections.values():
            proxy = connection.stream.proxy
            if proxy is not None and wanted in (proxy.id, proxy.node_id):
                resources, version = self.ads.generate(proxy)
                return _json(200, {
                    "proxy": proxy.node_id,
                    "version_info": version,
                    **{key: list(resources.get(type_url, {}).values())
                       for key, type_url in (("listeners", LISTENER), ("routes", ROUTE), ("clusters", CLUSTER),
                                             ("endpoints", ENDPOINT))},
                })  # fmt: skip
        return _text(404, f"no connected proxy {wanted!r}")

    def _metrics(self, query: dict[str, list[str]]) -> Reply:
        return Reply(200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry))


async def serve_http(host: str, port: int, handler: DebugHandler) -> asyncio.Server:
    """Listen on host:port and answer each connection's one request with `handler`."""

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            reply = handler.handle(method, target)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            reply = _text(400, "malformed request")
            method = "GET"
        body = b"" if method == "HEAD" else reply.body
        writer.write(
            f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\ncontent-type: {reply.content_type}\r\n"
            f"content-length: {len(reply.body)}\r\nconnection: close\r\n\r\n".encode() + body
        )
        try:
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(on_connection, host, port)
