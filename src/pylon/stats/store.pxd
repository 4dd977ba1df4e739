# Cython's view of store.py (pylon.compiled): compiled, a counter, a gauge and a histogram are extension types, so a
# field declared with their type (HcmRuntime's, in hcm.pxd) bumps `.value` in the C struct, without the descriptor
# look-up a Python object's slot costs. Every name of each class's __slots__ is declared here (tests/compiled checks
# it). hcm._Difference and circuit._ComputedGauge derive from Counter and Gauge in Python and compute `value` when
# read: no typed field may hold one (compiled code reading a typed field's `value` reads the struct, not the
# property); they live only in the store's dictionaries, which the scrape reads as Python objects. Interpreted runs
# never read this file.

cdef class Counter:
    cdef public object name, value

cdef class Gauge:
    cdef public object name, value

cdef class Histogram:
    cdef public tuple bounds
    cdef public list counts
    cdef public object name, sum, count
    cpdef record(self, value)
