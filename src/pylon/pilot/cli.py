"""The `pylon pilot` command (registered on the main `pylon` group in pylon/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command("pilot")
@click.option("--config-dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Directory of Istio YAML (watched; changes are pushed after 100 ms of quiet).")
@click.option("--grpc-address", default="127.0.0.1:15010", show_default=True, help="Plaintext ADS (istiod's 15010).")
@click.option("--monitoring-address", default="127.0.0.1:15014", show_default=True, help="/metrics (istiod's 15014).")
@click.option("--debug-address", default="127.0.0.1:8080", show_default=True,
              help="/ready, /debug/syncz, /debug/config_dump, /debug/connections (istiod's 8080).")
@click.option("-l", "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def pilot_command(config_dir: Path, grpc_address: str, monitoring_address: str, debug_address: str,
                  log_level: str) -> None:
    """Run the control plane: Istio resources in, xDS out (an istiod of pylon's own)."""
    from pylon.pilot.app import PilotOptions, run_pilot, split_address

    for flag, address in (("--grpc-address", grpc_address), ("--monitoring-address", monitoring_address),
                          ("--debug-address", debug_address)):  # fmt: skip
        try:
            split_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint=flag) from None
    sys.exit(run_pilot(PilotOptions(config_dir=config_dir, grpc_address=grpc_address,
                                    monitoring_address=monitoring_address, debug_address=debug_address,
                                    log_level=log_level)))  # fmt: skip
