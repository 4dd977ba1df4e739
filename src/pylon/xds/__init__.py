"""pylon's xDS client: ADS (state of the world) over grpcio, feeding the supervisor's DynamicConfig.

Sans-IO pieces (`resources.py`: protobuf -> config model; `subscription.py`:
per-type versions, nonces, ACK/NACK requests; `backoff.py`) are tested
without sockets; `client.py` only moves messages between grpcio and them.
"""
