"""Envoy's `envoy.content_parsers` extensions: what sse_to_metadata hands each event's data to."""
