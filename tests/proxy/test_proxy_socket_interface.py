"""Integration: the DefaultSocketInterface bootstrap extension (Envoy's docs' io_uring.yaml shape), through pylon
and Envoy 1.40 alike: both serve on the kernel's sockets (Envoy falls back to them where io_uring is not there;
pylon always, and says so at start)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from tests.conftest import free_port
from tests.proxy.conftest import RunningProxy, http_listener

EXTENSION = {"bootstrap_extensions": [{
    "name": "envoy.extensions.network.socket_interface.default_socket_interface",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.network.socket_interface.v3.DefaultSocketInterface",
                     "io_uring_options": {"io_uring_size": 300}}}],
    "default_socket_interface": "envoy.extensions.network.socket_interface.default_socket_interface"}


def test_io_uring_options_serve_on_default_sockets(implementation: str, run_proxy: Callable[..., RunningProxy]) -> None:
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    proxy = run_proxy([http_listener("main", free_port(), routes)], [], implementation=implementation,
                      bootstrap_extra=EXTENSION)
    reply = httpx.get(proxy.url("main", "/"))
    assert (reply.status_code, reply.text) == (200, "ok")
