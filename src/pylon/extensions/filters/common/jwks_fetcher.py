"""A remote JWKS fetched through the worker's async client, retried as Envoy's JWKS fetcher retries.

Envoy turns a provider's `remote_jwks.retry_policy` (config.core.v3.RetryPolicy) into a router retry policy for
its one request (Http::Utility::convertCoreToRouteRetryPolicy): `num_retries` (default 1), the back-off's
`base_interval` (default 1 s) and `max_interval` (default 10 x base), each try bounded by that max interval, and
retries on 5xx, gateway errors, connect failures and resets whatever the policy's own `retry_on` says. The
whole fetch stays within the `http_uri` timeout. The back-off between tries is Envoy's router's, fully jittered:
a random delay below base x 2^retry, capped at the max interval. A 200 whose body is no JWKS, or another status,
is a failure without retry.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from pylon.config.envoy import EnvoyStruct, NotSupportedYet, PositiveDuration, UInt32
from pylon.config.errors import FieldError
from pylon.config.services import HttpUri
from pylon.extensions.filters.common import jwt_verify as jv
from pylon.proxy import async_client

__all__ = ["BackoffStrategy", "CoreRetryPolicy", "fetch_jwks"]


class BackoffStrategy(EnvoyStruct, kw_only=True):
    """config.core.v3.BackoffStrategy."""

    base_interval: PositiveDuration
    max_interval: PositiveDuration | None = None

    def __post_init__(self) -> None:
        if self.max_interval is not None and self.max_interval < self.base_interval:
            raise FieldError("max_interval", "max_interval must be greater than or equal to the base_interval")


class CoreRetryPolicy(EnvoyStruct, kw_only=True):
    """config.core.v3.RetryPolicy as a JWKS fetch reads it (see the module docstring)."""

    retry_back_off: BackoffStrategy | None = None
    num_retries: UInt32 = 1
    #: Envoy's JWKS fetch retries on its own fixed conditions and reads no retry_on (as here)
    retry_on: str = ""
    retry_priority: NotSupportedYet | None = None
    retry_host_predicate: NotSupportedYet | None = None
    host_selection_max_attempts: NotSupportedYet | None = None

    @property
    def intervals(self) -> tuple[float, float]:
        """(base, max) back-off in seconds."""
        if self.retry_back_off is None:
            return 1.0, 10.0
        base = float(self.retry_back_off.base_interval)
        top = self.retry_back_off.max_interval
        return base, float(top) if top is not None else 10 * base


def fetch_jwks(worker: Any, uri: HttpUri, retry: CoreRetryPolicy | None,
               done: Callable[[list[jv.Jwk] | None], None]) -> None:
    """GET the JWKS `uri` names (retried as `retry` says, within the uri's timeout); `done(keys or None)` once."""
    loop = worker.loop
    deadline = loop.time() + float(uri.timeout)
    retries = retry.num_retries if retry is not None else 0
    base, top = retry.intervals if retry is not None else (0.0, 0.0)

    def attempt(tried: int) -> None:
        left = deadline - loop.time()
        timeout = min(top, left) if retry is not None else float(uri.timeout)
        async_client.send(worker, uri.cluster, b"GET", uri.path.encode(), uri.host.encode(), [], b"", timeout,
                          lambda response, reason: answered(tried, response))

    def answered(tried: int, response: async_client.Response | None) -> None:
        if response is not None and response.status == 200:
            try:
                keys: list[jv.Jwk] | None = jv.parse_jwks(response.body.decode("utf-8", "replace"))
            except ValueError:
                keys = None
            return done(keys)
        retriable = response is None or response.status >= 500
        delay = random.uniform(0, min(base * 2 ** tried, top))
        if retriable and tried < retries and loop.time() + delay < deadline:
            loop.call_later(delay, attempt, tried + 1)
            return
        done(None)

    attempt(0)
