"""The AWS credential chain (filters/common/aws_credentials.py): Envoy's order, the file re-read when it changes,
the network providers refused by name."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from pylon.extensions.filters.common.aws_credentials import AwsCredentialProvider, CredentialChain
from pylon.extensions.filters.common.aws_signer import Credentials


def _provider(raw: dict) -> AwsCredentialProvider:
    return msgspec.convert(raw, AwsCredentialProvider)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    return tmp_path


def test_the_environment_comes_before_the_credentials_file(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = clean_env / "credentials"
    path.write_text("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    chain = CredentialChain(None)
    assert chain.get() == Credentials("FILEKEY", "filesecret", None)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "envtoken")
    assert chain.get() == Credentials("ENVKEY", "envsecret", "envtoken")


def test_inline_credentials_replace_the_chain(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    chain = CredentialChain(_provider({"inline_credential": {"access_key_id": "IN", "secret_access_key": "s"}}))
    assert chain.get() == Credentials("IN", "s", None)


def test_a_custom_chain_asks_only_its_file_which_is_read_again_when_it_changes(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    path = clean_env / "a"
    chain = CredentialChain(_provider({"custom_credential_provider_chain": True, "credentials_file_provider": {
        "credentials_data_source": {"filename": str(path), "watched_directory": {"path": str(clean_env)}},
        "profile": "team"}}))
    assert chain.get() is None  # no file yet: unsigned, not the environment's
    path.write_text("[team]\naws_access_key_id = ONE\naws_secret_access_key = s1\naws_session_token = t1\n")
    chain.providers[0].__self__._checked = -1.0  # the once-a-second look, made now
    assert chain.get() == Credentials("ONE", "s1", "t1")
    path.write_text("[team]\naws_access_key_id = TWO\naws_secret_access_key = s2\n")
    os.utime(path, (1, 1))  # a different mtime, whatever the clock's resolution
    chain.providers[0].__self__._checked = -1.0
    assert chain.get() == Credentials("TWO", "s2", None)


@pytest.mark.parametrize("name", ["assume_role_credential_provider", "iam_roles_anywhere_credential_provider",
                                  "instance_profile_credential_provider", "container_credential_provider",
                                  "assume_role_with_web_identity_provider", "config_credential_provider"])
def test_providers_that_fetch_over_the_network_are_refused_by_name(name: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=f"^{name}: "):
        _provider({name: {}})
