"""Integration: the upstream proxy_protocol transport socket, through pylon and Envoy 1.40 alike.

A backend that speaks the PROXY protocol (standing in for HAProxy or nginx) records the header each connection
starts with, then serves HTTP/1.1 (or echoes, for tcp_proxy). What both proxies must write: the downstream
client's address and the address it reached, the host's TLVs before the socket's own, a connection per downstream
connection (never shared), a LOCAL header for a health check.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener, route, static_cluster, tcp_listener, wait_until
from tests.proxy.upstreams import TcpEcho

SOCKET_TYPE = ("type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3."
               "ProxyProtocolUpstreamTransport")
PER_HOST_TYPE = "type.googleapis.com/envoy.config.core.v3.PerHostConfig"
RAW_BUFFER = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def parse_header(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The PROXY header at the start of `data` and what follows it; None while it is incomplete."""
    if data.startswith(b"PROXY "):
        line, found, rest = data.partition(b"\r\n")
        if not found:
            return None
        fields = line.decode().split(" ")
        return {"version": 1, "family": fields[1], "source": (fields[2], int(fields[4])),
                "destination": (fields[3], int(fields[5]))}, rest
    if len(data) < 16 or not data.startswith(V2_SIGNATURE):
        return None
    command, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if len(data) < 16 + length:
        return None
    body, rest = data[16:16 + length], data[16 + length:]
    header: dict[str, Any] = {"version": 2, "command": "LOCAL" if command == 0x20 else "PROXY", "tlvs": []}
    if command == 0x21 and family == 0x11:
        header["source"] = (str(ipaddress.IPv4Address(body[0:4])), struct.unpack("!H", body[8:10])[0])
        header["destination"] = (str(ipaddress.IPv4Address(body[4:8])), struct.unpack("!H", body[10:12])[0])
        tlvs = body[12:]
        while tlvs:
            kind, size = tlvs[0], struct.unpack("!H", tlvs[1:3])[0]
            header["tlvs"].append((kind, tlvs[3:3 + size]))
            tlvs = tlvs[3 + size:]
    return header, rest


class ProxyProtocolBackend(TcpEcho):
    """Records each connection's PROXY header, then answers every bodiless HTTP/1.1 request with 200 (or, as
    `echo`, sends back what it reads)."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.records: list[dict[str, Any]] = []  # each connection whose header has come, in that order
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        record: dict[str, Any] = {"header": None, "paths": []}
        data = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                data += chunk
                if record["header"] is None:
                    parsed = parse_header(data)
                    if parsed is None:
                        continue
                    record["header"], data = parsed
                    self.records.append(record)
                if self.echo:
                    conn.sendall(data)
                    data = b""
                    continue
                while b"\r\n\r\n" in data:
                    head, _, data = data.partition(b"\r\n\r\n")
                    record["paths"].append(head.split(b" ")[1].decode())
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


@pytest.fixture
def backend() -> Iterator[ProxyProtocolBackend]:
    server = ProxyProtocolBackend()
    yield server
    server.close()


def proxy_protocol_socket(version: str, added_tlvs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"version": version}
    if added_tlvs:
        config["added_tlvs"] = added_tlvs
    return {"name": "envoy.transport_sockets.upstream_proxy_protocol", "typed_config": {
        "@type": SOCKET_TYPE, "config": config, "transport_socket": RAW_BUFFER}}


def cluster(port: int, version: str, host_tlvs: list[dict[str, Any]] | None = None,
            socket_tlvs: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    config = static_cluster("pp", [port], transport_socket=proxy_protocol_socket(version, socket_tlvs), **extra)
    if host_tlvs:
        endpoint = config["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        endpoint["metadata"] = {"typed_filter_metadata": {"envoy.transport_sockets.proxy_protocol": {
            "@type": PER_HOST_TYPE, "added_tlvs": host_tlvs}}}
    return config


def get_twice(port: int) -> tuple[int, list[int]]:
    """Two requests on one connection; the client's port and the statuses."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        statuses = []
        for path in ("/one", "/two"):
            sock.sendall(f"GET {path} HTTP/1.1\r\nhost: a\r\n\r\n".encode())
            data = b""
            while not data.endswith(b"ok"):
                chunk = sock.recv(65536)
                assert chunk, data
                data += chunk
            statuses.append(int(data.split(b" ")[1]))
        return sock.getsockname()[1], statuses


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_http_connections_name_the_downstream_client(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                     backend: ProxyProtocolBackend, version: str) -> None:
    listener_port = free_port()
    run_proxy([http_listener("main", listener_port, [route("/", "pp")])], [cluster(backend.port, version)],
              implementation=implementation)
    first_port, statuses = get_twice(listener_port)
    second_port, more = get_twice(listener_port)
    assert statuses == more == [200, 200]
    # one upstream connection per downstream connection, each header naming its own client
    assert [c["paths"] for c in backend.records] == [["/one", "/two"], ["/one", "/two"]]
    headers = [c["header"] for c in backend.records]
    assert [h["source"] for h in headers] == [("127.0.0.1", first_port), ("127.0.0.1", second_port)]
    assert all(h["destination"] == ("127.0.0.1", listener_port) for h in headers)
    assert all(h["version"] == (1 if version == "V1" else 2) for h in headers)
    if version == "V1":
        assert all(h["family"] == "TCP4" for h in headers)


def test_host_tlvs_come_first_and_replace_the_socket_s(implementation: str, run_proxy: Callable[..., RunningProxy],
                                                       backend: ProxyProtocolBackend) -> None:
    listener_port = free_port()
    run_proxy([http_listener("main", listener_port, [route("/", "pp")])],
              [cluster(backend.port, "V2",
                       host_tlvs=[{"type": 0xEE, "value": "b3ZlcnJpZGU="}, {"type": 0xEF, "value": "bmV3dmFsdWU="}],
                       socket_tlvs=[{"type": 0xEE, "value": "ZGVmYXVsdA=="}, {"type": 0xE0, "value": "ZGVm"}])],
              implementation=implementation)
    assert httpx.get(f"http://127.0.0.1:{listener_port}/", timeout=10).status_code == 200
    (connection,) = backend.records
    assert connection["header"]["tlvs"] == [(0xEE, b"override"), (0xEF, b"newvalue"), (0xE0, b"def")]


def test_tcp_proxy_sends_the_header_before_any_byte(implementation: str, run_proxy: Callable[..., RunningProxy]
                                                    ) -> None:
    echo = ProxyProtocolBackend(echo=True)
    try:
        listener_port = free_port()
        run_proxy([tcp_listener("main", listener_port, "pp")],
                  [cluster(echo.port, "V2", socket_tlvs=[{"type": 0xE1, "value": "eA=="}])],
                  implementation=implementation)
        with socket.create_connection(("127.0.0.1", listener_port), timeout=10) as sock:
            client_port = sock.getsockname()[1]
            assert wait_until(lambda: echo.records, timeout=10)  # sent on connect, before the client's bytes
            sock.sendall(b"hello")
            assert sock.recv(100) == b"hello"
        (connection,) = echo.records
        assert connection["header"] == {"version": 2, "command": "PROXY", "tlvs": [(0xE1, b"x")],
                                        "source": ("127.0.0.1", client_port),
                                        "destination": ("127.0.0.1", listener_port)}
    finally:
        echo.close()


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_health_checks_are_made_for_nobody(implementation: str, run_proxy: Callable[..., RunningProxy],
                                           backend: ProxyProtocolBackend, version: str) -> None:
    """A health check has no downstream: v2 says LOCAL (no addresses, no TLVs), v1 the connection's own."""
    health_check = {"timeout": "2s", "interval": "0.2s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                    "http_health_check": {"path": "/health"}}
    run_proxy([http_listener("main", free_port(), [route("/", "pp")])],
              [cluster(backend.port, version, socket_tlvs=[{"type": 0xE1, "value": "eA=="}],
                       health_checks=[health_check])],
              implementation=implementation)
    assert wait_until(lambda: any("/health" in c["paths"] for c in backend.records), timeout=10)
    header = next(c["header"] for c in backend.records if "/health" in c["paths"])
    if version == "V2":
        assert header == {"version": 2, "command": "LOCAL", "tlvs": []}
    else:
        assert header["source"][0] == "127.0.0.1" and header["destination"] == ("127.0.0.1", backend.port)
        assert header["source"][1] != header["destination"][1]
