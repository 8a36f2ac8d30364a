"""Tests for trio_dtlsmux.testing, the in-memory datagram network.

Anything that involves time runs on pytest-trio's ``autojump_clock``, so the
delays below are virtual and cost nothing.
"""

from __future__ import annotations

import errno
import math
import socket

import attrs
import pytest
import trio
import trio.testing

from trio_dtlsmux.testing import (
    FakeNetwork,
    FakeSocket,
    NetworkConditions,
    NetworkStatistics,
    Packet,
)

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)


async def pair(net: FakeNetwork) -> tuple[FakeSocket, FakeSocket]:
    client = net.socket()
    await client.bind(CLIENT)
    server = net.socket()
    await server.bind(SERVER)
    return client, server


async def drain(sock: FakeSocket, idle: float = 10.0) -> list[bytes]:
    """Everything that arrives until nothing has for ``idle`` seconds."""
    received: list[bytes] = []
    while True:
        with trio.move_on_after(idle) as scope:
            data, _ = await sock.recvfrom(65536)
        if scope.cancelled_caught:
            return received
        received.append(data)


def numbered(n: int) -> list[bytes]:
    return [b"%05d" % i for i in range(n)]


def check_balance(stats: NetworkStatistics) -> None:
    assert stats.sent + stats.duplicated == (
        stats.dropped_hook
        + stats.dropped_mtu
        + stats.dropped_loss
        + stats.delivered
        + stats.dropped_no_listener
        + stats.dropped_buffer_full
        + stats.in_flight
    )


# -- basic delivery ----------------------------------------------------------


async def test_lossless_delivery_in_order() -> None:
    net = FakeNetwork(seed=0)
    client, server = await pair(net)
    for payload in numbered(50):
        assert await client.sendto(payload, SERVER) == len(payload)
    received: list[bytes] = []
    for _ in range(50):
        data, source = await server.recvfrom(65536)
        assert source == CLIENT
        received.append(data)
    assert received == numbered(50)
    stats = net.statistics()
    assert stats.sent == stats.delivered == 50
    assert stats.in_flight == 0
    check_balance(stats)
    assert stats == attrs.evolve(NetworkStatistics(), sent=50, delivered=50)


async def test_socket_basics() -> None:
    net = FakeNetwork()
    sock = net.socket()
    assert sock.family == socket.AF_INET
    assert sock.type == socket.SOCK_DGRAM
    assert sock.fileno() == -1
    assert sock.getsockname() == ("0.0.0.0", 0)
    await sock.bind(SERVER)
    assert sock.getsockname() == SERVER
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 1 << 20
    with pytest.raises(OSError) as info:
        net.socket(type=socket.SOCK_STREAM)
    assert info.value.errno == errno.EPROTONOSUPPORT


async def test_recvfrom_truncates_like_a_real_socket() -> None:
    net = FakeNetwork()
    client, server = await pair(net)
    await client.sendto(b"0123456789", SERVER)
    await client.sendto(b"next", SERVER)
    assert await server.recvfrom(4) == (b"0123", CLIENT)
    # The rest of the first datagram is gone, not left for the next call.
    assert await server.recvfrom(100) == (b"next", CLIENT)
    with pytest.raises(ValueError):
        await server.recvfrom(-1)


async def test_sendto_accepts_bytes_like_and_copies() -> None:
    net = FakeNetwork()
    client, server = await pair(net)
    buffer = bytearray(b"abc")
    await client.sendto(buffer, SERVER)
    buffer[0] = ord("X")
    await client.sendto(memoryview(b"def"), SERVER)
    assert (await server.recvfrom(10))[0] == b"abc"
    assert (await server.recvfrom(10))[0] == b"def"


async def test_send_before_bind_binds_implicitly() -> None:
    net = FakeNetwork()
    server = net.socket()
    await server.bind(SERVER)
    client = net.socket()
    await client.sendto(b"hello", SERVER)
    host, port = client.getsockname()
    assert host == "127.0.0.1"
    assert 49152 <= port <= 65535
    assert await server.recvfrom(100) == (b"hello", (host, port))


async def test_sendto_rejects_bad_destinations() -> None:
    net = FakeNetwork()
    sock = net.socket()
    with pytest.raises(OSError) as info:
        await sock.sendto(b"x", ("10.0.0.1", 0))
    assert info.value.errno == errno.EINVAL
    with pytest.raises(socket.gaierror):
        await sock.sendto(b"x", ("example.com", 443))
    with pytest.raises(OverflowError):
        await sock.sendto(b"x", ("10.0.0.1", 70000))
    with pytest.raises(TypeError):
        await sock.sendto(b"x", "10.0.0.1:443")  # type: ignore[arg-type]
    with pytest.raises(OSError) as info:
        await sock.sendto(b"x" * 65508, SERVER)
    assert info.value.errno == errno.EMSGSIZE
    assert net.statistics().sent == 0


async def test_sendto_and_recvfrom_are_checkpoints() -> None:
    net = FakeNetwork()
    client, server = await pair(net)
    await client.sendto(b"queued", SERVER)
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await client.sendto(b"cancelled", SERVER)
        with pytest.raises(trio.Cancelled):
            await server.recvfrom(100)
    # Neither the cancelled send nor the cancelled receive lost or sent anything.
    assert await server.recvfrom(100) == (b"queued", CLIENT)
    assert net.statistics().sent == 1
    with trio.testing.assert_checkpoints():
        await client.sendto(b"again", SERVER)
    with trio.testing.assert_checkpoints():
        await server.recvfrom(100)  # data was ready, yet it still yields


# -- misbehaviour and reproducibility -----------------------------------------


async def test_loss_rate_near_configured(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(seed=3, conditions=NetworkConditions(loss=0.3), recv_buffer=2000)
    client, server = await pair(net)
    n = 2000
    for payload in numbered(n):
        await client.sendto(payload, SERVER)
    received = await drain(server)
    stats = net.statistics()
    # 2000 draws at p=0.3: standard deviation about 20, so this is > 4 sigma.
    assert 520 <= stats.dropped_loss <= 680
    assert len(received) == stats.delivered == n - stats.dropped_loss
    # Loss alone never reorders.
    assert received == sorted(received)
    check_balance(stats)


async def chaotic_run(seed: int) -> tuple[list[tuple[float, bytes]], NetworkStatistics]:
    net = FakeNetwork(
        seed=seed,
        conditions=NetworkConditions(
            loss=0.1, duplicate=0.1, reorder=0.1, delay=(0.0, 0.05), corrupt=0.05
        ),
        trace=True,
    )
    client, server = await pair(net)
    start = trio.current_time()
    for payload in numbered(300):
        await client.sendto(payload, SERVER)
        await trio.sleep(0.01)
    arrivals = []
    while True:
        with trio.move_on_after(5) as scope:
            data, _ = await server.recvfrom(65536)
        if scope.cancelled_caught:
            break
        arrivals.append((round(trio.current_time() - start, 9), data))
    assert list(net.trace) == [
        Packet(source=CLIENT, destination=SERVER, payload=p) for p in numbered(300)
    ]
    stats = net.statistics()
    check_balance(stats)
    client.close()
    server.close()
    return arrivals, stats


async def test_same_seed_same_outcome(autojump_clock: trio.testing.MockClock) -> None:
    first = await chaotic_run(seed=42)
    second = await chaotic_run(seed=42)
    other = await chaotic_run(seed=43)
    assert first == second
    assert first != other
    arrivals, stats = first
    assert len(arrivals) == stats.delivered
    for count in (
        stats.dropped_loss,
        stats.duplicated,
        stats.reordered,
        stats.corrupted,
    ):
        assert count > 0


async def test_duplication_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(seed=1, conditions=NetworkConditions(duplicate=1.0))
    client, server = await pair(net)
    for payload in numbered(20):
        await client.sendto(payload, SERVER)
    received = await drain(server)
    assert sorted(received) == sorted(numbered(20) * 2)
    stats = net.statistics()
    assert stats.duplicated == 20
    assert stats.delivered == 40

    net.conditions = NetworkConditions(duplicate=0.25)
    for payload in numbered(400):
        await client.sendto(payload, SERVER)
        while True:  # keep the receive queue from overflowing
            with trio.move_on_after(0.001) as scope:
                await server.recvfrom(100)
            if scope.cancelled_caught:
                break
    stats = net.statistics()
    assert 60 <= stats.duplicated - 20 <= 140
    assert stats.delivered == 40 + 400 + stats.duplicated - 20


async def test_reordering_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(seed=5, conditions=NetworkConditions(reorder=0.2))
    client, server = await pair(net)
    for payload in numbered(100):
        await client.sendto(payload, SERVER)
    net.conditions = NetworkConditions()
    await client.sendto(b"99999", SERVER)  # overtakes everything held back
    received = await drain(server)
    assert sorted(received) == [*numbered(100), b"99999"]
    assert received != sorted(received)
    # With no base delay the held-back datagrams come last, in their own order,
    # so exactly those are overtaken by one sent after them.
    overtaken = [
        data for i, data in enumerate(received) if any(d > data for d in received[:i])
    ]
    stats = net.statistics()
    assert stats.reordered == len(overtaken) > 0
    assert received[-len(overtaken) :] == overtaken


async def test_corruption_changes_one_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(seed=2, conditions=NetworkConditions(corrupt=1.0))
    client, server = await pair(net)
    original = bytes(range(64))
    for _ in range(20):
        await client.sendto(original, SERVER)
    received = await drain(server)
    assert len(received) == 20
    for data in received:
        assert len(data) == len(original)
        assert sum(a != b for a, b in zip(data, original, strict=True)) == 1
    assert net.statistics().corrupted == 20


async def test_delay_respected_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(seed=9, conditions=NetworkConditions(delay=(0.2, 0.5)))
    client, server = await pair(net)
    sent_at: dict[bytes, float] = {}
    latencies = []

    async def receive() -> None:
        for _ in range(50):
            data, _ = await server.recvfrom(100)
            latencies.append(trio.current_time() - sent_at[data])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        for payload in numbered(50):
            sent_at[payload] = trio.current_time()
            await client.sendto(payload, SERVER)
            await trio.sleep(0.1)
    assert len(latencies) == 50
    assert all(0.2 - 1e-9 <= latency <= 0.5 + 1e-9 for latency in latencies)
    assert max(latencies) - min(latencies) > 0.1  # drawn, not constant


async def test_nothing_arrives_early(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(conditions=NetworkConditions(delay=(1.0, 1.0)))
    client, server = await pair(net)
    await client.sendto(b"slow", SERVER)
    with trio.move_on_after(0.999):
        await server.recvfrom(100)
        pytest.fail("arrived early")
    assert net.statistics().in_flight == 1
    start = trio.current_time()
    assert await server.recvfrom(100) == (b"slow", CLIENT)
    assert trio.current_time() - start == pytest.approx(0.001)


async def test_conditions_can_change_at_any_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(seed=0)
    client, server = await pair(net)
    await client.sendto(b"before", SERVER)
    net.conditions = NetworkConditions(loss=1.0)
    await client.sendto(b"during", SERVER)
    net.conditions = NetworkConditions()
    await client.sendto(b"after", SERVER)
    assert await drain(server) == [b"before", b"after"]
    assert net.statistics().dropped_loss == 1


def test_conditions_are_validated() -> None:
    for bad in (
        {"loss": -0.1},
        {"duplicate": 1.5},
        {"reorder": math.nan},
        {"corrupt": 2},
        {"delay": (0.5, 0.1)},
        {"delay": (-1.0, 1.0)},
        {"delay": (0.0, math.inf)},
        {"mtu": -1},
        {"reorder_delay": -1.0},
    ):
        with pytest.raises(ValueError):
            NetworkConditions(**bad)
    assert NetworkConditions(delay=(1, 2)).delay == (1.0, 2.0)
    with pytest.raises(ValueError):
        FakeNetwork(recv_buffer=0)
    with pytest.raises(ValueError):
        FakeNetwork(default_ipv4="0.0.0.0")


# -- size limits, hooks and tracing ------------------------------------------


async def test_mtu_drops_larger_datagrams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(conditions=NetworkConditions(mtu=100), trace=True)
    client, server = await pair(net)
    await client.sendto(b"a" * 100, SERVER)
    await client.sendto(b"b" * 101, SERVER)
    await client.sendto(b"c" * 99, SERVER)
    assert await drain(server) == [b"a" * 100, b"c" * 99]
    stats = net.statistics()
    assert stats.dropped_mtu == 1
    assert stats.delivered == 2
    assert net.max_datagram_seen == 101
    assert [len(p.payload) for p in net.trace] == [100, 101, 99]


async def test_route_hook_drops_exactly_the_third(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    client, server = await pair(net)
    seen: list[Packet] = []

    def drop_third(packet: Packet) -> Packet | None:
        seen.append(packet)
        return None if len(seen) == 3 else packet

    net.route_hook = drop_third
    for payload in numbered(5):
        await client.sendto(payload, SERVER)
    assert await drain(server) == [b"00000", b"00001", b"00003", b"00004"]
    assert [p.payload for p in seen] == numbered(5)
    assert net.statistics().dropped_hook == 1


async def test_route_hook_modifies_redirects_and_spoofs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    client, server = await pair(net)
    other = net.socket()
    await other.bind(("10.0.0.3", 7000))
    net.route_hook = lambda p: attrs.evolve(p, payload=p.payload.upper())
    await client.sendto(b"shout", SERVER)
    assert await server.recvfrom(100) == (b"SHOUT", CLIENT)

    net.route_hook = lambda p: attrs.evolve(p, destination=("10.0.0.3", 7000))
    await client.sendto(b"elsewhere", SERVER)
    assert await other.recvfrom(100) == (b"elsewhere", CLIENT)

    spoofed = ("192.0.2.7", 1234)
    net.route_hook = lambda p: attrs.evolve(p, source=spoofed)
    await client.sendto(b"forged", SERVER)
    assert await server.recvfrom(100) == (b"forged", spoofed)
    assert await drain(server) == []


async def test_trace_is_bounded_and_optional() -> None:
    net = FakeNetwork(trace=True, trace_limit=3)
    client, _ = await pair(net)
    for payload in numbered(5):
        await client.sendto(payload, SERVER)
    assert [p.payload for p in net.trace] == numbered(5)[2:]
    quiet = FakeNetwork()
    client, _ = await pair(quiet)
    await client.sendto(b"x", SERVER)
    assert len(quiet.trace) == 0
    assert quiet.max_datagram_seen == 1


# -- binding and closing -----------------------------------------------------


async def test_bind_conflicts() -> None:
    net = FakeNetwork()
    first = net.socket()
    await first.bind(SERVER)
    second = net.socket()
    with pytest.raises(OSError) as info:
        await second.bind(SERVER)
    assert info.value.errno == errno.EADDRINUSE
    # The same port on another host is a different address.
    await second.bind(("10.0.0.9", SERVER[1]))
    with pytest.raises(OSError) as info:
        await first.bind(("10.0.0.1", 1))
    assert info.value.errno == errno.EINVAL


async def test_port_zero_picks_free_ports() -> None:
    net = FakeNetwork()
    ports = set()
    for _ in range(20):
        sock = net.socket()
        await sock.bind(("10.0.0.1", 0))
        host, port = sock.getsockname()
        assert host == "10.0.0.1"
        assert 49152 <= port <= 65535
        ports.add(port)
    assert len(ports) == 20
    # A port someone bound explicitly is skipped.
    fresh = FakeNetwork()
    taken = fresh.socket()
    await taken.bind(("10.0.0.5", 49152))
    sock = fresh.socket()
    await sock.bind(("10.0.0.5", 0))
    assert sock.getsockname() == ("10.0.0.5", 49153)


async def test_wildcard_binds_default_address() -> None:
    net = FakeNetwork(default_ipv4="10.1.1.1")
    a, b = net.socket(), net.socket()
    await a.bind(("", 4000))
    await b.bind(("0.0.0.0", 0))
    assert a.getsockname() == ("10.1.1.1", 4000)
    assert b.getsockname()[0] == "10.1.1.1"
    await b.sendto(b"hi", ("10.1.1.1", 4000))
    assert await a.recvfrom(10) == (b"hi", b.getsockname())


async def test_close_wakes_blocked_recvfrom(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    _, server = await pair(net)
    outcome: list[BaseException] = []

    async def blocked() -> None:
        try:
            await server.recvfrom(100)
        except trio.ClosedResourceError as exc:
            outcome.append(exc)

    with trio.fail_after(60):  # virtual seconds: fails instead of hanging
        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.sleep(1)
            assert not outcome
            server.close()
    assert len(outcome) == 1
    assert server.closed
    server.close()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await server.recvfrom(100)
    with pytest.raises(trio.ClosedResourceError):
        await server.sendto(b"x", CLIENT)
    with pytest.raises(trio.ClosedResourceError):
        server.getsockname()
    with pytest.raises(trio.ClosedResourceError):
        await server.bind(("10.0.0.1", 1))


async def test_concurrent_receivers_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    _, server = await pair(net)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.recvfrom, 100)
            await trio.sleep(1)
            with pytest.raises(trio.BusyResourceError):
                await server.recvfrom(100)
            nursery.cancel_scope.cancel()


async def test_rebinding_after_close(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(conditions=NetworkConditions(delay=(1.0, 1.0)))
    client, server = await pair(net)
    await client.sendto(b"queued for the old socket", SERVER)
    await trio.sleep(2)
    await client.sendto(b"in flight at restart", SERVER)
    await trio.sleep(0.5)
    server.close()
    with server:  # closing twice via the context manager is harmless
        pass
    restarted = net.socket()
    await restarted.bind(SERVER)
    await client.sendto(b"after restart", SERVER)
    # Routing happens on arrival: the old socket's queue went with it, but
    # what was still in flight reaches the new socket.
    assert await drain(restarted) == [b"in flight at restart", b"after restart"]
    stats = net.statistics()
    assert stats.delivered == 3
    check_balance(stats)


async def test_closed_address_counts_no_listener(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(conditions=NetworkConditions(delay=(0.5, 0.5)))
    client, server = await pair(net)
    await client.sendto(b"lost", SERVER)
    server.close()
    await client.sendto(b"nobody", ("10.9.9.9", 9))
    await trio.sleep(1)
    stats = net.statistics()
    assert stats.dropped_no_listener == 2
    assert stats.delivered == 0
    # Without icmp_unreachable the sender hears nothing.
    with trio.move_on_after(5) as scope:
        await client.recvfrom(100)
    assert scope.cancelled_caught


async def test_icmp_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(
        icmp_unreachable=True, conditions=NetworkConditions(delay=(0.3, 0.3))
    )
    client, server = await pair(net)
    start = trio.current_time()
    await client.sendto(b"nobody home", ("10.9.9.9", 9))
    # A receiver that is already blocked is woken when the datagram bounces.
    with trio.fail_after(10), pytest.raises(ConnectionRefusedError) as info:
        await client.recvfrom(100)
    assert info.value.errno == errno.ECONNREFUSED
    assert trio.current_time() - start == pytest.approx(0.3)
    # The error is reported once; the socket keeps working.
    await server.sendto(b"still here", CLIENT)
    assert await client.recvfrom(100) == (b"still here", SERVER)
    assert net.statistics().dropped_no_listener == 1
    # Only the sender is told.
    with trio.move_on_after(1) as scope:
        await server.recvfrom(100)
    assert scope.cancelled_caught


async def test_recv_buffer_overflow(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(recv_buffer=8)
    client, server = await pair(net)
    for payload in numbered(20):
        await client.sendto(payload, SERVER)
    stats = net.statistics()
    assert stats.delivered == 8
    assert stats.dropped_buffer_full == 12
    assert await drain(server) == numbered(8)
    # Reading made room again.
    await client.sendto(b"room", SERVER)
    assert await server.recvfrom(100) == (b"room", CLIENT)
    assert FakeNetwork().recv_buffer == 256


async def test_recv_buffer_counts_arrived_datagrams_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(recv_buffer=2, conditions=NetworkConditions(delay=(1.0, 1.0)))
    client, server = await pair(net)
    for payload in numbered(3):
        await client.sendto(payload, SERVER)
        await trio.sleep(0.4)
    # Arrivals at 1.0, 1.4 and 1.8; the reader takes one at 1.6, so all fit.
    await trio.sleep(1.6 - trio.current_time())
    assert await server.recvfrom(100) == (b"00000", CLIENT)
    assert await drain(server) == [b"00001", b"00002"]
    assert net.statistics().dropped_buffer_full == 0


# -- IPv6 ----------------------------------------------------------------------


async def test_ipv6_addresses() -> None:
    net = FakeNetwork()
    server = net.socket(family=socket.AF_INET6)
    assert server.family == socket.AF_INET6
    assert server.getsockname() == ("::", 0, 0, 0)
    await server.bind(("fd00:0::1", 4433, 0, 0))
    assert server.getsockname() == ("fd00::1", 4433, 0, 0)
    client = net.socket(family=socket.AF_INET6)
    await client.bind(("fd00::2", 0))
    client_address = client.getsockname()
    assert client_address[0] == "fd00::2"
    assert len(client_address) == 4
    await client.sendto(b"v6", ("fd00::1", 4433, 0, 0))
    await client.sendto(b"short form", ("fd00::1", 4433))
    assert await server.recvfrom(100) == (b"v6", client_address)
    assert await server.recvfrom(100) == (b"short form", client_address)

    default = net.socket(family=socket.AF_INET6)
    await default.bind(("::", 0))
    assert default.getsockname()[0] == "::1"


async def test_family_mismatch_raises_oserror() -> None:
    net = FakeNetwork()
    v4 = net.socket()
    v6 = net.socket(family=socket.AF_INET6)
    for sock, address in (
        (v4, ("fd00::1", 4433, 0, 0)),
        (v4, ("fd00::1", 4433)),
        (v6, ("10.0.0.1", 4433)),
    ):
        with pytest.raises(OSError) as info:
            await sock.sendto(b"x", address)
        assert info.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError):
        await v4.bind(("fd00::1", 4433, 0, 0))
    assert net.statistics().sent == 0


# -- everything at once ------------------------------------------------------


async def test_many_peers_under_chaos(autojump_clock: trio.testing.MockClock) -> None:
    net = FakeNetwork(
        seed=7,
        conditions=NetworkConditions(
            loss=0.2, duplicate=0.2, reorder=0.2, delay=(0.01, 0.2)
        ),
    )
    server = net.socket()
    await server.bind(SERVER)
    got: dict[object, set[bytes]] = {}
    echoed = 0

    async def serve() -> None:
        nonlocal echoed
        while True:
            data, source = await server.recvfrom(100)
            got.setdefault(source, set()).add(data)
            await server.sendto(data, source)
            echoed += 1

    async def peer(i: int) -> None:
        sock = net.socket()
        await sock.bind((f"10.0.1.{i}", 0))
        echoes = set()
        for payload in numbered(20):
            await sock.sendto(payload, SERVER)
            with trio.move_on_after(1):
                while payload not in echoes:
                    echoes.add((await sock.recvfrom(100))[0])
        assert echoes <= set(numbered(20))
        sock.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        async with trio.open_nursery() as peers:
            for i in range(1, 31):
                peers.start_soon(peer, i)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert len(got) == 30
    stats = net.statistics()
    assert stats.in_flight == 0
    # Each peer sent 20 datagrams and the server echoed every one it received.
    assert stats.sent == 600 + echoed
    assert stats.delivered > echoed  # the server's, plus echoes that made it
    check_balance(stats)
