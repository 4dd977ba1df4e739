"""`pylon agent`: Istio's pilot-agent — workload key and certificate, SDS, bootstrap, proxy supervision."""
