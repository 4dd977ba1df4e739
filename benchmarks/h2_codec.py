"""The HTTP/2 codec alone: requests per second between a client session and a server session, in process.

No sockets and no proxy: a client `H2Connection` submits GETs ten at a time,
the bytes go to a server `H2Connection` whose owner answers each with a 200,
three headers and "hello\\n", and the answers go back; the client owner counts
closed streams. The client's bytes are recorded and replayed into a fresh
server session for a second figure, the server side alone (what a proxy's
downstream pays). This is the codec-only figure of mesh-facts B4 ("API mode
110.7k/s, 10 requests per feed"), measured for pylon's own binding, which adds
the owner calls, header lists and flow-control accounting a proxy needs. CPU
time of this process, not wall time: the machine is shared. One
sanity figure, printed; nothing is written to benchmarks/results.

Usage: python benchmarks/h2_codec.py [--requests 200000] [--batch 10] [--reps 3]
"""

from __future__ import annotations

import argparse
import time

from pylon.proxy.http.h2_session import H2Connection

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"127.0.0.1"), (b":path", b"/"),
           (b"user-agent", b"h2load"), (b"accept", b"*/*")]  # fmt: skip
RESPONSE = [(b":status", b"200"), (b"content-length", b"6"), (b"content-type", b"text/plain"), (b"server", b"pylon")]


class ServerOwner:
    def __init__(self) -> None:
        self.conn: H2Connection

    def on_headers(self, stream_id, headers, end_stream) -> None:  # type: ignore[no-untyped-def]
        self.conn.send_response(stream_id, RESPONSE)
        self.conn.send_data(stream_id, b"hello\n", end_stream=True)

    def on_data(self, stream_id, data) -> None:  # type: ignore[no-untyped-def]
        self.conn.consume(stream_id, len(data))

    def on_trailers(self, stream_id, trailers) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_end_stream(self, stream_id) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_stream_closed(self, stream_id, error_code) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_goaway(self, last_stream_id, error_code) -> None:  # type: ignore[no-untyped-def]
        pass


class ClientOwner(ServerOwner):
    def __init__(self) -> None:
        self.done = 0

    def on_headers(self, stream_id, headers, end_stream) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_stream_closed(self, stream_id, error_code) -> None:  # type: ignore[no-untyped-def]
        self.done += 1


def run(requests: int, batch: int, record: list[bytes]) -> float:
    """CPU seconds for `requests` GETs, `batch` per round trip; the client's bytes are appended to `record`."""
    so, co = ServerOwner(), ClientOwner()
    srv = so.conn = H2Connection(so, server=True)
    cli = co.conn = H2Connection(co, server=False)
    record.append(cli.data_to_send())
    srv.receive(record[-1])
    cli.receive(srv.data_to_send())
    start = time.process_time()
    for _ in range(requests // batch):
        for _ in range(batch):
            cli.send_request(REQUEST, end_stream=True)
        record.append(cli.data_to_send())
        srv.receive(record[-1])
        cli.receive(srv.data_to_send())
    elapsed = time.process_time() - start
    assert co.done == requests // batch * batch, co.done
    return elapsed


def server_only(record: list[bytes]) -> float:
    """CPU seconds for a fresh server session to parse `record` and frame its answers."""
    so = ServerOwner()
    srv = so.conn = H2Connection(so, server=True)
    srv.receive(record[0])
    srv.data_to_send()
    start = time.process_time()
    for chunk in record[1:]:
        srv.receive(chunk)
        srv.data_to_send()
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    record: list[bytes] = []
    both = [args.requests / run(args.requests, args.batch, record if not i else []) for i in range(args.reps)]
    server = [args.requests / server_only(record) for _ in range(args.reps)]
    for name, rates in (("client+server", both), ("server alone", server)):
        best = max(rates)
        shown = ", ".join(f"{r / 1000:.1f}k" for r in rates)
        print(f"{name}, {args.batch} requests per feed: {shown} req per CPU-second "
              f"(best {best / 1000:.1f}k/s, {1e6 / best:.1f} us per request)")
    print("mesh-facts B4, codec only, API mode: 110.7k/s")


if __name__ == "__main__":
    main()
