"""How-to: session resumption, on the server and on the client."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsConnection, DtlsEndpoint


async def serve_on(
    sockets: Sequence[Any],
    context: SSL.Context,
    handler: Callable[[DtlsConnection], Awaitable[None]],
    *,
    task_status: trio.TaskStatus[list[DtlsEndpoint]] = trio.TASK_STATUS_IGNORED,
) -> None:
    # One server context for every endpoint (an IPv4 and an IPv6 socket,
    # say): they share its ticket keys and its session cache, so a client
    # resumes on any of them.
    async with AsyncExitStack() as stack:
        endpoints = [
            await stack.enter_async_context(DtlsEndpoint(sock, server_context=context))
            for sock in sockets
        ]
        async with trio.open_nursery() as nursery:
            for endpoint in endpoints:
                await nursery.start(endpoint.serve, handler)
            task_status.started(endpoints)


def load_session(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def save_session(path: Path, session: bytes) -> None:
    # A session holds its master secret: only this user may read the file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(session)


async def connect_resuming(
    endpoint: DtlsEndpoint, server: tuple[str, int], cafile: str, saved: Path
) -> DtlsConnection:
    # The file belongs to this server (address and name) and this kind of
    # context: never offer it to another one.
    context = trio_dtlsmux.client_context(cafile=cafile)
    conn = await endpoint.connect(server, context, session=load_session(saved))
    print("resumed" if conn.session_reused else "full handshake")
    if conn.session is not None:
        save_session(saved, conn.session)
    return conn
