"""Tutorial, step 3: an echo server that forgets peers that went quiet."""

from __future__ import annotations

import trio

import trio_dtlsmux

PORT = 4433


async def echo(conn: trio_dtlsmux.DtlsConnection) -> None:
    try:
        async for message in conn:
            await conn.send(message)
    except trio_dtlsmux.ConnectionTimedOut:
        print(f"{conn.peer_address} went quiet and was dropped")
    except trio_dtlsmux.PeerRestarted:
        print(f"{conn.peer_address} started over with a new handshake")
    else:
        print(f"{conn.peer_address} closed the connection")


async def main(
    sock: trio.socket.SocketType,
    certfile: str,
    keyfile: str,
    *,
    idle_timeout: float = 60,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    context = trio_dtlsmux.server_context(certfile, keyfile)
    async with trio_dtlsmux.DtlsEndpoint(
        sock,
        server_context=context,
        idle_timeout=idle_timeout,  # forget a peer after this long without a word
        handshake_timeout=10,  # give up on a handshake that stalls
    ) as endpoint:
        await endpoint.serve(echo, task_status=task_status)


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", PORT))
    await main(sock, "cert.pem", "key.pem")


if __name__ == "__main__":
    trio.run(run)
