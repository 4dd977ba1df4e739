"""A stand-in HTTP service for the proxy tests: it records every request and answers what the test decides.

Services a filter calls out to (a Lambda endpoint, an OAuth2 token endpoint, the GCE metadata server) are each a
`recording_server(answer)`: `answer(call)` gets the recorded call (method, path, headers, header_list, body) and
returns (status, headers, body); `.calls` lists the calls so far. Stop it with `stop(server)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: answer(call) -> (status, response headers, body)
Answer = Callable[[dict[str, Any]], tuple[int, list[tuple[str, str]], bytes]]


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        header_list = [(k.lower(), v) for k, v in self.headers.items()]
        call = {"method": self.command, "path": self.path, "headers": dict(header_list), "header_list": header_list,
                "body": body}
        with self.server.lock:
            self.server.calls.append(call)
        status, headers, answer = self.server.answer(call)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_POST = do_PUT = do_GET


def recording_server(answer: Answer) -> Any:
    """A started server on a free loopback port (`.server_address[1]`), recording into `.calls`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.calls, server.lock, server.answer = [], threading.Lock(), answer  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def stop(server: Any) -> None:
    server.shutdown()
    server.server_close()
