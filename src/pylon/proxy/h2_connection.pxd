# Cython's view of h2_connection.py (pylon.compiled): compiled, the HTTP/2 connection and each stream's view of it
# are extension types derived from those of hcm.pxd and http/h2_server.pxd, so their own slots are C fields too.
# Every name of each class's own __slots__ is declared here (tests/compiled checks it). The build depends on the two
# modules cimported here (their sources are part of its hash). Interpreted runs never read this file.

from pylon.proxy.hcm cimport HcmRuntime, HttpConnection
from pylon.proxy.http.h2_server cimport Http2ResponseEncoder, request_head
from pylon.proxy.http.h2_session cimport H2Connection
from pylon.proxy.stream cimport Stream

cdef class H2StreamConn(Http2ResponseEncoder):
    cdef public HcmRuntime hcm
    cdef public Http2Connection h2
    cdef public Stream stream
    cdef public object loop, loop_time, peer, peer_ip, local, scheme, connection_id, detected, closed
    cdef public object paused, owed

cdef class Http2Connection(HttpConnection):
    cdef public H2Connection session
    cdef public dict streams
    cdef public object seen, receiving, flush_again, flush_soon, write_paused, out_paused
    cdef public object final_goaway, keepalive
    cpdef stream_done(self, conn)
    cpdef flush_later(self)
    cpdef _stream_closed(self, conn, error_code)
    cpdef H2StreamConn _open(self, stream_id)
    cpdef H2StreamConn _take(self, stream_id)
    cpdef _request_end(self, Stream stream)
