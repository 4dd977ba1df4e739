"""The extension modules pylon ships, loaded before any config is parsed.

Like Envoy's extensions build config: each module here registers its typed
configs (`pylon.config.registry.register_typed`) when imported, so a config
naming one of them by `@type` parses wherever configs are loaded (the proxy,
its workers, `--mode validate`, tests). Adding an extension is its own module
plus one line here.
"""

from __future__ import annotations

import importlib

EXTENSION_MODULES: tuple[str, ...] = (
    "pylon.keys.config",  # private key providers: cryptomb, offload, keyd
    "pylon.proxy.balance",  # connection balancers: pylon's dispatcher, Envoy's DLB (on its fallback)
    "pylon.extensions.filters.http.fault",  # envoy.filters.http.fault
    "pylon.extensions.filters.http.rbac",  # envoy.filters.http.rbac
    "pylon.extensions.filters.http.python",  # pylon.filters.http.python: filters in plain Python
    "pylon.extensions.filters.network.rbac",  # envoy.filters.network.rbac
    "pylon.extensions.filters.listener.tls_inspector",  # envoy.filters.listener.tls_inspector
    "pylon.extensions.filters.listener.http_inspector",  # envoy.filters.listener.http_inspector
    "pylon.extensions.filters.listener.original_dst",  # envoy.filters.listener.original_dst
)

_loaded = False


def load_extensions() -> None:
    """Import every extension module once (cheap after the first call)."""
    global _loaded
    if not _loaded:
        for name in EXTENSION_MODULES:
            importlib.import_module(name)
        _loaded = True
