"""File secrets (`file-cert:`, `file-root:`) as the agent serves them over SDS: parsed, read, watched.

The SDS part runs the agent's real gRPC server on a Unix socket and asks it as a proxy does.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest
from envoy.service.secret.v3 import sds_pb2_grpc
from pylon.agent.file_secrets import FileSecret, FileSecretError
from pylon.agent.sds import SECRET_TYPE_URL, SecretStore, serve_sds
from pylon.identity.certs import TestPki, make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def test_names_parse_as_istio_writes_them(tmp_path: Path) -> None:
    pair = FileSecret.parse("file-cert:/etc/certs/c.pem~/etc/certs/k.pem")
    assert pair.files == (Path("/etc/certs/c.pem"), Path("/etc/certs/k.pem")) and pair.is_key_pair
    root = FileSecret.parse("file-root:/etc/certs/ca.pem")
    assert root.files == (Path("/etc/certs/ca.pem"),) and not root.is_key_pair
    bundle = tmp_path / "bundle.crt"
    bundle.write_text("x")
    assert FileSecret.parse("file-root:system", (str(tmp_path / "absent"), str(bundle))).files == (bundle,)


@pytest.mark.parametrize("name", ["file-cert:/only-one.pem", "file-cert:/a~/b~/c", "file-cert:~/k.pem",
                                  "file-root:", "file-root:/a~/b", "default"])
def test_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(FileSecretError):
        FileSecret.parse(name)


def test_no_system_bundle_is_an_error_naming_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileSecretError, match="no system CA bundle"):
        FileSecret.parse("file-root:system", (str(tmp_path / "none.crt"),))


def test_a_key_pair_and_a_bundle_are_read_inline(pki: TestPki) -> None:
    pair = FileSecret.parse(f"file-cert:{pki.client.cert}~{pki.client.key}").read()
    assert pair.name == f"file-cert:{pki.client.cert}~{pki.client.key}"
    assert pair.tls_certificate.certificate_chain.inline_bytes == pki.client.cert.read_bytes()
    assert pair.tls_certificate.private_key.inline_bytes == pki.client.key.read_bytes()
    root = FileSecret.parse(f"file-root:{pki.ca.cert}").read()
    assert root.validation_context.trusted_ca.inline_bytes == pki.ca.cert.read_bytes()


def test_unreadable_or_wrong_files_are_errors_naming_the_file(pki: TestPki, tmp_path: Path) -> None:
    with pytest.raises(FileSecretError, match="cannot read .*missing.pem"):
        FileSecret.parse(f"file-root:{tmp_path / 'missing.pem'}").read()
    swapped = FileSecret.parse(f"file-cert:{pki.client.key}~{pki.client.cert}")  # key and certificate swapped
    with pytest.raises(FileSecretError, match="PEM private key"):
        swapped.read()


def _ask(socket_path: Path, names: list[str], responses: int = 1, timeout: float = 10.0) -> list[list[Secret]]:
    """Subscribe to `names` over SDS and collect `responses` pushes (each: the secrets it carried)."""

    async def run() -> list[list[Secret]]:
        async with grpc.aio.insecure_channel(f"unix:{socket_path}") as channel:
            stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
            requests: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()
            await requests.put(DiscoveryRequest(type_url=SECRET_TYPE_URL, resource_names=names))

            async def outgoing():  # type: ignore[no-untyped-def]
                while (request := await requests.get()) is not None:
                    yield request

            pushes: list[list[Secret]] = []
            call = stub.StreamSecrets(outgoing())
            async for response in call:
                secrets = []
                for packed in response.resources:
                    secret = Secret()
                    packed.Unpack(secret)
                    secrets.append(secret)
                pushes.append(secrets)
                if len(pushes) == responses:
                    break
            await requests.put(None)
            call.cancel()
            return pushes

    return asyncio.run(asyncio.wait_for(run(), timeout))


def test_sds_serves_file_secrets_beside_default_and_pushes_again_when_a_file_changes(pki: TestPki,
                                                                                     tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.cert.read_bytes())
    names = [f"file-cert:{pki.client.cert}~{pki.client.key}", f"file-root:{ca}", f"file-root:{tmp_path / 'nope'}"]
    socket_path = tmp_path / "sds.sock"
    store = SecretStore()
    pushes: list[list[Secret]] = []

    async def scenario() -> None:
        server = await serve_sds(store, str(socket_path))
        watcher = asyncio.create_task(store.watch_files(interval=0.05))
        try:
            loop = asyncio.get_running_loop()
            asking = loop.run_in_executor(None, _ask, socket_path, names, 2)
            await asyncio.sleep(0.5)
            ca.write_bytes(pki.ca.cert.read_bytes() + pki.server_ecdsa.cert.read_bytes())  # the bundle changes
            os.utime(ca, ns=(1, 1))  # a different mtime even within the file system's clock resolution
            pushes.extend(await asking)
        finally:
            watcher.cancel()
            await server.stop(0)

    asyncio.run(scenario())
    first, second = pushes
    assert sorted(s.name for s in first) == sorted(names[:2])  # the unreadable one is left out, the rest served
    roots = [s for s in second if s.name == names[1]]
    assert roots and roots[0].validation_context.trusted_ca.inline_bytes.count(b"BEGIN CERTIFICATE") == 2


def test_a_name_that_is_neither_the_agents_nor_a_file_is_refused(tmp_path: Path) -> None:
    store = SecretStore()
    with pytest.raises(ValueError, match="unknown secret"):
        store.response({"kubernetes://my-secret"})
