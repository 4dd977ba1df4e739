"""A listener's socket before it binds: the options every balancer sets the same way (TCP's, and UDP's).

Kept in one place because each balancer binds its own sockets (one per worker for the kernel's SO_REUSEPORT
balancing, one for the hand-off balancers), and a listener's socket options must not depend on which one it uses.
"""

from __future__ import annotations

import socket

#: <linux/in.h> and <linux/in6.h>: Python's socket module does not name them.
IP_FREEBIND = 15
IPV6_FREEBIND = 78


def new_listen_socket(host: str, freebind: bool = False, kind: socket.SocketKind = socket.SOCK_STREAM) -> socket.socket:
    """An unbound stream (or with `kind` SOCK_DGRAM, datagram) socket for `host`: SO_REUSEADDR on a stream socket
    (on a datagram socket it would let a second socket take the port unnoticed); IPv6 only unless `::`, as Envoy
    binds; with `freebind` (a listener's `freebind: true`), IP_FREEBIND, so the address may be one this host does
    not have (yet)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if host == "::" else 1)
        if freebind:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
    except OSError:
        sock.close()
        raise
    return sock
