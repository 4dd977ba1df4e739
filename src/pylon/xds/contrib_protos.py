"""Envoy's contrib private key provider configs (CryptoMB, QAT, SGX) and pylon's keyd provider config as protobuf
messages, added to the default pool.

Why here: xds-protos ships only Envoy's core API, but Istio puts these configs in the SDS secrets
it sends (`privateKeyProvider` in ProxyConfig). pilot must encode them into an `Any` and pylon's
xDS client must decode them back to proto-JSON; both go through the default descriptor pool, so
importing this module once is enough. The names and field numbers are the API's facts
(data-plane-api contrib/envoy/extensions/private_key_providers/{cryptomb,qat}/v3alpha):
`private_key` = 1 (DataSource), `poll_delay` = 2 (Duration), in both messages; SGX's six strings
(contrib/envoy/extensions/private_key_providers/sgx/v3alpha): `sgx_library` = 1, `key_label` = 2, `usr_pin` = 3,
`so_pin` = 4, `token_label` = 5, `key_type` = 6.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, duration_pb2, message_factory
import envoy.config.core.v3.base_pb2  # noqa: F401 - DataSource must be in the pool first

CRYPTOMB = "envoy.extensions.private_key_providers.cryptomb.v3alpha.CryptoMbPrivateKeyMethodConfig"
QAT = "envoy.extensions.private_key_providers.qat.v3alpha.QatPrivateKeyMethodConfig"
# pylon's own provider (keys/config.py Keyd): the key stays in `pylon keyd`; the config names where and which.
KEYD = "pylon.key_providers.keyd.v1.Keyd"
SGX = "envoy.extensions.private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig"
#: SgxPrivateKeyMethodConfig's fields, in field-number order.
SGX_FIELDS = ("sgx_library", "key_label", "usr_pin", "so_pin", "token_label", "key_type")

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


def _keyd_file() -> descriptor_pb2.FileDescriptorProto:
    package, _, message_name = KEYD.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(name="pylon/key_providers/keyd.proto", package=package, syntax="proto3",
                                               dependency=["google/protobuf/duration.proto"])  # fmt: skip
    message = proto.message_type.add(name=message_name)
    message.field.add(name="socket_path", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="socketPath")
    message.field.add(name="key_id", number=2, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name="keyId")
    message.field.add(name="timeout", number=3, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                      type_name=".google.protobuf.Duration", json_name="timeout")  # fmt: skip
    return proto


def _sgx_file() -> descriptor_pb2.FileDescriptorProto:
    package, _, message_name = SGX.rpartition(".")
    proto = descriptor_pb2.FileDescriptorProto(name=f"pylon/contrib/{package.replace('.', '/')}.proto",
                                               package=package, syntax="proto3")  # fmt: skip
    message = proto.message_type.add(name=message_name)
    for number, name in enumerate(SGX_FIELDS, start=1):
        json_name = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
        message.field.add(name=name, number=number, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL, json_name=json_name)
    return proto


def _register() -> None:
    pool = descriptor_pool.Default()
    for full_name, build in ((CRYPTOMB, lambda: _key_method_file(CRYPTOMB)), (QAT, lambda: _key_method_file(QAT)),
                             (KEYD, _keyd_file), (SGX, _sgx_file)):  # fmt: skip
        try:
            pool.FindMessageTypeByName(full_name)
        except KeyError:
            pool.AddSerializedFile(build().SerializeToString())


_register()


#: provider_name -> the config message's full name (Envoy's extension names envoy.tls.key_providers.<name>).
PROVIDERS = {"cryptomb": CRYPTOMB, "qat": QAT}


def provider_config(provider_name: str, key_pem: bytes, poll_delay: float) -> any_pb2.Any:
    """The packed CryptoMB or QAT config: the key inline (as Istio sends it) and the poll delay in seconds."""
    message = _message(PROVIDERS[provider_name])
    message.private_key.inline_bytes = key_pem
    message.poll_delay.CopyFrom(_duration(poll_delay))
    return _packed(message)


def keyd_config(socket_path: str, key_id: str, timeout: float) -> any_pb2.Any:
    """The packed keyd config: which keyd holds the key, under which id, and each operation's deadline."""
    message = _message(KEYD)
    message.socket_path = socket_path
    message.key_id = key_id
    message.timeout.CopyFrom(_duration(timeout))
    return _packed(message)


def sgx_config(**fields: str) -> any_pb2.Any:
    """The packed SGX config (Envoy's shape): `sgx_library`, `key_label`, `usr_pin`, `so_pin`, `token_label`,
    `key_type`, each a string."""
    message = _message(SGX)
    for name, value in fields.items():
        if name not in SGX_FIELDS:
            raise TypeError(f"SgxPrivateKeyMethodConfig has no field {name!r}")
        setattr(message, name, value)
    return _packed(message)


def _message(full_name: str) -> Any:
    return message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(full_name))()


def _duration(seconds: float) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=int(seconds), nanos=round(seconds % 1 * 1e9))


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def inline_provider_key(config: any_pb2.Any) -> Any | None:
    """The `private_key` DataSource of a packed CryptoMB or QAT config (the key Istio puts inline there); None for
    a config of any other type."""
    full_name = config.type_url.rpartition("/")[2]
    if full_name not in PROVIDERS.values():
        return None
    message = _message(full_name)
    config.Unpack(message)
    return message.private_key
