# Cython's view of cluster.py (pylon.compiled): compiled, a cluster and its stats are extension types whose
# attributes are C fields, so the data path's `cluster.stats.upstream_rq_active` (a typed Stream.cluster, stream.pxd)
# reads two struct fields and bumps a third, without a dictionary or descriptor look-up. Every name of each class's
# __slots__ is declared here (tests/compiled checks it). Interpreted runs never read this file.

from pylon.proxy.upstream.circuit cimport CircuitBreakers
from pylon.stats.store cimport Counter, Gauge, Histogram

cdef class InternalStats:
    cdef public object _store, _prefix, _time
    cdef public dict _by_status

cdef class ClusterStats:
    cdef public Counter upstream_rq_total, upstream_rq_1xx, upstream_rq_2xx, upstream_rq_3xx, upstream_rq_4xx
    cdef public Counter upstream_rq_5xx, upstream_rq_retry, upstream_rq_timeout, upstream_rq_per_try_timeout
    cdef public Counter upstream_rq_max_duration_reached, upstream_rq_pending_total, upstream_rq_pending_overflow
    cdef public Counter upstream_rq_retry_overflow, upstream_cx_total, upstream_cx_http1_total
    cdef public Counter upstream_cx_http2_total, upstream_cx_connect_fail, upstream_cx_connect_timeout
    cdef public Counter upstream_cx_destroy, upstream_cx_overflow
    cdef public Counter upstream_cx_idle_timeout, upstream_cx_max_requests, upstream_cx_max_duration_reached
    cdef public Counter upstream_cx_protocol_error, upstream_cx_none_healthy, membership_change
    cdef public Counter original_dst_host_invalid, upstream_cx_rx_bytes_total, upstream_cx_tx_bytes_total
    cdef public Counter upstream_rq_completed, upstream_rq_pending_failure_eject, upstream_rq_retry_limit_exceeded
    cdef public Counter upstream_rq_retry_backoff_exponential, upstream_rq_retry_success
    cdef public Gauge upstream_cx_active, upstream_rq_active, upstream_rq_pending_active, membership_healthy
    cdef public Gauge membership_total, membership_degraded
    cdef public Histogram upstream_rq_time, upstream_rq_per_cx, upstream_cx_connect_ms, upstream_cx_length_ms
    cdef public object _store, _prefix
    cdef public dict _by_class, _by_code
    cdef public InternalStats _internal
    cdef public object _external_time_shown
    cpdef count_response(self, status, internal=*)
    cpdef record_time(self, ms, internal=*)

cdef class Cluster:
    cdef public ClusterStats stats
    cdef public CircuitBreakers circuit_breakers
    cdef public object _by_address, _cleanup_timer, _dns, _resolved, _tasks, _used, alpn_configured
    cdef public object any_proxy_protocol, auto_sni, choose_host, cleanup_interval, config, connect_timeout
    cdef public object connection_limits, dst_header, dst_port, h2_settings, health_checker, hosts, keepalive, lb
    cdef public object match_proxy_protocols, name, on_hosts_removed, original_dst, outlier, plain_pools, protocol
    cdef public object provided, proxy_protocol, request_key_format, response_case, socket_matches, source, subsets
    cdef public object tap, tls, upstream_filters, upstream_trailers, worker_id
