# Cython's view of hcm.py (pylon.compiled): compiled, HttpConnection is an extension type whose attributes are C
# fields, so its read path reads and writes them without a descriptor look-up. Every name of its __slots__ is
# declared here (tests/compiled checks it); its subclass Http2Connection stays a Python class with slots of its own.
# Interpreted runs never read this file.

cdef class HttpConnection:
    cdef public object hcm, worker, loop, transport, decoder, active, queue, closed, draining, peer, peer_ip, local
    cdef public object scheme, feeding, last_activity, connection_id, loop_time, runtime_listener, wake_at, deadlines
    cdef public object read_budget, parked, client_cert, opened_at, drain_close_at, detected, info, xff_ip, encoder
    cdef public object batch, held
