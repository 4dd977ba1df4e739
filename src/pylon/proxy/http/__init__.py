"""HTTP codecs: wire bytes in, stream events out; a stream's response in, wire bytes out.

A codec owns everything one protocol version decides on its own (framing,
persistence, informational responses); the active stream (`pylon.proxy.stream`)
routes and relays without knowing which version carries it. HTTP/1.1 is
`h1_server`; an HTTP/2 codec plugs in beside it.
"""
