"""The dynamic forward proxy's DNS cache, shared by its HTTP filter and its cluster (Envoy's
`extensions/common/dynamic_forward_proxy/`): the config (`config.py`), the host names it keys on (`hosts.py`,
sans-IO) and the per-worker cache itself (`dns_cache.py`)."""
