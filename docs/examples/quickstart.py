"""The example on the front page: an echo server and a client in one program."""

import trio

import trio_dtlsmux


async def echo(conn):
    async for message in conn:
        await conn.send(message)


async def main():
    identity = trio_dtlsmux.self_signed()  # throwaway certificate, in memory
    server_sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await server_sock.bind(("127.0.0.1", 0))
    client_sock = trio.socket.socket(type=trio.socket.SOCK_DGRAM)
    await client_sock.bind(("127.0.0.1", 0))
    server_ctx = trio_dtlsmux.server_context(identity)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
    async with (
        trio_dtlsmux.DtlsEndpoint(server_sock, server_context=server_ctx) as server,
        trio_dtlsmux.DtlsEndpoint(client_sock) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo)
        conn = await client.connect(server_sock.getsockname(), client_ctx)
        await conn.send(b"hello, DTLS")
        print(await conn.receive())  # b'hello, DTLS'
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
