"""The workload key born in `pylon keyd`: the agent asks keyd for a key and a CSR, pilot's CA signs it, SDS
gives `pylon proxy` a keyd provider config, and the proxy's mTLS handshakes sign through keyd.

The key's primes are then in keyd's memory and in neither the agent's nor the proxy's (its main process and
its workers): the test finds a prime factor of the served certificate's modulus in keyd's memory, and
scans the others for its primes, as the key-isolation test of keyd does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.agent.test_agent_envoy import LISTENER_YAML, Mesh, _client_identity, _context, _request
from tests.conftest import free_port, pylon_cmd, stop_process_group, wait_for_port
from tests.keys.test_keyd import scan

@dataclass
class KeydMesh:
    mesh: Mesh
    keyd: subprocess.Popen
    agent: subprocess.Popen
    admin_port: int


def start_pilot(work: Path, ca_dir: Path, procs: list[subprocess.Popen]) -> str:
    """`pylon pilot` with its CA in `ca_dir` (config in work/config), appended to `procs`, and tokens for
    default/web (work/token) and default/client (work/client-token); the CA's address once it listens."""
    ca_port = free_port()
    ca_address = f"127.0.0.1:{ca_port}"
    procs.append(subprocess.Popen(
        pylon_cmd("pilot", "--config-dir", str(work / "config"), "--grpc-address", f"127.0.0.1:{free_port()}",
                  "--monitoring-address", f"127.0.0.1:{free_port()}", "--debug-address", f"127.0.0.1:{free_port()}",
                  "--ca-address", ca_address, "--ca-dir", str(ca_dir)),
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))  # fmt: skip
    wait_for_port(ca_port, proc=procs[-1])
    for account, name in (("web", "token"), ("client", "client-token")):
        token = subprocess.run(pylon_cmd("pilot", "token", "--ca-dir", str(ca_dir), "--namespace", "default",
                                         "--service-account", account),
                               check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
        (work / name).write_text(token)
    return ca_address


@pytest.fixture(scope="module")
def keyd_mesh() -> Iterator[KeydMesh]:
    work = Path(tempfile.mkdtemp(prefix="pk-"))  # short: Unix socket paths are limited to 108 bytes
    ca_dir = work / "cacerts"
    procs: list[subprocess.Popen] = []
    try:
        (work / "config").mkdir()
        keyd = subprocess.Popen(pylon_cmd("keyd", "--listen", f"unix:{work}/keyd.sock"), start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(keyd)
        listener_port, health_port, admin_port, status_port = (free_port() for _ in range(4))
        ca_address = start_pilot(work, ca_dir, procs)
        (work / "override.yaml").write_text(LISTENER_YAML.format(port=listener_port))
        agent = subprocess.Popen(
            pylon_cmd("agent", "--type", "router", "--namespace", "default", "--service-account", "web",
                      "--pod-name", "web-0", "--ca-address", ca_address, "--root-cert", str(ca_dir / "root-cert.pem"),
                      "--token-file", str(work / "token"), "--discovery-address", ca_address, "--workdir", str(work),
                      "--sds-socket", str(work / "sds.sock"), "--proxy", "pylon", "--keyd", f"unix:{work}/keyd.sock",
                      "--bootstrap-override", str(work / "override.yaml"), "--admin-port", str(admin_port),
                      "--health-address", f"127.0.0.1:{health_port}", "--status-address", f"127.0.0.1:{status_port}"),
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        procs.append(agent)
        wait_for_port(listener_port, proc=agent, timeout=20)
        root_pem = (ca_dir / "root-cert.pem").read_bytes()
        cert, key = _client_identity(ca_address, root_pem, (work / "client-token").read_text(), work)
        yield KeydMesh(Mesh(root_pem=root_pem, listener_port=listener_port, health_port=health_port, client_cert=cert,
                            client_key=key, status_port=status_port), keyd, agent, admin_port)  # fmt: skip
    finally:
        for proc in reversed(procs):
            stop_process_group(proc)
        shutil.rmtree(work, ignore_errors=True)


def _factor_in_memory(pid: int, modulus: int) -> int | None:
    """A 1024-bit factor of `modulus` stored in the process's writable memory as OpenSSL keeps it (a BIGNUM:
    little-endian 64-bit limbs, 8-byte aligned): odd, top bit set, and dividing the modulus."""
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "rw" not in fields[1] or (len(fields) > 5 and not fields[5].startswith("[heap")):
                continue  # anonymous and heap mappings: where OpenSSL allocates
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            for offset in range(0, len(chunk) - 127, 8):
                if chunk[offset] & 1 and chunk[offset + 127] & 0x80:
                    candidate = int.from_bytes(chunk[offset:offset + 128], "little")
                    if modulus % candidate == 0:
                        return candidate
    return None


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [pid] + [d for child in children for d in _descendants(int(child))]


def test_handshakes_sign_through_keyd_and_the_key_is_only_there(keyd_mesh: KeydMesh) -> None:
    deadline = time.monotonic() + 10
    while True:  # the first SDS push can trail the listener by a moment
        try:
            response, served = _request(keyd_mesh.mesh, _context(keyd_mesh.mesh, with_cert=True))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert response.startswith(b"HTTP/1.1 200"), response
    modulus = served.public_key().public_numbers().n  # type: ignore[union-attr]
    # The key, found where it was born: keyd's memory holds a prime factor of the certificate's modulus.
    prime = _factor_in_memory(keyd_mesh.keyd.pid, modulus)
    assert prime is not None, "no prime of the served certificate's key in keyd's memory"
    needles = [raw for factor in (prime, modulus // prime)
               for raw in (factor.to_bytes(128, "big")[:32], factor.to_bytes(128, "big")[::-1][:32])]  # fmt: skip
    assert scan(keyd_mesh.keyd.pid, needles)
    for pid in _descendants(keyd_mesh.agent.pid):  # the agent, the proxy and its workers
        assert not scan(pid, needles), f"process {pid} holds a prime of the workload key"
