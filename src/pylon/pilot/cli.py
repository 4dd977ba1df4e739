"""The `pylon pilot` command (registered on the main `pylon` group in pylon/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.group("pilot", invoke_without_command=True)
@click.option("--config-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of Istio YAML (watched; changes are pushed after 100 ms of quiet). Required.")
@click.option("--mesh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Istio MeshConfig YAML (outboundTrafficPolicy); Istio's defaults without one.")
@click.option("--grpc-address", default="127.0.0.1:15010", show_default=True, help="Plaintext ADS (istiod's 15010).")
@click.option("--monitoring-address", default="127.0.0.1:15014", show_default=True, help="/metrics (istiod's 15014).")
@click.option("--debug-address", default="127.0.0.1:8080", show_default=True,
              help="/ready, /debug/syncz, /debug/config_dump, /debug/connections (istiod's 8080).")
@click.option("-l", "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
@click.option("--ca-address", default="127.0.0.1:15012", show_default=True,
              help="TLS (istiod's 15012): the mesh CA (istio.v1.auth.IstioCertificateService) and ADS for proxies "
                   "that authenticate with a mesh certificate or token.")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="CA files (Istio's ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem); a self-signed root "
                   "is created when empty. Default: $XDG_DATA_HOME/pylon/cacerts.")
@click.option("--ca-pkcs11-token", "ca_token_label", default=None, metavar="LABEL",
              help="Keep the CA's signing key in this PKCS#11 token instead of --ca-dir/ca-key.pem: found by "
                   "--ca-pkcs11-key-label, or made there (non-extractable) with a self-signed root when the token has "
                   "none; --ca-dir then holds only the certificates.")  # fmt: skip
@click.option("--ca-pkcs11-library", default="/usr/lib/softhsm/libsofthsm2.so", show_default=True, metavar="PATH",
              help="The PKCS#11 library of --ca-pkcs11-token.")
@click.option("--ca-pkcs11-key-label", default="pylon-mesh-ca", show_default=True, metavar="LABEL")
@click.option("--ca-pkcs11-key-type", type=click.Choice(["rsa-2048", "rsa-3072", "ecdsa-p256"]), default="rsa-2048",
              show_default=True, help="The key made in the token when it has none.")
@click.option("--ca-pkcs11-pin-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="File whose first line is the token's user PIN (else $PYLON_CA_PKCS11_PIN).")
@click.option("--secrets-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Kubernetes Secret manifests (tls.crt/tls.key/ca.crt) for Gateway credentialName, served over "
                   "ADS as kubernetes://NAME to gateways authenticated on --ca-address (watched).")
@click.option("--workload-entry-grace-period", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds an auto-registered WorkloadEntry outlives its workload's disconnection (Istio's "
                   "PILOT_WORKLOAD_ENTRY_GRACE_PERIOD).")
@click.pass_context
def pilot_command(ctx: click.Context, config_dir: Path | None, mesh_config: Path | None, grpc_address: str, monitoring_address: str,
                  debug_address: str, log_level: str, ca_address: str, ca_dir: Path | None,
                  ca_token_label: str | None, ca_pkcs11_library: str, ca_pkcs11_key_label: str,
                  ca_pkcs11_key_type: str, ca_pkcs11_pin_file: Path | None,
                  secrets_dir: Path | None, workload_entry_grace_period: float) -> None:
    """Run the control plane: Istio resources in, xDS out (an istiod of pylon's own)."""
    from pylon.identity.server import DEFAULT_CA_DIR
    from pylon.pilot.app import PilotOptions, run_pilot, split_address

    if ctx.invoked_subcommand is not None:
        return
    if config_dir is None:
        raise click.UsageError("missing option --config-dir")
    for flag, address in (("--grpc-address", grpc_address), ("--monitoring-address", monitoring_address),
                          ("--debug-address", debug_address), ("--ca-address", ca_address)):  # fmt: skip
        try:
            split_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None
    ca_token = None
    if ca_token_label is not None:
        from pylon.identity.certs import KeyType
        from pylon.keys.pkcs11 import read_pin
        from pylon.pilot.ca_key import CaToken

        try:
            pin = read_pin(ca_pkcs11_pin_file, "PYLON_CA_PKCS11_PIN")
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ca-pkcs11-pin-file") from None
        if pin is None:
            raise click.UsageError("--ca-pkcs11-token needs the token's user PIN: --ca-pkcs11-pin-file or "
                                   "PYLON_CA_PKCS11_PIN")  # fmt: skip
        ca_token = CaToken(library=ca_pkcs11_library, token=ca_token_label, key_label=ca_pkcs11_key_label, pin=pin,
                           key_type=KeyType(ca_pkcs11_key_type))  # fmt: skip
    sys.exit(run_pilot(PilotOptions(config_dir=config_dir, mesh_config=mesh_config, grpc_address=grpc_address,
                                    monitoring_address=monitoring_address, debug_address=debug_address,
                                    log_level=log_level, ca_address=ca_address,
                                    ca_dir=ca_dir or DEFAULT_CA_DIR, ca_token=ca_token, secrets_dir=secrets_dir,
                                    workload_entry_grace_period=workload_entry_grace_period)))  # fmt: skip


@pilot_command.command("token")
@click.option("--namespace", required=True, help="The workload's namespace.")
@click.option("--service-account", required=True, help="The workload's service account.")
@click.option("--ttl", default="24h", show_default=True, help="Lifetime: seconds, or a number with s, m, h or d.")
@click.option("--ca-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The CA directory whose token key signs (default: as `pylon pilot`).")
def token_command(namespace: str, service_account: str, ttl: str, ca_dir: Path | None) -> None:
    """Print a signed service-account token (audience istio-ca) for `pylon agent` to give the CA."""
    from pylon.identity.server import DEFAULT_CA_DIR
    from pylon.identity.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeError, SpiffeId
    from pylon.identity.tokens import TokenAuthority, parse_duration
    from pylon.identity.authority import load_or_create_token_key

    try:
        SpiffeId(DEFAULT_TRUST_DOMAIN, namespace, service_account)  # checks the names; a token names no trust domain
        seconds = parse_duration(ttl)
    except (SpiffeError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    directory = ca_dir or DEFAULT_CA_DIR
    directory.mkdir(parents=True, exist_ok=True)
    click.echo(TokenAuthority(load_or_create_token_key(directory)).issue(namespace, service_account, ttl=seconds))


@pilot_command.command("validate")
@click.argument("config_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--mesh-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Istio MeshConfig YAML to validate with the resources.")
def validate_command(config_dir: Path, mesh_config: Path | None) -> None:
    """Check a config directory as pilot would load it: schema errors (exit 1), then dangling references
    to gateways, hosts and subsets (warnings, exit 0), as istioctl validate and analyze."""
    from pylon.pilot.validate import validate_directory

    report = validate_directory(config_dir, mesh_config)
    for error in report.errors:
        click.echo(f"Error: {error}", err=True)
    for warning in report.warnings:
        click.echo(str(warning))
    if report.errors:
        sys.exit(1)
    if not report.warnings:
        click.echo(f"\u2714 No validation issues found when analyzing {config_dir}.")
