# Cython's view of h1_client.py (pylon.compiled): compiled, the upstream HTTP/1 codec's classes are extension types
# whose attributes are C fields, so the parser callbacks read and write them without a descriptor look-up. Every
# name of each class's __slots__ is declared here (tests/compiled checks it). Interpreted runs never read this file.

cdef class Http1RequestEncoder:
    cdef public object head, split, attempt_count, chunked, trailers, parts

cdef class Http1ResponseDecoder:
    cdef public object owner, parser, max_headers, headers, status, connection, informational, head_response
    cdef public object close_delimited, in_body, trailers, read_trailers, tunnel

cdef class CasePreservingResponseDecoder(Http1ResponseDecoder):
    cdef public object case, fallback_proper
