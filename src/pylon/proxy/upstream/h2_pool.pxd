# Cython's view of h2_pool.py (pylon.compiled): compiled, an HTTP/2 upstream connection and each request's stream on
# it are extension types (the connection derived from pool_base.pxd's), so the codec's calls reach their fields
# without a descriptor or dictionary look-up. Every name of each class's __slots__ is declared here (tests/compiled
# checks it). Interpreted runs never read this file.

from pylon.proxy.upstream.pool_base cimport PooledConnection

cdef class H2UpstreamStream:
    cdef public object connection, pool, exchange, stream_id, encoder, local_address, requests, keep_alive
    cdef public object reading_paused, held, writing_paused, answered, flush_due

cdef class H2UpstreamConnection(PooledConnection):
    cdef public object pool, codec, scheme, streams, transport, local_address, closed, goaway, draining, requests
    cdef public object active, peer_max, peer_connect, preface, writing_paused, write_paused_streams, flush_pending
    cdef public object wake_at, opened_at, idle_since, http1_chosen, seen, keepalive, due
