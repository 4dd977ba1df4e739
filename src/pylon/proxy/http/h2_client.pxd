# Cython's view of h2_client.py (pylon.compiled): compiled, an attempt's HTTP/2 request encoder is an extension type
# whose attributes are C fields, and its session is typed, so a body submission reaches the session's method without
# a look-up (H2UpstreamStream's `encoder` is declared with this type). Every name of its __slots__ is declared here
# (tests/compiled checks it). Interpreted runs never read this file.

from pylon.proxy.http.h2_session cimport H2Connection

cdef class Http2RequestEncoder:
    cdef public H2Connection codec
    cdef public object base, stream_id, ended, queued
