"""Tutorial, step 2: a chat client that prints what the room says.

Start ``chat_server.py``, then run several of these in different terminals:
``python chat_client.py alice``, ``python chat_client.py bob``, ...
Each line you type goes to everyone else.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable
from typing import Any

import trio

import trio_dtlsmux

SERVER = ("127.0.0.1", 4433)


async def print_incoming(
    conn: trio_dtlsmux.DtlsConnection, heard: list[bytes]
) -> None:
    async for message in conn:
        print(message.decode(errors="replace"))
        heard.append(message)


async def main(
    sock: trio.socket.SocketType,
    server: tuple[Any, ...],
    cafile: str,
    name: str,
    lines: AsyncIterable[str],
) -> list[bytes]:
    context = trio_dtlsmux.client_context(cafile=cafile)
    heard: list[bytes] = []
    async with trio_dtlsmux.DtlsEndpoint(sock) as endpoint:
        conn = await endpoint.connect(server, context)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(print_incoming, conn, heard)
            async for line in lines:
                await conn.send(f"{name}: {line}".encode())
            nursery.cancel_scope.cancel()
        await conn.aclose()
    return heard


async def keyboard() -> AsyncIterable[str]:
    stdin = trio.wrap_file(sys.stdin)
    async for line in stdin:
        yield line.rstrip("\n")


async def run(name: str) -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    await main(sock, SERVER, "cert.pem", name, keyboard())


if __name__ == "__main__":
    trio.run(run, sys.argv[1] if len(sys.argv) > 1 else "anonymous")
