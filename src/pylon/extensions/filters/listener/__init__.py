"""Listener filters (`envoy.filters.listener`); what one is and how it registers: `pylon.proxy.filters.listener`."""
