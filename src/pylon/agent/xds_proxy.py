"""The agent's xDS proxy (Istio's `pkg/istio-agent/xds_proxy.go`): the proxy's ADS goes to a Unix socket the
agent serves, and the agent carries each stream to pilot's TLS port with its own credentials.

Why a relay rather than pointing the proxy at pilot: the proxy then needs no credentials for the control
plane (Istio's Envoy bootstrap has none), pilot sees the workload's service-account token on every stream
(so it can hand gateway secrets to it and to no one else), and the token is re-read from its file for each
new stream, so a rotated projected token is picked up without restarting the proxy.

Streams are relayed as raw bytes (identity (de)serializers): the agent never decodes or re-encodes a
resource, except Secrets when its keys live in keyd or a PKCS#11 token: then `rewriter` moves each inline
credential key there before the proxy sees it (secret_rewrite.py). With DNS capture on (`on_name_table`), the
agent also subscribes to pilot's DNS name table on each state-of-the-world stream, after the proxy's first
request (which names the node), as Istio's xDS proxy does: NameTable responses go to the DNS proxy and are
ACKed by the agent, never to the proxy, which did not ask for them. Either side ending ends the other with a
status that says why, and the proxy reconnects with its own backoff, as it does when istiod goes away. One
upstream channel (one TLS connection, one HTTP/2 connection) carries every stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse
from pylon.agent.dns_table import NameInfo
from pylon.agent.secret_rewrite import SecretRewriter
from pylon.identity.authority import SERVING_DNS_NAMES
from pylon.xds.nds import NAME_TABLE, NameTable

log = logging.getLogger("pylon.agent.xds_proxy")

ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"
ADS_METHODS = ("StreamAggregatedResources", "DeltaAggregatedResources")

_stream_ids = itertools.count(1)
_UNLIMITED = -1  # responses (a whole config) may exceed gRPC's 4 MiB default; Istio lifts the limit too


class TokenError(Exception):
    """The token to authenticate to pilot with cannot be had; the stream is not opened without one."""


def read_token(path: Path) -> str:
    """The service-account token in `path`, as it is now (projected tokens are rotated in place)."""
    try:
        token = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenError(f"cannot read token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not token:
        raise TokenError(f"token file {path} is empty")
    return token


def upstream_metadata(token: str, cluster_id: str) -> tuple[tuple[str, str], ...]:
    """What Istio's agent attaches to each upstream xDS stream: the bearer token and its cluster id."""
    return (("authorization", f"Bearer {token}"), ("clusterid", cluster_id))


@dataclass
class XdsProxy:
    """ADS on a Unix socket, relayed to `upstream` (pilot's TLS xDS) verified against `root_pem` for
    `server_name` whatever the address is, authenticated with the token read from `token_file` per stream."""

    upstream: str
    root_pem: bytes
    token_file: Path
    cluster_id: str = "Kubernetes"
    server_name: str = SERVING_DNS_NAMES[0]
    rewriter: SecretRewriter | None = None  # credential keys out of Secrets, when the agent's keys live elsewhere
    on_name_table: Callable[[dict[str, NameInfo]], None] | None = None  # the DNS proxy's, with DNS capture on
    server: grpc.aio.Server | None = None
    channel: grpc.aio.Channel | None = None

    async def start(self, socket_path: Path) -> None:
        """Serve on `socket_path` (its directory is created; a stale socket file is replaced)."""
        credentials = grpc.ssl_channel_credentials(root_certificates=self.root_pem)
        self.channel = grpc.aio.secure_channel(self.upstream, credentials, options=[
            ("grpc.ssl_target_name_override", self.server_name),
            ("grpc.max_receive_message_length", _UNLIMITED),
        ])  # fmt: skip
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        socket_path.unlink(missing_ok=True)
        self.server = grpc.aio.server()
        handlers = {name: grpc.stream_stream_rpc_method_handler(self._handler(name)) for name in ADS_METHODS}
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ADS_SERVICE, handlers),))
        self.server.add_insecure_port(f"unix:{socket_path}")
        await self.server.start()
        log.info("xDS proxy on %s, relaying to %s (TLS, %s)", socket_path, self.upstream, self.server_name)

    async def stop(self) -> None:
        """Stop serving (open streams end, so the proxy, if still running, reconnects) and close the channel."""
        if self.server is not None:
            await self.server.stop(grace=0.5)
        if self.channel is not None:
            await self.channel.close()

    def _handler(self, method: str) -> Callable[[object, grpc.aio.ServicerContext], object]:
        """A coroutine handler: grpcio then leaves the stream to context.read()/write(), which lets one task
        read the proxy's requests while another writes pilot's responses."""

        async def relay(_requests: object, context: grpc.aio.ServicerContext) -> None:
            await self.relay(method, context)

        return relay

    async def relay(self, method: str, downstream: grpc.aio.ServicerContext) -> None:
        """One proxy stream to one new pilot stream, both ways, until either side ends."""
        assert self.channel is not None, "start() first"
        stream_id = next(_stream_ids)
        try:
            metadata = upstream_metadata(read_token(self.token_file), self.cluster_id)
        except TokenError as exc:
            log.error("xDS stream %d (%s) not relayed: %s", stream_id, method, exc)
            await downstream.abort(grpc.StatusCode.UNAUTHENTICATED, f"pylon agent: {exc}")
        upstream = self.channel.stream_stream(f"/{ADS_SERVICE}/{method}")(metadata=metadata)
        log.info("xDS stream %d (%s) relayed to %s", stream_id, method, self.upstream)
        writes = asyncio.Lock()  # the proxy's requests and the agent's NDS ACKs share the upstream stream
        tap = _NameTableTap(upstream, writes, self.on_name_table) if self._taps(method) else None
        up = asyncio.create_task(_pump_up(downstream, upstream, writes, tap))
        down = asyncio.create_task(_pump_down(upstream, downstream, method, self.rewriter, tap))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            ended_by_pilot = upstream.done()
            if ended_by_pilot:
                code, details = await _upstream_status(upstream)
        except asyncio.CancelledError:
            log.info("xDS stream %d (%s) ended by the proxy", stream_id, method)
            raise
        finally:
            for task in (up, down):
                task.cancel()
            upstream.cancel()
        if not ended_by_pilot:  # the proxy's side failed: pilot's stream has nobody to serve
            log.info("xDS stream %d (%s) ended by the proxy: %s", stream_id, method, _error_text(up, down))
            return
        log.warning("xDS stream %d (%s) ended by pilot %s: %s: %s", stream_id, method, self.upstream, code.name,
                    details)  # fmt: skip
        await downstream.abort(code, f"pilot {self.upstream}: {details}")


    def _taps(self, method: str) -> bool:
        """Whether to subscribe to the name table on a stream of `method` (state of the world: the bootstrap's)."""
        return self.on_name_table is not None and method == "StreamAggregatedResources"


@dataclass
class _NameTableTap:
    """The agent's own NDS subscription on a relayed stream: asked once the proxy has named the node, answered
    responses handed to `deliver` and ACKed (or NACKed, if the table cannot be read) by the agent."""

    upstream: grpc.aio.StreamStreamCall
    writes: asyncio.Lock
    deliver: Callable[[dict[str, NameInfo]], None]
    subscribed: bool = False

    async def after_proxy_request(self) -> None:
        if not self.subscribed:
            self.subscribed = True
            await self._send(DiscoveryRequest(type_url=NAME_TABLE))

    async def take(self, message: bytes) -> bool:
        """Whether `message` was a name table (consumed here) rather than a response for the proxy."""
        response = DiscoveryResponse.FromString(message)
        if response.type_url != NAME_TABLE:
            return False
        ack = DiscoveryRequest(type_url=NAME_TABLE, version_info=response.version_info, response_nonce=response.nonce)
        try:
            self.deliver(_name_infos(response))
        except (ValueError, TypeError) as exc:  # a table pilot should not have sent: say so, keep the last one
            log.error("DNS name table version %s rejected: %s", response.version_info, exc)
            ack.version_info = ""
            ack.error_detail.message = f"pylon agent: {exc}"
        await self._send(ack)
        return True

    async def _send(self, request: DiscoveryRequest) -> None:
        async with self.writes:
            await self.upstream.write(request.SerializeToString())


def _name_infos(response: DiscoveryResponse) -> dict[str, NameInfo]:
    table: dict[str, NameInfo] = {}
    for packed in response.resources:
        message = NameTable()
        if not packed.Unpack(message):
            raise ValueError(f"a {packed.type_url} in a NameTable response")
        for host, info in message.table.items():
            table[host] = NameInfo(tuple(info.ips), info.registry, info.shortname, info.namespace)
    return table


async def _pump_up(downstream: grpc.aio.ServicerContext, upstream: grpc.aio.StreamStreamCall, writes: asyncio.Lock,
                   tap: _NameTableTap | None) -> None:  # fmt: skip
    """Requests, proxy -> pilot, until the proxy half-closes (the first one followed by the agent's NDS
    subscription, if it taps the stream)."""
    while (message := await downstream.read()) is not grpc.aio.EOF:
        async with writes:
            await upstream.write(message)
        if tap is not None:
            await tap.after_proxy_request()
    async with writes:
        await upstream.done_writing()
    await asyncio.Event().wait()  # half-closed: keep relaying pilot's responses until pilot ends


async def _pump_down(upstream: grpc.aio.StreamStreamCall, downstream: grpc.aio.ServicerContext, method: str,
                     rewriter: SecretRewriter | None, tap: _NameTableTap | None) -> None:  # fmt: skip
    """Responses, pilot -> proxy (through `rewriter`, if any; name tables to `tap`), until pilot ends the stream
    (returns) or it fails (raises)."""
    while (message := await upstream.read()) is not grpc.aio.EOF:
        if tap is not None and await tap.take(message):
            continue
        if rewriter is not None:
            message = await rewriter.response(method, message)
        await downstream.write(message)


async def _upstream_status(upstream: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, str]:
    """Why pilot ended its side, as the status to end the proxy's side with. Pilot ending a stream cleanly is
    still an end the proxy must reconnect after: UNAVAILABLE."""
    code = await upstream.code()
    if code is grpc.StatusCode.OK:
        return grpc.StatusCode.UNAVAILABLE, "stream ended"
    return code, await upstream.details() or ""


def _error_text(*tasks: asyncio.Task[None]) -> str:
    """The first failure among the finished pumps, for the log."""
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            return repr(error)
    return "no reason given"
