# Cython's view of h2_session.py (pylon.compiled): compiled, the HTTP/2 session is an extension type whose attributes
# are C fields, so reading the shim's events (one per HEADERS frame, DATA chunk and stream close) reaches them
# without a dictionary look-up. Every name of its __slots__ is declared here (tests/compiled checks it). Interpreted
# runs never read this file.

cdef class H2Connection:
    cdef public dict _streams, stats
    cdef public object owner, server, settings, _c, _session, _out_ptr, _final, streams_active, trailers
    cdef public object closed, _on_headers, _on_data, _on_trailers, _on_end_stream, _on_stream_closed
    cpdef receive(self, data)
    cpdef _dispatch(self, events, data)
    cpdef _fail(self, code)
    cpdef data_to_send(self)
    cpdef send_request_block(self, block, count, end_stream=*)
    cpdef send_response_block(self, stream_id, block, count, end_stream=*)
    cpdef send_whole(self, stream_id, block, count, body, trailers=*)
    cpdef send_data(self, stream_id, data, end_stream=*)
    cpdef send_trailers(self, stream_id, trailers)
    cpdef consume(self, stream_id, n)
    cpdef _known(self, stream_id)
    cpdef _check(self, rv)
