# Cython's view of h2_pool.py (pylon.compiled): compiled, an HTTP/2 upstream connection and each request's stream on
# it are extension types (the connection derived from pool_base.pxd's), so the codec's calls reach their fields
# without a descriptor or dictionary look-up. Every name of each class's __slots__ is declared here (tests/compiled
# checks it). Interpreted runs never read this file.

from pylon.proxy.http.h2_client cimport Http2RequestEncoder
from pylon.proxy.http.h2_session cimport H2Connection
from pylon.proxy.upstream.pool_base cimport PooledConnection
from pylon.stats.store cimport Counter

cdef class H2UpstreamStream:
    cdef public H2UpstreamConnection connection
    cdef public Http2RequestEncoder encoder
    cdef public object pool, exchange, stream_id, local_address, requests, keep_alive
    cdef public object reading_paused, held, writing_paused, answered, flush_due
    cpdef send_head(self, base, head, end_stream, attempt=*)
    cpdef write(self, data)
    cpdef _detach(self)
    cpdef on_headers(self, fields, end_stream)
    cpdef _flush_later(self)
    cpdef on_data(self, data)
    cpdef on_trailers(self, trailers)
    cpdef _complete(self)
    cpdef _flush_now(self)
    cpdef on_closed(self, error_code)

cdef class H2UpstreamConnection(PooledConnection):
    cdef public H2Connection codec
    cdef public dict streams
    cdef public object pool, scheme, transport, local_address, closed, goaway, draining, requests
    cdef public object active, peer_max, peer_connect, preface, writing_paused, write_paused_streams, flush_pending
    cdef public object wake_at, opened_at, idle_since, http1_chosen, seen, keepalive, due, started_at
    cdef public Counter rx_bytes, tx_bytes
    cpdef flush_soon(self)
    cpdef flush(self)
    cpdef H2UpstreamStream _open(self, stream_id)
    cpdef H2UpstreamStream _take(self, stream_id)
