# Cython's view of h2_session.py (pylon.compiled): compiled, the HTTP/2 session and each stream's outbound body are
# extension types whose attributes are C fields, so the shim's callbacks (one per HEADERS frame, DATA chunk, DATA
# read and stream close) reach them without a descriptor or dictionary look-up. Every name of each class's
# __slots__ is declared here (tests/compiled checks it). Interpreted runs never read this file.

cdef class _Outbound:
    cdef public object chunks, offset, size, ended, trailers, deferred

cdef class H2Connection:
    cdef public object owner, server, settings, _handle, _c, _session, _out, _streams, _out_ptr, _final, _error
    cdef public object pending_send_bytes, streams_active, trailers, stats, closed
