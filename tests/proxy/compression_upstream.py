"""An upstream for the compression tests: text bodies of a chosen size and headers, and a recorder of requests.

- `GET|HEAD /text/<n>?name=value&...`: 200 with n bytes of compressible text and those headers (a
  `content-length` unless `chunked=1`, then chunked in pieces of 1,000 bytes; gzipped with `gzip=1`);
- `/status/<code>?...`: that status, with a text body unless 204 or 304;
- `/record`: keeps the request (its headers and its body, de-chunked) and answers 200 "recorded".

A first path segment other than these is skipped (`/off/text/10`). `text(n)` is the body `/text/<n>` sends,
for comparing what a client decompresses.
"""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def text(size: int) -> bytes:
    line = b"pylon compresses this line much as Envoy does, again and again.\n"
    return (line * (size // len(line) + 1))[:size]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: "CompressionUpstream"

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0], 16)) != 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        parts = split.path.strip("/").split("/")
        parts = parts[1:] if parts[0] not in ("record", "status", "text") else parts  # a route's prefix first
        query = dict(parse_qsl(split.query))
        body = self._body()
        if parts[0] == "record":
            with self.server.lock:
                self.server.requests.append({"headers": [(k.lower(), v) for k, v in self.headers.items()],
                                             "body": body})
            status, payload = 200, b"recorded"
        elif parts[0] == "status":
            status = int(parts[1])
            payload = b"" if status in (204, 304) else text(200)
        else:
            status, payload = 200, text(int(parts[1]) if len(parts) > 1 else 1000)
        chunked = query.pop("chunked", None) == "1"
        if query.pop("gzip", None) == "1":
            payload = gzip.compress(payload)
            query["content-encoding"] = "gzip"
        self.send_response(status)
        for name, value in query.items():
            self.send_header(name, value)
        if status not in (204, 304):
            self.send_header("Transfer-Encoding" if chunked else "Content-Length",
                             "chunked" if chunked else str(len(payload)))
        self.end_headers()
        if self.command == "HEAD" or status in (204, 304):
            return
        if not chunked:
            self.wfile.write(payload)
            return
        for start in range(0, len(payload), 1000):
            piece = payload[start:start + 1000]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self.wfile.write(b"0\r\n\r\n")

    do_POST = do_PUT = do_HEAD = do_GET


class CompressionUpstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.port = self.server_address[1]
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
