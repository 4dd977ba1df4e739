"""Envoy's access log filters (config.accesslog.v3.AccessLogFilter) as predicates over an access-log record.

Sans-IO: a filter compiles once, per config, into a function of the `AccessLogRecord` the data path fills, so
an access log with a filter costs one call per request and a log without one costs nothing. The same predicates
pick a local reply's mapper in `local_reply_config` (local_reply_mapper.py), which is why they live apart from
the loggers.

What each kind reads, as Envoy 1.40 does:
- status_code_filter: the response code (0 when none was sent), compared with the value's `default_value`
  (pylon's runtime refuses keys it does not implement, so no layer can override it: see config's
  RuntimeUInt32);
- duration_filter: the total request duration in whole milliseconds;
- not_health_check_filter: true unless the health_check filter took the request as a health check;
- header_filter: a request header (or :path, :method, :authority, :scheme), matched as route matching does;
- response_flag_filter: any of the named flags is among the request's response flags (any flag when none
  is named);
- and_filter / or_filter: in order, stopping at the first answer that decides.
The other kinds are refused when the config loads (config/envoy.py names the field).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING

from pylon.config.envoy import AccessLogFilter, ComparisonFilter, HeaderMatcher
from pylon.proxy.router import _HeaderMatcher
from pylon.regex import RegexEngine

if TYPE_CHECKING:
    from pylon.proxy.access_log import AccessLogRecord

Predicate = Callable[["AccessLogRecord"], bool]

_COMPARE = {"EQ": operator.eq, "GE": operator.ge, "LE": operator.le, "NE": operator.ne}


def compile_filter(config: AccessLogFilter, engine: RegexEngine) -> Predicate:
    """The predicate for one AccessLogFilter (exactly one kind is set: the config checked it)."""
    if config.status_code_filter is not None:
        compare, value = _comparison(config.status_code_filter.comparison)
        return lambda r: compare(r.response_code or 0, value)
    if config.duration_filter is not None:
        compare, value = _comparison(config.duration_filter.comparison)
        return lambda r: compare(int(r.duration or 0), value)
    if config.not_health_check_filter is not None:
        return lambda r: not r.health_check
    if config.header_filter is not None:
        return _header(config.header_filter.header, engine)
    if config.response_flag_filter is not None:
        return _response_flags(frozenset(config.response_flag_filter.flags))
    if config.and_filter is not None:
        parts = [compile_filter(part, engine) for part in config.and_filter.filters]
        return lambda r: all(part(r) for part in parts)
    if config.or_filter is not None:
        parts = [compile_filter(part, engine) for part in config.or_filter.filters]
        return lambda r: any(part(r) for part in parts)
    raise ValueError("access log filter: no supported kind set")  # the config refuses the others by name


def _comparison(config: ComparisonFilter) -> tuple[Callable[[int, int], bool], int]:
    return _COMPARE[config.op], config.value.default_value


def _header(config: HeaderMatcher, engine: RegexEngine) -> Predicate:
    matcher = _HeaderMatcher(config, engine)
    if matcher.pseudo is None:
        return lambda r: matcher.matches_headers(r.request_headers)
    field = _PSEUDO_FIELDS[matcher.pseudo]  # the record keeps these apart from its header list

    def matches(r: AccessLogRecord) -> bool:
        value = getattr(r, field)
        return matcher.matches(value.encode("latin-1") if value is not None else None)

    return matches


_PSEUDO_FIELDS = {":path": "path", ":method": "method", ":authority": "authority", ":scheme": "scheme"}


def _response_flags(wanted: frozenset[str]) -> Predicate:
    """Flags are kept as Envoy prints them ("-" for none, else comma-separated short names)."""
    if not wanted:
        return lambda r: r.response_flags not in ("", "-")
    return lambda r: r.response_flags not in ("", "-") and not wanted.isdisjoint(r.response_flags.split(","))
