"""How-to: agreeing on an application protocol with ALPN."""

from __future__ import annotations

from typing import Any

import trio_dtlsmux


def server_side(identity: trio_dtlsmux.SelfSigned) -> Any:
    # Most preferred first; the first of these that the client offers wins.
    return trio_dtlsmux.server_context(identity, alpn=["myproto/2", "myproto/1"])


def client_side(fingerprint: str) -> Any:
    return trio_dtlsmux.client_context(
        fingerprint=fingerprint, alpn=["myproto/1", "myproto/2"]
    )


async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
    if conn.alpn_protocol == b"myproto/2":
        async for message in conn:
            await conn.send(b"v2:" + message)
    elif conn.alpn_protocol == b"myproto/1":
        async for message in conn:
            await conn.send(b"v1:" + message)
    else:
        # No overlap (or the client offered nothing): the handshake still
        # succeeded, and it is up to us to refuse.
        await conn.aclose()
