"""The Sidecar resource: Istio's webhook checks (ValidateSidecar) as errors naming file, document and field."""

from __future__ import annotations

from typing import Any

import pytest

from pylon.config.errors import ConfigError
from pylon.pilot.istio.resources import decode_resource
from pylon.pilot.istio.sidecar import DefaultEndpoint, parse_default_endpoint
from tests.pilot.builders import doc

HTTP_9090 = {"number": 9090, "name": "http", "protocol": "HTTP"}
TLS_FILES = {"serverCertificate": "/etc/certs/cert.pem", "privateKey": "/etc/certs/key.pem"}


def sidecar(spec: dict[str, Any]) -> Any:
    return decode_resource(doc("Sidecar", "s", spec), "sidecar.yaml", 0).spec


def error_of(spec: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        sidecar(spec)
    assert info.value.source == "sidecar.yaml (document 1, Sidecar default/s)"
    return info.value


def test_a_full_sidecar_decodes() -> None:
    spec = sidecar({
        "workloadSelector": {"labels": {"app": "a"}},
        "ingress": [{"port": HTTP_9090, "defaultEndpoint": "127.0.0.1:8080", "captureMode": "NONE",
                     "connectionPool": {"tcp": {"maxConnections": 5}}},
                    {"port": {"number": 9443, "protocol": "HTTPS"}, "bind": "10.0.0.1", "defaultEndpoint": "unix:///run/a.sock",
                     "tls": {"mode": "MUTUAL", **TLS_FILES, "caCertificates": "/etc/certs/ca.pem"}}],
        "egress": [{"port": {"number": 9080, "protocol": "HTTP"}, "bind": "127.0.0.2", "captureMode": "NONE",
                    "hosts": ["./reviews.default.svc.cluster.local"]}, {"hosts": ["*/*"]}],
        "outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "egress.istio-system.svc.cluster.local",
                                                                       "port": {"number": 443}}},
        "inboundConnectionPool": {"http": {"http1MaxPendingRequests": 10}},
    })  # fmt: skip
    assert spec.ingress[1].protocol == "HTTP"  # behind its TLS
    assert spec.ingress_pool(9090).tcp.max_connections == 5
    assert spec.ingress_pool(9443).http.http1_max_pending_requests == 10  # the Sidecar-wide pool
    assert spec.reads_instance_ips  # the first ingress listener has no bind: the proxy's IP


@pytest.mark.parametrize(("spec", "path", "message"), [
    ({"workloadSelector": {"labels": {"app": "a"}}}, "spec", "empty configuration"),
    ({"ingress": [{"port": {**HTTP_9090, "targetPort": 8080}}]}, "spec.ingress[0].port.targetPort", "no impact"),
    ({"ingress": [{"port": {"number": 9090, "protocol": "HTTP", "name": "Web_1"}}]}, "spec.ingress[0].port.name", "DNS-1123"),
    ({"ingress": [{"port": {"number": 9090, "protocol": "SPDY"}}]}, "spec.ingress[0].port.protocol", "unknown protocol"),
    ({"ingress": [{"port": {"protocol": "HTTP"}}]}, "spec.ingress[0].port.number", "1..65535"),
    ({"ingress": [{"port": HTTP_9090, "bind": "localhost"}]}, "spec.ingress[0].bind", "not an IP address"),
    ({"ingress": [{"port": HTTP_9090, "captureMode": "TPROXY"}]}, "spec.ingress[0].captureMode", ""),
    ({"ingress": [{"port": HTTP_9090, "defaultEndpoint": "10.0.0.1:8080"}]}, "spec.ingress[0].defaultEndpoint", "127.0.0.1"),
    ({"ingress": [{"port": HTTP_9090, "defaultEndpoint": "127.0.0.1:http"}]}, "spec.ingress[0].defaultEndpoint", "port"),
    ({"ingress": [{"port": HTTP_9090, "defaultEndpoint": "unix://run/a.sock"}]}, "spec.ingress[0].defaultEndpoint",
     "absolute path"),
    ({"ingress": [{"port": HTTP_9090}, {"port": HTTP_9090}]}, "spec.ingress[1].port.number", "must be unique"),
    ({"ingress": [{"port": HTTP_9090, "tls": {"mode": "SIMPLE", **TLS_FILES}}]}, "spec.ingress[0].tls", "HTTPS/TLS"),
    ({"ingress": [{"port": HTTP_9090, "connectionPool": {}}]}, "spec.ingress[0].connectionPool", "at least one field"),
    ({"inboundConnectionPool": {"tcp": {"maxConnections": -1}}}, "spec.inboundConnectionPool.tcp.maxConnections", ">= 0"),
    ({"egress": [{"hosts": ["*/*"]}, {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*/*"]}]}, "spec.egress[0]",
     "should be the last"),
    ({"egress": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*/*"]},
                 {"port": {"number": 80, "protocol": "TCP"}, "hosts": ["*/*"]}]}, "spec.egress[1].port.number", "unique"),
    ({"egress": [{"port": {"number": 80, "protocol": "HTTP"}, "bind": "example.com", "hosts": ["*/*"]}],
      }, "spec.egress[0].bind", "not an IP address"),
    ({"egress": [{"port": {"number": 0, "protocol": "TCP"}, "bind": "unix:///run/out.sock", "hosts": ["*/*"]}]},
     "spec.egress[0].port.protocol", "outbound|0||<host>, a cluster that never exists"),
    ({"egress": [{"port": {"number": 0, "protocol": "HTTP"}, "hosts": ["*/*"]}]}, "spec.egress[0].bind",
     "ports with 0 value must have a unix domain socket bind address"),
    ({"egress": [{"port": {"number": 0, "protocol": "HTTP"}, "bind": "unix://run/out.sock", "hosts": ["*/*"]}]},
     "spec.egress[0].bind", "absolute path"),
    ({"egress": [{"port": {"number": 0, "protocol": "HTTP"}, "bind": "unix:///run/out.sock", "captureMode": "IPTABLES",
                  "hosts": ["*/*"]}]}, "spec.egress[0].captureMode", "DEFAULT/NONE for unix domain socket"),
    ({"egress": [{"port": {"number": 80, "protocol": "HTTP"}, "bind": "unix:///run/out.sock", "hosts": ["*/*"]}]},
     "spec.egress[0].bind", "not an IP address"),
    ({"egress": [{"port": {"number": 0, "protocol": "HTTP"}, "bind": "unix:///run/out.sock", "hosts": ["*/*"]},
                 {"port": {"number": 0, "protocol": "HTTP"}, "bind": "unix:///run/out.sock", "hosts": ["*/*"]}]},
     "spec.egress[1].bind", "must be unique"),
    ({"egress": [{"port": {"number": 53, "protocol": "UDP"}, "hosts": ["*/*"]}]}, "spec.egress[0].port.protocol", "UDP"),
    ({"outboundTrafficPolicy": {"egressProxy": {"host": "egress.example.com", "port": {"number": 443}}}},
     "spec.outboundTrafficPolicy.egressProxy", "only with ALLOW_ANY"),  # REGISTRY_ONLY is the proto's default
    ({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "egress.example.com"}}},
     "spec.outboundTrafficPolicy.egressProxy.port", "must be non-nil"),
])  # fmt: skip
def test_errors_name_the_field(spec: dict[str, Any], path: str, message: str) -> None:
    error = error_of(spec)
    assert (error.path, message in error.message) == (path, True), error


@pytest.mark.parametrize(("tls", "path", "message"), [
    ({"mode": "SIMPLE", **TLS_FILES, "credentialName": "cert"}, "credentialName", "not currently supported"),
    ({"mode": "SIMPLE", **TLS_FILES, "subjectAltNames": ["a"]}, "subjectAltNames", "not supported"),
    ({"mode": "SIMPLE", **TLS_FILES, "httpsRedirect": True}, "httpsRedirect", "not supported"),
    ({"mode": "ISTIO_MUTUAL"}, "mode", "cannot set mode to ISTIO_MUTUAL"),
    ({"mode": "AUTO_PASSTHROUGH"}, "mode", "cannot set mode to AUTO_PASSTHROUGH"),
    ({**TLS_FILES}, "mode", "PASSTHROUGH (the default) does not pass TLS through"),
    ({"mode": "SIMPLE", "serverCertificate": "/c.pem"}, "privateKey", "requires a server certificate and a private key"),
    ({"mode": "MUTUAL", **TLS_FILES}, "caCertificates", "requires a client CA bundle"),
    ({"mode": "SIMPLE", **TLS_FILES, "caCertificates": "/ca.pem"}, "caCertificates", "does not check client"),
    ({"mode": "SIMPLE", **TLS_FILES, "verifyCertificateHash": ["ab"]}, "verifyCertificateHash", "never reads it"),
])  # fmt: skip
def test_ingress_tls_takes_what_istio_takes_for_sidecars(tls: dict[str, Any], path: str, message: str) -> None:
    error = error_of({"ingress": [{"port": {"number": 9443, "protocol": "HTTPS"}, "tls": tls}]})
    assert (error.path, message in error.message) == (f"spec.ingress[0].tls.{path}", True), error


def test_default_endpoints() -> None:
    assert parse_default_endpoint("127.0.0.1:8080") == DefaultEndpoint(host="127.0.0.1", port=8080)
    assert parse_default_endpoint("[::1]:8080") == DefaultEndpoint(host="::1", port=8080)
    assert parse_default_endpoint(":8080") == DefaultEndpoint(port=8080)
    assert parse_default_endpoint("unix://@abstract") == DefaultEndpoint(unix_path="@abstract")
    for bad in ("::1:8080", "[::1]", "127.0.0.1", "127.0.0.1:0", "localhost:80"):
        with pytest.raises(ValueError):
            parse_default_endpoint(bad)
