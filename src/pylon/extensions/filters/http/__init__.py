"""HTTP filters (`envoy.filters.http`); what one is and how it registers: `pylon.proxy.filters.http`."""
