"""`pylon agent`: get the workload a certificate, serve it over SDS, keep it fresh, relay the proxy's xDS to
pilot, run the proxy.

Order matters: the first certificate is obtained, and SDS and the xDS proxy listen, before the proxy
starts, so Envoy's first requests are answered at once; the proxy's exit ends the agent (its
supervisor restarts the pod, as with Istio), and SIGTERM drains the proxy's listeners before
stopping it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from pylon.agent.bootstrap import Workload, build_bootstrap
from pylon.agent.dns_proxy import DnsConfigError, DnsProxy, Resolvers
from pylon.agent.credential_keys import CredentialKeyStore, KeydCredentialKeys, TokenCredentialKeys
from pylon.agent.health import http_status, serve_health
from pylon.agent.metrics import AgentMetrics, serve_metrics
from pylon.agent.keys import AgentKeySource, KeydKeySource, KeySource, Pkcs11KeySource, Pkcs11Token, WorkloadKey
from pylon.pilot.istio.proxyconfig import key_provider_from_metadata
from pylon.agent.rotation import next_retry, rotate_at
from pylon.agent.sds import SecretStore, serve_sds
from pylon.agent.secret_rewrite import SecretRewriter
from pylon.agent.xds_proxy import XdsProxy
from pylon.identity.client import CaClientError, create_certificate
from pylon.keys.keyd.client import KeydError
from pylon.keys.pkcs11 import Pkcs11Error

log = logging.getLogger("pylon.agent")

#: How long a replaced key is kept after its successor is in SDS: handshakes that began with the old certificate
#: have long signed by then. Only keys that live somewhere (a PKCS#11 token) are removed.
RETIRE_AFTER = 5.0
#: What a failed key or certificate request raises (the CA, keyd, a PKCS#11 token, the files).
RENEWAL_ERRORS = (CaClientError, KeydError, Pkcs11Error, OSError)


@dataclass(frozen=True)
class AgentOptions:
    workload: Workload
    ca_address: str
    root_cert: Path
    token_file: Path
    discovery_address: str
    sds_socket: Path
    xds_socket: Path
    bootstrap_path: Path
    proxy: str = "envoy"
    envoy_binary: str | None = None
    bootstrap_override: Path | None = None
    admin_port: int = 15000
    health: tuple[str, int] = ("127.0.0.1", 15021)
    status: tuple[str, int] = ("127.0.0.1", 15020)
    ttl_seconds: int = 24 * 3600
    grace_ratio: float = 0.5
    drain_seconds: float = 5.0
    proxy_uid: int | None = None
    concurrency: int = 2  # the proxy's workers (Istio's ProxyConfig default for sidecars: 2); 0: one per CPU
    proxy_env: dict[str, str] = field(default_factory=dict)  # ProxyConfig proxyMetadata: added to the proxy's env
    keyd_socket: str | None = None  # the workload key is made and kept in this `pylon keyd`
    pkcs11: Pkcs11Token | None = None  # ... or in this PKCS#11 token
    dns_address: tuple[str, int] = ("127.0.0.1", 15053)  # the DNS proxy's, when the workload captures DNS
    resolv_conf: Path = Path("/etc/resolv.conf")  # the pod's resolvers, where names not of the mesh are forwarded
    log_level: str = "info"


class Agent:
    def __init__(self, options: AgentOptions, keys: KeySource) -> None:
        self.options = options
        self.keys = keys
        self.store = SecretStore()
        self.not_after = 0.0
        self.current: WorkloadKey | None = None
        self.retiring: dict[asyncio.Task[None], WorkloadKey] = {}
        self.dns: DnsProxy | None = None

    async def renew(self) -> float:
        """A new key and certificate into SDS; returns when the next renewal is due (time.time clock)."""
        options = self.options
        key = await asyncio.to_thread(self.keys.new_key, options.workload.identity)  # key generation takes a while
        try:
            chain = await create_certificate(options.ca_address, options.root_cert.read_bytes(), key.csr_pem,
                                             ttl_seconds=options.ttl_seconds,
                                             token=options.token_file.read_text().strip())  # fmt: skip
        except BaseException:
            await self.retire(key)  # never served: a token would otherwise keep it
            raise
        received = time.time()
        leaf = x509.load_pem_x509_certificate(chain[0].encode())
        self.not_after = leaf.not_valid_after_utc.timestamp()
        await self.store.update(key.tls_certificate("".join(chain[:-1])), chain[-1])
        previous, self.current = self.current, key
        if previous is not None:
            task = asyncio.create_task(self.retire(previous, RETIRE_AFTER))
            self.retiring[task] = previous
            task.add_done_callback(lambda done: self.retiring.pop(done, None))
        log.info("certificate for %s valid until %s", options.workload.identity,
                 leaf.not_valid_after_utc.isoformat(timespec="seconds"))  # fmt: skip
        return rotate_at(received, self.not_after, options.grace_ratio)

    async def retire(self, key: WorkloadKey, delay: float = 0.0) -> None:
        """Remove a key that is no longer served, `delay` seconds from now (a failure is logged, not raised)."""
        await asyncio.sleep(delay)
        try:
            await asyncio.to_thread(key.retire)
        except RENEWAL_ERRORS as exc:
            log.warning("could not remove a replaced workload key: %s", exc)

    async def retire_all(self) -> None:
        """At exit, once the proxy is gone: remove the current key and any replaced one not yet removed."""
        pending, self.retiring = self.retiring, {}
        for task in pending:
            task.cancel()
        for key in [*pending.values(), *([self.current] if self.current is not None else [])]:
            await self.retire(key)

    async def rotate_forever(self, due: float) -> None:
        delay: float | None = None
        while True:
            await asyncio.sleep(max(due - time.time(), 0))
            try:
                due, delay = await self.renew(), None
            except RENEWAL_ERRORS as exc:
                delay = next_retry(delay)
                log.error("certificate renewal failed (current one expires %s): %s; retrying in %.1fs",
                          dt.datetime.fromtimestamp(self.not_after, dt.timezone.utc).isoformat(timespec="seconds"),
                          exc, delay)  # fmt: skip
                due = time.time() + delay

    async def ready(self) -> bool:
        """A certificate, the DNS table when DNS is captured (as Istio's agent: a pod resolving nothing of the mesh
        is not ready), and the proxy's own readiness."""
        if not self.store.secrets or (self.dns is not None and not self.dns.ready):
            return False
        return await http_status("127.0.0.1", self.options.admin_port, "/ready") == 200


def proxy_command(options: AgentOptions) -> list[str]:
    """The proxy as Istio's agent starts Envoy (plus --config-yaml from a bootstrap override file); `pylon proxy`
    takes the same bootstrap and flags it shares with Envoy."""
    if options.proxy == "pylon":
        workers = options.concurrency or min(os.cpu_count() or 1, 256)  # 0: Envoy's default, a worker per CPU
        command = [sys.executable, "-m", "pylon.cli", "proxy", "-c", str(options.bootstrap_path),
                   "--drain-time-s", str(options.drain_seconds), "--log-level", "warning",
                   "--concurrency", str(workers)]  # fmt: skip
    else:
        binary = options.envoy_binary or shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
        command = [binary, "-c", str(options.bootstrap_path), "--drain-strategy", "immediate",
                   "--disable-hot-restart", "--log-level", "warning"]  # fmt: skip
        if options.concurrency > 0:  # as Istio's agent: 0 leaves Envoy its default, a worker per CPU
            command += ["--concurrency", str(options.concurrency)]
    if options.bootstrap_override is not None:
        command += ["--config-yaml", options.bootstrap_override.read_text()]
    if options.proxy_uid is not None:
        uid = options.proxy_uid
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    return command


async def _stop_proxy(proxy: asyncio.subprocess.Process, options: AgentOptions) -> None:
    """Drain listeners gracefully, wait the drain time, then stop the proxy (killed if it lingers). Envoy drains
    on its admin's /drain_listeners; `pylon proxy` on SIGTERM, within its --drain-time-s."""
    if options.proxy == "pylon":
        proxy.terminate()
    else:
        await http_status("127.0.0.1", options.admin_port, "/drain_listeners?graceful", method="POST")
    try:
        await asyncio.wait_for(proxy.wait(), options.drain_seconds + (1 if options.proxy == "pylon" else 0))
    except asyncio.TimeoutError:
        pass
    if proxy.returncode is None:
        proxy.terminate()
        try:
            await asyncio.wait_for(proxy.wait(), 5)
        except asyncio.TimeoutError:
            proxy.kill()
            await proxy.wait()


def key_source(options: AgentOptions) -> KeySource:
    """Where the workload key is born: in `pylon keyd` or a PKCS#11 token when given one, else in the agent
    (Istio's default), with the pod's privateKeyProvider if its ProxyConfig names one."""
    if options.keyd_socket is not None:
        return KeydKeySource(options.keyd_socket)
    if options.pkcs11 is not None:
        return Pkcs11KeySource(options.pkcs11)
    return AgentKeySource(provider=key_provider_from_metadata({"PROXY_CONFIG": dict(options.workload.proxy_config)}))


def credential_keys(options: AgentOptions) -> CredentialKeyStore | None:
    """Where credential keys (a gateway's `credentialName` secrets) go: where the workload key lives, when that is
    keyd or a PKCS#11 token; None keeps Istio's default (the key inline to the proxy)."""
    if options.keyd_socket is not None:
        return KeydCredentialKeys(options.keyd_socket)
    if options.pkcs11 is not None:
        return TokenCredentialKeys(options.pkcs11)
    return None


async def run(options: AgentOptions) -> int:
    agent = Agent(options, key_source(options))
    try:
        due = await agent.renew()
    except RENEWAL_ERRORS as exc:
        log.error("cannot get the first certificate: %s", exc)
        return 1
    sds = await serve_sds(agent.store, str(options.sds_socket))
    file_watch = asyncio.create_task(agent.store.watch_files())
    store = credential_keys(options)
    rewriter = SecretRewriter(store) if store is not None else None
    metrics = AgentMetrics(lambda: agent.not_after)
    if options.workload.captures_dns:
        try:
            agent.dns = DnsProxy(options.workload.identity.namespace, options.workload.dns_domain,
                                 Resolvers.read(options.resolv_conf), metrics.registry)  # fmt: skip
            await agent.dns.start(*options.dns_address)
        except (DnsConfigError, OSError) as exc:
            log.error("cannot serve DNS on %s:%d: %s", *options.dns_address, exc)
            return 1
    xds = XdsProxy(options.discovery_address, options.root_cert.read_bytes(), options.token_file,
                   cluster_id=options.workload.cluster_id, rewriter=rewriter,
                   on_name_table=agent.dns.update if agent.dns is not None else None)  # fmt: skip
    await xds.start(options.xds_socket)
    if options.proxy_uid is not None:  # the proxy, another user, must be able to connect to both sockets
        for socket_path in (options.sds_socket, options.xds_socket):
            os.chown(socket_path, options.proxy_uid, options.proxy_uid)
    rotation = asyncio.create_task(agent.rotate_forever(due))
    bootstrap = build_bootstrap(options.workload, xds_socket=str(options.xds_socket),
                                sds_socket=str(options.sds_socket), admin_port=options.admin_port)  # fmt: skip
    options.bootstrap_path.parent.mkdir(parents=True, exist_ok=True)
    options.bootstrap_path.write_text(json.dumps(bootstrap, indent=2))
    health = await serve_health(*options.health, agent.ready)
    merged_metrics = await serve_metrics(*options.status, options.admin_port, metrics)
    proxy = await asyncio.create_subprocess_exec(*proxy_command(options), env={**os.environ, **options.proxy_env})
    log.info("agent for %s: SDS on %s, xDS on %s, proxy pid %d, health on %s:%d", options.workload.node_id,
             options.sds_socket, options.xds_socket, proxy.pid, *options.health)  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    proxy_exit = asyncio.create_task(proxy.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({proxy_exit, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if proxy_exit.done():
        log.error("proxy exited with %s; agent stopping", proxy.returncode)
        code = proxy.returncode or 1
    else:
        log.info("draining the proxy for up to %.1fs", options.drain_seconds)
        await _stop_proxy(proxy, options)
        code = 0
    stopping.cancel()
    rotation.cancel()
    file_watch.cancel()
    health.close()
    merged_metrics.close()
    await sds.stop(grace=0.5)
    await xds.stop()
    if agent.dns is not None:
        await agent.dns.stop()
    await agent.retire_all()
    if rewriter is not None:
        await rewriter.retire_all()
    options.sds_socket.unlink(missing_ok=True)
    options.xds_socket.unlink(missing_ok=True)
    return code


def run_agent(options: AgentOptions) -> int:
    logging.basicConfig(level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(options))
