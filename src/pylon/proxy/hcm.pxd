# Cython's view of hcm.py (pylon.compiled): compiled, the connection manager's runtime and HttpConnection are
# extension types whose attributes are C fields. A connection's `hcm` is declared as HcmRuntime (so are Stream's and
# H2StreamConn's, whose .pxd files cimport it), so the settings and counters a request reads come straight from the
# struct. Every name of each class's __slots__ is declared here (tests/compiled checks it). Interpreted runs never
# read this file.

from pylon.stats.store cimport Counter, Gauge, Histogram

cdef class HcmRuntime:
    cdef public Counter cx_destroy, cx_http2_total, cx_idle_timeout, cx_max_duration, cx_overload_disable_keepalive
    cdef public Counter cx_protocol_error, cx_rx_bytes, cx_total, cx_tx_bytes, dropped_underscores, no_route
    cdef public Counter cx_http1_total, cx_ssl_total, cx_destroy_local, cx_destroy_remote, cx_delayed_close_timeout
    cdef public Counter cx_destroy_remote_active_rq, no_cluster, routed
    cdef public Counter rejected_underscores
    cdef public Counter rq_completed, rq_direct_response, rq_header_timeout, rq_http2_total, rq_idle_timeout
    cdef public Counter rq_max_duration, rq_overload_close, rq_redirect, rq_rx_reset, rq_timeout, rq_too_large
    cdef public Counter rq_tx_reset
    cdef public Counter rq_total, rs_too_large, upgrades_total
    cdef public Gauge cx_active, cx_http2_active, rq_active, upgrades_active, cx_http1_active, cx_ssl_active
    cdef public Histogram rq_time, cx_length_ms
    cdef public object accept_http_10, access_loggers, always_set_request_id, body_decoders, body_encoders
    cdef public object buffer_limit, cert_details, chain_views, clusters, config, data_decoders, data_encoders
    cdef public object decoder_filters, default_host_for_http_10, delayed_close_timeout, drain_timeout
    cdef public object dynamic_stats, enable_trailers, encoder_filters, escaped_slashes, first_stream_timeout
    cdef public object generate_request_id, h2, host_labels, idle_timeout, local_reply_mapper, local_server_name
    cdef public object local_uri_sans
    cdef public object max_connection_duration, max_header_bytes, max_headers_count, max_stream_duration
    cdef public object merge_slashes, network_filters, normalize_path, overload, overwrite_server, path_options
    cdef public object peer_check, pools, replace_client_request_id, request_case, request_headers_timeout
    cdef public object request_timeout, response_drop, response_key_format, route_table
    cdef public object scheme_to_overwrite, server_if_absent, server_name, stream_idle_timeout
    cdef public object suppress_envoy_headers, tls_stats
    cdef public object tracer, trailer_decoders, trailer_encoders, underscores, upgrade_types, upstream_filters
    cdef public dict rq_by_class, listener_rq_by_class
    cdef public Counter listener_rq_completed
    cdef public object use_remote_address, user_agent_edits, via, worker, xfcc_mode, xff_num_trusted_hops
    cpdef list response_fields(self, headers)
    cpdef count_completed(self, status)

cdef class HttpConnection:
    cdef public HcmRuntime hcm
    cdef public object worker, loop, transport, decoder, active, queue, closed, draining, peer, peer_ip, local
    cdef public object scheme, feeding, last_activity, connection_id, loop_time, runtime_listener, wake_at, deadlines
    cdef public object read_budget, parked, client_cert, opened_at, drain_close_at, detected, info, xff_ip, encoder
    cdef public object batch, held, tx_bytes
    cdef public bint codec_counted, peer_closed
