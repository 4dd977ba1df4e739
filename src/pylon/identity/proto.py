"""Istio's CA protocol messages (`istio.v1.auth`), built as protobuf descriptors at import time.

Why not generated `_pb2` files: nothing has to be generated or checked in, so a clean clone
works, and the wire format is protobuf's own. The names and field numbers are the protocol's
facts (istio/api security/v1alpha1/ca.proto): IstioCertificateRequest{csr=1, validity_duration=3,
metadata=4 (google.protobuf.Struct)}, IstioCertificateResponse{cert_chain=1 repeated}.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
#: The full gRPC method path agents call.
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="pylon/identity/istio_ca.proto", package=PACKAGE, syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )  # fmt: skip
    request = proto.message_type.add(name="IstioCertificateRequest")
    request.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="csr")
    request.field.add(name="validity_duration", number=3, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL,
                      json_name="validityDuration")  # fmt: skip
    request.field.add(name="metadata", number=4, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                      type_name=".google.protobuf.Struct", json_name="metadata")  # fmt: skip
    response = proto.message_type.add(name="IstioCertificateResponse")
    response.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED,
                       json_name="certChain")  # fmt: skip
    service = proto.service.add(name="IstioCertificateService")
    service.method.add(name="CreateCertificate", input_type=f".{PACKAGE}.IstioCertificateRequest",
                       output_type=f".{PACKAGE}.IstioCertificateResponse")  # fmt: skip
    return proto


def _build() -> tuple[type, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(struct_pb2.DESCRIPTOR.serialized_pb)
    pool.AddSerializedFile(_file().SerializeToString())
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse")),
    )


IstioCertificateRequest, IstioCertificateResponse = _build()
