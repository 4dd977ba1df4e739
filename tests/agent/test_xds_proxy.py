"""The agent's xDS proxy against a stand-in pilot: bytes relayed both ways over TLS, the token re-read from its
file for every new stream (and no stream at all without one), and pilot's refusal passed on to the proxy."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from pylon.agent.xds_proxy import ADS_METHODS, ADS_SERVICE, XdsProxy
from pylon.identity.authority import CaMaterial
from tests.conftest import free_port


class StandInPilot:
    """ADS over TLS with istiod's serving certificate: echoes every request back, records each stream's
    metadata, and refuses a stream whose token is `refuse-me` (PERMISSION_DENIED) on its first request, as pilot
    refuses a node of another namespace."""

    def __init__(self) -> None:
        self.streams: list[dict[str, str]] = []

    def handler(self) -> grpc.GenericRpcHandler:
        async def echo(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            self.streams.append(metadata)
            async for request in requests:
                if metadata.get("authorization") == "Bearer refuse-me":  # as pilot: on the node's first request
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not your namespace")
                yield b"echo:" + request

        return grpc.method_handlers_generic_handler(
            ADS_SERVICE, {name: grpc.stream_stream_rpc_method_handler(echo) for name in ADS_METHODS})


async def _exchange(channel: grpc.aio.Channel, method: str, message: bytes) -> bytes:
    call = channel.stream_stream(f"/{ADS_SERVICE}/{method}")()
    await call.write(message)
    try:
        return await asyncio.wait_for(call.read(), 5)
    finally:
        call.cancel()


async def _serve_stand_in(serving: CaMaterial) -> tuple[StandInPilot, grpc.aio.Server, int]:
    """A stand-in pilot on TLS with `serving`'s certificate for istiod.istio-system.svc: it, its server, its port."""
    chain_pem, key_pem = serving.serving_certificate()
    pilot = StandInPilot()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((pilot.handler(),))
    port = free_port()
    server.add_secure_port(f"127.0.0.1:{port}", grpc.ssl_server_credentials([(key_pem, chain_pem)]))
    await server.start()
    return pilot, server, port


async def _scenario(base: Path) -> None:
    material = CaMaterial.load_or_create(base / "ca")
    pilot, server, port = await _serve_stand_in(material)
    token_file = base / "token"
    token_file.write_text("first-token\n")
    proxy = XdsProxy(f"127.0.0.1:{port}", material.root_pem.encode(), token_file, cluster_id="c1")
    await proxy.start(base / "etc/istio/proxy/XDS")
    downstream = grpc.aio.insecure_channel(f"unix:{base / 'etc/istio/proxy/XDS'}")
    try:
        # Raw bytes both ways, SotW and delta, with the token and cluster id on the upstream stream.
        assert await _exchange(downstream, "StreamAggregatedResources", b"\x00sotw") == b"echo:\x00sotw"
        assert await _exchange(downstream, "DeltaAggregatedResources", b"delta") == b"echo:delta"
        assert [(s["authorization"], s["clusterid"]) for s in pilot.streams] == [("Bearer first-token", "c1")] * 2

        # A rotated token is used by the next stream.
        token_file.write_text("second-token")
        await _exchange(downstream, "StreamAggregatedResources", b"x")
        assert pilot.streams[-1]["authorization"] == "Bearer second-token"

        # No token, no stream: the proxy is told why, pilot never sees a stream without credentials.
        seen = len(pilot.streams)
        token_file.write_text("  \n")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _exchange(downstream, "StreamAggregatedResources", b"x")
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert f"token file {token_file} is empty" in (refused.value.details() or "")
        token_file.unlink()
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await _exchange(downstream, "DeltaAggregatedResources", b"x")
        assert "cannot read token file" in (missing.value.details() or "")
        assert len(pilot.streams) == seen

        # Pilot's refusal reaches the proxy with its code and reason.
        token_file.write_text("refuse-me")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await _exchange(downstream, "StreamAggregatedResources", b"x")
        assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert denied.value.details() == f"pilot 127.0.0.1:{port}: not your namespace"
    finally:
        await downstream.close()
        await proxy.stop()
        await server.stop(grace=0)


async def _untrusted(base: Path) -> None:
    """A server whose certificate does not chain to the mesh root gets no stream (and no token)."""
    material = CaMaterial.load_or_create(base / "ca")
    pilot, server, port = await _serve_stand_in(CaMaterial.load_or_create(base / "other-ca"))
    (base / "token").write_text("secret-token")
    proxy = XdsProxy(f"127.0.0.1:{port}", material.root_pem.encode(), base / "token")
    await proxy.start(base / "XDS")
    downstream = grpc.aio.insecure_channel(f"unix:{base / 'XDS'}")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await _exchange(downstream, "StreamAggregatedResources", b"x")
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert pilot.streams == []
    finally:
        await downstream.close()
        await proxy.stop()
        await server.stop(grace=0)


def test_relay_and_token_handling() -> None:
    with tempfile.TemporaryDirectory(prefix="px-") as base:  # short: Unix socket paths are limited to 108 bytes
        asyncio.run(_scenario(Path(base)))


def test_pilot_must_prove_itself_with_the_mesh_root() -> None:
    with tempfile.TemporaryDirectory(prefix="px-") as base:
        asyncio.run(_untrusted(Path(base)))
