"""Envoy's unified matcher API (xds.type.matcher.v3.Matcher) compiled for matching: the engine (`engine.py`),
knowing no protocol, and the data inputs its callers hand it (`http_inputs.py`, `network_inputs.py`)."""
