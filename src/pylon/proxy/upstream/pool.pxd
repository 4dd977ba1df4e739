# Cython's view of pool.py (pylon.compiled): compiled, an HTTP/1.1 upstream connection is an extension type derived
# from pool_base.pxd's, so the response path reads and writes its fields without a descriptor look-up. Every name of
# its __slots__ is declared here (tests/compiled checks it). Interpreted runs never read this file.

from pylon.proxy.upstream.pool_base cimport PooledConnection
from pylon.stats.store cimport Counter

cdef class UpstreamConnection(PooledConnection):
    cdef public object pool, transport, decoder, exchange, keep_alive, closed, requests, answered, local_address
    cdef public object wake_at, opened_at, idle_since, draining, batch, held, tx_bytes, started_at
    cdef public Counter rx_bytes
