"""The `pylon mesh` commands (registered on the main `pylon` group in pylon/cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from pylon.mesh.control import Mesh


def _mesh():  # type: ignore[no-untyped-def]
    from pylon.mesh.control import Mesh

    return Mesh()


def _fail(exc: Exception) -> None:
    click.echo(f"pylon mesh: {exc}", err=True)
    sys.exit(1)


@click.group("mesh")
def mesh_command() -> None:
    """The whole mesh on one machine: network namespaces as pods, injected sidecars, pilot with its CA."""


@mesh_command.command("up")
@click.option("-f", "install_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An IstioOperator file (install.istio.io/v1alpha1): spec.meshConfig is used.")
@click.option("--proxy", type=click.Choice(["pylon", "envoy"]), default="pylon", show_default=True,
              help="The proxy every sidecar runs: pylon proxy, or real Envoy.")
def up_command(install_file: Path | None, proxy: str) -> None:
    """Start pilot (istiod, with its CA) in its own namespace on the mesh bridge."""
    from pylon.config.errors import ConfigError
    from pylon.mesh.install import Install, load_install
    from pylon.mesh.netns import MeshError

    try:
        install = load_install(install_file) if install_file else Install()
        for name in install.ignored:
            click.echo(f"ignored (Kubernetes only): {name}", err=True)
        mesh = _mesh()
        mesh.up(install, proxy=proxy)
    except (ConfigError, MeshError) as exc:
        _fail(exc)
    _report(mesh)
    click.echo(f"mesh up: pilot on 10.77.0.2 (ADS :15010, CA and ADS over TLS :15012); state in {mesh.root}")


@mesh_command.command("run", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--namespace", default="default", show_default=True)
@click.option("--service-account", default=None, help="Default: the workload's name.")
@click.option("--port", "ports", type=click.IntRange(1, 65535), multiple=True, required=True,
              help="A port the workload serves HTTP on (repeatable).")
@click.option("--labels", "labels", multiple=True, metavar="KEY=VALUE", help="A pod label (repeatable).")
@click.option("--sidecar/--no-sidecar", default=True, show_default=True,
              help="Inject a sidecar (Istio's sidecar.istio.io/inject); without one the pod is outside the mesh.")
@click.option("--proxy", type=click.Choice(["pylon", "envoy"]), default=None,
              help="This sidecar's proxy (default: the mesh's, from `mesh up --proxy`): pylon and Envoy sidecars mix.")
@click.option("--cert-ttl", type=click.IntRange(1), default=None,
              help="Seconds the sidecar's certificate lives (Istio's SECRET_TTL; default 24 h); renewed at half.")
@click.option("--service", default=None, help="The service it backs (default: NAME); several workloads may back one, "
                                              "e.g. with --labels version=v1 and version=v2.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_command(name: str, namespace: str, service_account: str | None, ports: tuple[int, ...],
                labels: tuple[str, ...], sidecar: bool, proxy: str | None, cert_ttl: int | None, service: str | None,
                command: tuple[str, ...]) -> None:  # fmt: skip
    """Start COMMAND (after --) as workload NAME with an injected sidecar; it is served as
    NAME.NAMESPACE.svc.cluster.local on every port given."""
    from pylon.mesh.netns import MeshError

    parsed: dict[str, str] = {}
    for label in labels:
        key, sep, value = label.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{label!r}: expected KEY=VALUE", param_hint="--labels")
        parsed[key] = value
    from pylon.config.errors import ConfigError

    mesh = _mesh()
    try:
        spec = mesh.run(name, namespace, service_account or name, ports, parsed, list(command), service or name,
                        sidecar, proxy or "", cert_ttl or 0)  # fmt: skip
    except (MeshError, ValueError, ConfigError) as exc:
        _report(mesh)
        _fail(exc)
    _report(mesh)
    click.echo(f"{name}: pod {spec.address}, service {spec.service}.{namespace}.svc.cluster.local ({spec.vip}) "
               f"port(s) {', '.join(map(str, ports))}")


def _report(mesh: Mesh) -> None:
    """What starting pods met and did not use: Kubernetes-only settings (ProxyConfig `image`), and resources
    not applied."""
    for name in mesh.ignored:
        click.echo(f"ignored (Kubernetes only): {name}", err=True)
    for note in mesh.notes:
        click.echo(f"note: {note}", err=True)


@mesh_command.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(name: str, command: tuple[str, ...]) -> None:
    """Run COMMAND (after --) inside workload NAME's network namespace, as `kubectl exec`."""
    from pylon.mesh.netns import MeshError

    try:
        sys.exit(_mesh().exec(name, list(command)))
    except MeshError as exc:
        _fail(exc)


@mesh_command.command("apply")
@click.option("-f", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Istio YAML (multi-document) to add to the mesh's config, as `kubectl apply -f`.")
def apply_command(path: Path) -> None:
    """Apply Istio resources to the running mesh (checked first; pilot pushes them within a second)."""
    from pylon.config.errors import ConfigError
    from pylon.mesh.netns import MeshError

    try:
        count = _mesh().apply(path)
    except (ConfigError, MeshError) as exc:
        _fail(exc)
    click.echo(f"applied {count} resource(s) from {path}")


@mesh_command.command("status")
def status_command() -> None:
    """The workloads of the running mesh and where they are, then each proxy's config sync state (as
    `istioctl proxy-status`: SYNCED, STALE, NOT SENT per xDS type)."""
    from pylon.mesh.netns import MeshError
    from pylon.mesh.proxy_status import TYPES, proxy_rows, rejections

    mesh = _mesh()
    try:
        state = mesh.status()
        syncz = mesh.sync_status()
    except MeshError as exc:
        _fail(exc)
    click.echo(f"proxy: {state.proxy}")
    for name, workload in sorted(state.workloads.items()):
        spec = workload.spec
        click.echo(f"{name}\t{spec.namespace}\t{spec.address}\t{spec.service or '-'}\t{spec.vip or '-'}\t"
                   f"{','.join(map(str, spec.ports)) or '-'}")
    click.echo("")
    click.echo("\t".join(["NAME", *(t.upper() for t in TYPES), "VERSION"]))
    for row in proxy_rows(syncz):
        click.echo("\t".join(row))
    for line in rejections(syncz):
        click.echo(f"rejected: {line}")


@mesh_command.command("logs")
@click.argument("name")
def logs_command(name: str) -> None:
    """Print workload NAME's log and its sidecar's (NAME istiod: pilot's)."""
    from pylon.mesh.netns import MeshError

    try:
        paths = _mesh().log_paths(name)
    except MeshError as exc:
        _fail(exc)
    for path in paths:
        click.echo(f"==> {path.name} <==")
        click.echo(path.read_text(errors="replace"), nl=False)


@mesh_command.command("down")
def down_command() -> None:
    """Stop everything and remove every namespace, link, rule and file the mesh made (safe to run twice)."""
    removed = _mesh().down()
    click.echo(f"removed: {', '.join(removed)}" if removed else "nothing to remove")
