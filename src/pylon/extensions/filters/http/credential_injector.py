"""envoy.filters.http.credential_injector: the proxy adds a credential to requests on their way upstream.

Why: clients need not hold the upstream's credential; the proxy injects it from a secret, or from an OAuth2
token it fetched itself. As Envoy 1.40 (checked side by side in tests/proxy/test_proxy_credential_injector.py):

- `envoy.http.injected_credentials.generic`: the value of a generic secret (`static_resources.secrets`, read as
  the request passes, so a new version of it is used at once; trailing CR/LF dropped) in `header` (default
  Authorization) after `header_value_prefix`.
- `envoy.http.injected_credentials.oauth2`: the client credentials grant - a POST to `token_endpoint` (its
  cluster, path, Host and timeout) with the client id and secret, `scopes` and `endpoint_params` in a form body
  (Envoy 1.40 puts the client's credentials there whatever `auth_type` says, observed, and so does pylon); the answer's `access_token` goes in Authorization as
  `Bearer <token>` until half its `expires_in` has passed, then a new one is fetched; a failed fetch is tried
  again after `token_fetch_retry_interval` (default 2 s).

A request that already has the header keeps it unless `overwrite` (`already_exists`); without a credential it is
answered 401 "Failed to inject credential." (details `failed_to_inject_credential`) unless
`allow_request_without_credential`. Stats: `http.<stat_prefix>.credential_injector.{injected,failed,
already_exists}`. Secret values never reach a log or /config_dump (proxy/redact.py hides generic secrets).

Departures: Envoy asks for the first token when it starts and answers 401 until it has one; pylon asks when the
first request comes (each worker for itself) and holds the requests that arrive while that first fetch is in
flight. A secret fetched over SDS (`sds_config`) is refused by name: pylon subscribes to SDS secrets for TLS
contexts only.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, ClassVar, Literal
from urllib.parse import quote

import msgspec

from pylon.config import registry
from pylon.config.constraints import Duration
from pylon.config.datasource import DataSourceError, read_bytes
from pylon.config.envoy import EnvoyStruct, SdsSecretConfig, _TypedExtension
from pylon.config.errors import FieldError, join_path
from pylon.config.services import HttpUri
from pylon.proxy import async_client
from pylon.proxy import local_reply as lr
from pylon.proxy.filters.http import register_filter
from pylon.proxy.stream_states import RS_DONE

log = logging.getLogger(__name__)

TYPE_URL = "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector"
GENERIC_URL = "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic"
OAUTH2_URL = "type.googleapis.com/envoy.extensions.http.injected_credentials.oauth2.v3.OAuth2"
_FAILED = lr.LocalReply(401, "-", b"Failed to inject credential.", "failed_to_inject_credential")
_DEFAULT_RETRY = 2.0


def _static_only(ref: SdsSecretConfig | None, field: str) -> None:
    if ref is None:
        raise FieldError(field, "missing required field")
    if ref.sds_config is not None:
        raise FieldError(join_path(field, "sds_config"), "pylon fetches SDS secrets for TLS contexts only; name a "
                                                         "static secret (static_resources.secrets)")


class Generic(EnvoyStruct, kw_only=True):
    """injected_credentials.generic.v3.Generic."""

    credential: SdsSecretConfig | None = None
    header: str = ""
    header_value_prefix: str = ""

    def __post_init__(self) -> None:
        _static_only(self.credential, "credential")


class ClientCredentials(EnvoyStruct, kw_only=True):
    """OAuth2.ClientCredentials."""

    client_id: str = ""
    client_secret: SdsSecretConfig | None = None
    auth_type: Literal["BASIC_AUTH", "URL_ENCODED_BODY"] = "BASIC_AUTH"

    def __post_init__(self) -> None:
        if not self.client_id:
            raise FieldError("client_id", "must be at least 1 character")
        _static_only(self.client_secret, "client_secret")


class RetryInterval(Duration):
    """OAuth2.token_fetch_retry_interval: PGV `gte: 1s`."""

    at_least_ns = 1_000_000_000


class EndpointParam(EnvoyStruct, kw_only=True):
    name: str = ""
    value: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise FieldError("name", "must be at least 1 character")


class OAuth2(EnvoyStruct, kw_only=True):
    """injected_credentials.oauth2.v3.OAuth2 (the client credentials grant, its only flow)."""

    token_endpoint: HttpUri | None = None
    scopes: list[str] = msgspec.field(default_factory=list)
    client_credentials: ClientCredentials | None = None
    token_fetch_retry_interval: RetryInterval | None = None
    endpoint_params: list[EndpointParam] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.token_endpoint is None:
            raise FieldError("token_endpoint", "missing required field")
        if self.client_credentials is None:
            raise FieldError("client_credentials", "one of the flow types is required")


class InjectedCredential(_TypedExtension, kw_only=True):
    """The filter's `credential` extension: {name, typed_config} of a Generic or an OAuth2 credential."""

    category: ClassVar[str] = registry.INJECTED_CREDENTIALS


class CredentialInjector(EnvoyStruct, kw_only=True):
    """extensions.filters.http.credential_injector.v3.CredentialInjector."""

    overwrite: bool = False
    allow_request_without_credential: bool = False
    credential: InjectedCredential | None = None

    def __post_init__(self) -> None:
        if self.credential is None:
            raise FieldError("credential", "missing required field")

    def secret_configs(self) -> list[tuple[str, SdsSecretConfig]]:
        """(field path, reference) of the secret the credential names (the loader checks static ones exist)."""
        assert self.credential is not None
        typed = self.credential.typed_config
        if isinstance(typed, Generic):
            assert typed.credential is not None
            return [("credential.typed_config.credential", typed.credential)]
        assert typed.client_credentials is not None and typed.client_credentials.client_secret is not None
        return [("credential.typed_config.client_credentials.client_secret", typed.client_credentials.client_secret)]


class SecretReader:
    """A generic secret's value by name from the worker's secrets, read again when a new version of it comes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._read: tuple[Any, bytes] | None = None

    def value(self, worker: Any) -> bytes:
        secret = worker.secrets.get(self.name)
        generic = secret.generic_secret if secret is not None else None
        if generic is None or generic.secret is None:
            return b""
        if self._read is None or self._read[0] is not secret:
            try:
                self._read = (secret, read_bytes(generic.secret).rstrip(b"\r\n"))
            except DataSourceError:
                self._read = (secret, b"")
        return self._read[1]


class GenericCredential:
    """Envoy's generic injector: a secret's value, after the prefix, in the header."""

    def __init__(self, config: Generic) -> None:
        assert config.credential is not None
        self.header = (config.header or "Authorization").lower().encode()
        self.prefix = config.header_value_prefix.encode()
        self.secret = SecretReader(config.credential.name)

    def ready(self, stream: Any, then: Callable[[], None]) -> bool:
        return True  # read as the request passes

    def value(self, stream: Any) -> bytes:
        found = self.secret.value(stream.hcm.worker)
        return self.prefix + found if found else b""


class OAuth2Credential:
    """The client credentials grant: a token per worker, fetched when first needed, renewed at half its life."""

    header = b"authorization"

    def __init__(self, config: OAuth2) -> None:
        assert config.token_endpoint is not None and config.client_credentials is not None
        self.uri = config.token_endpoint
        self.client = config.client_credentials
        assert self.client.client_secret is not None
        self.secret = SecretReader(self.client.client_secret.name)
        self.scopes = config.scopes
        self.params = config.endpoint_params
        self.retry = float(config.token_fetch_retry_interval or _DEFAULT_RETRY)
        self.token = b""
        self.worker: Any = None
        self.waiting: list[Callable[[], None]] | None = None  # the streams held while a fetch is in flight
        self.timer: Any = None

    def ready(self, stream: Any, then: Callable[[], None]) -> bool:
        """Whether the token can be read now; if not (the first fetch), `then` is called once it is answered."""
        if self.worker is None:
            self.worker = stream.hcm.worker
            self._fetch()
        if self.waiting is not None and not self.token:
            self.waiting.append(then)
            return False
        return True

    def value(self, stream: Any) -> bytes:
        return b"Bearer " + self.token if self.token else b""

    def _request(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The token request as Envoy 1.40 sends it (observed): the client id and secret in the form body whatever
        `auth_type` says, and its user-agent and accept headers."""
        secret = self.secret.value(self.worker).decode("latin-1")
        form = [("grant_type", "client_credentials"), ("client_id", self.client.client_id), ("client_secret", secret)]
        headers = [(b"content-type", b"application/x-www-form-urlencoded"), (b"user-agent", b"Go-browser"),
                   (b"accept", b"application/json")]
        if self.scopes:
            form.append(("scope", " ".join(self.scopes)))
        form += [(param.name, param.value) for param in self.params]
        body = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in form)
        return headers, body.encode("latin-1")

    def _fetch(self) -> None:
        self.timer = None
        if self.waiting is None:
            self.waiting = []
        headers, body = self._request()
        async_client.send(self.worker, self.uri.cluster, b"POST", self.uri.path.encode(), self.uri.host.encode(),
                          headers, body, float(self.uri.timeout), self._answered)

    def _answered(self, response: async_client.Response | None, reason: str) -> None:
        token, lifetime = _token_of(response)
        loop = self.worker.loop
        if token:
            self.token = token
            self.timer = loop.call_later(lifetime / 2, self._fetch)
        else:
            log.warning("credential_injector: the OAuth2 token fetch failed (%s); again in %.0f s",
                        reason or f"status {response.status if response is not None else '-'}", self.retry)
            self.timer = loop.call_later(self.retry, self._fetch)
        waiting, self.waiting = self.waiting or [], None
        for then in waiting:
            then()


def _token_of(response: async_client.Response | None) -> tuple[bytes, float]:
    """(access token, seconds it lives) of a token endpoint's answer; (b"", 0) for anything else."""
    if response is None or response.status != 200:
        return b"", 0.0
    try:
        answer = json.loads(response.body)
        token, lifetime = answer["access_token"], float(answer["expires_in"])
    except (ValueError, KeyError, TypeError):
        return b"", 0.0
    if not isinstance(token, str) or not token or lifetime <= 0:
        return b"", 0.0
    return token.encode("latin-1"), lifetime


class CredentialInjectorFilter:
    """One HCM's credential injector in one worker."""

    def __init__(self, name: str, config: CredentialInjector, stat_prefix: str, stats: Any, loop: Any) -> None:
        self.name = name
        self.overwrite = config.overwrite
        self.allow_without = config.allow_request_without_credential
        assert config.credential is not None
        typed = config.credential.typed_config
        self.credential = GenericCredential(typed) if isinstance(typed, Generic) else OAuth2Credential(typed)
        prefix = f"http.{stat_prefix}.credential_injector."
        self.injected = stats.counter(prefix + "injected")
        self.failed = stats.counter(prefix + "failed")
        self.already_exists = stats.counter(prefix + "already_exists")

    def decode_headers(self, stream: Any) -> bool:
        if not self.credential.ready(stream, lambda: self._resume(stream)):
            return False
        return self._inject(stream)

    def _resume(self, stream: Any) -> None:
        if stream.rs_state < RS_DONE and self._inject(stream):
            stream.continue_decoding()

    def _inject(self, stream: Any) -> bool:
        header = self.credential.header
        if not self.overwrite and any(name == header for name, _ in stream.headers):
            self.already_exists.inc()
            return True
        value = self.credential.value(stream)
        if not value:
            self.failed.inc()
            if self.allow_without:
                return True
            stream.local(_FAILED)
            return False
        stream.edit_request_header("set", header, value)
        self.injected.inc()
        return True


registry.register_typed(registry.INJECTED_CREDENTIALS, GENERIC_URL, Generic)
registry.register_typed(registry.INJECTED_CREDENTIALS, OAUTH2_URL, OAuth2)
registry.register_typed(registry.HTTP_FILTER, TYPE_URL, CredentialInjector)
register_filter(CredentialInjector, CredentialInjectorFilter)
