"""Real handshakes through the hook: every provider, TLS 1.3/1.2, RSA-PSS, PKCS#1 v1.5, ECDSA."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from pylon.keys import cryptomb
from pylon.keys.config import CRYPTOMB_TYPE_URL, OFFLOAD_TYPE_URL
from pylon.keys.hook import ffi, is_hooked
from pylon.proxy.tls_transport import TlsServerProtocol
from pylon.stats.store import StatsStore

from .conftest import client_context, fetch, needs_mb, provider_tls, s_client, serve



def offload(files):  # type: ignore[no-untyped-def]
    return {"provider_name": "offload",
            "typed_config": {"@type": OFFLOAD_TYPE_URL, "private_key": {"filename": str(files.key)}}}


def mb(files):  # type: ignore[no-untyped-def]
    return {"provider_name": "cryptomb",
            "typed_config": {"@type": CRYPTOMB_TYPE_URL, "private_key": {"filename": str(files.key)},
                             "poll_delay": "0.010s"}}


CASES = [
    # (certificate, client max version, s_client args, expected signature type in s_client's output)
    ("server_rsa", ssl.TLSVersion.TLSv1_3, [], "RSA-PSS"),
    ("server_rsa", ssl.TLSVersion.TLSv1_2, ["-tls1_2", "-sigalgs", "RSA+SHA256"], "Signature type: RSA\n"),
    ("server_rsa", ssl.TLSVersion.TLSv1_2, ["-tls1_2", "-sigalgs", "RSA-PSS+SHA256"], "RSA-PSS"),
    ("server_ecdsa", ssl.TLSVersion.TLSv1_3, [], "ECDSA"),
    ("server_ecdsa", ssl.TLSVersion.TLSv1_2, ["-tls1_2"], "ECDSA"),
]


@pytest.mark.parametrize("provider", [offload, pytest.param(mb, marks=needs_mb)])
@pytest.mark.parametrize("cert,maximum,args,signature", CASES)
def test_handshakes_verify(pki, provider, cert, maximum, args, signature) -> None:  # type: ignore[no-untyped-def]
    files = getattr(pki, cert)
    tls = provider_tls(files, provider(files))
    stats = StatsStore()
    tls.bind_stats(stats)
    assert is_hooked(tls.context) and tls.loop_ssl_context is None

    async def run() -> None:
        server, port = await serve(tls)
        data, sslobj = await fetch(port, client_context(pki, maximum))
        assert data == b"ok:hi"
        assert sslobj.version() == ("TLSv1.3" if maximum == ssl.TLSVersion.TLSv1_3 else "TLSv1.2")
        out = await s_client(port, pki, *args)
        assert signature in out + "\n" and "Verification: OK" in out
        server.close()

    asyncio.run(run())
    if provider is mb:
        name = "cryptomb.rsa_queue_sizes" if cert == "server_rsa" else "cryptomb.ecdsa_queue_sizes"
        assert stats.histograms[name].count == 2  # both handshakes' signatures went through crypto_mb


def test_file_key_is_not_hooked(pki) -> None:  # type: ignore[no-untyped-def]
    tls = provider_tls(pki.server_rsa, None)
    assert not is_hooked(tls.context)
    # Served by the native TLS transport all the same, with no slot to park a key operation in.
    assert tls.loop_ssl_context is None
    protocol = tls.wrap_protocol_factory(asyncio.Protocol)()
    assert isinstance(protocol, TlsServerProtocol) and protocol.slot == ffi.NULL


def test_hooked_context_also_works_under_a_foreign_transport(pki) -> None:  # type: ignore[no-untyped-def]
    """uvloop/asyncio's own SSL layer (no slot): the in-process key signs synchronously."""
    tls = provider_tls(pki.server_rsa, offload(pki.server_rsa))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        from .conftest import Reply

        server = await loop.create_server(Reply, "127.0.0.1", 0, ssl=tls.context)
        data, _ = await fetch(server.sockets[0].getsockname()[1], client_context(pki))
        assert data == b"ok:hi"
        server.close()

    asyncio.run(run())


@needs_mb
def test_concurrent_handshakes_batch_and_leak_nothing(pki) -> None:  # type: ignore[no-untyped-def]
    """1,000 handshakes, 100 at a time: batches fill, and no fd or memory growth after warm-up."""
    import os

    tls = provider_tls(pki.server_rsa, mb(pki.server_rsa))
    stats = StatsStore()
    tls.bind_stats(stats)
    ctx = client_context(pki)

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    def rss_kb() -> int:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))

    async def wave(port: int, n: int) -> None:
        results = await asyncio.gather(*(fetch(port, ctx, timeout=30) for _ in range(n)))
        assert all(data == b"ok:hi" for data, _ in results)

    async def run() -> tuple[int, int, int, int]:
        server, port = await serve(tls)
        for _ in range(6):
            await wave(port, 100)  # warm-up: OpenSSL's ASYNC job pool, allocator arenas (plateau by ~500)
        await asyncio.sleep(0.05)
        before = fds(), rss_kb()
        for _ in range(10):
            await wave(port, 100)
        await asyncio.sleep(0.05)
        after = fds(), rss_kb()
        server.close()
        return (*before, *after)

    fd0, rss0, fd1, rss1 = asyncio.run(run())
    assert fd1 <= fd0
    # Allocator noise after warm-up is a few MB; a leaked ASYNC job (>= 32 kB stack) or SSL object
    # per handshake would be >= 32 MB here.
    assert rss1 - rss0 < 16 * 1024, f"RSS grew {rss1 - rss0} kB over 1,000 handshakes"
    sizes = stats.histograms["cryptomb.rsa_queue_sizes"]
    assert sizes.count > 0 and sizes.sum / sizes.count > 1.5  # batches really fill under concurrency
