"""Handshakes and data over the fake lossy network, on the virtual clock."""

from __future__ import annotations

import pytest
import trio
from OpenSSL import SSL

from trio_dtlsmux import DtlsEndpoint
from trio_dtlsmux import _records as rec
from trio_dtlsmux.testing import FakeNetwork, NetworkConditions, Packet

from .conftest import echo, fake_socket

SERVER = ("10.0.0.1", 4433)


async def run_clients(
    net: FakeNetwork,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    count: int,
    messages: int = 3,
    **options: object,
) -> tuple[list[tuple[int, list[bytes]]], DtlsEndpoint]:
    results: list[tuple[int, list[bytes]]] = []

    async def client(i: int) -> None:
        sock = await fake_socket(net, f"10.1.{i // 250}.{i % 250 + 1}", 5000)
        async with DtlsEndpoint(sock, **options) as ep:
            conn = await ep.connect(SERVER, client_ctx, server_hostname=False)
            got = []
            for n in range(messages):
                message = b"%d:%d" % (i, n)
                # Data is not retransmitted (it is UDP): retry until echoed.
                while True:
                    await conn.send(message)
                    with trio.move_on_after(2):
                        reply = await conn.receive()
                        while reply != message:  # a late echo of an earlier try
                            reply = await conn.receive()
                        break
                got.append(reply)
            results.append((i, got))

    server_sock = await fake_socket(net, *SERVER)
    async with DtlsEndpoint(server_sock, server_context=server_ctx, **options) as server:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, echo)
            async with trio.open_nursery() as clients:
                for i in range(count):
                    clients.start_soon(client, i)
            nursery.cancel_scope.cancel()
    return results, server


async def test_100_handshakes_over_a_bad_network(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    net = FakeNetwork(
        seed=2,
        conditions=NetworkConditions(loss=0.1, duplicate=0.1, reorder=0.1, delay=(0.0, 0.05)),
    )
    with trio.fail_after(300):
        results, server = await run_clients(net, server_ctx, client_ctx, 100)
    assert sorted(i for i, _ in results) == list(range(100))
    for i, got in results:
        assert got == [b"%d:%d" % (i, n) for n in range(3)]
    stats = net.statistics()
    assert stats.dropped_loss > 0 and stats.duplicated > 0 and stats.reordered > 0
    assert server.statistics().handshakes_completed >= 100


async def test_tiny_mtu_is_respected_by_every_datagram(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    net = FakeNetwork(seed=3, conditions=NetworkConditions(mtu=300), trace=True)
    with trio.fail_after(60):
        results, _ = await run_clients(net, server_ctx, client_ctx, 3, mtu=300)
    assert len(results) == 3
    assert net.statistics().dropped_mtu == 0
    assert net.trace and max(len(p.payload) for p in net.trace) <= 300
    # The certificate flight really had to be split.
    assert sum(1 for p in net.trace if p.source == SERVER) > 3 * 3


def is_final_server_flight(packet: Packet) -> bool:
    """The server's CCS + Finished (the only server datagram with a CCS)."""
    if packet.source != SERVER:
        return False
    try:
        records = rec.parse_records_untrusted(packet.payload)
    except rec.BadPacket:
        return False
    return any(r.content_type == rec.CHANGE_CIPHER_SPEC for r in records)


@pytest.mark.parametrize("direction", ["server final flight", "client final flight"])
async def test_lost_final_flight_is_recovered(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    direction: str,
) -> None:
    net = FakeNetwork(seed=4)
    dropped: list[Packet] = []

    def hook(packet: Packet) -> Packet | None:
        if dropped:
            return packet
        records = rec.parse_records_untrusted(packet.payload)
        has_ccs = any(r.content_type == rec.CHANGE_CIPHER_SPEC for r in records)
        from_server = packet.source == SERVER
        if has_ccs and from_server == (direction == "server final flight"):
            dropped.append(packet)
            return None
        return packet

    net.route_hook = hook
    with trio.fail_after(30):
        start = trio.current_time()
        results, _ = await run_clients(net, server_ctx, client_ctx, 1)
    assert dropped, "the hook saw the final flight"
    assert results[0][1] == [b"0:0", b"0:1", b"0:2"]
    # Recovered by one retransmission, about one initial timeout later.
    assert trio.current_time() - start < 5
