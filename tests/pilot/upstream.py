"""A tiny HTTP upstream for pilot's interop tests: answers every GET with its name, the path and request headers.

Run as `python tests/pilot/upstream.py NAME PORT [CERT KEY [CLIENT_CA]]`: with a certificate and key it serves
HTTPS, with a client CA it requires a client certificate from it and names its common name in the answer
(`client`), and the SNI the client sent (`sni`).
"""

from __future__ import annotations

import json
import ssl
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    name, port = sys.argv[1], int(sys.argv[2])
    sni: dict[int, str | None] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body leave in two writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            answer = {"name": name, "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}
            if isinstance(self.connection, ssl.SSLSocket):
                peer = self.connection.getpeercert() or {}
                subject = dict(item[0] for item in peer.get("subject", ()))
                answer.update(client=subject.get("commonName"), sni=sni.get(id(self.connection)))
            body = json.dumps(answer)
            data = body.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    if len(sys.argv) > 3:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        if len(sys.argv) > 5:
            context.load_verify_locations(sys.argv[5])
            context.verify_mode = ssl.CERT_REQUIRED

        def remember_sni(connection: ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> None:
            sni[id(connection)] = server_name

        context.sni_callback = remember_sni

        class TlsServer(ThreadingHTTPServer):
            """The handshake runs in the connection's thread: a client that stalls it (or fails it) holds up no other."""

            def finish_request(self, request, client_address):  # type: ignore[no-untyped-def]
                try:
                    request = context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError):
                    return  # a refused client certificate, or a client that went away
                super().finish_request(request, client_address)

        TlsServer(("127.0.0.1", port), Handler).serve_forever()
    else:
        ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
