"""The host's own address as Envoy names it (`Network::Utility::getLocalAddress`), for x-forwarded-for.

With `use_remote_address` (always, on the admin endpoint) Envoy appends the client's
address to x-forwarded-for, except for a loopback client: a loopback address means
nothing to whoever reads the header, so Envoy appends this host's address instead
(observed with Envoy 1.40: a request from 127.0.0.1 gets `x-forwarded-for: 192.0.2.2`,
the address of eth0). That address is the first IPv4 address of a non-loopback
interface, in interface order, else 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import functools
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915  # Linux: an interface's (primary) IPv4 address


@functools.cache
def envoy_local_address() -> str:
    """This host's first non-loopback IPv4 address (interface order), or 127.0.0.1; looked up once."""
    try:
        interfaces = socket.if_nameindex()
    except OSError:
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in sorted(interfaces):
            try:
                reply = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on this interface
            address = socket.inet_ntoa(reply[20:24])
            if not ipaddress.ip_address(address).is_loopback:
                return address
    return "127.0.0.1"


def forwarded_for_entry(peer_ip: str) -> str:
    """What Envoy appends to x-forwarded-for for a client at `peer_ip` (its own address for a loopback one)."""
    try:
        loopback = ipaddress.ip_address(peer_ip).is_loopback
    except ValueError:
        return peer_ip
    return envoy_local_address() if loopback else peer_ip
