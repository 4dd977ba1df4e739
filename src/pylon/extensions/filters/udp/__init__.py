"""UDP listener filters (`envoy.filters.udp_listener`); what one is and how it registers: `pylon.proxy.filters.udp`."""
