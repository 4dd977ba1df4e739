"""Workload identity: X.509 certificates, SPIFFE ids and (later) pylon's certificate authority."""
