"""Secrets from files on the workload's host, by Istio's SDS names: `file-cert:<cert>~<key>`, `file-root:<ca>`.

Istio's agent serves, besides `default` and `ROOTCA`, key pairs and CA bundles a DestinationRule (or a
gateway's metadata) names by path: pilot writes `file-cert:/etc/certs/client.pem~/etc/certs/key.pem` and
`file-root:/etc/certs/ca.pem` into the cluster's TLS context, and the proxy asks the agent for them over
SDS. `file-root:system` is the host's own trust store (the first of the usual bundle paths that exists).
The files are read when asked for and again when they change (their size or modification time), so a
rotated client certificate reaches new handshakes; a file that cannot be read is not served (the proxy keeps
waiting for it, failing closed) and the agent says why in its log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import CertificateValidationContext, TlsCertificate
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret

FILE_CERT = "file-cert:"
FILE_ROOT = "file-root:"
SYSTEM_ROOT = "file-root:system"
SEPARATOR = "~"

#: Where Linux distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine).
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                  "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem")  # fmt: skip


class FileSecretError(Exception):
    """A file secret cannot be served now; the message says which file and why."""


def is_file_secret(name: str) -> bool:
    return name.startswith(FILE_CERT) or name.startswith(FILE_ROOT)


@dataclass(frozen=True)
class FileSecret:
    """What a file secret's name says: a key pair's two files, or a CA bundle's one."""

    name: str
    files: tuple[Path, ...]

    @classmethod
    def parse(cls, name: str, system_bundles: tuple[str, ...] = SYSTEM_BUNDLES) -> "FileSecret":
        if name == SYSTEM_ROOT:
            bundle = next((path for path in system_bundles if os.path.exists(path)), None)
            if bundle is None:
                raise FileSecretError(f"{name}: no system CA bundle on this host (looked for {', '.join(system_bundles)})")
            return cls(name, (Path(bundle),))
        if name.startswith(FILE_CERT):
            parts = name[len(FILE_CERT):].split(SEPARATOR)
            if len(parts) != 2 or not all(parts):
                raise FileSecretError(f"{name}: a key pair is named file-cert:<certificate file>~<key file>")
            return cls(name, (Path(parts[0]), Path(parts[1])))
        if name.startswith(FILE_ROOT):
            path = name[len(FILE_ROOT):]
            if not path or SEPARATOR in path:
                raise FileSecretError(f"{name}: a CA bundle is named file-root:<file>")
            return cls(name, (Path(path),))
        raise FileSecretError(f"{name}: not a file secret (file-cert:... or file-root:...)")

    @property
    def is_key_pair(self) -> bool:
        return len(self.files) == 2

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """Each file's (size, mtime in ns); a missing file counts as (-1, -1), so its coming back is a change."""
        stamps = []
        for path in self.files:
            try:
                status = path.stat()
                stamps.append((status.st_size, status.st_mtime_ns))
            except OSError:
                stamps.append((-1, -1))
        return tuple(stamps)

    def read(self) -> Secret:
        """The secret with the files' contents inline (as Istio's agent sends them)."""
        contents = []
        for path in self.files:
            try:
                contents.append(path.read_bytes())
            except OSError as exc:
                raise FileSecretError(f"{self.name}: cannot read {path}: {exc.strerror or exc}") from None
        if self.is_key_pair:
            chain, key = contents
            if b"-----BEGIN" not in chain or b"PRIVATE KEY-----" not in key:
                raise FileSecretError(f"{self.name}: {self.files[0]} must hold PEM certificates and "
                                      f"{self.files[1]} a PEM private key")  # fmt: skip
            return Secret(name=self.name, tls_certificate=TlsCertificate(
                certificate_chain=DataSource(inline_bytes=chain), private_key=DataSource(inline_bytes=key)))
        (bundle,) = contents
        if b"-----BEGIN CERTIFICATE-----" not in bundle:
            raise FileSecretError(f"{self.name}: {self.files[0]} holds no PEM certificate")
        return Secret(name=self.name, validation_context=CertificateValidationContext(
            trusted_ca=DataSource(inline_bytes=bundle)))
