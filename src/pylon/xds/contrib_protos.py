"""Envoy's contrib private key provider configs (CryptoMB, QAT) as protobuf messages, added to the default pool.

Why here: xds-protos ships only Envoy's core API, but Istio puts these configs in the SDS secrets
it sends (`privateKeyProvider` in ProxyConfig). pilot must encode them into an `Any` and pylon's
xDS client must decode them back to proto-JSON; both go through the default descriptor pool, so
importing this module once is enough. The names and field numbers are the API's facts
(data-plane-api contrib/envoy/extensions/private_key_providers/{cryptomb,qat}/v3alpha):
`private_key` = 1 (DataSource), `poll_delay` = 2 (Duration), in both messages.
"""

from __future__ import annotations

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
import envoy.config.core.v3.base_pb2  # noqa: F401 - DataSource must be in the pool first

CRYPTOMB = "envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig"
QAT = "envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig"

_F = descriptor_pb2.FieldDescriptorProto


def _key_method_file(full_name: str) -> descriptor_pb2.FileDescriptorProto:
    package, _, message_name = full_name.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"pylon/contrib/{package.replace('.', '/')}.proto", package=package, syntax="proto3",
        dependency=["envoy/config/core/v3/base.proto", "google/protobuf/duration.proto"],
    )  # fmt: skip
    message = proto.message_type.add(name=message_name)
    message.field.add(name="private_key", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                      type_name=".envoy.config.core.v3.DataSource", json_name="privateKey")  # fmt: skip
    message.field.add(name="poll_delay", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                      type_name=".google.protobuf.Duration", json_name="pollDelay")  # fmt: skip
    return proto


def _register() -> None:
    pool = descriptor_pool.Default()
    for full_name in (CRYPTOMB, QAT):
        try:
            pool.FindMessageTypeByName(full_name)
        except KeyError:
            pool.AddSerializedFile(_key_method_file(full_name).SerializeToString())


_register()


#: provider_name -> the config message's full name (Envoy's extension names envoy.tls.key_providers.<name>).
PROVIDERS = {"cryptomb": CRYPTOMB, "qat": QAT}


def provider_config(provider_name: str, key_pem: bytes, poll_delay: float) -> any_pb2.Any:
    """The packed CryptoMB or QAT config: the key inline (as Istio sends it) and the poll delay in seconds."""
    message_class = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(PROVIDERS[provider_name]))
    message = message_class()
    message.private_key.inline_bytes = key_pem
    message.poll_delay.CopyFrom(duration_pb2.Duration(seconds=int(poll_delay), nanos=round(poll_delay % 1 * 1e9)))
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
