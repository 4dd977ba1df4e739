# Cython's view of h1_server.py (pylon.compiled): compiled, the downstream HTTP/1 codec's classes are extension types
# whose attributes are C fields, so the parser callbacks read and write them without a descriptor look-up. Every
# name of each class's __slots__ is declared here (tests/compiled checks it). Interpreted runs never read this file.

cdef class Http1ResponseEncoder:
    cdef public object out, chunked, server_name, trailers

cdef class Http1RequestDecoder:
    cdef public object hcm, callbacks, parser, stream, in_head, head_bytes, raw_head_bytes, stop_reply

cdef class CasePreservingRequestDecoder(Http1RequestDecoder):
    cdef public object fallback_proper
