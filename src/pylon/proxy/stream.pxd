# Cython's view of stream.py (pylon.compiled): compiled, Stream is an extension type whose attributes are C fields,
# read and written without a dictionary or descriptor look-up. Every name of Stream.__slots__ is declared here
# (tests/compiled checks it), the three state machines' too: compiled, a state store is a struct store that
# stream_states.checked's __setattr__ does not see, so the tests that read its log run interpreted
# (tests/proxy/test_stream_states.py). The methods declared cpdef are called as C functions through a typed
# reference (self, H2StreamConn.stream). Interpreted runs never read this file.

from pylon.proxy.hcm cimport HcmRuntime
from pylon.proxy.router cimport MatchedRoute
from pylon.proxy.upstream.cluster cimport Cluster

cdef class Stream:
    cdef public HcmRuntime hcm
    cdef public MatchedRoute route
    cdef public Cluster cluster
    cdef public object rq_state, up_state, rs_state
    cdef public object conn, url, headers, method, is_head, http10, keep_alive, upgrade, req_chunked
    cdef public object req_length, started, body_buffer, waiting_body, body_size, host, pool
    cdef public object upstream, request_encoder, up_out, encoder, close_after, local_reply, status, flags, details
    cdef public object retries_left, retry_held, deadline, try_deadline, upstream_deadline, bytes_received
    cdef public object bytes_sent, start, last_activity, attempt_start, first_byte, authority, path, pending_local
    cdef public object transport_failure, request_id, last_host, xff, response_ops, paused_downstream
    cdef public object paused_upstream, resp_headers, stale_retried, timeout, attempts, tried_hosts, retry_priority
    cdef public object resume, filter_index, filter_timer, finish_callbacks, header_edits, upgrade_accepted
    cdef public object client_rest, tunnel_upstream, upstream_local, buffering_request, held_response, response_body
    cdef public object set_cookie, override_host, request_data_filters, response_data_filters, req_trailers
    cdef public object resp_trailers, span, body_watch, shadows, health_check, duration_deadline, arrived_grpc
    cdef public object decoder_limit, filtered_request, dynamic_metadata, typed_dynamic_metadata, header_case
    cdef public object resp_header_case, chain, request_pacer, response_pacer
    cpdef flush_upstream(self)
    cpdef _add_forwarding(self, forward, xff, xfp)
    cpdef _start_attempt(self, fresh=*)
    cpdef _on_h2_ready(self, conn)
    cpdef _arm_try_timer(self)
    cpdef _arm(self, when)
    cpdef _ends_connection(self, unread=*)
    cpdef _end_response(self)
    cpdef _upstream_done(self, now)
    cpdef _end_attempt(self, abandon)
    cpdef _finish(self, close, final=*, now=*)
    cpdef begin(self)
    cpdef on_body(self, data, filtered=*, paced=*)
    cpdef on_complete(self)
