"""The `pylon` command: proxy, pilot, agent, keyd, demo and the bench kit (echo, load, report)."""

from __future__ import annotations

import importlib
import sys

import click

from pylon import __version__
from pylon.proxy.logging_setup import LEVELS


# Subcommands other than `proxy`, imported only when one runs (or help lists them): importing them all cost
# ~0.27 s of CPU on every start of every command, the proxy's and each of its worker processes' included.
_LAZY_COMMANDS = {
    "keyd": "pylon.keys.cli:keyd_command",
    "echo": "pylon.bench.cli:echo",
    "load": "pylon.bench.cli:load",
    "report": "pylon.bench.cli:report",
    "bench": "pylon.bench.scenario:bench",
    "demo": "pylon.bench.demo:demo",
    "pilot": "pylon.pilot.cli:pilot_command",
    "agent": "pylon.agent.cli:agent_command",
    "mesh": "pylon.mesh.cli:mesh_command",
}


class _LazyGroup(click.Group):
    """A group whose commands in `_LAZY_COMMANDS` are imported by name when asked for (click's lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *_LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command) and command.name == cmd_name, target
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


if __name__ == "__main__":
    main()
