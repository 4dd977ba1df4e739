"""Integration: pylon.filters.http.python - a filter in plain Python, loaded from a file, reloaded when it changes.

The same script is the running example of the filter's API: it reads the request and its connection,
changes request headers the upstream then sees, answers some requests itself, and marks every response
(local replies too). A script that raises fails its request closed (500); a new version of the file is
picked up while the proxy serves; a version that does not load leaves the old code running.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.proxy.conftest import ProxyLauncher, RunningProxy, http_listener, route, static_cluster, wait_until
from tests.proxy.upstreams import Upstream

PYTHON_TYPE = "type.googleapis.com/pylon.filters.http.v1.Python"

SCRIPT = '''
def on_request(request):
    if request.path.startswith("/blocked"):
        request.respond(403, "blocked by python", {"x-reason": request.config["reason"]})
        return
    if request.path.startswith("/boom"):
        raise RuntimeError("a bug in the filter")
    if request.path.startswith("/framing"):
        request.headers.set("content-length", "0")
    request.headers.set("x-peer", request.connection.remote_address[0])
    request.headers.set("x-seen-method", request.method)
    request.headers.remove("x-secret")
    request.log.info("passed %s", request.path)


def on_response(response):
    response.headers.set("x-python", "v1:%d" % response.status)
'''


def write_atomically(path: Path, text: str) -> None:
    """Write then rename, as an editor or a deployment does; bump the mtime so a same-size edit is seen."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(textwrap.dedent(text))
    os.replace(temporary, path)
    stamp = time.time() + 1
    os.utime(path, (stamp, stamp))


def start(launcher: ProxyLauncher, upstream: Upstream, script: Path) -> RunningProxy:
    python_filter = {"name": "example.python", "typed_config": {
        "@type": PYTHON_TYPE, "path": str(script), "config": {"reason": "policy"}, "check_interval": "0.1s"}}
    listener = http_listener("main", free_port(), [route("/", "up")])
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, python_filter)
    return launcher.start([listener], [static_cluster("up", [upstream.port])])


@pytest.fixture
def running(tmp_path: Path, launcher: ProxyLauncher) -> Any:
    upstream = Upstream()
    script = tmp_path / "example_filter.py"
    write_atomically(script, SCRIPT)
    try:
        yield start(launcher, upstream, script), upstream, script
    finally:
        upstream.close()


def test_the_script_changes_requests_and_responses(running: Any) -> None:
    proxy, upstream, _ = running
    reply = httpx.get(proxy.url("main", "/hello"), headers={"x-secret": "s3cret"}, timeout=5)
    assert reply.status_code == 200 and reply.headers["x-python"] == "v1:200"
    seen = upstream.requests[-1]["headers"]
    assert seen["x-peer"] == "127.0.0.1" and seen["x-seen-method"] == "GET" and "x-secret" not in seen


def test_the_script_answers_locally_and_its_reply_passes_on_response(running: Any) -> None:
    proxy, upstream, _ = running
    before = len(upstream.requests)
    reply = httpx.get(proxy.url("main", "/blocked"), timeout=5)
    assert (reply.status_code, reply.text, reply.headers["x-reason"]) == (403, "blocked by python", "policy")
    assert reply.headers["x-python"] == "v1:403"
    assert len(upstream.requests) == before  # the upstream was never asked
    assert proxy.stats()["http.main.python.local_replies"] == 1


def test_an_exception_fails_the_request_closed(running: Any) -> None:
    proxy, upstream, _ = running
    before = len(upstream.requests)
    assert httpx.get(proxy.url("main", "/boom"), timeout=5).status_code == 500
    # Framing headers are the connection manager's: a filter changing them is an error, not a smuggling tool.
    assert httpx.get(proxy.url("main", "/framing"), timeout=5).status_code == 500
    assert len(upstream.requests) == before
    assert proxy.stats()["http.main.python.errors"] == 2


def test_a_changed_file_is_reloaded_and_a_broken_one_keeps_the_old_code(running: Any) -> None:
    proxy, _, script = running
    write_atomically(script, SCRIPT.replace('"v1:%d"', '"v2:%d"'))
    assert wait_until(lambda: httpx.get(proxy.url("main", "/x"), timeout=5).headers.get("x-python") == "v2:200")
    assert proxy.stats()["http.main.python.reloaded"] == 1
    write_atomically(script, "def on_request(request)\n    return\n")  # a syntax error
    assert wait_until(lambda: proxy.stats().get("http.main.python.reload_failed", 0) == 1)
    assert httpx.get(proxy.url("main", "/x"), timeout=5).headers["x-python"] == "v2:200"


def test_a_script_that_does_not_load_is_a_config_error_naming_the_field(tmp_path: Path, launcher: ProxyLauncher) -> None:
    script = tmp_path / "broken.py"
    write_atomically(script, "x = 1\n")  # no hook
    with pytest.raises(RuntimeError, match=r"http_filters\[0\]\.typed_config\.path: .*defines none of on_request"):
        start(launcher, Upstream(), script)
