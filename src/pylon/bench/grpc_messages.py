"""Fortio's gRPC messages, built from descriptors at import (no generated code, no protoc at build time).

Fortio's `fgrpc/ping.proto` (package `fgrpc`) defines the ping service that
`fortio server` answers on its gRPC port and `fortio load -grpc -ping` calls:
`PingMessage{int64 seq = 1; int64 ts = 2; string payload = 3; int64
delayNanos = 4}` and `rpc Ping(PingMessage) returns (PingMessage)`, at
`/fgrpc.PingServer/Ping`. Fortio's server also registers the standard health
service (`grpc.health.v1.Health/Check`), which `fortio load -grpc` without
`-ping` calls. grpcio-health-checking is not a dependency, so its two
messages are declared here the same way, with the field numbers of
grpc/health/v1/health.proto. The messages are built into a private descriptor
pool so they cannot clash with another copy of health.proto in the process.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PING_METHOD = "/fgrpc.PingServer/Ping"
HEALTH_METHOD = "/grpc.health.v1.Health/Check"

#: grpc.health.v1.HealthCheckResponse.ServingStatus names by number (Fortio's RetCodes keys).
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
NOT_SERVING = 2

_F = descriptor_pb2.FieldDescriptorProto


def _message(file: descriptor_pb2.FileDescriptorProto, name: str,
             fields: list[tuple[str, int, int]]) -> descriptor_pb2.DescriptorProto:
    message = file.message_type.add(name=name)
    for field_name, number, kind in fields:
        message.field.add(name=field_name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
    return message


def _files() -> tuple[descriptor_pb2.FileDescriptorProto, descriptor_pb2.FileDescriptorProto]:
    ping = descriptor_pb2.FileDescriptorProto(name="fgrpc/ping.proto", package="fgrpc", syntax="proto3")
    _message(ping, "PingMessage", [("seq", 1, _F.TYPE_INT64), ("ts", 2, _F.TYPE_INT64),
                                   ("payload", 3, _F.TYPE_STRING), ("delayNanos", 4, _F.TYPE_INT64)])
    ping.service.add(name="PingServer").method.add(
        name="Ping", input_type=".fgrpc.PingMessage", output_type=".fgrpc.PingMessage")

    health = descriptor_pb2.FileDescriptorProto(name="grpc/health/v1/health.proto", package="grpc.health.v1",
                                                syntax="proto3")
    _message(health, "HealthCheckRequest", [("service", 1, _F.TYPE_STRING)])
    response = _message(health, "HealthCheckResponse", [])
    status = response.enum_type.add(name="ServingStatus")
    for number, name in SERVING_STATUS.items():
        status.value.add(name=name, number=number)
    response.field.add(name="status", number=1, type=_F.TYPE_ENUM, label=_F.LABEL_OPTIONAL,
                       type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus")
    health.service.add(name="Health").method.add(
        name="Check", input_type=".grpc.health.v1.HealthCheckRequest",
        output_type=".grpc.health.v1.HealthCheckResponse")
    return ping, health


_POOL = descriptor_pool.DescriptorPool()
for _file in _files():
    _POOL.Add(_file)

PingMessage = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("fgrpc.PingMessage"))
HealthCheckRequest = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest"))
HealthCheckResponse = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse"))


def frame(payload: bytes) -> bytes:
    """gRPC's length-prefixed message: uncompressed flag, 4-byte big-endian length, the message."""
    return b"\0" + len(payload).to_bytes(4, "big") + payload


def unframe(data: bytes) -> bytes:
    """The one uncompressed message of a unary call's body; ValueError when the body is not exactly that."""
    if len(data) < 5 or data[0] != 0 or int.from_bytes(data[1:5], "big") != len(data) - 5:
        raise ValueError("not one uncompressed gRPC message")
    return data[5:]
