"""pylon: a service mesh in Python (Envoy-like proxy, Istio-like control plane, Fortio-like bench kit)."""

__version__ = "0.1.0"
