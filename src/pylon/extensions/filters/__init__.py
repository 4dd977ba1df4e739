"""Filters by Envoy's category: `http/`, `listener/`, `network/`, and `common/` for what several share."""
