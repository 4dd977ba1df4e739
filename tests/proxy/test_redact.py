"""What /config_dump hides, without sockets: every sensitive field's value, in both JSON spellings, anywhere."""

from __future__ import annotations

from pylon.proxy.redact import REDACTED, REDACTED_BYTES, redact

KEY = "-----BEGIN PRIVATE KEY-----\nMIG...\n-----END PRIVATE KEY-----\n"


def test_a_certificates_inline_key_and_password_are_hidden_and_its_chain_and_file_names_are_not() -> None:
    certificate = {"certificate_chain": {"inline_string": "CERT"}, "private_key": {"inline_string": KEY},
                   "password": {"inline_bytes": "cHc="}}
    keyfile = {"certificate_chain": {"filename": "/c.pem"}, "private_key": {"filename": "/k.pem"}}
    dump = {"listeners": [{"tls_certificates": [certificate, keyfile]}]}
    shown = redact(dump)["listeners"][0]["tls_certificates"]
    assert shown[0] == {"certificate_chain": {"inline_string": "CERT"}, "private_key": {"inline_string": REDACTED},
                        "password": {"inline_bytes": REDACTED_BYTES}}
    assert shown[1] == keyfile
    assert dump["listeners"][0]["tls_certificates"][0]["private_key"]["inline_string"] == KEY  # not changed in place


def test_camel_case_spellings_are_hidden_too() -> None:
    shown = redact({"tlsCertificates": [{"privateKey": {"inlineString": KEY}}]})
    assert shown == {"tlsCertificates": [{"privateKey": {"inlineString": REDACTED}}]}


def test_a_key_providers_config_keeps_its_settings_but_not_its_key_or_pins() -> None:
    provider = {"provider_name": "sgx", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.private_key_providers.sgx.v3alpha.SgxPrivateKeyMethodConfig",
        "sgx_library": "/usr/lib/softhsm/libsofthsm2.so", "key_label": "k", "usr_pin": "1234", "so_pin": "5678",
        "token_label": "t", "key_type": "rsa"}}
    cryptomb = {"provider_name": "cryptomb", "typed_config": {"private_key": {"inline_bytes": "S0VZ"},
                                                               "poll_delay": "0.01s"}}
    shown = redact({"a": provider, "b": cryptomb})
    sgx = shown["a"]["typed_config"]
    assert (sgx["usr_pin"], sgx["so_pin"], sgx["key_label"], sgx["token_label"]) == (REDACTED, REDACTED, "k", "t")
    assert shown["b"]["typed_config"] == {"private_key": {"inline_bytes": REDACTED_BYTES}, "poll_delay": "0.01s"}


def test_session_ticket_keys_and_generic_secrets_are_hidden_only_where_they_are_secrets() -> None:
    dump = {"session_ticket_keys": {"keys": [{"inline_bytes": "QUFB"}, {"filename": "/t.key"}]},
            "generic_secret": {"secret": {"inline_string": "s3cret"}},
            "metadata": {"keys": ["not", "a", "secret"], "secret": "a label"}}
    shown = redact(dump)
    assert shown["session_ticket_keys"]["keys"] == [{"inline_bytes": REDACTED_BYTES}, {"filename": "/t.key"}]
    assert shown["generic_secret"]["secret"] == {"inline_string": REDACTED}
    assert shown["metadata"] == dump["metadata"]


def test_aws_inline_credentials_and_api_keys_are_hidden_as_envoy_hides_them() -> None:
    # Observed on Envoy 1.40's /config_dump: access_key_id shown, secret_access_key, session_token, and an
    # api_key_auth credential's key and client all "[redacted]".
    signing = {"credential_provider": {"inline_credential": {"access_key_id": "AKID", "secret_access_key": "S",
                                                             "session_token": "T"}}, "service_name": "s3"}
    api_keys = {"credentials": [{"key": "K", "client": "C"}], "key_sources": [{"header": "Authorization"}]}
    shown = redact({"a": signing, "b": api_keys})
    assert shown["a"]["credential_provider"]["inline_credential"] == {
        "access_key_id": "AKID", "secret_access_key": REDACTED, "session_token": REDACTED}
    assert shown["b"] == {"credentials": [{"key": REDACTED, "client": REDACTED}],
                          "key_sources": [{"header": "Authorization"}]}
