"""AWS credentials for the signing filters: extensions.common.aws.v3.AwsCredentialProvider and Envoy's chain.

Why a chain: Envoy finds credentials the way the AWS SDKs do, first that answers wins. Without a
`credential_provider` (or with one that only changes settings, `custom_credential_provider_chain` false) the
chain is: the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then the shared
credentials file (AWS_SHARED_CREDENTIALS_FILE else ~/.aws/credentials, profile AWS_PROFILE else `default`, or the
provider's own file and profile); `inline_credential` replaces the chain; with `custom_credential_provider_chain`
only the providers configured are asked.

The providers that fetch credentials over the network (STS AssumeRole and AssumeRoleWithWebIdentity, IAM Roles
Anywhere, the EC2 instance metadata and ECS container endpoints) and the AWS config file provider are refused by
name when configured: pylon has no such fetcher, and an accepted field must do what Envoy does. In the
default chain Envoy goes on to them after the file; pylon stops there (departure: on EC2/ECS/EKS hosts Envoy finds
credentials pylon does not). No credentials means the request goes unsigned, as in Envoy.

The credentials file is read when first needed and again when it changes (its mtime, looked at no more than once
a second) - Envoy caches it for an hour, or reloads on a `watched_directory` event. A file that cannot be read
or has no such profile gives no credentials. Secrets never reach a log (`Credentials.__repr__`).
"""

from __future__ import annotations

import configparser
import os
import time
from typing import Any

from pylon.config.datasource import DataSource, DataSourceError, read_bytes
from pylon.config.envoy import EnvoyStruct, WatchedDirectory
from pylon.config.errors import FieldError
from pylon.extensions.filters.common.aws_signer import Credentials

_NETWORK = ("pylon cannot fetch AWS credentials over the network (STS, IAM Roles Anywhere, instance or container "
            "metadata); use inline_credential, the environment or credentials_file_provider")
#: the providers pylon lacks, refused with their reason when configured
_REFUSED = {
    "assume_role_with_web_identity_provider": _NETWORK, "iam_roles_anywhere_credential_provider": _NETWORK,
    "container_credential_provider": _NETWORK, "instance_profile_credential_provider": _NETWORK,
    "assume_role_credential_provider": _NETWORK,
    "config_credential_provider": "the AWS config file provider is not implemented in pylon; use inline_credential, "
                                  "the environment or credentials_file_provider",
}


class InlineCredentialProvider(EnvoyStruct, kw_only=True):
    """extensions.common.aws.v3.InlineCredentialProvider."""

    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""

    def __post_init__(self) -> None:
        for name in ("access_key_id", "secret_access_key"):
            if not getattr(self, name):
                raise FieldError(name, "must not be empty")

    def __repr__(self) -> str:
        return f"InlineCredentialProvider(access_key_id={self.access_key_id!r}, secret_access_key='*****')"


class WatchedDataSource(EnvoyStruct, kw_only=True):
    """config.core.v3.DataSource with its `watched_directory` (a file's changes are picked up)."""

    filename: str | None = None
    inline_bytes: bytes | None = None
    inline_string: str | None = None
    environment_variable: str | None = None
    watched_directory: WatchedDirectory | None = None

    def __post_init__(self) -> None:
        try:
            self.source()
        except ValueError as exc:
            raise FieldError("filename", str(exc)) from None

    def source(self) -> DataSource:
        return DataSource(filename=self.filename, inline_bytes=self.inline_bytes, inline_string=self.inline_string,
                          environment_variable=self.environment_variable)


class CredentialsFileCredentialProvider(EnvoyStruct, kw_only=True):
    """extensions.common.aws.v3.CredentialsFileCredentialProvider."""

    credentials_data_source: WatchedDataSource | None = None
    profile: str = ""


class AwsCredentialProvider(EnvoyStruct, kw_only=True):
    """extensions.common.aws.v3.AwsCredentialProvider."""

    inline_credential: InlineCredentialProvider | None = None
    credentials_file_provider: CredentialsFileCredentialProvider | None = None
    custom_credential_provider_chain: bool = False
    assume_role_with_web_identity_provider: Any = None
    iam_roles_anywhere_credential_provider: Any = None
    config_credential_provider: Any = None
    container_credential_provider: Any = None
    instance_profile_credential_provider: Any = None
    assume_role_credential_provider: Any = None

    def __post_init__(self) -> None:
        for name, reason in _REFUSED.items():
            if getattr(self, name) is not None:
                raise FieldError(name, reason)


class FileCredentials:
    """One credentials file's profile, read again when the file changes."""

    def __init__(self, source: DataSource | None, profile: str) -> None:
        self.source = source
        self.profile = profile
        self._checked = -1.0
        self._mtime: float | None = None
        self._value: Credentials | None = None

    def _path(self) -> str | None:
        if self.source is not None:
            return self.source.filename
        return os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.expanduser("~/.aws/credentials")

    def get(self) -> Credentials | None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return self._value
        self._checked = now
        path = self._path()
        if path is None:  # an inline or environment data source: read once
            if self._mtime is None:
                self._mtime = 0.0
                self._value = self._parse(self._read())
            return self._value
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            self._mtime, self._value = None, None
            return None
        if mtime != self._mtime:
            self._mtime = mtime
            self._value = self._parse(self._read(path))
        return self._value

    def _read(self, path: str | None = None) -> bytes:
        try:
            return read_bytes(self.source if path is None or self.source is not None else DataSource(filename=path))
        except DataSourceError:
            return b""

    def _parse(self, text: bytes) -> Credentials | None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text.decode("utf-8", "replace"))
        except configparser.Error:
            return None
        profile = self.profile or os.environ.get("AWS_PROFILE") or "default"
        if not parser.has_section(profile):
            return None
        section = parser[profile]
        key, secret = section.get("aws_access_key_id", ""), section.get("aws_secret_access_key", "")
        if not key or not secret:
            return None
        return Credentials(key, secret, section.get("aws_session_token") or None)


def environment_credentials() -> Credentials | None:
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        return None
    return Credentials(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)


class CredentialChain:
    """The providers a signing config asks, in Envoy's order; `get()` the first credentials found, or None."""

    def __init__(self, config: AwsCredentialProvider | None) -> None:
        if config is not None and config.inline_credential is not None:
            inline = config.inline_credential
            fixed = Credentials(inline.access_key_id, inline.secret_access_key, inline.session_token or None)
            self.providers: list[Any] = [lambda: fixed]
            return
        file_config = config.credentials_file_provider if config is not None else None
        file_provider = FileCredentials(
            file_config.credentials_data_source.source()
            if file_config is not None and file_config.credentials_data_source is not None else None,
            file_config.profile if file_config is not None else "")
        if config is not None and config.custom_credential_provider_chain:
            self.providers = [file_provider.get] if file_config is not None else []
        else:
            self.providers = [environment_credentials, file_provider.get]

    def get(self) -> Credentials | None:
        for provider in self.providers:
            found = provider()
            if found is not None:
                return found
        return None
