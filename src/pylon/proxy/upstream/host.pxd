# Cython's view of host.py (pylon.compiled): compiled, Host is an extension type whose attributes are C fields, so
# its counters and flags are read and written without a descriptor look-up. Every name of Host.__slots__ is declared
# here (tests/compiled checks it). Interpreted runs never read this file.

cdef class Host:
    cdef public object address, weight, hostname, healthy, health_flags, active_requests, active_connections
    cdef public object rq_total, rq_success, rq_error, rq_timeout, cx_connect_fail, outlier, on_health_change
    cdef public object socket, placement, lb_metadata, typed_metadata
