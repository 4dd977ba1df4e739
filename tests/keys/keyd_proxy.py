"""A TLS server process using the keyd provider, for tests that inspect a separate process.

Usage: python -m tests.keys.keyd_proxy CERT SOCKET KEY_ID — prints the port, serves until killed.
"""

from __future__ import annotations

import asyncio
import sys

from tests.keys.conftest import provider_tls, serve
from pylon.keys.config import KEYD_TYPE_URL


class _Files:
    def __init__(self, cert: str) -> None:
        self.cert = cert


async def main(cert: str, socket_path: str, key_id: str) -> None:
    provider = {"provider_name": "keyd",
                "typed_config": {"@type": KEYD_TYPE_URL, "socket_path": socket_path, "key_id": key_id}}
    server, port = await serve(provider_tls(_Files(cert), provider))
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
