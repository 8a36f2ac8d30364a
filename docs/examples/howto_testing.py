"""How-to: testing your own application on a lossy, in-memory network.

Run it with pytest and pytest-trio (``trio_mode = true``)::

    pytest howto_testing.py
"""

from __future__ import annotations

import trio
import trio.testing

import trio_dtlsmux
from trio_dtlsmux.testing import FakeNetwork, NetworkConditions

SERVER = ("10.0.0.1", 5684)


# The application under test: a service that answers in capitals, and a
# client helper that numbers its requests and retries until answered.
async def shout(conn: trio_dtlsmux.DtlsConnection) -> None:
    async for message in conn:
        await conn.send(message.upper())


async def ask(conn: trio_dtlsmux.DtlsConnection, number: int, text: bytes) -> bytes:
    tag = b"%d:" % number
    while True:  # datagrams get lost and DTLS does not resend data: retry
        await conn.send(tag + text)
        with trio.move_on_after(1.0):
            while True:
                reply = await conn.receive()
                if reply.startswith(tag):  # skip late answers to old requests
                    return reply[len(tag) :]


async def test_shout_over_a_bad_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(
        seed=7,  # same seed, same losses: a failure can be replayed
        conditions=NetworkConditions(
            loss=0.2, duplicate=0.05, reorder=0.1, delay=(0.01, 0.1)
        ),
    )
    identity = trio_dtlsmux.self_signed(sans=[SERVER[0]])
    server_sock = net.socket()
    await server_sock.bind(SERVER)
    client_sock = net.socket()
    await client_sock.bind(("10.0.0.2", 0))

    with trio.fail_after(600):  # virtual seconds: the clock jumps when idle
        async with (
            trio_dtlsmux.DtlsEndpoint(
                server_sock, server_context=trio_dtlsmux.server_context(identity)
            ) as server,
            trio_dtlsmux.DtlsEndpoint(client_sock) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, shout)
            context = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
            conn = await client.connect(SERVER, context)
            replies = [await ask(conn, n, b"hello %d" % n) for n in range(20)]
            nursery.cancel_scope.cancel()

    assert replies == [b"HELLO %d" % n for n in range(20)]
    stats = net.statistics()
    assert stats.dropped_loss > 0 and stats.duplicated > 0  # it really was bad
