# Cython's view of h2_session.py (pylon.compiled): compiled, the HTTP/2 session is an extension type whose attributes
# are C fields, so reading the shim's events (one per HEADERS frame, DATA chunk and stream close) reaches them
# without a dictionary look-up. Every name of its __slots__ is declared here (tests/compiled checks it). Interpreted
# runs never read this file.

cdef class H2Connection:
    cdef public object owner, server, settings, _c, _session, _streams, _out_ptr, _final, streams_active, trailers
    cdef public object stats, closed, _on_headers, _on_data, _on_trailers, _on_end_stream, _on_stream_closed
