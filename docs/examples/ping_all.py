"""Tutorial, step 2: one client socket, many servers at once.

One endpoint holds a connection to each server; every connection has its
own task, and all of them share the endpoint's single UDP socket.
"""

from __future__ import annotations

from typing import Any

import trio

import trio_dtlsmux


async def ping(
    endpoint: trio_dtlsmux.DtlsEndpoint,
    server: tuple[Any, ...],
    context: Any,
    results: dict[tuple[Any, ...], float],
) -> None:
    conn = await endpoint.connect(server, context)
    started = trio.current_time()
    await conn.send(b"ping")
    await conn.receive()
    results[server] = trio.current_time() - started
    await conn.aclose()


async def main(
    sock: trio.socket.SocketType, servers: list[tuple[Any, ...]], cafile: str
) -> dict[tuple[Any, ...], float]:
    context = trio_dtlsmux.client_context(cafile=cafile)
    results: dict[tuple[Any, ...], float] = {}
    async with (
        trio_dtlsmux.DtlsEndpoint(sock) as endpoint,
        trio.open_nursery() as nursery,
    ):
        for server in servers:
            nursery.start_soon(ping, endpoint, server, context, results)
    for server, seconds in sorted(results.items()):
        print(f"{server}: {seconds * 1000:.1f} ms")
    return results


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    servers = [("127.0.0.1", port) for port in (4433, 4434, 4435)]
    await main(sock, servers, "cert.pem")


if __name__ == "__main__":
    trio.run(run)
