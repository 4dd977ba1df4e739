"""A gateway's credential key moved out of the proxy's reach: `pylon pilot` serves the Gateway's `credentialName`
secret with its key inline (as istiod does), the gateway's `pylon agent --keyd` / `--pkcs11-token` moves the key
into keyd or a SoftHSM2 token as the secret passes its xDS proxy, and `pylon proxy` serves HTTPS signing through
keyd or the token. Then a memory scan finds the credential key's primes in neither the agent nor the proxy (nor
its workers); keyd, where the key now is, holds them (the control).

The pilot (and its Secret) is test_agent_gateway.py's; each test runs its own gateway agent.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from tests.agent.test_agent_gateway import NAMESPACE, Mesh, mesh  # noqa: F401 - the module's pilot fixture
from tests.agent.test_agent_keyd import _descendants, _factor_in_memory
from tests.conftest import free_port, pylon_cmd, stop_process_group
from tests.keys.test_keyd import scan
from tests.pilot.harness import eventually
from tests.softhsm import PIN, SO_PIN, make_tokens

TOKEN = "pylon-gateway"
Start = Callable[..., subprocess.Popen]  # the `gateway` fixture


@pytest.fixture
def gateway(mesh: Mesh) -> Iterator:  # noqa: F811
    """Starts a `pylon agent --type router` (pylon proxy) for istio=ingressgateway with extra flags and env."""
    started: list[subprocess.Popen] = []

    def start(work: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = work / "agent.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(pylon_cmd(
                "agent", "--type", "router", "--namespace", NAMESPACE, "--service-account", "istio-ingressgateway",
                "--pod-name", "gw-0", "--labels", "istio=ingressgateway", "--labels", "app=gateway",
                "--ca-address", f"127.0.0.1:{mesh.ca_port}", "--discovery-address", f"127.0.0.1:{mesh.ca_port}",
                "--root-cert", str(mesh.base / "cacerts" / "root-cert.pem"), "--token-file", str(mesh.token(NAMESPACE)),
                "--workdir", str(work), "--proxy", "pylon", "--admin-port", str(free_port()),
                "--health-address", f"127.0.0.1:{free_port()}", "--status-address", f"127.0.0.1:{free_port()}",
                "--drain-seconds", "0.2", *extra), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env=env)  # fmt: skip
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process_group(proc)


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gk-"))  # short: Unix socket paths are limited to 108 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _credential_pem(mesh: Mesh) -> bytes:  # noqa: F811
    """The Secret's private key (PEM), as the test's pilot serves it."""
    return base64.b64decode(yaml.safe_load((mesh.base / "secrets" / "gw-cred.yaml").read_text())["data"]["tls.key"])


def _credential_key(mesh: Mesh):  # type: ignore[no-untyped-def]  # noqa: F811
    return serialization.load_pem_private_key(_credential_pem(mesh), password=None)


def _needles(prime: int, modulus: int) -> list[bytes]:
    return [raw for factor in (prime, modulus // prime)
            for raw in (factor.to_bytes(128, "big")[:32], factor.to_bytes(128, "big")[::-1][:32])]  # fmt: skip


def _serve_https(mesh: Mesh, agent: subprocess.Popen, log: Path) -> None:  # noqa: F811
    port = mesh.ports["ingressgateway"]
    eventually(lambda: agent.poll() is None and mesh.get(port) is not None, timeout=40)
    for _ in range(10):  # full handshakes, each signed where the key now is
        response = mesh.get(port) or b""
        assert response.startswith(b"HTTP/1.1 200"), (response, log.read_text()[-3000:])


def _assert_key_not_in(pids: list[int], mesh: Mesh) -> None:  # noqa: F811
    """Neither the agent (pids[0]) nor the proxy and its workers hold the key's primes (as OpenSSL or a parse would
    leave them); the proxy and its workers do not even hold its PEM text. The agent does: it relayed the secret
    pilot sent, and grpc's and protobuf's freed buffers keep that text (see docs/architecture.md)."""
    key = _credential_key(mesh)
    numbers = key.private_numbers()
    modulus = numbers.public_numbers.n
    needles = _needles(numbers.p, modulus)
    pem_lines = [line[:48] for line in _credential_pem(mesh).splitlines()[5:8]]
    assert len(pids) >= 3, pids  # the agent, the proxy and at least one worker
    for pid in pids:
        assert _factor_in_memory(pid, modulus) is None, f"process {pid} holds a prime of the credential key"
        assert not scan(pid, needles), f"process {pid} holds a prime of the credential key"
    for pid in pids[1:]:
        assert not scan(pid, pem_lines), f"proxy process {pid} holds the credential key's PEM"


def test_https_with_the_credential_key_in_keyd(mesh: Mesh, gateway: Start, work: Path) -> None:  # noqa: F811
    keyd = subprocess.Popen(pylon_cmd("keyd", "--listen", f"unix:{work}/kd.sock"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        eventually(lambda: (work / "kd.sock").exists(), timeout=20)
        agent = gateway(work, "--keyd", f"unix:{work}/kd.sock")
        _serve_https(mesh, agent, work / "agent.log")
        log = (work / "agent.log").read_text()
        assert "the key of kubernetes://gw-cred moved into keyd at" in log
        numbers = _credential_key(mesh).private_numbers()
        assert scan(keyd.pid, _needles(numbers.p, numbers.public_numbers.n)), \
            "keyd must hold the key's primes (else the scan proves nothing)"
        _assert_key_not_in(_descendants(agent.pid), mesh)
    finally:
        stop_process_group(keyd)


def test_https_with_the_credential_key_in_a_pkcs11_token(mesh: Mesh, gateway: Start, work: Path) -> None:  # noqa: F811
    tokens = make_tokens(work / "hsm", TOKEN)
    (work / "pin").write_text(PIN + "\n")
    (work / "so-pin").write_text(SO_PIN + "\n")
    agent = gateway(work, "--pkcs11-token", TOKEN, "--pkcs11-pin-file", str(work / "pin"),
                    "--pkcs11-so-pin-file", str(work / "so-pin"), env=tokens.env)  # fmt: skip
    _serve_https(mesh, agent, work / "agent.log")
    log = (work / "agent.log").read_text()
    assert "the key of kubernetes://gw-cred moved into PKCS#11 token 'pylon-gateway'" in log
    _assert_key_not_in(_descendants(agent.pid), mesh)
    # The token's objects: the workload key pair and the credential's, four object files.
    assert len(tokens.object_files()) == 4


def test_a_wrong_pin_serves_no_credential_and_says_why(mesh: Mesh, gateway: Start, work: Path) -> None:  # noqa: F811
    """The workload key is made in the token first: a wrong PIN stops the agent at its first certificate, naming
    the PIN; nothing is ever served with the key instead."""
    tokens = make_tokens(work / "hsm", TOKEN)
    (work / "pin").write_text("not-the-pin\n")
    (work / "so-pin").write_text(SO_PIN + "\n")
    agent = gateway(work, "--pkcs11-token", TOKEN, "--pkcs11-pin-file", str(work / "pin"),
                    "--pkcs11-so-pin-file", str(work / "so-pin"), env=tokens.env)  # fmt: skip
    assert agent.wait(timeout=30) != 0
    assert "refused the user PIN (CKR_PIN_INCORRECT)" in (work / "agent.log").read_text()
    assert mesh.get(mesh.ports["ingressgateway"]) is None


def test_keyd_gone_before_the_secret_leaves_it_unserved(mesh: Mesh, gateway: Start, work: Path) -> None:  # noqa: F811
    """keyd made the workload key, then went away: the credential's key cannot be moved, so the secret is not
    served (the HTTPS listener never completes a handshake) and the agent says which keyd it could not reach."""
    keyd = subprocess.Popen(pylon_cmd("keyd", "--listen", f"unix:{work}/kd.sock"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    eventually(lambda: (work / "kd.sock").exists(), timeout=20)
    agent = gateway(work, "--keyd", f"unix:{work}/kd.sock", "--ttl", "3600")
    try:
        eventually(lambda: "certificate for" in (work / "agent.log").read_text(), timeout=30)
    finally:
        stop_process_group(keyd)
    eventually(lambda: "secret kubernetes://gw-cred not served to the proxy" in (work / "agent.log").read_text(),
               timeout=40)  # fmt: skip
    log = (work / "agent.log").read_text()
    assert f"cannot move the key of kubernetes://gw-cred into keyd at {work}/kd.sock" in log
    assert agent.poll() is None and mesh.get(mesh.ports["ingressgateway"]) is None
