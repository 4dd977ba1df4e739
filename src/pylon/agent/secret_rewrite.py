"""The agent's xDS proxy takes credential keys out of the Secrets pilot sends, before the proxy sees them.

Istio's agent already rewrites some resources in flight (ECDS Wasm modules are fetched and the config pointed at
the local file, pkg/istio-agent/xds_proxy.go); pylon's agent does the same for Secrets when its keys live in keyd
or a PKCS#11 token: every `tls_certificate` that carries a private key inline (`private_key`, or inside a
CryptoMB or QAT provider config, as pilot sends it under a `privateKeyProvider`) has the key moved to the store
(credential_keys.py) and replaced by the store's provider config. Nothing else is decoded: a response of another
type is forwarded as the very bytes pilot sent.

Fail closed: a Secret whose key cannot be moved is left out of the response (logged, naming what is missing), so
the proxy never gets the key bytes; its listener waits for the secret, as for one pilot does not have. A secret
already moved is not moved again (one import per credential version for the agent's life, whatever the streams).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field

from envoy.config.core.v3.base_pb2 import DataSource
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import PrivateKeyProvider as ProviderConfig
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import TlsCertificate
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.service.discovery.v3.discovery_pb2 import DeltaDiscoveryResponse, DiscoveryResponse
from google.protobuf import message
from pylon.agent.credential_keys import CredentialKeyError, CredentialKeyStore
from pylon.xds.contrib_protos import inline_provider_key

log = logging.getLogger("pylon.agent.secret_rewrite")

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
#: How long a replaced credential's key stays where it was moved: handshakes begun with it have long signed by then.
RETIRE_AFTER = 5.0


class NotMovable(Exception):
    """A tls_certificate whose key this agent cannot take out (its message says why)."""


def inline_key(certificate: TlsCertificate) -> bytes | None:
    """The private key `certificate` carries inline (None when it carries none: a file, a provider of its own)."""
    if certificate.HasField("private_key"):
        return _inline(certificate.private_key)
    if certificate.HasField("private_key_provider"):
        source = inline_provider_key(certificate.private_key_provider.typed_config)
        return _inline(source) if source is not None else None
    return None


def chain_of(certificate: TlsCertificate) -> bytes:
    """The certificate chain, which must be inline (pilot's always is) so the moved key can be checked against it."""
    chain = _inline(certificate.certificate_chain)
    if chain is None:
        raise NotMovable("its certificate chain is not inline, so the moved key cannot be checked against it")
    return chain


def _inline(source: DataSource) -> bytes | None:
    kind = source.WhichOneof("specifier")
    if kind == "inline_bytes":
        return bytes(source.inline_bytes)
    if kind == "inline_string":
        return source.inline_string.encode()
    return None


@dataclass
class SecretRewriter:
    """Rewrites the Secret responses of one agent's xDS streams (all of them share the moves made)."""

    store: CredentialKeyStore
    moved: dict[tuple[str, bytes], ProviderConfig] = field(default_factory=dict)  # (name, chain digest) -> config
    current: dict[str, bytes] = field(default_factory=dict)  # secret name -> chain served now
    failures: int = 0

    async def response(self, method: str, raw: bytes) -> bytes:
        """pilot's response `raw` on stream `method`, as the proxy must get it."""
        delta = method == "DeltaAggregatedResources"
        try:
            parsed = (DeltaDiscoveryResponse if delta else DiscoveryResponse).FromString(raw)
        except message.DecodeError:
            return raw  # not ours to judge: the proxy NACKs or ends the stream as it would without the agent
        if parsed.type_url != SECRET_TYPE:
            return raw
        if delta:
            kept = [r for r in parsed.resources if await self._rewritten_any(r.resource)]
            del parsed.resources[:]
            parsed.resources.extend(kept)
        else:
            kept_any = [a for a in parsed.resources if await self._rewritten_any(a)]
            del parsed.resources[:]
            parsed.resources.extend(kept_any)
        return parsed.SerializeToString()

    async def _rewritten_any(self, packed: object) -> bool:
        """Rewrite the Secret in `packed` (an Any) in place; False when it must be left out."""
        secret = Secret()
        if not packed.Unpack(secret):  # type: ignore[attr-defined]
            return True
        if not secret.HasField("tls_certificate"):
            return True
        try:
            changed = await self._rewrite(secret)
        except (NotMovable, CredentialKeyError) as exc:
            self.failures += 1
            log.error("secret %s not served to the proxy: %s", secret.name, exc)
            return False
        if changed:
            packed.Pack(secret)  # type: ignore[attr-defined]
        return True

    async def _rewrite(self, secret: Secret) -> bool:
        certificate = secret.tls_certificate
        key_pem = inline_key(certificate)
        if key_pem is None:
            return False
        chain = chain_of(certificate)
        cache_key = (secret.name, hashlib.sha256(chain).digest())
        config = self.moved.get(cache_key)
        if config is None:
            config = await asyncio.to_thread(self.store.place, secret.name, chain, key_pem)
            self.moved[cache_key] = config
            log.info("the key of %s moved into %s; the proxy gets a %s provider config", secret.name,
                     self.store.where, config.provider_name)  # fmt: skip
            self._replaced(secret.name, chain)
        certificate.ClearField("private_key")
        certificate.private_key_provider.CopyFrom(config)
        return True

    def _replaced(self, name: str, chain: bytes) -> None:
        """`name` is now served with `chain`: the key of the version it replaces goes, RETIRE_AFTER from now."""
        previous, self.current[name] = self.current.get(name), chain
        if previous is None or previous == chain:
            return
        self.moved.pop((name, hashlib.sha256(previous).digest()), None)
        asyncio.get_running_loop().call_later(RETIRE_AFTER, lambda: asyncio.ensure_future(self._retire(name, previous)))

    async def _retire(self, name: str, chain: bytes) -> None:
        try:
            await asyncio.to_thread(self.store.retire, name, chain)
        except Exception as exc:  # noqa: BLE001 - a key left behind is logged, never fatal
            log.warning("could not remove the replaced key of %s from %s: %s", name, self.store.where, exc)

    async def retire_all(self) -> None:
        """At exit, once the proxy is gone: remove every key this agent moved (where the store can)."""
        for name, chain in list(self.current.items()):
            await self._retire(name, chain)
        self.current.clear()
        self.moved.clear()
