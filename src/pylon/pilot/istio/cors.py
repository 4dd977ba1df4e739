"""networking.v1alpha3.CorsPolicy: a VirtualService HTTP route's `corsPolicy`, with Istio's webhook checks.

What istiod's validation (pkg/config/validation: validateCORSPolicy and the CRD's maxAge rule) refuses,
each error naming its field: an allowOrigins entry without a non-empty exact, prefix or regex (a regex
longer than 1,024 characters or not RE2 too); a method outside GET, HEAD, POST, PUT, PATCH, DELETE,
CONNECT, OPTIONS, TRACE and "*"; an empty allowed or exposed header name, or one that is not an RFC 7230
token (but "*"); a maxAge under 1ms, not in whole milliseconds, or not in whole seconds (istiod writes
Envoy's max_age in seconds).
"""

from __future__ import annotations

import re
from typing import Literal

from pylon.config.errors import FieldError
from pylon.pilot.istio.common import GoDuration, IstioStruct, StringMatch

#: istiod's supportedCORSMethods
CORS_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~A-Za-z0-9]+$")
#: istiod approximates Envoy's RE2 program-size limit by the pattern's length
MAX_REGEX_LENGTH = 1024


class CorsPolicy(IstioStruct, kw_only=True):
    """Cross-origin resource sharing for one HTTP route; istiod turns it into the CORS filter's per-route config."""

    allow_origin: list[str] = []  # deprecated: exact origins, used only without allowOrigins
    allow_origins: list[StringMatch] = []
    allow_methods: list[str] = []
    allow_headers: list[str] = []
    expose_headers: list[str] = []
    max_age: GoDuration | None = None
    allow_credentials: bool | None = None
    unmatched_preflights: Literal["UNSPECIFIED", "FORWARD", "IGNORE"] = "UNSPECIFIED"

    def __post_init__(self) -> None:
        for i, origin in enumerate(self.allow_origins):
            _check_origin(origin, f"allowOrigins[{i}]")
        for i, method in enumerate(self.allow_methods):
            if method not in CORS_METHODS:
                raise FieldError(f"allowMethods[{i}]", f"{method!r} is not a supported HTTP method")
        for field, names in (("allowHeaders", self.allow_headers), ("exposeHeaders", self.expose_headers)):
            for i, name in enumerate(names):
                if not name:
                    raise FieldError(f"{field}[{i}]", "header name cannot be empty")
                if name != "*" and not _TOKEN.match(name):
                    raise FieldError(f"{field}[{i}]", f"header name {name} is not a valid header name")
        if self.max_age is not None:
            millis = round(self.max_age * 1000, 6)
            if millis < 1:
                raise FieldError("maxAge", "duration must be greater than 1ms")
            if millis != int(millis):
                raise FieldError("maxAge", "only durations to ms precision are supported")
            if int(millis) % 1000:
                raise FieldError("maxAge", "max_age duration is accurate only to seconds precision")


def _check_origin(origin: StringMatch, where: str) -> None:
    value = origin.exact if origin.exact is not None else origin.prefix if origin.prefix is not None else origin.regex
    if not value:
        raise FieldError(where, f"'{value or ''}' is not a valid match type for CORS allow origins")
    if origin.regex is not None and len(origin.regex) > MAX_REGEX_LENGTH:
        raise FieldError(f"{where}.regex", f"regex is too large, max length allowed is {MAX_REGEX_LENGTH}")
