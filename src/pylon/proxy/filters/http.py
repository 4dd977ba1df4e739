"""HTTP filters: the decoder side of Envoy's HTTP filter chain, ahead of the router.

Each filter module (`pylon/extensions/filters/http/`) registers its config
Struct (`config.registry`, category `envoy.filters.http`) and a factory here
(`register_filter`), in the proxy, which must not import the filters (they
import it; docs/architecture.md, "Layering"). The HTTP connection manager
builds one filter object per configured filter, once per worker; a stream runs
them in order on its request headers before routing:

- `decode_headers(stream)` returns True to go on to the next filter, or False
  when the filter has answered (`stream.local(...)`) or will resume the
  stream later (`stream.continue_decoding()`, e.g. after a fault delay);
- the matched route is known when filters run (`stream.route`, None when no
  route matched), so per-route configs (`typed_per_filter_config`, keyed by
  the filter's name) are looked up with `stream.route.filter_config(name)`.

Filters may also see whole bodies, which makes the stream buffer that
direction up to the connection's buffer limit (413 / 500 beyond it):

- `wants_request_body(stream)` and `decode_body(stream, body) -> bytes | None`
  (the replacement, or None): run in order once the request is complete,
  before routing; a filter may answer instead (`stream.local(...)`);
- `wants_response_body(stream)` and `encode_body(stream, status, headers,
  body) -> bytes | None`: run last filter first once the response is
  complete, before anything is sent (headers may still change, and so may
  a relayed response's status, by setting `stream.status`: the gRPC
  bridge's 503); local replies pass them too.

Filters may instead (or also) see each body piece as it passes, to transform
a stream without holding it:

- `wants_request_data(stream)` (asked when the request is routed, for a
  request with a body) and `decode_data(stream, data, end_stream) -> bytes`
  (in filter order, for every piece; the last call has `end_stream` True,
  possibly with no bytes): what it returns replaces the piece. Since sizes may
  change, such a request goes upstream chunked (its content-length dropped);
- `wants_response_data(stream)` (asked at the response head, for a response
  with a body) and `encode_data(stream, data, end_stream) -> bytes` (last
  filter first): the response goes out without its content-length (chunked,
  or to the end of the connection for HTTP/1.0). Data filters run before the
  whole-body ones, which then see the transformed body. A filter that only
  reads the pieces and returns them as they came says so with a class
  attribute `keeps_length = True`: then both lengths stay (grpc_stats).

Filters may also see a message's trailers, where it has them (HTTP/1.1
chunked trailers carried with `enable_trailers` on the HCM and the cluster):

- `decode_trailers(stream, trailers)` (in filter order, once the request is
  complete) and `encode_trailers(stream, trailers)` (last filter first, before
  the response ends) get the trailer list, (name, value) pairs with lower-case
  names, and change it in place; what they leave is what is sent. A message
  without trailers calls neither (HTTP/1.1 can only carry trailers after a
  chunked body, so none are added to one that has none).

Pacing (the bandwidth limit): a filter may hold a body back and let it go on later, setting, in
`decode_headers`, `stream.request_pacer`, and in `encode_headers`, `stream.response_pacer`: an object with

- `write(data) -> bytes`: a body piece as the client (the upstream) sent it; what it returns goes on now, the
  rest it hands back later through `stream.on_body(data, paced=True)` + `stream.flush_upstream()` (the
  response's: `stream.on_upstream_body(data, paced=True)` + `stream.on_upstream_flush()`);
- `hold_end(then) -> bool`: the body ended; True holds the end back until the pacer calls `then()`, after its
  last bytes (the request's end is then the client's as far as the stream knows; the response's upstream is done
  and back in its pool at once, only the client's response waits);
- `full` and `sink_full`: while its buffer is above its high watermark it pauses the body's source
  (`stream.on_pacer_full(response, full)`), and a socket's own back-pressure (`sink_full`, set by the stream)
  does not resume a source the pacer holds paused, nor the pacer one the socket holds.

A filter may turn the request into another before it is routed (`stream.rewrite_request(method, path, body,
rematch)`: the gRPC-JSON transcoder's new method and path, a body for a request that came without one, and the
route chosen again), or replace its Host (`stream.set_authority`).

Without filters besides the router, a stream does none of this (no cost).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol


class DecoderFilter(Protocol):
    name: str

    def decode_headers(self, stream: Any) -> bool: ...


class NoTerminalFilter:
    """What an HCM without any HTTP filter runs: Envoy 1.40 accepts an empty `http_filters` and then no filter,
    not even the router, answers a request, which waits until the stream idle timeout (504 "stream timeout").
    Observed beside it (tests/proxy/test_proxy_hcm_no_filters.py); this keeps that rather than route anyway."""

    name = "(no HTTP filters)"

    def decode_headers(self, stream: Any) -> bool:
        return False  # stop here; nothing ever continues the stream


#: config Struct type -> factory(name, config, stat_prefix, stats, loop) building the filter for one HCM
FilterFactory = Callable[[str, Any, str, Any, Any], DecoderFilter]
_FACTORIES: dict[type, FilterFactory] = {}


def register_filter(config_type: type, factory: FilterFactory) -> None:
    _FACTORIES[config_type] = factory


def build_filter(name: str, config: Any, stat_prefix: str, stats: Any, loop: Any) -> DecoderFilter:
    """The filter for one `http_filters` entry (its config type was registered by its module)."""
    return _FACTORIES[type(config)](name, config, stat_prefix, stats, loop)
