# Cython's view of router.py (pylon.compiled): compiled, a matched route is an extension type whose attributes are C
# fields, and Stream's `route` is declared with its type (stream.pxd), so the dozen settings a request reads from its
# route come from the struct without a look-up. Every name of its __slots__ is declared here (tests/compiled checks
# it). Interpreted runs never read this file.

cdef class MatchedRoute:
    cdef public object name, virtual_host_name, kind, cluster, timeout, idle_timeout, retry, expected_timeout_header
    cdef public object attempt_count, grpc_timeout, stream_duration, hash_policies, host_rewrite, direct_status
    cdef public object direct_body, redirect_status, request_header_ops, response_header_ops, rewrites, _matched_len
    cdef public object _prefix_rewrite, _regex_rewrite, _substitution, _weights, _cumulative, _total_weight, _random
    cdef public object _redirect, _picker, _cluster_ops, filter_configs, filter_levels, cors_policies, decorator
    cdef public object mirrors, upgrades, subset_criteria, _cluster_criteria, connect_terminate, post_terminate
    cdef public object metadata, virtual_host_metadata, rate_limits, virtual_host_rate_limits
    cdef public object include_vh_rate_limits, cluster_variants, disabled_filters, all_levels, no_cluster_reply
