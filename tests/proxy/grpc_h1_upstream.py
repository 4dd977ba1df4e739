"""An HTTP/1.1 upstream that answers like a gRPC server would over HTTP/1.1 with trailers (tests only).

By the request path's last segment (`/ok` or `/pkg.Service/ok`): `ok`: 200, application/grpc, one framed message, chunked, trailer grpc-status 0;
`/fail`: the same with trailers grpc-status 2 and grpc-message "boom"; `/trailers-only`: 200 with grpc-status 14
in the head and no body. Every request is kept (method, path, headers in order, body) in `requests`.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

MESSAGE = b"\x0a\x05hello"  # a protobuf message: field 1, "hello"
FRAMED = b"\x00" + len(MESSAGE).to_bytes(4, "big") + MESSAGE


def _read_request(conn: socket.socket) -> dict[str, Any] | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    found = dict(headers)
    body = rest
    if found.get("transfer-encoding", "").lower() == "chunked":
        while not body.endswith(b"0\r\n\r\n"):
            body += conn.recv(65536)
        out, cursor = b"", body
        while True:
            size_line, _, cursor = cursor.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            out, cursor = out + cursor[:size], cursor[size + 2:]
        body = out
    else:
        length = int(found.get("content-length", "0"))
        while len(body) < length:
            body += conn.recv(65536)
    return {"method": method, "path": path, "headers": headers, "body": body}


def _answer(path: str) -> bytes:
    path = "/" + path.split("?")[0].rsplit("/", 1)[-1]  # by the last segment: a gRPC method's name works too
    if path.startswith("/trailers-only"):
        return b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\ncontent-length: 0\r\n\r\n"
    status, message = (b"2", b"grpc-message: boom\r\n") if path.startswith("/fail") else (b"0", b"")
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n"
            b"trailer: grpc-status\r\n\r\n" + b"%x\r\n" % len(FRAMED) + FRAMED + b"\r\n0\r\ngrpc-status: " + status
            + b"\r\n" + message + b"\r\n")


class GrpcHttp1Upstream:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    request = _read_request(conn)
                except OSError:
                    return
                if request is None:
                    return
                with self.lock:
                    self.requests.append(request)
                conn.sendall(_answer(request["path"]))

    def close(self) -> None:
        self.sock.close()
