"""Tutorial, step 1: a client for the echo server.

Run ``python echo_client.py`` while ``echo_server.py`` is running.
"""

from __future__ import annotations

from typing import Any

import trio

import trio_dtlsmux

SERVER = ("127.0.0.1", 4433)


async def main(
    sock: trio.socket.SocketType, server: tuple[Any, ...], cafile: str
) -> list[bytes]:
    context = trio_dtlsmux.client_context(cafile=cafile)
    replies = []
    async with trio_dtlsmux.DtlsEndpoint(sock) as endpoint:
        conn = await endpoint.connect(server, context)
        print(f"connected: {conn.version}, {conn.cipher}")
        for text in ["hello", "over", "DTLS"]:
            await conn.send(text.encode())
            reply = await conn.receive()
            print(f"sent {text!r}, got {reply!r}")
            replies.append(reply)
        await conn.aclose()
    return replies


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    await main(sock, SERVER, "cert.pem")


if __name__ == "__main__":
    trio.run(run)
