"""A request's HTTP filter lists when its route turns some filters off (`envoy.config.route.v3.FilterConfig
{disabled: true}` in its typed_per_filter_config, at the most specific level naming the filter).

Why a view and not a check per filter call: the stream reads the connection manager's lists on every request
(decoders, encoders, body and data transforms, trailers); a route without disabled filters keeps reading the
HCM's own lists at no cost, and a route with some reads lists made once per set of disabled names. A disabled
filter does nothing for that request, in either direction, as in Envoy.

The view is chosen when the route first matches, before any filter runs: a filter that has the route chosen
again mid-chain (ext_authz's clear_route_cache, the gRPC-JSON transcoder) changes the route, not the chain.
"""

from __future__ import annotations

from typing import Any

#: the HCM's filter lists a stream reads, each kept in its own order
LISTS = ("decoder_filters", "encoder_filters", "body_decoders", "body_encoders", "data_decoders", "data_encoders",
         "trailer_decoders", "trailer_encoders")


class FilterChainView:
    """The HCM's filter lists without the filters named in `disabled`."""

    __slots__ = LISTS

    def __init__(self, hcm: Any, disabled: frozenset[str]) -> None:
        for name in LISTS:
            setattr(self, name, [f for f in getattr(hcm, name) if f.name not in disabled])


def chain_for(hcm: Any, route: Any) -> Any:
    """What the stream reads its filter lists from: the HCM itself, or the view without the route's disabled
    filters (made once per set of names, kept by the HCM)."""
    if route is None or not route.disabled_filters or not hcm.decoder_filters:
        return hcm
    view = hcm.chain_views.get(route.disabled_filters)
    if view is None:
        view = hcm.chain_views[route.disabled_filters] = FilterChainView(hcm, route.disabled_filters)
    return view
