"""Private key providers through the real `pylon proxy` process: offload, cryptomb and keyd.

The proxy is started from an Envoy config whose listener certificates name a
`private_key_provider`; real clients (httpx with verification on, `openssl
s_client`) shake hands with it and send a request that the upstream answers.
keyd runs as its own `pylon keyd` process, which lets these tests kill it,
freeze it and restart it under a running proxy, and compare where the key's
secret primes are in memory: in keyd, never in the proxy's processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from pylon.keys import cryptomb
from pylon.keys.config import CRYPTOMB_TYPE_URL, KEYD_TYPE_URL, OFFLOAD_TYPE_URL
from tests.conftest import free_port, pylon_cmd, stop_process_group
from tests.keys.conftest import needs_mb
from tests.keys.test_keyd import held_secrets, key_needles
from tests.proxy.conftest import (  # noqa: F401  (fixtures)
    DOWNSTREAM_TLS_TYPE,
    RunningProxy,
    http_listener,
    route,
    run_proxy,
    run_proxy_module,
    static_cluster,
    upstreams_module,
    wait_until,
)

CLIENT_TIMEOUT = 5.0
KEYD_TIMEOUT_S = 0.5


def provider_config(name: str, key_file: Path | None = None, socket_path: Path | None = None,
                    key_id: str = "", poll_delay: str = "0.002s", timeout: float = KEYD_TIMEOUT_S) -> dict[str, Any]:
    """A `private_key_provider` block in Envoy's shape for one of pylon's providers."""
    if name == "offload":
        typed = {"@type": OFFLOAD_TYPE_URL, "private_key": {"filename": str(key_file)}, "threads": 2}
    elif name == "cryptomb":
        typed = {"@type": CRYPTOMB_TYPE_URL, "private_key": {"filename": str(key_file)}, "poll_delay": poll_delay}
    else:
        typed = {"@type": KEYD_TYPE_URL, "socket_path": str(socket_path), "key_id": key_id, "timeout": f"{timeout}s"}
    return {"provider_name": name, "typed_config": typed}


def tls_listener(name: str, cert: Path, provider: dict[str, Any]) -> dict[str, Any]:
    """An HTTP listener to cluster `backend` whose one certificate's key is served by `provider`."""
    listener = http_listener(name, free_port(), [route("/", "backend")])
    listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
            "alpn_protocols": ["http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": str(cert)}, "private_key_provider": provider}],
        }}}
    return listener


@dataclass
class Keyd:
    """A `pylon keyd` process serving the test PKI's RSA key as "rsa" and its ECDSA key as "ec"."""

    socket_path: Path
    pki: Any
    proc: subprocess.Popen | None = None
    extra: tuple[str, ...] = ()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            pylon_cmd("keyd", "--listen", f"unix:{self.socket_path}", "--key", f"rsa={self.pki.server_rsa.key}",
                      "--key", f"ec={self.pki.server_ecdsa.key}", *self.extra),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stderr is not None
        seen = []
        for line in self.proc.stderr:  # keyd prints "keyd ready" once its socket accepts
            seen.append(line)
            if line.strip() == "keyd ready":
                return
        raise RuntimeError("keyd exited before it was ready:\n" + "".join(seen))

    def stop(self) -> str:
        """Stop keyd; returns what it logged after it was ready (its operation summary last)."""
        if self.proc is None:
            return ""
        stop_process_group(self.proc)
        assert self.proc.stderr is not None
        log = self.proc.stderr.read()
        self.proc.stderr.close()
        self.proc = None
        return log


@pytest.fixture(scope="module")
def backend(upstreams_module) -> dict[str, Any]:  # type: ignore[no-untyped-def]  # noqa: F811
    (upstream,) = upstreams_module(1)
    return static_cluster("backend", [upstream.port])


@pytest.fixture(scope="module")
def keyd(pki, tmp_path_factory) -> Iterator[Keyd]:  # type: ignore[no-untyped-def]
    server = Keyd(tmp_path_factory.mktemp("keyd") / "keyd.sock", pki)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def in_process_proxy(run_proxy_module, pki, backend) -> RunningProxy:  # type: ignore[no-untyped-def]  # noqa: F811
    """One proxy with offload and (where crypto_mb runs) cryptomb listeners for the RSA and the ECDSA certificate."""
    providers = ("offload", "cryptomb") if cryptomb.unavailable_reason() is None else ("offload",)
    listeners = [tls_listener(f"{name}_{kind}", files.cert, provider_config(name, files.key))
                 for name in providers
                 for kind, files in (("rsa", pki.server_rsa), ("ec", pki.server_ecdsa))]
    if "cryptomb" in providers:  # batches wait for a burst however slowly this machine serves it
        listeners.append(tls_listener("cryptomb_burst", pki.server_rsa.cert,
                                      provider_config("cryptomb", pki.server_rsa.key, poll_delay="1s")))
    return run_proxy_module(listeners, [backend])


@pytest.fixture(scope="module")
def keyd_proxy(run_proxy_module, pki, backend, keyd) -> RunningProxy:  # type: ignore[no-untyped-def]  # noqa: F811
    """A proxy whose certificates' keys live only in keyd (so its memory can be scanned on its own)."""
    listeners = [tls_listener(f"keyd_{kind}", files.cert, provider_config("keyd", socket_path=keyd.socket_path,
                                                                          key_id=kind))
                 for kind, files in (("rsa", pki.server_rsa), ("ec", pki.server_ecdsa))]
    return run_proxy_module(listeners, [backend])


@pytest.fixture(params=["offload", pytest.param("cryptomb", marks=needs_mb), "keyd"])
def served(request) -> tuple[str, RunningProxy]:  # type: ignore[no-untyped-def]
    """(provider name, the proxy serving listeners `<provider>_rsa` and `<provider>_ec`)."""
    name = request.param
    fixture = "keyd_proxy" if name == "keyd" else "in_process_proxy"
    return name, request.getfixturevalue(fixture)


def client_context(pki: Any, version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))  # verification and hostname checks on
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


def https_get(port: int, ctx: ssl.SSLContext) -> httpx.Response:
    """One request on a fresh connection (a full handshake)."""
    with httpx.Client(verify=ctx, timeout=CLIENT_TIMEOUT) as client:
        return client.get(f"https://localhost:{port}/hello")


def s_client(port: int, pki: Any, *extra: str) -> str:
    """`openssl s_client` with verification, sending one request and reading until the proxy closes."""
    request = b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
    out = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca.cert), "-verify_return_error",
         "-verify_hostname", "localhost", "-brief", "-ign_eof", *extra],
        input=request, capture_output=True, timeout=10, check=False)
    text = (out.stdout + out.stderr).decode(errors="replace")
    assert out.returncode == 0, text
    return text


def test_tls13_rsa_handshake_and_request(served, pki) -> None:  # type: ignore[no-untyped-def]
    name, proxy = served
    reply = https_get(proxy.ports[f"{name}_rsa"], client_context(pki))
    assert (reply.status_code, reply.text) == (200, "ok\n")
    assert reply.extensions["http_version"] == b"HTTP/1.1"


def test_ecdsa_certificate(served, pki) -> None:  # type: ignore[no-untyped-def]
    name, proxy = served
    reply = https_get(proxy.ports[f"{name}_ec"], client_context(pki))
    assert (reply.status_code, reply.text) == (200, "ok\n")
    out = s_client(proxy.ports[f"{name}_ec"], pki, "-tls1_3")
    assert "Signature type: ECDSA" in out and "Verification: OK" in out
    assert "HTTP/1.1 200" in out


def test_tls12_pkcs1_v15_signature(served, pki) -> None:  # type: ignore[no-untyped-def]
    name, proxy = served
    out = s_client(proxy.ports[f"{name}_rsa"], pki, "-tls1_2", "-sigalgs", "RSA+SHA256")
    assert "Protocol version: TLSv1.2" in out
    assert "Signature type: RSA\n" in out  # PKCS#1 v1.5, not RSA-PSS
    assert "Verification: OK" in out and "HTTP/1.1 200" in out


@needs_mb
def test_cryptomb_queue_sizes_in_stats(in_process_proxy, pki) -> None:  # type: ignore[no-untyped-def]
    for kind in ("rsa", "ec"):
        assert https_get(in_process_proxy.ports[f"cryptomb_{kind}"], client_context(pki)).status_code == 200
    text = in_process_proxy.admin("/stats?filter=cryptomb").text
    lines = dict(line.split(": ", 1) for line in text.splitlines())
    for stat in ("cryptomb.rsa_queue_sizes", "cryptomb.ecdsa_queue_sizes"):
        assert lines.get(stat, "").startswith("P0(nan,"), text  # a summary of recorded batch sizes


def test_keyd_down_frozen_and_back(run_proxy, pki, backend, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    server = Keyd(tmp_path / "keyd.sock", pki)
    server.start()
    try:
        proxy = run_proxy([tls_listener("keyd_rsa", pki.server_rsa.cert,
                                        provider_config("keyd", socket_path=server.socket_path, key_id="rsa"))],
                          [backend])
        port, ctx = proxy.ports["keyd_rsa"], client_context(pki)
        assert https_get(port, ctx).status_code == 200

        for how in (signal.SIGKILL, signal.SIGSTOP):  # keyd gone, then keyd hanging
            if how == signal.SIGKILL:
                server.stop()
            else:
                server.start()
                assert https_get(port, ctx).status_code == 200
                os.kill(server.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
            start = time.monotonic()
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                https_get(port, ctx)
            assert time.monotonic() - start < KEYD_TIMEOUT_S + 1.0, f"{how!r}: the handshake was not bounded"
            assert proxy.proc.poll() is None and proxy.admin("/ready").status_code == 200

        os.kill(server.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        server.stop()
        server.start()
        assert https_get(port, ctx).status_code == 200
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def test_proxy_workers_hold_no_prime_while_keyd_does(keyd_proxy, keyd, pki) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):  # the key has really been used through keyd
        assert https_get(keyd_proxy.ports["keyd_rsa"], client_context(pki)).status_code == 200
    needles = key_needles(pki.server_rsa.key.read_bytes())
    assert keyd.proc is not None
    assert {"p", "q", "d", "dp", "dq"} <= set(held_secrets(keyd.proc.pid, needles)), "keyd must hold the key"
    processes = [keyd_proxy.proc.pid, *keyd_proxy.worker_pids()]
    assert len(processes) == 2
    for pid in processes:
        assert held_secrets(pid, needles) == [], f"proxy process {pid} holds part of the private key"


def burst(proxy: RunningProxy, listener: str, ctx: ssl.SSLContext, count: int) -> list[int]:
    """`count` handshakes and requests at once on connections the proxy has all accepted first, so their
    signatures are due together whatever the timing; the response statuses."""
    port = proxy.ports[listener]
    workers = proxy.worker_pids()
    # The proxy counts a connection only once its handshake is done: watch its workers' descriptors instead.
    descriptors = lambda: sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in workers)  # noqa: E731
    before = descriptors()
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        assert wait_until(lambda: descriptors() >= before + count, timeout=10), "the proxy did not accept"

        async def one(sock: socket.socket) -> int:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="localhost"), 30)
            writer.write(b"GET /hello HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            head = await asyncio.wait_for(reader.readline(), 30)
            writer.close()
            return int(head.split()[1])

        async def run() -> list[int]:
            return list(await asyncio.gather(*(one(sock) for sock in socks)))

        return asyncio.run(run())
    finally:
        for sock in socks:
            sock.close()


def cryptomb_ops(proxy: RunningProxy) -> dict[str, int]:
    stats = proxy.stats()
    return {who: stats.get(f"cryptomb.rsa_{who}_ops", 0) for who in ("crypto_mb", "openssl", "failed")}


@needs_mb
def test_concurrent_handshakes_through_the_proxy_reach_crypto_mb(in_process_proxy, pki) -> None:  # type: ignore[no-untyped-def]
    before = cryptomb_ops(in_process_proxy)
    assert burst(in_process_proxy, "cryptomb_burst", client_context(pki), 16) == [200] * 16
    after = wait_until(lambda: (ops := cryptomb_ops(in_process_proxy))["crypto_mb"] > before["crypto_mb"] and ops)
    assert after, "no operation reached crypto_mb"
    assert after["crypto_mb"] - before["crypto_mb"] >= 8 and after["failed"] == before["failed"]
    # A lone handshake is still OpenSSL's (a batch under MIN_MB_BATCH).
    assert https_get(in_process_proxy.ports["cryptomb_rsa"], client_context(pki)).status_code == 200
    assert wait_until(lambda: cryptomb_ops(in_process_proxy)["openssl"] > after["openssl"])


@needs_mb
def test_concurrent_handshakes_through_keyd_reach_crypto_mb(run_proxy, pki, backend, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    # keyd cannot know how many operations are coming: it waits for a batch once they arrive often enough.
    server = Keyd(tmp_path / "keyd.sock", pki, extra=("--poll-delay", "0.2"))
    server.start()
    try:
        proxy = run_proxy([tls_listener("keyd_rsa", pki.server_rsa.cert,
                                        provider_config("keyd", socket_path=server.socket_path, key_id="rsa",
                                                        timeout=10.0))], [backend])
        assert burst(proxy, "keyd_rsa", client_context(pki), 64) == [200] * 64
    finally:
        log = server.stop()
    found = re.search(r"keyd served (\d+) operations: (\d+) by crypto_mb, (\d+) by OpenSSL, (\d+) failed", log)
    assert found, log
    served, by_mb, by_openssl, failed = map(int, found.groups())
    assert served == by_mb + by_openssl == 64 and failed == 0
    assert by_mb >= 8, log
