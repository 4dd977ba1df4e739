"""Transport sockets (`envoy.transport_sockets.*`) beyond raw_buffer and TLS, which the core has; how one that wraps
another registers: `pylon.proxy.tap_socket`."""
