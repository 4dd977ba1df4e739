"""What the agent tells pilot and the proxy (sans-IO): the bootstrap's xDS pipe, LABELS, and PROXY_CONFIG from
a ProxyConfig file, whose errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pylon.agent.bootstrap import Workload, build_bootstrap
from pylon.agent.proxy_config import env_metadata, load_proxy_config, node_proxy_config, protojson_duration
from pylon.config.errors import ConfigError
from pylon.identity.spiffe import SpiffeId
from pylon.pilot.istio.proxyconfig import key_provider_from_metadata


def test_bootstrap_sends_xds_and_sds_through_the_agents_sockets() -> None:
    workload = Workload(SpiffeId("cluster.local", "istio-system", "gw"), "gw-0", "10.0.0.1", proxy_type="router",
                        labels={"istio": "ingressgateway"}, proxy_config={"discoveryAddress": "pilot:15012"})
    bootstrap = build_bootstrap(workload, xds_socket="./etc/istio/proxy/XDS", sds_socket="./sds", admin_port=15000)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    address = clusters["xds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": "./etc/istio/proxy/XDS"}}
    metadata = bootstrap["node"]["metadata"]
    assert metadata["LABELS"] == {"istio": "ingressgateway"}
    assert metadata["PROXY_CONFIG"] == {"discoveryAddress": "pilot:15012"}


def test_proxy_config_becomes_istios_protobuf_json_that_pilot_reads(tmp_path: Path) -> None:
    path = tmp_path / "pc.yaml"
    path.write_text("privateKeyProvider:\n  cryptomb:\n    pollDelay: 10ms\n")
    metadata = node_proxy_config(load_proxy_config(path), discovery_address="127.0.0.1:15012", admin_port=15000)
    assert metadata == {"discoveryAddress": "127.0.0.1:15012", "proxyAdminPort": 15000,
                        "privateKeyProvider": {"cryptomb": {"pollDelay": "0.010s", "fallback": False}}}
    provider = key_provider_from_metadata({"PROXY_CONFIG": metadata})
    assert provider is not None and provider.name == "cryptomb" and provider.settings.poll_delay == pytest.approx(0.01)


@pytest.mark.parametrize(("text", "where"), [
    ("privateKeyProvider: {qat: {pollDelay: 0s}}\n", "privateKeyProvider.qat.pollDelay: must be greater than 0"),
    ("privateKeyProvider: {qat: {pollDelay: 1ms}, cryptomb: {pollDelay: 1ms}}\n", "privateKeyProvider"),
    ("concurrency: -1\n", "concurrency: concurrency must be greater than or equal to 0"),
    ("proxyMetadata: {1A: x}\n", "proxyMetadata.1A: a valid environment variable name"),
    ("drainDuration: 5s\n", "drainDuration: not supported by pylon pilot yet"),
    ("privateKeyProvider: {qat: {pollDelay: 1ms, fallbak: true}}\n", "privateKeyProvider.qat.fallbak: unknown field"),
    ("- a list\n", "expected a ProxyConfig mapping"),
])  # fmt: skip
def test_proxy_config_errors_name_the_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "pc.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_proxy_config(path)
    assert str(error.value).startswith(f"config error in {path}: ")
    assert where in str(error.value)


@pytest.mark.parametrize(("seconds", "text"), [(2.0, "2s"), (0.002, "0.002s"), (1.5, "1.500s"), (0.000_002, "0.000002s"),
                                               (1e-9, "0.000000001s")])  # fmt: skip
def test_durations_as_go_protojson_writes_them(seconds: float, text: str) -> None:
    assert protojson_duration(seconds) == text


def test_the_proxy_runs_as_the_proxy_uid_when_asked(tmp_path: Path) -> None:
    """Istio's proxy runs as istio-proxy (1337): the uid the capture rules let through uncaptured."""
    from pylon.agent.app import AgentOptions, proxy_command

    workload = Workload(SpiffeId("cluster.local", "default", "web"), "web-0", "10.0.0.1")
    options = AgentOptions(workload=workload, ca_address="x:1", root_cert=tmp_path / "r", token_file=tmp_path / "t",
                           discovery_address="x:1", sds_socket=tmp_path / "s", xds_socket=tmp_path / "x",
                           bootstrap_path=tmp_path / "b.json", proxy="envoy", envoy_binary="/bin/envoy")  # fmt: skip
    command = proxy_command(options)
    assert command[0] == "/bin/envoy" and command[command.index("--concurrency") + 1] == "2"  # Istio's default
    import dataclasses

    command = proxy_command(dataclasses.replace(options, proxy_uid=1337))
    assert command[:4] == ["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups"] and command[4] == "/bin/envoy"


def test_concurrency_and_proxy_metadata_reach_pilot_and_the_node_as_istios_agent_sends_them(tmp_path: Path) -> None:
    path = tmp_path / "pc.yaml"
    path.write_text("concurrency: 1\nproxyMetadata: {FOO: bar, ISTIO_META_DNS_CAPTURE: 'true', ISTIO_METAJSON_X: '[1]'}\n")
    config = load_proxy_config(path)
    metadata = node_proxy_config(config, discovery_address="pilot:15012", admin_port=15000)
    assert metadata["concurrency"] == 1 and metadata["proxyMetadata"]["FOO"] == "bar"
    node = env_metadata(config.proxy_metadata, str(path))
    assert node == {"DNS_CAPTURE": "true", "X": [1]}
    workload = Workload(SpiffeId("cluster.local", "default", "web"), "web-0", "10.0.0.1",
                        env_metadata={**node, "NAMESPACE": "elsewhere"})  # fmt: skip
    assert workload.metadata()["DNS_CAPTURE"] == "true" and workload.metadata()["NAMESPACE"] == "default"
    with pytest.raises(ConfigError) as error:
        env_metadata({"ISTIO_METAJSON_X": "{"}, "pc.yaml")
    assert error.value.path == "proxyMetadata.ISTIO_METAJSON_X"


def test_concurrency_zero_is_a_worker_per_cpu_and_proxy_env_is_kept(tmp_path: Path) -> None:
    """Istio's agent leaves Envoy's --concurrency out at 0 (Envoy then runs a worker per CPU); pylon proxy is told
    the CPU count."""
    import dataclasses
    import os

    from pylon.agent.app import AgentOptions, proxy_command

    workload = Workload(SpiffeId("cluster.local", "default", "web"), "web-0", "10.0.0.1")
    options = AgentOptions(workload=workload, ca_address="x:1", root_cert=tmp_path / "r", token_file=tmp_path / "t",
                           discovery_address="x:1", sds_socket=tmp_path / "s", xds_socket=tmp_path / "x",
                           bootstrap_path=tmp_path / "b.json", proxy="envoy", envoy_binary="/bin/envoy",
                           concurrency=0)  # fmt: skip
    assert "--concurrency" not in proxy_command(options)
    command = proxy_command(dataclasses.replace(options, proxy="pylon"))
    assert command[command.index("--concurrency") + 1] == str(min(os.cpu_count() or 1, 256))
