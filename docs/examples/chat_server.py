"""Tutorial, step 2: a chat room, one task per peer on one socket.

Every message a peer sends is passed on to every other peer in the room.
"""

from __future__ import annotations

import trio

import trio_dtlsmux

PORT = 4433


class Room:
    def __init__(self) -> None:
        self.members: set[trio_dtlsmux.DtlsConnection] = set()

    async def join(self, conn: trio_dtlsmux.DtlsConnection) -> None:
        self.members.add(conn)
        try:
            async for message in conn:
                await self.broadcast(conn, message)
        finally:
            self.members.discard(conn)

    async def broadcast(
        self, sender: trio_dtlsmux.DtlsConnection, message: bytes
    ) -> None:
        host, port = sender.peer_address[:2]
        line = f"{host}:{port}: ".encode() + message
        for member in list(self.members):
            if member is sender:
                continue
            # A message must fit in one record; cut what does not fit.
            payload = line[: member.get_cleartext_mtu()]
            try:
                await member.send(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # That member is gone; its own task will notice and leave.
                self.members.discard(member)


async def report(endpoint: trio_dtlsmux.DtlsEndpoint, every: float = 10) -> None:
    while True:
        await trio.sleep(every)
        stats = endpoint.statistics()
        print(
            f"{stats.peers} peers, {stats.handshakes_completed} handshakes, "
            f"{stats.peers_reaped} reaped, {stats.junk_dropped} junk datagrams"
        )


async def main(
    sock: trio.socket.SocketType,
    certfile: str,
    keyfile: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    context = trio_dtlsmux.server_context(certfile, keyfile)
    room = Room()
    async with (
        trio_dtlsmux.DtlsEndpoint(sock, server_context=context) as endpoint,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(report, endpoint)
        await nursery.start(endpoint.serve, room.join)
        task_status.started()


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", PORT))
    await main(sock, "cert.pem", "key.pem")


if __name__ == "__main__":
    trio.run(run)
