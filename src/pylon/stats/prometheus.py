"""Prometheus exposition of a merged stats snapshot, with Envoy's metric names and labels.

Envoy does not export `cluster.backend.upstream_rq_503` as one flat name: its
tag extractors pull the variable parts (cluster name, response code, listener
address, ...) out of the dotted name into labels, and the rest becomes the
metric name, prefixed `envoy_`:

    cluster.backend.upstream_rq_503
      -> envoy_cluster_upstream_rq{envoy_cluster_name="backend",envoy_response_code="503"}

Dashboards and alerts written against Envoy only work on pylon if these names
match, so the extractors below follow Envoy's defaults (`TagNameValues` in
`source/common/config/well_known_names.cc`), and so does the algorithm: every
extractor matches the *original* name, records a tag and a span to remove, and
the spans are removed at the end.

One deliberate difference: Envoy's default cluster extractor takes the first
dot-separated token as the cluster name, which breaks names such as
`outbound|80||web.default.svc.cluster.local` (Istio replaces the extractor for
that reason). Here the cluster name ends where a known cluster stat suffix
begins, so names with dots come out whole.

The text itself comes from prometheus-client (`generate_latest`) over metric
families built here. Two adjustments keep the output Envoy's: a counter keeps
its own name (the client would rename `x` to `x_total` in the TYPE line), and
no HELP line is written (Envoy writes none).
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable, Iterator, Mapping

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

Tags = tuple[tuple[str, str], ...]

# Pattern fragments, as Envoy's expandRegex() defines them.
_ADDRESS = r"(?:(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[[a-fA-F_\d]+\])_\d+)"
_CIPHER = r"[\w-]+"
_TLS_VERSION = r"TLSv\d\.\d"
_TAG_VALUE = r"[^.]+"
_ROUTE_CONFIG_NAME = r"[\w\-.]+"
_LISTENER_OR_CLUSTER = r"(?:listener|cluster)\..*?"


class _RegexExtractor:
    """Envoy's regex extractor: group 1 is removed from the name, group 2 (else 1) is the tag value."""

    __slots__ = ("tag", "regex", "prefix", "substr", "negative")

    def __init__(self, tag: str, pattern: str, substr: str = "", negative: str = "") -> None:
        self.tag = tag
        self.regex = re.compile(pattern)
        literal = re.match(r"\^(\w+)\\\.", pattern)
        # Like Envoy, only try an extractor on names whose first token it names.
        self.prefix = literal.group(1) if literal else None
        self.substr = substr
        self.negative = negative

    def extract(self, name: str) -> tuple[str, int, int] | None:
        if self.substr and self.substr not in name:
            return None
        match = self.regex.search(name)
        if match is None:
            return None
        value = match.group(2 if self.regex.groups >= 2 else 1)
        if self.negative and value == self.negative:
            return None
        return value, match.start(1), match.end(1)


class _TokenExtractor:
    """Envoy's tokenized extractor: `*` is one token, `$` the captured token, `**` any number of tokens."""

    __slots__ = ("tag", "tokens", "prefix")

    def __init__(self, tag: str, pattern: str) -> None:
        self.tag = tag
        self.tokens = pattern.split(".")
        first = self.tokens[0]
        self.prefix = None if first in ("*", "**", "$") else first

    def extract(self, name: str) -> tuple[str, int, int] | None:
        parts = name.split(".")
        index = _match_tokens(self.tokens, 0, parts, 0)
        if index is None:
            return None
        start = sum(len(p) + 1 for p in parts[:index])
        value = parts[index]
        if index + 1 < len(parts):
            return value, start, start + len(value) + 1  # the token and the dot after it
        return value, start - 1, start + len(value)  # last token: the dot before it


def _match_tokens(pattern: list[str], p: int, parts: list[str], i: int) -> int | None:
    """Index of the token `$` matched when `pattern[p:]` matches all of `parts[i:]`, else None."""
    if p == len(pattern):
        return -1 if i == len(parts) else None
    token = pattern[p]
    if token == "**":
        for j in range(i, len(parts) + 1):
            found = _match_tokens(pattern, p + 1, parts, j)
            if found is not None:
                return found
        return None
    if i == len(parts) or (token not in ("*", "$") and token != parts[i]):
        return None
    found = _match_tokens(pattern, p + 1, parts, i + 1)
    if found is None:
        return None
    return i if token == "$" else found


# What can follow `cluster.<name>.` in a stat name. Envoy's own extractor stops
# the name at the first dot; pylon stops it where one of these begins instead.
_CLUSTER_STAT_SUFFIX = re.compile(
    r"""(?:
        (?:internal\.|external\.|canary\.)?upstream_\w+
      | zone\.[^.]+\.[^.]+\.upstream_\w+
      | (?:outlier_detection|health_check|client_ssl_socket_factory)\.\w+
      | circuit_breakers\.\w+\.\w+
      | ssl\.(?:\w+|(?:ciphers|curves|sigalgs)\.[\w-]+|versions\.TLSv\d\.\d)
      | (?:membership|lb|update|assignment|max_host|bind|original_dst|retry_or_shadow|init_fetch|warming)_\w+
      | default\.total_match_count
      | version
    )""",
    re.VERBOSE,
)


class _ClusterNameExtractor:
    """`cluster.(<name>.)<stat>`, where `<name>` may contain dots."""

    __slots__ = ("tag", "prefix")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.prefix = "cluster"

    def extract(self, name: str) -> tuple[str, int, int] | None:
        start = len("cluster.")
        dot = name.find(".", start)
        first_dot = dot
        while dot != -1:
            if _CLUSTER_STAT_SUFFIX.fullmatch(name, dot + 1):
                return name[start:dot], start, dot + 1
            dot = name.find(".", dot + 1)
        if first_dot == -1:
            return None
        return name[start:first_dot], start, first_dot + 1


_EXTRACTORS: tuple[Any, ...] = (
    _RegexExtractor("envoy.response_code", r"_rq(_(\d{3}))$", "_rq_"),
    _RegexExtractor("envoy.response_code_class", r"_rq_((\d))xx$", "_rq_"),
    _TokenExtractor("envoy.http_user_agent", "http.*.user_agent.$.**"),
    _TokenExtractor("envoy.virtual_cluster", "vhost.*.vcluster.$.**"),
    _TokenExtractor("envoy.fault_downstream_cluster", "http.*.fault.$.**"),
    _RegexExtractor("envoy.ssl_cipher", rf"^listener\..*?\.ssl\.ciphers(\.({_CIPHER}))$", ".ssl.ciphers."),
    _RegexExtractor("envoy.ssl_curve", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.curves(\.({_CIPHER}))$", ".ssl.curves."),
    _RegexExtractor("envoy.ssl_sigalg", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.sigalgs(\.({_CIPHER}))$", ".ssl.sigalgs."),
    _RegexExtractor(
        "envoy.ssl_version", rf"^{_LISTENER_OR_CLUSTER}\.ssl\.versions(\.({_TLS_VERSION}))$", ".ssl.versions."
    ),
    # Envoy names this one tag without the `envoy.` prefix.
    _RegexExtractor("cipher_suite", rf"^cluster\..*?\.ssl\.ciphers(\.({_CIPHER}))$", ".ssl.ciphers."),
    _TokenExtractor("envoy.tcp_prefix", "tcp.$.**"),
    _TokenExtractor("envoy.udp_prefix", "udp.$.**"),
    _ClusterNameExtractor("envoy.cluster_name"),
    _RegexExtractor("envoy.http_conn_manager_prefix", rf"^listener\..*?\.http\.(({_TAG_VALUE})\.)", ".http."),
    _TokenExtractor("envoy.http_conn_manager_prefix", "http.$.**"),
    _RegexExtractor(
        "envoy.worker_id",
        rf"^(?:listener\.(?:{_ADDRESS}|{_TAG_VALUE})\.|server\.|listener_manager\.)worker_((\d+)\.)",
    ),
    _RegexExtractor("envoy.listener_address", rf"^listener\.(({_ADDRESS}|{_TAG_VALUE})\.)", negative="admin"),
    _TokenExtractor("envoy.virtual_host", "vhost.$.**"),
    _RegexExtractor("envoy.rds_route_config", rf"^http\.{_TAG_VALUE}\.rds\.(({_ROUTE_CONFIG_NAME})\.)\w+?$", ".rds."),
    _TokenExtractor("envoy.route", "vhost.*.route.$.**"),
    _TokenExtractor("envoy.local_http_ratelimit_prefix", "$.http_local_rate_limit.**"),
    _TokenExtractor("envoy.local_network_ratelimit_prefix", "local_rate_limit.$.**"),
)


@functools.lru_cache(maxsize=65536)
def extract_tags(stat_name: str) -> tuple[str, Tags]:
    """Envoy's tag extraction: (tag-extracted name, ((tag name, value), ...)).

    `cluster.a.b.upstream_rq_2xx` -> (`cluster.upstream_rq_xx`,
    ((`envoy.response_code_class`, `2`), (`envoy.cluster_name`, `a.b`))).
    Cached: the set of stat names is bounded and scrapes repeat it.
    """
    first = stat_name.split(".", 1)[0]
    tags: list[tuple[str, str]] = []
    spans: list[tuple[int, int]] = []
    for extractor in _EXTRACTORS:
        if extractor.prefix is not None and extractor.prefix != first:
            continue
        found = extractor.extract(stat_name)
        if found is not None:
            value, start, end = found
            tags.append((extractor.tag, value))
            spans.append((start, end))
    if not spans:
        return stat_name, ()
    keep = [True] * len(stat_name)
    for start, end in spans:
        for i in range(start, end):
            keep[i] = False
    return "".join(c for c, k in zip(stat_name, keep) if k), tuple(tags)


_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def _sanitize(name: str) -> str:
    """Prometheus names allow [a-zA-Z0-9_] and no leading digit; Envoy maps the rest to `_`."""
    cleaned = _INVALID.sub("_", name)
    return "_" + cleaned if cleaned[:1].isdigit() else cleaned


def prometheus_name(stat_name: str) -> tuple[str, dict[str, str]]:
    """The Prometheus metric name and labels Envoy would export for `stat_name`."""
    extracted, tags = extract_tags(stat_name)
    return _sanitize("envoy_" + extracted), {_sanitize(tag): value for tag, value in tags}


def _envoy_number(value: float) -> str:
    """Bucket bounds as Envoy prints them (`%.32g`: `0.5`, `1`, `3600000`), so `le` labels match."""
    return format(value, ".32g")


def _counter_or_gauge(typ: str, values: Mapping[str, int]) -> list[Metric]:
    groups: dict[str, Metric] = {}
    for stat_name in sorted(values):
        name, labels = prometheus_name(stat_name)
        family = groups.get(name)
        if family is None:
            family = groups[name] = Metric(name, "", typ)
        family.add_sample(name, labels, values[stat_name])
    return [groups[name] for name in sorted(groups)]


def _histograms(histograms: Mapping[str, Mapping[str, Any]]) -> list[Metric]:
    groups: dict[str, Metric] = {}
    for stat_name in sorted(histograms):
        hist = histograms[stat_name]
        name, labels = prometheus_name(stat_name)
        family = groups.get(name)
        if family is None:
            family = groups[name] = Metric(name, "", "histogram")
        cumulative = 0
        for bound, count in zip(hist["bounds"], hist["counts"]):
            cumulative += count
            family.add_sample(name + "_bucket", {**labels, "le": _envoy_number(bound)}, cumulative)
        family.add_sample(name + "_bucket", {**labels, "le": "+Inf"}, hist["count"])
        family.add_sample(name + "_sum", labels, hist["sum"])
        family.add_sample(name + "_count", labels, hist["count"])
    return [groups[name] for name in sorted(groups)]


class EnvoyStatsCollector:
    """A prometheus-client collector over one merged snapshot (counters, then gauges, then histograms, as Envoy)."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from _counter_or_gauge("counter", self._snapshot.get("counters", {}))
        yield from _counter_or_gauge("gauge", self._snapshot.get("gauges", {}))
        yield from _histograms(self._snapshot.get("histograms", {}))


class _One:
    """A collector of a single family, so each family can be rendered (and its header adjusted) alone."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> list[Metric]:
        return [self._metric]


def _render_family(metric: Metric) -> str:
    text = generate_latest(_One(metric)).decode()
    _help, _type, samples = text.split("\n", 2)
    # The client names a counter family `<name>_total`; Envoy names it as its samples.
    return f"# TYPE {metric.name} {metric.type}\n{samples}"


def render_prometheus(snapshot: Mapping[str, Any]) -> bytes:
    """The `/stats/prometheus` body for a merged snapshot (see `pylon.stats.store`)."""
    families: Iterable[Metric] = EnvoyStatsCollector(snapshot).collect()
    return "".join(_render_family(metric) for metric in families).encode()
