"""The `pylon` command group: every subcommand reachable, and only `proxy`'s imports paid at start-up."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from pylon import cli


def test_every_lazy_subcommand_resolves_to_the_command_of_its_name() -> None:
    ctx = cli.main.make_context("pylon", ["--help"], resilient_parsing=True)
    names = cli.main.list_commands(ctx)
    assert set(cli._LAZY_COMMANDS) | {"proxy"} == set(names)
    for name in names:
        command = cli.main.get_command(ctx, name)
        assert command is not None and command.name == name
        result = CliRunner().invoke(cli.main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)


def test_top_level_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for name in [*cli._LAZY_COMMANDS, "proxy"]:
        assert f"\n  {name} " in result.output


def test_importing_the_command_leaves_the_other_subcommands_unimported() -> None:
    # `pylon proxy` (and every worker process it spawns) starts by importing pylon.cli: the bench kit, pilot,
    # agent and mesh must not ride along.
    probe = ("import sys, pylon.cli; print(sorted(m for m in sys.modules if m.split('.')[:2] in "
             "(['pylon', 'bench'], ['pylon', 'pilot'], ['pylon', 'agent'], ['pylon', 'mesh'])))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
