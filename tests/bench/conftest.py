"""Bench fixtures: a real `pylon echo` process and a test PKI."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest

from pylon.identity.certs import TestPki, make_test_pki
from tests.conftest import free_port, wait_for_port


@dataclass
class Echo:
    """A running `pylon echo` child process."""

    proc: object
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def stats(self, **client) -> dict[str, int]:
        """The server's counters from GET /stats."""
        text = httpx.get(f"{self.url}/stats", **client).text
        return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}

    def stop(self) -> str:
        """SIGTERM the server and return everything it printed."""
        self.proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
        out, _ = self.proc.communicate(timeout=10)  # type: ignore[attr-defined]
        return out.decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def start_echo(spawn) -> Iterator[Callable[..., Echo]]:
    def _start(*args: str, tls: bool = False) -> Echo:
        port = free_port()
        proc = spawn([sys.executable, "-m", "pylon.bench.cli", "echo", "--host", "127.0.0.1",
                      "--port", str(port), *args])
        wait_for_port(port, proc=proc)
        return Echo(proc, port, "https" if tls else "http")

    yield _start


def tls_args(pki: TestPki, mtls: bool = False) -> list[str]:
    args = ["--tls-cert", str(pki.server_rsa.cert), "--tls-key", str(pki.server_rsa.key)]
    return args + ["--tls-ca", str(pki.ca.cert)] if mtls else args


def ca_file(pki: TestPki) -> Path:
    return pki.ca.cert


@contextlib.contextmanager
def own_session(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    """A child in a session of its own (so a signal we send reaches it alone), output piped; killed with its
    whole group if it still runs when the block ends."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
