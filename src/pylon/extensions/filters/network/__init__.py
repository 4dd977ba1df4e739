"""Network filters (`envoy.filters.network`); what one is and how it registers: `pylon.proxy.filters.network`."""
