"""keyd as a real process: handshakes through it, down/up, refusal, and where the key's primes live."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from pylon.keys.config import KEYD_TYPE_URL

from .conftest import client_context, fetch, provider_tls, s_client, serve

ROOT = Path(__file__).resolve().parents[2]


def start_keyd(sock: Path, pki, *extra: str) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pylon.keys.cli", "--listen", f"unix:{sock}",
         "--key", f"rsa={pki.server_rsa.key}", "--key", f"ec={pki.server_ecdsa.key}", *extra],
        stderr=subprocess.PIPE, text=True,
    )
    lines = []
    for line in proc.stderr:  # type: ignore[union-attr]
        lines.append(line)
        if line.strip() == "keyd ready":
            break
    assert proc.poll() is None, "".join(lines)
    proc.startup_log = "".join(lines)  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen) -> str:  # type: ignore[type-arg]
    proc.terminate()
    _, err = proc.communicate(timeout=10)
    return proc.startup_log + err  # type: ignore[attr-defined]


def keyd_provider(sock: Path, key_id: str, timeout: str = "0.5s") -> dict:  # type: ignore[type-arg]
    return {"provider_name": "keyd",
            "typed_config": {"@type": KEYD_TYPE_URL, "socket_path": str(sock), "key_id": key_id, "timeout": timeout}}


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "keyd.sock"


def test_handshakes_through_keyd_and_recovery(pki, sock, caplog) -> None:  # type: ignore[no-untyped-def]
    rsa_tls = provider_tls(pki.server_rsa, keyd_provider(sock, "rsa"))
    ec_tls = provider_tls(pki.server_ecdsa, keyd_provider(sock, "ec"))
    caplog.set_level(logging.ERROR, "pylon.keys.keyd")

    async def run() -> None:
        rsa_server, rsa_port = await serve(rsa_tls)
        ec_server, ec_port = await serve(ec_tls)
        # keyd down: the handshake fails, within the configured bound, with a clear log line.
        start = time.monotonic()
        with pytest.raises((ssl_errors())):
            await fetch(rsa_port, client_context(pki))
        assert time.monotonic() - start < 2.0
        assert any("keyd at" in r.message and "unavailable" in r.message for r in caplog.records)

        keyd = await asyncio.to_thread(start_keyd, sock, pki)
        try:
            for port, maximum in ((rsa_port, None), (ec_port, None)):
                data, sslobj = await fetch(port, client_context(pki))
                assert data == b"ok:hi"
            out = await s_client(rsa_port, pki, "-tls1_2", "-sigalgs", "RSA+SHA256")
            assert "Verification: OK" in out
            out = await s_client(ec_port, pki)
            assert "Signature type: ECDSA" in out
        finally:
            err = await asyncio.to_thread(stop, keyd)
        assert "crypto_mb" in err or "OpenSSL" in err

        # keyd gone again: fails again (the pipelined connection is noticed as lost) ...
        with pytest.raises(ssl_errors()):
            await fetch(rsa_port, client_context(pki))
        # ... and comes back with keyd.
        keyd = await asyncio.to_thread(start_keyd, sock, pki)
        try:
            data, _ = await fetch(rsa_port, client_context(pki))
            assert data == b"ok:hi"
        finally:
            await asyncio.to_thread(stop, keyd)
        rsa_server.close()
        ec_server.close()

    asyncio.run(run())


def ssl_errors() -> tuple[type[BaseException], ...]:
    import ssl

    return (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError)


def test_unauthorized_client_refused(pki, sock, caplog) -> None:  # type: ignore[no-untyped-def]
    keyd = start_keyd(sock, pki, "--allow-uid", str(os.getuid() + 12345))
    tls = provider_tls(pki.server_rsa, keyd_provider(sock, "rsa"))
    caplog.set_level(logging.ERROR, "pylon.keys.keyd")

    async def run() -> None:
        server, port = await serve(tls)
        with pytest.raises(ssl_errors()):
            await fetch(port, client_context(pki))
        server.close()

    try:
        asyncio.run(run())
    finally:
        err = stop(keyd)
    assert f"refused keyd client pid {os.getpid()} uid {os.getuid()}" in err
    assert any("keyd at" in r.message and "unavailable" in r.message for r in caplog.records)


def _forms(value: int) -> list[bytes]:
    """32 bytes of `value` as DER/PEM hold it (big-endian, minimal length) and as OpenSSL's BIGNUM limbs do
    (little-endian, from the lowest limb)."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return [raw[:32], raw[::-1][:32]]


def key_needles(pem: bytes) -> dict[str, list[bytes]]:
    """What of an RSA private key a memory scan looks for, by name: each secret number of it (p, q, d, dp, dq)
    and its text (a line of the PEM, and base64 across a line break, as an unwrapped copy would hold it).

    The text needles come from the PEM's last lines, which encode the primes and CRT values: its first lines
    encode the modulus, which the certificate's own base64 may contain too."""
    key = serialization.load_pem_private_key(pem, password=None)
    numbers = key.private_numbers()  # type: ignore[union-attr]
    lines = [line for line in pem.splitlines() if line and not line.startswith(b"-----")]
    assert len(lines) > 20  # RSA-2048 and up
    return {
        "p": _forms(numbers.p), "q": _forms(numbers.q), "d": _forms(numbers.d),
        "dp": _forms(numbers.dmp1), "dq": _forms(numbers.dmq1),
        "pem": [lines[-3]], "base64": [lines[-5][-24:] + lines[-4][:24]],
    }


def held_secrets(pid: int, needles: dict[str, list[bytes]]) -> list[str]:
    """The names of the needles found in the process's memory (empty: none of the key is there)."""
    return [name for name, forms in needles.items() if scan(pid, forms)]


#: A process holding a key as a careless one would: parsed by OpenSSL, its PEM text, an unwrapped base64 copy.
_HOLDER = """
import sys
from cryptography.hazmat.primitives import serialization
pem = open(sys.argv[1], "rb").read()
key = serialization.load_pem_private_key(pem, password=None)
unwrapped = b"".join(pem.splitlines()[1:-1])
print("ready", flush=True)
sys.stdin.read()
"""


def test_the_scan_finds_each_part_of_a_key_where_it_is(pki) -> None:  # type: ignore[no-untyped-def]
    """The control for the scans below: each needle is found in a process that holds that part of the key
    (the scanning process holds the needles themselves, so it cannot be its own control)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(pki.server_rsa.key)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        needles = key_needles(pki.server_rsa.key.read_bytes())
        assert held_secrets(holder.pid, needles) == list(needles)
    finally:
        holder.kill()
        holder.wait()


def scan(pid: int, needles: list[bytes]) -> bool:
    """Whether any needle occurs in the process's readable private and heap mappings."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            if any(needle in chunk for needle in needles):
                return True
    return False


def test_proxy_memory_holds_no_prime_while_keyd_does(pki, sock) -> None:  # type: ignore[no-untyped-def]
    keyd = start_keyd(sock, pki)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "tests.keys.keyd_proxy", str(pki.server_rsa.cert), str(sock), "rsa"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        port = int(proxy.stdout.readline())  # type: ignore[union-attr]

        async def handshakes() -> None:
            for _ in range(5):
                data, _ = await fetch(port, client_context(pki))
                assert data == b"ok:hi"

        asyncio.run(handshakes())  # the proxy has really used the key through keyd
        needles = key_needles(pki.server_rsa.key.read_bytes())
        # keyd holds the key's numbers (else the scan proves nothing) ...
        assert {"p", "q", "d", "dp", "dq"} <= set(held_secrets(keyd.pid, needles))
        # ... the proxy none of it, nor its text.
        assert held_secrets(proxy.pid, needles) == [], "the proxy process holds part of the private key"
    finally:
        proxy.kill()
        proxy.wait()
        stop(keyd)


def test_keyd_makes_a_key_and_answers_only_its_csr() -> None:
    """GENERATE: the key is born in keyd under the id asked for; only a CSR for the SPIFFE id leaves."""
    from cryptography import x509

    from pylon.keys.keyd.protocol import ERROR, GENERATE, OK, Request, decode_request, encode_request
    from pylon.keys.keyd.server import KeydServer

    server = KeydServer({}, allow_uids=[os.getuid()])
    replies = []

    def ask(key_id: str, uri: bytes) -> None:
        body = encode_request(Request(7, GENERATE, key_id, uri))[4:]
        assert decode_request(body).kind == GENERATE
        server.handle(body, replies.append)

    ask("default.web.1", b"spiffe://cluster.local/ns/default/sa/web")
    assert replies[-1].status == OK and b"PRIVATE KEY" not in replies[-1].data
    csr = x509.load_pem_x509_csr(replies[-1].data)
    assert csr.is_signature_valid
    assert csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier) == ["spiffe://cluster.local/ns/default/sa/web"]
    assert "default.web.1" in server.keys
    ask("default.web.1", b"spiffe://cluster.local/ns/default/sa/web")  # an id is never replaced
    assert replies[-1].status == ERROR and b"taken" in replies[-1].data
    ask("default.web.2", b"not-a-spiffe-id")
    assert replies[-1].status == ERROR and "default.web.2" not in server.keys


#: A keyd client in a separate process (so it can run as another uid): sends one frame, prints the hex of what
#: came back (empty when keyd closed the connection without answering).
_PROBE = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10)
data = b""
try:
    s.sendall(bytes.fromhex(sys.argv[2]))
    while len(data) < 4 or len(data) < 4 + int.from_bytes(data[:4], "big"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except (ConnectionResetError, BrokenPipeError):
    pass
print(data.hex())
"""

NOBODY = 65534


def probe(sock: Path, as_nobody: bool):  # type: ignore[no-untyped-def]
    """Ask keyd to sign one block with key "rsa", as root or as nobody; the Response, or None when refused."""
    from pylon.keys.hook import RSA_RAW
    from pylon.keys.keyd.protocol import Request, decode_response, encode_request

    frame = encode_request(Request(1, RSA_RAW, "rsa", b"\0" + b"\1" * 255)).hex()
    drop = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"] if as_nobody else []
    out = subprocess.run([*drop, sys.executable, "-I", "-c", _PROBE, str(sock), frame],
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    data = bytes.fromhex(out.stdout.strip())
    return decode_response(data[4:]) if data else None


@pytest.fixture
def open_dir():  # type: ignore[no-untyped-def]
    """A directory another uid can reach (pytest's tmp_path is root's alone)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="keyd-uid-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="connecting as another uid needs root (setpriv)")
@pytest.mark.parametrize("allow", [(), ("--allow-uid", str(NOBODY))], ids=["default", "nobody-allowed"])
def test_another_uid_is_refused_unless_allowed(pki, open_dir, allow) -> None:  # type: ignore[no-untyped-def]
    from pylon.keys.keyd.protocol import OK

    sock = open_dir / "keyd.sock"
    keyd = start_keyd(sock, pki, *allow)
    try:
        # keyd makes its socket 0660, so another uid cannot even connect; open it to everyone, as a careless
        # operator might: the kernel-checked uid must still keep nobody out.
        assert sock.stat().st_mode & 0o777 == 0o660
        sock.chmod(0o666)
        as_root = probe(sock, as_nobody=False)
        as_nobody = probe(sock, as_nobody=True)
    finally:
        err = stop(keyd)
    if not allow:  # the default allow-list is keyd's own uid (root here), and only that
        assert "for uids [0]" in err
        assert as_root is not None and as_root.status == OK and len(as_root.data) == 256
        assert as_nobody is None, "keyd answered a uid outside its allow-list"
        assert f"uid {NOBODY}: uid not in the allow-list" in err
        assert "refused 1 clients" in err
    else:
        assert f"for uids [{NOBODY}]" in err
        assert as_nobody is not None and as_nobody.status == OK and len(as_nobody.data) == 256
        assert as_root is None  # an explicit list replaces the default
        assert "refused 1 clients" in err


def test_the_allow_list_defaults_to_keyds_own_uid() -> None:
    from pylon.keys.keyd.server import KeydServer

    assert KeydServer({}, allow_uids=[]).allow_uids == {os.getuid()}
    assert KeydServer({}, allow_uids=[NOBODY]).allow_uids == {NOBODY}
