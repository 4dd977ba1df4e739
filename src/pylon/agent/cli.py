"""The `pylon agent` command (registered on the main `pylon` group in pylon/cli.py)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click


def _labels(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--labels k=v` flags as the pod's labels (node metadata LABELS)."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"invalid label {pair!r}: expected KEY=VALUE", param_hint="--labels")
        if key in labels:
            raise click.BadParameter(f"label {key!r} given twice", param_hint="--labels")
        labels[key] = value
    return labels


def _keyd_path(value: str | None) -> str | None:
    if value is None:
        return None
    if not value.startswith("unix:") or len(value) <= 5:
        raise click.BadParameter(f"{value!r}: expected unix:PATH", param_hint="--keyd")
    return value[5:]


def _pin(path: Path | None, env: str, flag: str) -> str | None:
    from pylon.keys.pkcs11 import read_pin

    try:
        return read_pin(path, env)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


def _pkcs11_token(label: str | None, library: str, pin_file: Path | None, so_pin_file: Path | None,
                  key_type: str, keyd: str | None):  # type: ignore[no-untyped-def]  # fmt: skip
    """The --pkcs11-* flags as the agent's token (None without --pkcs11-token)."""
    if label is None:
        return None
    from pylon.agent.keys import Pkcs11Token
    from pylon.identity.certs import KeyType

    if keyd is not None:
        raise click.UsageError("--keyd and --pkcs11-token each say where the workload key lives: give one")
    pin = _pin(pin_file, "PYLON_PKCS11_PIN", "--pkcs11-pin-file")
    so_pin = _pin(so_pin_file, "PYLON_PKCS11_SO_PIN", "--pkcs11-so-pin-file")
    if pin is None:
        raise click.UsageError("--pkcs11-token needs the token's user PIN: --pkcs11-pin-file or PYLON_PKCS11_PIN")
    if so_pin is None:
        raise click.UsageError("--pkcs11-token needs an SO PIN for Envoy's SGX config (which requires one and never "
                               "uses it): --pkcs11-so-pin-file or PYLON_PKCS11_SO_PIN")  # fmt: skip
    return Pkcs11Token(library=library, label=label, pin=pin, so_pin=so_pin, key_type=KeyType(key_type))


def _address(text: str, flag: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"invalid address {text!r}: expected HOST:PORT", param_hint=flag)
    return host.strip("[]"), int(port)


@click.command("agent")
@click.option("--type", "proxy_type", type=click.Choice(["sidecar", "router"]), default="sidecar", show_default=True,
              help="Istio's proxy type (router = gateway).")
@click.option("--namespace", required=True)
@click.option("--service-account", required=True)
@click.option("--pod-name", default=socket.gethostname, show_default="hostname")
@click.option("--ip", default="127.0.0.1", show_default=True, help="The workload's IP (node id and INSTANCE_IPS).")
@click.option("--trust-domain", default="cluster.local", show_default=True)
@click.option("--ca-address", default="127.0.0.1:15012", show_default=True, help="pilot's CA (TLS).")
@click.option("--root-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The mesh root (root-cert.pem) that pilot's CA certificate must chain to.")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="The service-account token (`pylon pilot token`); re-read at every renewal and for every new "
                   "xDS stream.")
@click.option("--discovery-address", default="127.0.0.1:15012", show_default=True,
              help="pilot's xDS on its TLS port (istiod's :15012), verified against --root-cert as "
                   "istiod.istio-system.svc; the agent relays the proxy's xDS there with the token.")
@click.option("--labels", "label_pairs", multiple=True, metavar="KEY=VALUE",
              help="A pod label (repeatable): node metadata LABELS, which Gateway selectors and workload "
                   "selectors match.")
@click.option("--proxy-config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="ProxyConfig YAML (Istio's proxy.istio.io/config annotation), sent as node metadata "
                   "PROXY_CONFIG; pilot reads privateKeyProvider from it, the agent concurrency (the proxy's workers) "
                   "and proxyMetadata (added to the proxy's environment; ISTIO_META_* also node metadata).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True,
              help="Root of Istio's relative paths (etc/istio/proxy/envoy-rev.json, the xDS socket "
                   "etc/istio/proxy/XDS, var/run/secrets/...).")
@click.option("--sds-socket", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SDS Unix socket (default WORKDIR/var/run/secrets/workload-spiffe-uds/socket).")
@click.option("--proxy", type=click.Choice(["envoy", "pylon"]), default="envoy", show_default=True,
              help="The proxy to run: real Envoy, or `pylon proxy` (same bootstrap, xDS and SDS).")
@click.option("--envoy-binary", default=None, help="Envoy executable (default: envoy on PATH or beside python).")
@click.option("--bootstrap-override", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML merged over the bootstrap (Istio's ISTIO_BOOTSTRAP_OVERRIDE; Envoy's --config-yaml).")
@click.option("--admin-port", type=click.IntRange(1, 65535), default=15000, show_default=True)
@click.option("--health-address", default="127.0.0.1:15021", show_default=True, help="/healthz/ready.")
@click.option("--status-address", default="127.0.0.1:15020", show_default=True,
              help="/stats/prometheus: the proxy's metrics merged with the agent's (Istio's :15020).")
@click.option("--ttl", "ttl_seconds", type=click.IntRange(1), default=24 * 3600, show_default=True,
              help="Certificate lifetime to request, seconds (Istio's SECRET_TTL).")
@click.option("--grace-ratio", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Renew at expiry minus this fraction of the lifetime.")
@click.option("--drain-seconds", type=click.FloatRange(0), default=5.0, show_default=True,
              help="How long the proxy drains on SIGTERM before it is stopped.")
@click.option("--keyd", "keyd", default=None, metavar="unix:PATH",
              help="Make and keep the workload key in this `pylon keyd` (it signs the CSR; the proxy signs its "
                   "handshakes through it), and move there the key of every credential pilot sends (a gateway's "
                   "credentialName secrets): no key bytes in the proxy.")
@click.option("--pkcs11-token", "pkcs11_label", default=None, metavar="LABEL",
              help="Make each workload key inside this PKCS#11 token (non-extractable; the CSR is signed through the "
                   "token) and import there the key of every credential pilot sends (a gateway's credentialName "
                   "secrets; sensitive, not extractable); the proxy gets Envoy's SGX provider config naming each: no "
                   "key bytes in the proxy.")  # fmt: skip
@click.option("--pkcs11-library", default="/usr/lib/softhsm/libsofthsm2.so", show_default=True, metavar="PATH",
              help="The PKCS#11 library of --pkcs11-token (SoftHSM2's by default; any PKCS#11 module works).")
@click.option("--pkcs11-pin-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the token's user PIN (else $PYLON_PKCS11_PIN).")
@click.option("--pkcs11-so-pin-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the SO PIN put in Envoy's SGX config, which requires one and never "
                   "uses it (else $PYLON_PKCS11_SO_PIN).")  # fmt: skip
@click.option("--pkcs11-key-type", type=click.Choice(["rsa-2048", "rsa-3072", "ecdsa-p256"]), default="rsa-2048",
              show_default=True, help="The workload key made in the token.")
@click.option("--concurrency", type=click.IntRange(1), default=None,
              help="The proxy's worker threads (Envoy) or processes (pylon): Istio's legacy pilot-agent --concurrency, "
                   "over --proxy-config's `concurrency`; 2 when neither sets it (Istio's sidecars).")
@click.option("--proxy-uid", type=click.IntRange(1), default=None,
              help="Run the proxy as this user and group (Istio's istio-proxy 1337, which capture rules let through); "
                   "needs the agent to run as root.")
@click.option("--dns-address", default="127.0.0.1:15053", show_default=True,
              help="Where the DNS proxy listens when the workload captures DNS (proxyMetadata "
                   "ISTIO_META_DNS_CAPTURE=true; Istio's DNS_PROXY_ADDR): mesh names from pilot's table, the rest "
                   "forwarded to the resolvers of --resolv-conf.")
@click.option("--resolv-conf", type=click.Path(dir_okay=False, path_type=Path), default=Path("/etc/resolv.conf"),
              show_default=True, help="The pod's resolvers and search list (DNS capture).")
@click.option("-l", "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def agent_command(proxy_type: str, namespace: str, service_account: str, pod_name: str, ip: str, trust_domain: str,
                  ca_address: str, root_cert: Path, token_file: Path, discovery_address: str,
                  label_pairs: tuple[str, ...], proxy_config: Path | None, workdir: Path,
                  sds_socket: Path | None, proxy: str, envoy_binary: str | None, bootstrap_override: Path | None,
                  admin_port: int, health_address: str, status_address: str, ttl_seconds: int, grace_ratio: float,
                  drain_seconds: float, keyd: str | None, pkcs11_label: str | None, pkcs11_library: str,
                  pkcs11_pin_file: Path | None, pkcs11_so_pin_file: Path | None, pkcs11_key_type: str,
                  concurrency: int | None, proxy_uid: int | None, dns_address: str, resolv_conf: Path,
                  log_level: str) -> None:  # fmt: skip
    """Run Istio's pilot-agent role beside a proxy: certificate, SDS, xDS proxy, rotation, bootstrap, supervision."""
    from pylon.agent.app import AgentOptions, run_agent
    from pylon.agent.bootstrap import Workload
    from pylon.agent.proxy_config import env_metadata, load_proxy_config, node_proxy_config
    from pylon.config.errors import ConfigError
    from pylon.identity.spiffe import SpiffeError, SpiffeId
    from pylon.pilot.istio.proxyconfig import ProxyConfig

    try:
        identity = SpiffeId(trust_domain, namespace, service_account)
    except SpiffeError as exc:
        raise click.UsageError(str(exc)) from None
    token = _pkcs11_token(pkcs11_label, pkcs11_library, pkcs11_pin_file, pkcs11_so_pin_file, pkcs11_key_type, keyd)
    _address(ca_address, "--ca-address")
    _address(discovery_address, "--discovery-address")
    try:
        config = load_proxy_config(proxy_config) if proxy_config is not None else ProxyConfig()
        node_env = env_metadata(config.proxy_metadata, str(proxy_config))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--proxy-config") from None
    workload = Workload(identity=identity, pod_name=pod_name, ip=ip, proxy_type=proxy_type, labels=_labels(label_pairs),
                        proxy_config=node_proxy_config(config, discovery_address=discovery_address,
                                                       admin_port=admin_port), env_metadata=node_env)  # fmt: skip
    if concurrency is None:
        concurrency = config.concurrency if config.concurrency is not None else 2
    options = AgentOptions(
        workload=workload, ca_address=ca_address, root_cert=root_cert, token_file=token_file,
        discovery_address=discovery_address,
        sds_socket=sds_socket or workdir / "var/run/secrets/workload-spiffe-uds/socket",
        xds_socket=workdir / "etc/istio/proxy/XDS",
        bootstrap_path=workdir / "etc/istio/proxy/envoy-rev.json", proxy=proxy, envoy_binary=envoy_binary,
        bootstrap_override=bootstrap_override, admin_port=admin_port,
        health=_address(health_address, "--health-address"), status=_address(status_address, "--status-address"),
        ttl_seconds=ttl_seconds, grace_ratio=grace_ratio,
        drain_seconds=drain_seconds, proxy_uid=proxy_uid, concurrency=concurrency,
        proxy_env=dict(config.proxy_metadata), keyd_socket=_keyd_path(keyd),
        pkcs11=token, dns_address=_address(dns_address, "--dns-address"), resolv_conf=resolv_conf,
        log_level=log_level,
    )  # fmt: skip
    sys.exit(run_agent(options))
