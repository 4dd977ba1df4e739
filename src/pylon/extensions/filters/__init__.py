"""Filters by Envoy's category: `http/` for HTTP filters (run by the HTTP connection manager)."""
