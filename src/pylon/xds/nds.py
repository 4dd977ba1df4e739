"""Istio's DNS name table (NDS, `istio.networking.nds.v1.NameTable`) as a protobuf message, built at import time.

pilot sends it to the agents of sidecars that capture DNS, over the ADS stream the agent relays for its proxy;
the agent answers the pod's DNS queries from it (agent/dns_table.py). Built from descriptors, as the CA messages
(identity/proto.py): nothing generated or checked in. The names and field numbers are the protocol's facts
(istio/istio pkg/dns/proto/nds.proto): NameTable{table = 1: map<string, NameInfo>}, NameInfo{ips = 1 repeated,
registry = 2, shortname = 3, namespace = 4, alt_hosts = 5 repeated (deprecated; pylon never sets it)}.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "istio.networking.nds.v1"
#: The xDS type URL agents subscribe to (Istio's model.NameTableType).
NAME_TABLE = f"type.googleapis.com/{PACKAGE}.NameTable"

_F = descriptor_pb2.FieldDescriptorProto


def _string(message: descriptor_pb2.DescriptorProto, name: str, number: int, json_name: str,
            repeated: bool = False) -> None:  # fmt: skip
    message.field.add(name=name, number=number, type=_F.TYPE_STRING, json_name=json_name,
                      label=_F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL)  # fmt: skip


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="pylon/xds/istio_nds.proto", package=PACKAGE, syntax="proto3")
    table = proto.message_type.add(name="NameTable")
    info = table.nested_type.add(name="NameInfo")
    _string(info, "ips", 1, "ips", repeated=True)
    _string(info, "registry", 2, "registry")
    _string(info, "shortname", 3, "shortname")
    _string(info, "namespace", 4, "namespace")
    _string(info, "alt_hosts", 5, "altHosts", repeated=True)
    entry = table.nested_type.add(name="TableEntry")  # a proto3 map is a repeated nested entry message
    entry.options.map_entry = True
    _string(entry, "key", 1, "key")
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                    type_name=f".{PACKAGE}.NameTable.NameInfo", json_name="value")  # fmt: skip
    table.field.add(name="table", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                    type_name=f".{PACKAGE}.NameTable.TableEntry", json_name="table")  # fmt: skip
    return proto


def _build() -> type:
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.NameTable")
    except KeyError:
        pool.AddSerializedFile(_file().SerializeToString())
        descriptor = pool.FindMessageTypeByName(f"{PACKAGE}.NameTable")
    return message_factory.GetMessageClass(descriptor)


# In the default pool, so that an `Any` holding one unpacks anywhere (pilot's encoder, the agent, tests).
NameTable = _build()
