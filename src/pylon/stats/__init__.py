"""Stats with Envoy's names: the store hot-path code bumps (`store`) and its Prometheus exposition (`prometheus`).

A package of its own, below everything that counts: the proxy's listeners and
clusters count here, and so do the key providers (`keys/cryptomb.py`), which
must not import the proxy (keys sit below it; see docs/architecture.md,
"Layering"). Nothing here imports the rest of pylon.
"""
