"""`pylon pilot validate DIR`: schema errors exit 1 naming file, document and field; dangling references warn."""

from __future__ import annotations

import subprocess
from pathlib import Path

from click.testing import CliRunner

from pylon.pilot.cli import pilot_command
from tests.conftest import pylon_cmd
from tests.pilot.builders import doc, gateway, service_entry, subsets_rule, virtual_service, write_yaml

HOST = "echo.example.com"


def test_schema_errors_exit_1_with_file_document_and_field(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", gateway(8080),
               doc("VirtualService", "v", {"hosts": ["*"], "http": [{"timeout": "soon", "route": []}]}))  # fmt: skip
    result = subprocess.run(pylon_cmd("pilot", "validate", str(tmp_path)), capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert f"config error in {tmp_path}/a.yaml (document 2, VirtualService default/v): spec.http[0].timeout" in result.stderr


def test_dangling_references_are_warnings(tmp_path: Path) -> None:
    write_yaml(tmp_path / "mesh.yaml", gateway(8080), service_entry(HOST, [("10.0.0.1", 80, {"version": "v1"})]),
               subsets_rule(HOST, ["v1"]),
               virtual_service([{"route": [{"destination": {"host": HOST, "subset": "v2"}},
                                           {"destination": {"host": "missing.example.com"}}],
                                 "mirror": {"host": HOST, "subset": "v1"}}],
                               gateways=["istio-system/gw", "nowhere", "mesh"]))  # fmt: skip
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    source = f"{tmp_path}/mesh.yaml (document 4, VirtualService default/vs)"
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"Warning [IST0101] {source}: spec.gateways[1]: referenced gateway not found: 'default/nowhere'",
        f"Warning [IST0101] {source}: spec.http[0].route[0].destination.subset: referenced host+subset in "
        f"destinationrule not found: '{HOST}' subset 'v2'",
        f"Warning [IST0101] {source}: spec.http[0].route[1].destination.host: referenced host not found: "
        "'missing.example.com'",
    ]


def test_clean_directory_and_bad_mesh_config(tmp_path: Path) -> None:
    write_yaml(tmp_path / "mesh.yaml", gateway(8080), service_entry(HOST, [("10.0.0.1", 80, {})]),
               virtual_service([{"route": [{"destination": {"host": HOST}}]}]))  # fmt: skip
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    assert result.exit_code == 0 and "No validation issues found" in result.output
    mesh_config = tmp_path / "meshconfig.txt"
    mesh_config.write_text("outboundTrafficPolicy:\n  mode: ALLOW_ANY\nenableTracing: true\n")
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path), "--mesh-config", str(mesh_config)])
    assert result.exit_code == 1 and "enableTracing: not supported by pylon pilot yet" in result.output


def test_tcp_and_tls_route_destinations_are_checked_too(tmp_path: Path) -> None:
    write_yaml(tmp_path / "mesh.yaml", service_entry(HOST, [("10.0.0.1", 80, {})]),
               doc("VirtualService", "l4", {"hosts": ["*.example.com"], "tcp": [
                   {"route": [{"destination": {"host": HOST}}]}], "tls": [{"match": [{"sniHosts": ["a.example.com"]}],
                   "route": [{"destination": {"host": "gone.example.com"}}]}]}))  # fmt: skip
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"Warning [IST0101] {tmp_path}/mesh.yaml (document 2, VirtualService default/l4): "
        "spec.tls[0].route[0].destination.host: referenced host not found: 'gone.example.com'"]


def test_delegates_are_checked_where_they_are_written(tmp_path: Path) -> None:
    """A missing delegate warns at the root's route; a delegate's short host is a name of its own namespace."""
    write_yaml(tmp_path / "mesh.yaml", service_entry(HOST, [("10.0.0.1", 80, {})]),
               virtual_service([{"delegate": {"name": "api", "namespace": "team"}}, {"delegate": {"name": "gone"}},
                                {"route": [{"destination": {"host": HOST}}]}], gateways=["mesh"], hosts=[HOST]),
               doc("VirtualService", "api", {"http": [{"route": [{"destination": {"host": "reviews"}}]}]},
                   namespace="team"))  # fmt: skip
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"Warning [IST0101] {tmp_path}/mesh.yaml (document 2, VirtualService default/vs): spec.http[1].delegate: "
        "referenced delegate virtual service not found: 'default/gone'",
        f"Warning [IST0101] {tmp_path}/mesh.yaml (document 3, VirtualService team/api): "
        "spec.http[0].route[0].destination.host: referenced host not found: 'reviews.team.svc.cluster.local'",
    ]


def test_sidecar_errors_and_its_egress_proxy(tmp_path: Path) -> None:
    write_yaml(tmp_path / "sidecar.yaml", doc("Sidecar", "s", {"ingress": [
        {"port": {"number": 9090, "protocol": "HTTP"}, "defaultEndpoint": "10.0.0.1:8080"}]}))  # fmt: skip
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert (f"config error in {tmp_path}/sidecar.yaml (document 1, Sidecar default/s): spec.ingress[0].defaultEndpoint: "
            "defaultEndpoint must be of form 127.0.0.1:<port>") in result.output
    write_yaml(tmp_path / "sidecar.yaml", service_entry(HOST, [("10.0.0.1", 80, {})]), doc("Sidecar", "s", {
        "outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "egress.example.com", "port": {"number": 443}}}}))
    result = CliRunner().invoke(pilot_command, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"Warning [IST0101] {tmp_path}/sidecar.yaml (document 2, Sidecar default/s): "
        "spec.outboundTrafficPolicy.egressProxy.host: referenced host not found: 'egress.example.com'"]
