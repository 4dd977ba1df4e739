# Cython's view of hcm.py (pylon.compiled): compiled, the connection manager's runtime and HttpConnection are
# extension types whose attributes are C fields. A connection's `hcm` is declared as HcmRuntime (so are Stream's and
# H2StreamConn's, whose .pxd files cimport it), so the settings and counters a request reads come straight from the
# struct. Every name of each class's __slots__ is declared here (tests/compiled checks it). Interpreted runs never
# read this file.

cdef class HcmRuntime:
    cdef public object accept_http_10, access_loggers, always_set_request_id, body_decoders
    cdef public object body_encoders, buffer_limit, cert_details, chain_views, clusters, config
    cdef public object cx_active, cx_destroy, cx_http2_active, cx_http2_total, cx_idle_timeout
    cdef public object cx_max_duration, cx_overload_disable_keepalive, cx_protocol_error, cx_total
    cdef public object data_decoders, data_encoders, decoder_filters, default_host_for_http_10
    cdef public object delayed_close_timeout, drain_timeout, dropped_underscores, dynamic_stats
    cdef public object enable_trailers, encoder_filters, escaped_slashes, first_stream_timeout
    cdef public object generate_request_id, h2, host_labels, idle_timeout, local_reply_mapper
    cdef public object local_uri_sans, max_connection_duration, max_header_bytes, max_headers_count
    cdef public object max_stream_duration, merge_slashes, network_filters, no_route
    cdef public object normalize_path, overload, overwrite_server, path_options, peer_check, pools
    cdef public object rejected_underscores, replace_client_request_id, request_case
    cdef public object request_headers_timeout, request_timeout, response_drop, response_key_format
    cdef public object route_table, rq_active, rq_by_class, rq_completed, rq_direct_response
    cdef public object rq_header_timeout, rq_http2_total, rq_idle_timeout, rq_max_duration
    cdef public object rq_overload_close, rq_redirect, rq_rx_reset, rq_time, rq_timeout
    cdef public object rq_too_large, rq_total, rs_too_large, scheme_to_overwrite, server_name
    cdef public object stream_idle_timeout, suppress_envoy_headers, tls_stats, tracer
    cdef public object trailer_decoders, trailer_encoders, underscores, upgrade_types
    cdef public object upgrades_active, upgrades_total, upstream_filters, use_remote_address
    cdef public object user_agent_edits, via, worker, xfcc_mode, xff_num_trusted_hops

cdef class HttpConnection:
    cdef public HcmRuntime hcm
    cdef public object worker, loop, transport, decoder, active, queue, closed, draining, peer, peer_ip, local
    cdef public object scheme, feeding, last_activity, connection_id, loop_time, runtime_listener, wake_at, deadlines
    cdef public object read_budget, parked, client_cert, opened_at, drain_close_at, detected, info, xff_ip, encoder
    cdef public object batch, held
