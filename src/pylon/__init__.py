"""pylon: a service mesh in Python (Envoy-like proxy, Istio-like control plane, Fortio-like bench kit)."""

from pylon import compiled

__version__ = "0.1.0"

# The data path's hot modules load from their Cython builds when built from the current source (pylon/compiled).
compiled.install()
