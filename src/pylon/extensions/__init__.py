"""Envoy's extensions by category (`filters/http/`, `filters/listener/`, `filters/network/`), one module each.

Importing a module registers its typed config (`pylon.config.registry.register_typed`)
and its factory. Config knows each module by name (`registry.EXTENSION_MODULES`)
and imports it the first time a config names its `@type`: these modules import
the config model and the proxy, so config must never import them (the layering
rule, docs/architecture.md). Adding an extension is its own module plus its line
in that table.
"""
