# Cython's view of h2_server.py (pylon.compiled): compiled, a stream's request head and response encoder are
# extension types whose attributes are C fields. Every name of each class's __slots__ is declared here
# (tests/compiled checks it); H2StreamConn (h2_connection.py) derives from the encoder as a Python class.
# Interpreted runs never read this file.

from pylon.proxy.http.h2_session cimport H2Connection

cdef class RequestHead:
    cdef public object method, path, protocol, headers, length, rejected, dropped

cpdef RequestHead request_head(fields, underscores)

cdef class Http2ResponseEncoder:
    cdef public H2Connection session
    cdef public object out, stream_id, server_name, ended, headers_only, held, held_body, queued
