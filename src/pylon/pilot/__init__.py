"""`pylon pilot`: the control plane (an istiod of pylon's own).

Istio YAML from a watched directory (`source/`) is decoded into msgspec Structs
(`istio/`), indexed into one immutable snapshot per change (`snapshot.py`), turned
into Envoy resources per connected proxy with Istio's names (`gen/`, one generator
per proxy type) and served over ADS (`xds/`). Everything but `xds/server.py`,
`debug.py` and `app.py` is sans-IO.
"""
