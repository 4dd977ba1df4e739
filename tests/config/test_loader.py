"""load_bootstrap: files, --config-yaml merging, cross-references, DataSource reads, re-encoding."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pylon.config.envoy import DownstreamTlsContext, FileAccessLog, HttpConnectionManager, TcpProxy, UpstreamTlsContext
from pylon.config.errors import ConfigError
from pylon.config.loader import bootstrap_to_dict, load_bootstrap, merge_configs, parse_bootstrap, parse_document
from tests.config.builders import (
    DOWNSTREAM_TLS_TYPE,
    HCM_PATH,
    HCM_TYPE,
    ROUTER_TYPE,
    ROUTES_PATH,
    TCP_PROXY_TYPE,
    bootstrap,
    cluster,
    hcm,
    http_bootstrap,
    listener,
    load,
    the_hcm,
)

FRONT_PROXY = Path(__file__).parent / "fixtures" / "front-proxy.yaml"


def write(path: Path, data: dict[str, Any] | str) -> str:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def load_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_bootstrap(*args, **kwargs)
    return str(info.value)


@pytest.fixture
def certs_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A current directory holding certs/{server.crt,server.key,ca.crt} (a real self-signed EC cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    certs = tmp_path / "certs"
    certs.mkdir()
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (certs / "server.crt").write_bytes(pem)
    (certs / "ca.crt").write_bytes(pem)
    (certs / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------- the realistic config


def test_front_proxy_loads(certs_cwd: Path) -> None:
    config = load_bootstrap(str(FRONT_PROXY))
    assert config.node.id == "front-proxy-1" and config.admin.address.socket_address.port_value == 9901
    [https] = config.static_resources.listeners
    assert https.name == "listener_https" and https.per_connection_buffer_limit_bytes == 32768
    chain = https.filter_chains[0]
    tls = chain.transport_socket.typed_config
    assert isinstance(tls, DownstreamTlsContext)
    assert tls.common_tls_context.tls_certificates[0].certificate_chain.filename == "certs/server.crt"
    manager = chain.filters[0].typed_config
    assert isinstance(manager, HttpConnectionManager) and manager.use_remote_address
    assert isinstance(manager.access_log[0].typed_config, FileAccessLog)
    assert manager.access_log[0].typed_config.log_format.json_format["upstream"]["cluster"] == "%UPSTREAM_CLUSTER%"
    health, canary, service1, service2, fallback = manager.route_config.virtual_hosts[0].routes
    assert health.direct_response.body.inline_string == "ok\n"
    assert canary.match.headers[0].string_match.exact == "true"
    assert [c.weight for c in canary.route.weighted_clusters.clusters] == [90, 10]
    assert service1.route.timeout == 5 and service1.route.retry_policy.per_try_timeout == 1.5
    assert service2.route.regex_rewrite.substitution == "" and service2.route.hash_policy[0].header.header_name == "x-session"
    assert fallback.redirect.response_code == "FOUND"
    first, second = config.static_resources.clusters
    assert first.lb_policy == "LEAST_REQUEST" and len(first.load_assignment.endpoints[0].lb_endpoints) == 2
    assert first.circuit_breakers.thresholds[0].max_requests == 1024
    assert second.type == "STRICT_DNS" and isinstance(second.transport_socket.typed_config, UpstreamTlsContext)
    assert second.transport_socket.typed_config.common_tls_context.validation_context.trusted_ca.filename == "certs/ca.crt"


def test_front_proxy_round_trips_through_bootstrap_to_dict(certs_cwd: Path) -> None:
    config = load_bootstrap(str(FRONT_PROXY))
    dumped = bootstrap_to_dict(config)
    json.dumps(dumped)  # JSON-serialisable as /config_dump serves it
    typed = dumped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert typed["@type"] == HCM_TYPE and typed["http_filters"][0]["typed_config"] == {"@type": ROUTER_TYPE}
    assert typed["route_config"]["virtual_hosts"][0]["routes"][2]["route"]["timeout"] == "5s"
    assert typed["common_http_protocol_options"] == {"idle_timeout": "300s", "headers_with_underscores_action": "REJECT_REQUEST"}
    assert "server_name" not in typed  # defaults are left out, as in Envoy's config_dump
    assert dumped["static_resources"]["clusters"][0]["connect_timeout"] == "0.25s"
    assert parse_bootstrap(dumped, "dump") == config


def test_bootstrap_to_dict_encodes_bytes_as_base64() -> None:
    data = http_bootstrap([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_bytes": "aGVsbG8="}}}])
    config = load(data)
    assert the_hcm(config).route_config.virtual_hosts[0].routes[0].direct_response.body.inline_bytes == b"hello"
    dumped = bootstrap_to_dict(config)
    assert dumped["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"][0]["routes"][0]["direct_response"]["body"] == {"inline_bytes": "aGVsbG8="}  # fmt: skip
    assert parse_bootstrap(dumped, "dump") == config


def test_bootstrap_to_dict_is_plain_json() -> None:
    """/config_dump encodes the dict with msgspec.json, which refuses str subclasses (constrained text, regexes)."""
    data = http_bootstrap([{"match": {"safe_regex": {"regex": "/a.*"}}, "route": {"cluster": "svc", "prefix_rewrite": "/b"},
                            "request_headers_to_add": [{"header": {"key": "x-k", "value": "v"}}]}])  # fmt: skip
    config = load(data)
    assert parse_bootstrap(msgspec.json.decode(msgspec.json.encode(bootstrap_to_dict(config))), "dump") == config


# --------------------------------------------------------------------------- sources and formats


def test_yaml_and_json_files_load_the_same(tmp_path: Path) -> None:
    data = bootstrap()
    from_yaml = load_bootstrap(write(tmp_path / "envoy.yaml", data))
    from_json = load_bootstrap(write(tmp_path / "envoy.conf", json.dumps(data, indent=2)))
    assert from_yaml == from_json == load(data)


def test_config_yaml_alone() -> None:
    config = load_bootstrap(config_yaml=json.dumps(bootstrap()))
    assert config.static_resources.clusters[0].name == "svc"
    assert load_error(config_yaml="node: {id: x}\nbogus: 1") == "config error in <config-yaml>: bogus: unknown field"


def test_config_yaml_is_merged_over_the_file(tmp_path: Path) -> None:
    data = bootstrap()
    data["node"] = {"id": "from-file", "cluster": "edge"}
    path = write(tmp_path / "envoy.yaml", data)
    override = "node: {id: from-flag}\nstatic_resources: {clusters: [{name: extra}]}"
    config = load_bootstrap(path, override)
    assert (config.node.id, config.node.cluster) == ("from-flag", "edge")  # maps merge key by key
    assert [c.name for c in config.static_resources.clusters] == ["svc", "extra"]  # lists append
    message = load_error(path, "admin: {adress: {}}")
    assert message == f"config error in {path} (merged with --config-yaml): admin.adress: unknown field"


def test_merge_configs_follows_protobuf_merge() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": "x"}
    merged = merge_configs(base, {"a": {"c": [2], "e": 3}, "d": "y"})
    assert merged == {"a": {"b": 1, "c": [1, 2], "e": 3}, "d": "y"}
    assert base == {"a": {"b": 1, "c": [1]}, "d": "x"}


def test_the_documented_example_message(tmp_path: Path) -> None:
    routes = [{"match": {"prefix": f"/{i}"}, "route": {"cluster": "svc"}} for i in range(3)]
    routes.append({"match": {"prefix": "/tls", "tls_context": {}}, "route": {"cluster": "svc"}})
    path = write(tmp_path / "envoy.yaml", http_bootstrap(routes))
    assert load_error(path) == (
        f"config error in {path}: static_resources.listeners[0].filter_chains[0].filters[0].typed_config."
        "route_config.virtual_hosts[0].routes[3].match.tls_context: unknown field"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the config is empty"),
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
        ("admin: {address: [\n", "invalid YAML at line 2, column 1: while parsing a flow node"),
        ("node: {id: a}\nnode: {id: b}\n", "invalid YAML at line 2, column 1: while constructing a mapping, found duplicate key 'node'"),
        ('{"node": {"id": "a"}, "node": {}}', "duplicate key 'node'"),
    ],
)
def test_unparseable_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "envoy.yaml", text)
    assert load_error(path).startswith(f"config error in {path}: ")
    assert message in load_error(path)


def test_yaml_flow_mapping_starting_with_brace() -> None:
    assert load_bootstrap(config_yaml="{node: {id: flow}}").node.id == "flow"


def test_keys_tagged_ignore_are_left_out_at_any_depth() -> None:
    """Envoy drops `!ignore`-tagged keys with their values; their anchors still serve the aliases after them.
    (tests/bench/test_conformance.py runs such a file through Envoy's validate mode too.)"""
    text = """
!ignore anchors: {port: &port 9901, unknown_field: 1}
node:
  !ignore note: not a Node field
  id: tagged
admin: {address: {socket_address: {address: 127.0.0.1, port_value: *port}}}
"""
    loaded = load_bootstrap(config_yaml=text)
    assert loaded.node.id == "tagged" and loaded.admin.address.socket_address.port_value == 9901
    assert "unknown field" in load_error_yaml(text.replace("!ignore note", "note"))


def test_null_is_unset_for_fields_and_a_value_inside_structs() -> None:
    """protobuf's JSON mapping, as Envoy reads configs (tests/config/envoy_cases.py: `null-*`, beside Envoy)."""
    text = """
node: {id: n, metadata: {kept: null}}
static_resources:
  listeners:
  - name: main
    address: {socket_address: {address: 127.0.0.1, port_value: 10000}}
    listener_filters:
    per_connection_buffer_limit_bytes: null
    filter_chains: [{filters: [{name: tcp, typed_config: {"@type": %s, stat_prefix: t, cluster: svc, idle_timeout: null}}]}]
  clusters: [{name: svc, connect_timeout: null}]
""" % TCP_PROXY_TYPE
    loaded = load_bootstrap(config_yaml=text)
    [main] = loaded.static_resources.listeners
    assert main.listener_filters == [] and main.per_connection_buffer_limit_bytes == 1024 * 1024
    tcp = main.filter_chains[0].filters[0].typed_config
    assert isinstance(tcp, TcpProxy) and tcp.idle_timeout == TcpProxy(stat_prefix="t", cluster="svc").idle_timeout
    assert loaded.static_resources.clusters[0].connect_timeout == 5
    assert loaded.node.metadata == {"kept": None}


def load_error_yaml(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_bootstrap(config_yaml=text)
    return str(caught.value)


def test_numbers_may_be_quoted_as_in_proto_json() -> None:
    data = bootstrap(clusters=[cluster("svc", ("127.0.0.1", "8080"), per_connection_buffer_limit_bytes="4096")])  # type: ignore[arg-type]
    svc = load(data).static_resources.clusters[0]
    assert svc.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 8080
    assert svc.per_connection_buffer_limit_bytes == 4096


def test_missing_config_file_and_no_config(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert load_error(missing) == f"config error in {missing}: cannot read: No such file or directory"
    assert "no config given" in load_error()


# --------------------------------------------------------------------------- cross references


def test_route_to_an_undefined_cluster() -> None:
    data = http_bootstrap([{"match": {"prefix": "/"}, "route": {"cluster": "nope"}}])
    with pytest.raises(ConfigError) as info:
        load(data)
    assert str(info.value) == f"config error in test.yaml: {ROUTES_PATH}[0].route.cluster: unknown cluster 'nope'"
    assert info.value.path == f"{ROUTES_PATH}[0].route.cluster" and info.value.source == "test.yaml"


def test_weighted_cluster_to_an_undefined_cluster() -> None:
    route = {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [{"name": "svc", "weight": 1}, {"name": "gone", "weight": 1}]}}}
    with pytest.raises(ConfigError, match=r"routes\[0\]\.route\.weighted_clusters\.clusters\[1\]\.name: unknown cluster 'gone'$"):
        load(http_bootstrap([route]))


def test_tcp_proxy_to_an_undefined_cluster() -> None:
    data = bootstrap([listener({"@type": TCP_PROXY_TYPE, "stat_prefix": "tcp", "cluster": "db"})])
    with pytest.raises(ConfigError) as info:
        load(data)
    assert str(info.value) == f"config error in test.yaml: {HCM_PATH}.cluster: unknown cluster 'db'"
    assert isinstance(the_hcm(load(bootstrap([listener({"@type": TCP_PROXY_TYPE, "stat_prefix": "t", "cluster": "svc"})]))), TcpProxy)


def test_duplicate_names() -> None:
    with pytest.raises(ConfigError) as info:
        load(bootstrap(clusters=[cluster("svc"), cluster("b"), cluster("svc")]))
    assert str(info.value) == (
        "config error in test.yaml: static_resources.clusters[2].name: "
        "duplicate cluster name 'svc' (also static_resources.clusters[0])"
    )
    with pytest.raises(ConfigError) as info:
        load(bootstrap([listener(hcm(), name="l"), listener(hcm(), name="l")]))
    assert str(info.value) == (
        "config error in test.yaml: static_resources.listeners[1].name: "
        "duplicate listener name 'l' (also static_resources.listeners[0])"
    )


# --------------------------------------------------------------------------- DataSource files


def tls_listener(cert: str, key: str) -> dict[str, Any]:
    socket = {"name": "tls", "typed_config": {"@type": DOWNSTREAM_TLS_TYPE, "common_tls_context": {
        "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}]}}}  # fmt: skip
    return listener(hcm(), filter_chains=[{"filters": [{"name": "hcm", "typed_config": hcm()}], "transport_socket": socket}])


def test_missing_cert_file_is_a_config_error_naming_it(certs_cwd: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(bootstrap([tls_listener("certs/server.crt", "certs/missing.key")]))
    assert str(info.value) == (
        "config error in test.yaml: static_resources.listeners[0].filter_chains[0].transport_socket.typed_config."
        "common_tls_context.tls_certificates[0].private_key: cannot read certs/missing.key: No such file or directory"
    )


def test_relative_filenames_resolve_against_the_current_directory(certs_cwd: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bootstrap([tls_listener("certs/server.crt", "certs/server.key")])
    load(data)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    with pytest.raises(ConfigError, match="cannot read certs/server.crt"):
        load(data)


def test_unset_environment_variable_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYLON_TEST_BODY", raising=False)
    data = http_bootstrap([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"environment_variable": "PYLON_TEST_BODY"}}}])
    with pytest.raises(ConfigError) as info:
        load(data)
    assert str(info.value) == (
        f"config error in test.yaml: {ROUTES_PATH}[0].direct_response.body: environment variable PYLON_TEST_BODY is not set"
    )
    monkeypatch.setenv("PYLON_TEST_BODY", "hi")
    assert load(data) is not None


def test_parse_bootstrap_does_not_mutate_its_input(certs_cwd: Path) -> None:
    data = yaml.safe_load(FRONT_PROXY.read_text())
    before = json.dumps(data, sort_keys=True)
    parse_bootstrap(data, "front.yaml")
    assert json.dumps(data, sort_keys=True) == before


def test_a_lone_surrogate_is_a_config_error(tmp_path: Path) -> None:
    """JSON's `\\udcff` escape yields a string that is not Unicode text; Envoy refuses it (msgspec used to raise
    UnicodeEncodeError)."""
    data = http_bootstrap()
    data["node"] = {"id": "X"}
    path = write(tmp_path / "envoy.json", json.dumps(data).replace('"X"', '"\\udcff"'))
    with pytest.raises(ConfigError) as info:
        load_bootstrap(str(path))
    assert str(info.value) == f"config error in {path}: node.id: '\\udcff' is not valid Unicode text (a lone surrogate)"
    data["node"] = {"metadata": {"X": 1}}
    path = write(tmp_path / "keys.json", json.dumps(data).replace('"X"', '"\\udcff"'))
    with pytest.raises(ConfigError, match=r"node.metadata: the key '\\udcff' is not valid Unicode text"):
        load_bootstrap(str(path))


@pytest.mark.parametrize(
    "text", ['{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "a: " + "[" * 999 + "]" * 999],
    ids=["json", "yaml"],
)  # fmt: skip
def test_documents_too_deep_for_the_parser(text: str) -> None:
    """Python's recursion limit would end these parses with RecursionError; Envoy stops at 100 levels."""
    with pytest.raises(ConfigError, match="config error in deep: nested more than 100 levels deep"):
        parse_document(text, "deep")


def test_listeners_on_one_address_are_refused_naming_both() -> None:
    """Item 4 of issue 10 (the edge cases, checked against Envoy, are in envoy_cases.py)."""
    data = bootstrap([
        listener(hcm(), name="public", address={"socket_address": {"address": "::", "port_value": 8443}}),
        listener(hcm(), name="admin-ish", address={"socket_address": {"address": "0::0", "port_value": 8443}}),
    ])  # fmt: skip
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "envoy.yaml")
    assert str(info.value) == (
        "config error in envoy.yaml: static_resources.listeners[1].address: listener 'admin-ish' has the same "
        "address [::]:8443 as listener 'public' (static_resources.listeners[0]); two listeners cannot bind one "
        "address and port"
    )


H2_OPTIONS = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
    "explicit_http_config": {"http2_protocol_options": {}}}}


def test_connect_to_an_http2_cluster_loads_proxied_or_terminated() -> None:
    """A proxied CONNECT to an HTTP/2 cluster goes as an HTTP/2 CONNECT stream (as in Envoy); terminated, the host
    gets raw TCP whatever the cluster's protocol."""
    proxied = {"match": {"connect_matcher": {}}, "route": {"cluster": "svc"}}
    terminated = {"match": {"connect_matcher": {}},
                  "route": {"cluster": "svc", "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}
    h2 = [cluster("svc", typed_extension_protocol_options=H2_OPTIONS)]
    for routes in ([proxied], [terminated]):
        load(http_bootstrap(routes, h2))
