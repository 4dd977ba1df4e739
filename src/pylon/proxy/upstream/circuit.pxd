# Cython's view of circuit.py (pylon.compiled): compiled, a cluster's circuit breakers and each of their resources
# are extension types whose attributes are C fields, so taking and giving back a request's unit (twice per request)
# reads them from the struct. Every name of each class's __slots__ is declared here (tests/compiled checks it).
# Interpreted runs never read this file.

from pylon.stats.store cimport Counter, Gauge

cdef class Resource:
    cdef public Counter overflow
    cdef public Gauge open_gauge
    cdef public object max, count

cdef class CircuitBreakers:
    cdef public Resource connections, pending_requests, requests, retries
