"""How-to: writing session keys for Wireshark."""

from __future__ import annotations

import os
from typing import Any

import trio

import trio_dtlsmux


async def main(sock: trio.socket.SocketType, server: tuple[Any, ...], cafile: str) -> None:
    # Honour the variable that browsers and curl use; None keeps keys secret.
    keylog = os.environ.get("SSLKEYLOGFILE")
    context = trio_dtlsmux.client_context(cafile=cafile)
    async with trio_dtlsmux.DtlsEndpoint(sock, keylog=keylog) as endpoint:
        conn = await endpoint.connect(server, context)
        await conn.send(b"can you read this, Wireshark?")
        print(await conn.receive())
        await conn.aclose()
