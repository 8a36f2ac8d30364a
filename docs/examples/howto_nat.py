"""How-to: keeping a connection alive through a NAT."""

from __future__ import annotations

import trio

import trio_dtlsmux

PING = b"\x00"  # our application's keepalive message; never a real request


async def keep_alive(conn: trio_dtlsmux.DtlsConnection, every: float = 15.0) -> None:
    """Client side: send PING whenever nothing was sent for ``every`` seconds."""
    while True:
        sent = conn.statistics().messages_out
        await trio.sleep(every)
        if conn.statistics().messages_out == sent:
            await conn.send(PING)


async def server_handler(conn: trio_dtlsmux.DtlsConnection) -> None:
    async for message in conn:
        # Answering PING keeps the client's idle timer fresh as well as ours.
        await conn.send(message)


async def receive(conn: trio_dtlsmux.DtlsConnection) -> bytes:
    """Client side: the next message that is not the answer to a PING."""
    while True:
        message = await conn.receive()
        if message != PING:
            return message
