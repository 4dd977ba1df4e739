"""Tracer providers (HCM `tracing.provider`): each registers its config type and its driver (proxy/tracing.py)."""
