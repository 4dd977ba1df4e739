"""The `pylon` command: proxy, pilot, agent, keyd, demo and the bench kit (echo, load, report)."""

from __future__ import annotations

import sys

import click

from pylon import __version__
from pylon.proxy.logging_setup import LEVELS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pylon")
def main() -> None:
    """pylon: a service mesh in Python (Envoy-like proxy, Istio-like control plane, Fortio-like bench kit)."""


@main.command()
@click.option("-c", "--config-path", type=click.Path(dir_okay=False), help="Envoy v3 bootstrap config (YAML or JSON).")
@click.option("--config-yaml", help="Bootstrap YAML merged over --config-path (as Envoy does).")
@click.option("--concurrency", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Worker processes (Envoy: worker threads).")
@click.option("-l", "--log-level", type=click.Choice(list(LEVELS)), default="info", show_default=True)
@click.option("--mode", type=click.Choice(["serve", "validate"]), default="serve", show_default=True,
              help="validate: check the config (including certificates and regexes) and exit.")
@click.option("--drain-time-s", type=click.FloatRange(0), default=600, show_default=True,
              help="How long in-flight requests may take to finish after SIGTERM or /quitquitquit.")
@click.option("--base-id", type=int, default=None,
              help="Accepted for Envoy compatibility and ignored: pylon has no hot restart, so no shared-memory id.")
def proxy(config_path: str | None, config_yaml: str | None, concurrency: int, log_level: str, mode: str,
          drain_time_s: float, base_id: int | None) -> None:
    """Run the proxy with an Envoy bootstrap config (Envoy's command-line flags)."""
    from pylon.proxy.server import ProxyOptions, run_proxy

    if config_path is None and config_yaml is None:
        raise click.UsageError("give a config: -c/--config-path FILE and/or --config-yaml YAML")
    sys.exit(run_proxy(ProxyOptions(config_path=config_path, config_yaml=config_yaml, concurrency=concurrency,
                                    log_level=log_level, mode=mode, drain_time_s=drain_time_s, base_id=base_id)))


def _register_keyd_command() -> None:
    from pylon.keys.cli import keyd_command

    main.add_command(keyd_command)


_register_keyd_command()


def _register_bench_commands() -> None:
    from pylon.bench.cli import echo, load, report
    from pylon.bench.demo import demo
    from pylon.bench.scenario import bench

    for command in (echo, load, report, bench, demo):
        main.add_command(command)


_register_bench_commands()


def _register_pilot_command() -> None:
    from pylon.pilot.cli import pilot_command

    main.add_command(pilot_command)


_register_pilot_command()


def _register_agent_command() -> None:
    from pylon.agent.cli import agent_command

    main.add_command(agent_command)


_register_agent_command()


def _register_mesh_command() -> None:
    from pylon.mesh.cli import mesh_command

    main.add_command(mesh_command)


_register_mesh_command()

if __name__ == "__main__":
    main()
