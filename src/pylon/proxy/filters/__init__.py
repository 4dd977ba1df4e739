"""The filter interfaces the data plane calls, and the factory registries filter extensions join.

Envoy's core declares what a filter is (`envoy/http/filter.h`, `envoy/network/filter.h`) and
finds each one through a factory registered by name; the filters themselves
are extensions (`pylon/extensions/filters/`) that import the core. One module
per category: `http`, `listener`, `network`.
"""
