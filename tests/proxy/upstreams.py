"""Scriptable upstream servers for the proxy's integration tests (stdlib servers on threads).

`Upstream` is an HTTP/1.1 server; paths select behaviour:

- `/status/<code>`: answer with that status;
- `/slow/<seconds>`: read the body, wait, answer 200;
- `/reset`: close the connection without answering (RST);
- `/chunked/<n>`: a chunked response of n chunks;
- `/echo`: echo the request body (each body echoed is kept in `echoed`, once it arrived whole);
- `/bytes/<n>`: n bytes, streamed (`bytes_done` is set once all were written);
- `/sink`: read a body of any size without keeping it, answer with its size
  (`sink_bytes` grows while it reads, so a test can see streaming);
- `/flaky/<key>/<n>/<action>`: the first n requests for `key` get `<action>`
  (a status code, `reset`, or `sleep<seconds>`), later ones 200 "ok";
- `/respond?name=value&...`: 200 with those response headers;
- `/healthz`: `health_status` (settable), for active health checks;
- anything else: 200 "ok".

Setting `override_status` makes every request except `/healthz` get that status,
which lets one host of a cluster misbehave while the others are fine.
Every request's method, path, headers, serving port and client port are
recorded for assertions. `Upstream(tls=ctx)` serves HTTPS and records the SNI
and whether the client presented a certificate.

`TcpEcho` is a plain TCP echo server for the tcp_proxy tests; `ClosingUpstream` closes every connection
after a set number of complete keep-alive responses.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

from pylon.identity.certs import issue_leaf, make_ca, write_pem_files


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; Nagle would add 40 ms
    server: "_Server"

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> None:
        entry: dict[str, Any] = {
            "method": self.command, "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [(k.lower(), v) for k, v in self.headers.items()],
            "port": self.server.server_address[1],
            "client_port": self.client_address[1],
        }
        if isinstance(self.connection, ssl.SSLSocket):
            entry["sni"] = self.server.sni.get(self.client_address)
            entry["client_cert"] = self.connection.getpeercert(binary_form=True) is not None
        with self.server.lock:
            self.server.requests.append(entry)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        for k, v in items:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Served-By", str(self.server.server_address[1]))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        self.close_connection = True
        self.connection.close()

    def _sink(self) -> None:
        size = 0
        server = self.server

        def got(n: int) -> None:
            nonlocal size
            size += n
            with server.lock:
                server.sink_bytes += n

        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    self.rfile.readline()
                    break
                while n:
                    piece = len(self.rfile.read(min(n, 65536)))
                    got(piece)
                    n -= piece
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            while n:
                piece = len(self.rfile.read(min(n, 65536)))
                got(piece)
                n -= piece
        self._send(200, str(size).encode())

    def _flaky(self, key: str, count: int, action: str) -> None:
        with self.server.lock:
            seen = self.server.flaky.get(key, 0)
            self.server.flaky[key] = seen + 1
        self._body()
        if seen >= count:
            self._send(200, b"ok\n")
        elif action == "reset":
            self._reset()
        elif action.startswith("sleep"):
            time.sleep(float(action[5:]))
            self._send(200, b"slept\n")
        else:
            self._send(int(action), b"flaky %s\n" % action.encode())

    def do_GET(self) -> None:
        self._record()
        server = self.server
        split = urlsplit(self.path)
        parts = split.path.strip("/").split("/")
        kind = parts[0]
        if kind == "healthz":
            self._send(server.health_status, b"health\n")
        elif server.override_status is not None:
            self._body()
            self._send(server.override_status, b"override\n")
        elif kind == "status":
            self._body()
            self._send(int(parts[1]), b"status %s\n" % parts[1].encode())
        elif kind == "slow":
            self._body()
            time.sleep(float(parts[1]))
            self._send(200, b"slow\n")
        elif kind == "reset":
            self._reset()
        elif kind == "flaky":
            self._flaky(parts[1], int(parts[2]), parts[3])
        elif kind == "respond":
            self._body()
            self._send(200, b"respond\n", parse_qsl(split.query))
        elif kind == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(int(parts[1])):
                piece = b"chunk-%d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "echo":
            body = self._body()
            with server.lock:
                server.echoed.append(body)
            self._send(200, body, {"Content-Type": self.headers.get("Content-Type", "application/octet-stream")})
        elif kind == "bytes":
            total = int(parts[1])
            self.send_response(200)
            self.send_header("Content-Length", str(total))
            self.end_headers()
            block = b"x" * 65536
            while total > 0:
                n = min(total, len(block))
                self.wfile.write(block[:n])
                total -= n
            server.bytes_done.set()
        elif kind == "sink":
            self._sink()
        else:
            self._body()
            self._send(200, b"ok\n")

    do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # a proxy may open dozens of connections at once (HTTP/2 streams fanned out)

    def __init__(self, port: int, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.echoed: list[bytes] = []
        self.flaky: dict[str, int] = {}
        self.sink_bytes = 0
        self.bytes_done = threading.Event()
        self.health_status = 200
        self.override_status: int | None = None
        self.sni: dict[Any, str | None] = {}
        self.tls = tls
        if tls is not None:
            tls.sni_callback = self._on_sni
            self._pending_sni: str | None = None

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        self._pending_sni = name

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        if self.tls is None:
            return sock, addr
        self._pending_sni = None
        sock.settimeout(5)
        try:
            tls_sock = self.tls.wrap_socket(sock, server_side=True)  # handshake here, on the accept thread
        except (ssl.SSLError, OSError):
            sock.close()
            raise
        tls_sock.settimeout(None)
        self.sni[addr] = self._pending_sni
        return tls_sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets and refused handshakes are part of the tests


class Upstream:
    """Start with `Upstream()`, read `.port` and `.requests`, stop with `.close()`."""

    def __init__(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.server = _Server(port, tls)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self.server.lock:
            return list(self.server.requests)

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    @property
    def echoed(self) -> list[bytes]:
        with self.server.lock:
            return list(self.server.echoed)

    @property
    def health_status(self) -> int:
        return self.server.health_status

    @health_status.setter
    def health_status(self, status: int) -> None:
        self.server.health_status = status

    @property
    def override_status(self) -> int | None:
        return self.server.override_status

    @override_status.setter
    def override_status(self, status: int | None) -> None:
        self.server.override_status = status

    @property
    def sink_bytes(self) -> int:
        with self.server.lock:
            return self.server.sink_bytes

    @property
    def bytes_done(self) -> threading.Event:
        return self.server.bytes_done

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_heads(conn: socket.socket) -> Iterator[bytes]:
    """The heads of the bodiless requests a keep-alive connection sends, one at a time, until the client closes."""
    buffered = b""
    while True:
        while b"\r\n\r\n" not in buffered:
            data = conn.recv(65536)
            if not data:
                return
            buffered += data
        head, _, buffered = buffered.partition(b"\r\n\r\n")
        yield head


class TcpEcho:
    """A TCP server that echoes every byte back; `.port`, `.connections` (accepted so far), `.close()`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    try:
                        conn.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                conn.sendall(data)

    def close(self) -> None:
        self.closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class ClosingUpstream(TcpEcho):
    """Answers each request with a complete keep-alive response (no `Connection: close`), then closes
    the connection after `per_connection` responses: what a server's keep-alive limit does."""

    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"

    def __init__(self, per_connection: int = 1) -> None:
        self.per_connection = per_connection
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        with conn:
            buffered = b""
            for _ in range(self.per_connection):
                while b"\r\n\r\n" not in buffered:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffered += data
                buffered = buffered.split(b"\r\n\r\n", 1)[1]  # bodiless requests only
                conn.sendall(self.RESPONSE)


class RecordingUpstream(TcpEcho):
    """An HTTP/1.1 keep-alive server that records each connection's life: when it opened, how many requests it
    served, when it ended and who ended it (`closed_by`: "peer" when the client closed it first).

    Bodiless requests only. `GET /slow/<seconds>` waits before answering; anything else is answered at once with
    `ok`. For tests of what a proxy does with its idle upstream connections.
    """

    RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        super().__init__()

    def _echo(self, conn: socket.socket) -> None:  # type: ignore[override]
        record: dict[str, Any] = {"opened": time.monotonic(), "requests": 0, "closed": None, "closed_by": None}
        with self.lock:
            self.records.append(record)
        with conn:
            buffered = b""
            while not self.closed.is_set():
                while b"\r\n\r\n" not in buffered:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        with self.lock:
                            record["closed"], record["closed_by"] = time.monotonic(), "peer"
                        return
                    buffered += data
                head, buffered = buffered.split(b"\r\n\r\n", 1)
                target = head.split(b"\r\n", 1)[0].split(b" ")[1]
                if target.startswith(b"/slow/"):
                    time.sleep(float(target[len(b"/slow/"):]))
                with self.lock:
                    record["requests"] += 1
                try:
                    conn.sendall(self.RESPONSE)
                except OSError:
                    return

    def history(self) -> list[dict[str, Any]]:
        """A copy of every connection's record, in the order they were accepted."""
        with self.lock:
            return [dict(record) for record in self.records]


class TlsServer:
    """A TLS server for `localhost` and `a.localhost` (OpenSSL matches no wildcard over one label) that answers each connection's first line with
    `<its SNI> <the line>`: the client's handshake, and its bytes, reached it through the proxy untouched."""

    def __init__(self, directory: Path, address: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        ca = make_ca()
        self.ca_file = str(write_pem_files(directory, "ca", ca, ca).ca)
        leaf = write_pem_files(directory, "server", issue_leaf(ca, dns_names=["localhost", "a.localhost"]), ca)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(leaf.cert), str(leaf.key))
        self.context.sni_callback = self._remember
        self.names: dict[int, str] = {}
        self.sock = socket.socket()
        self.sock.bind(address)
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _remember(self, tls: ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        self.names[id(tls)] = name or ""

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), self.context.wrap_socket(conn, server_side=True) as tls:
            line = tls.recv(1024)
            tls.sendall(self.names.pop(id(tls), "").encode() + b" " + line)

    def close(self) -> None:
        self.sock.close()
