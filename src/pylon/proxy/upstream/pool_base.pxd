# Cython's view of pool_base.py (pylon.compiled): compiled, PooledConnection is an extension type with no fields of
# its own, so both pools' connections (pool.pxd, h2_pool.pxd) can be extension types derived from it. Interpreted
# runs never read this file.

cdef class PooledConnection:
    pass
