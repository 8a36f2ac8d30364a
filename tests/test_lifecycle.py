"""Idle reaping, close_notify, peer restart, limits, statistics, session info."""

from __future__ import annotations

import contextlib
import gc
import io
import pathlib
import weakref

import pytest
import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import (
    ConnectionTimedOut,
    DtlsConnection,
    DtlsEndpoint,
    PeerClosed,
    PeerRestarted,
    SelfSigned,
)
from trio_dtlsmux.testing import FakeNetwork, Packet

from .conftest import echo, fake_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)


async def test_silent_peer_is_reaped_at_idle_timeout(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    accepted: list[DtlsConnection] = []
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, idle_timeout=60) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT), idle_timeout=None) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            accepted.append(await server.accept())
            await conn.send(b"last words")
            last_activity = trio.current_time()
            peer = accepted[0]
            assert await peer.receive() == b"last words"
            with pytest.raises(ConnectionTimedOut):
                await peer.receive()  # blocks until reaped
            reaped_after = trio.current_time() - last_activity
            assert 60 <= reaped_after < 60.5
            with pytest.raises(ConnectionTimedOut):
                await peer.send(b"too late")
            stats = server.statistics()
            assert stats.peers_reaped == 1 and stats.peers == 0
            # The client (idle_timeout=None) keeps its side forever.
            assert client.statistics().peers == 1


async def test_talking_peer_is_never_reaped(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, idle_timeout=10) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client, trio.open_nursery() as nursery:
            await nursery.start(server.serve, echo)
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            for i in range(30):  # 30 x 9 s = 270 s, far past the 10 s timeout
                await trio.sleep(9)
                await conn.send(b"%d" % i)
                assert await conn.receive() == b"%d" % i
            assert server.statistics().peers_reaped == 0
            nursery.cancel_scope.cancel()


async def test_close_notify_both_ways(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            await conn.send(b"before close")
            await conn.aclose()
            await conn.aclose()  # idempotent
            with pytest.raises(trio.ClosedResourceError):
                await conn.send(b"after")
            with pytest.raises(trio.ClosedResourceError):
                await conn.receive()
            # Pending messages first, then the end of the channel.
            assert [m async for m in theirs] == [b"before close"]
            with pytest.raises(PeerClosed):
                await theirs.send(b"anyone there?")
            with pytest.raises(trio.EndOfChannel):
                await theirs.receive()
            assert server.statistics().peers == 0
            # And the other direction: the server closes.
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            await theirs.aclose()
            with pytest.raises(trio.EndOfChannel):
                await conn.receive()


async def test_leaving_the_endpoint_closes_every_peer(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    outcome: list[type[BaseException]] = []

    async def reader(conn: DtlsConnection, blocked: trio.Event) -> None:
        blocked.set()
        try:
            await conn.receive()
        except trio.ClosedResourceError as exc:
            outcome.append(type(exc))

    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                DtlsEndpoint(await fake_socket(net, f"10.0.1.{i + 1}", 5000))
            )
            for i in range(3)
        ]
        client_conns = []
        async with trio.open_nursery() as nursery:
            async with DtlsEndpoint(
                await fake_socket(net, *SERVER), server_context=server_ctx
            ) as server:
                for ep in clients:
                    client_conns.append(
                        await ep.connect(SERVER, client_ctx, server_hostname=False)
                    )
                first = await server.accept()
                blocked = trio.Event()
                nursery.start_soon(reader, first, blocked)
                await blocked.wait()
        assert outcome == [trio.ClosedResourceError]
        for conn in client_conns:
            with pytest.raises(trio.EndOfChannel):
                await conn.receive()
    assert server.socket.closed
    with pytest.raises(trio.ClosedResourceError):
        await server.accept()


async def test_peer_restart_replaces_the_old_connection(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    crashed = False

    def hook(packet: Packet) -> Packet | None:
        # While "crashed", nothing from the client leaves its host.
        return None if crashed and packet.source == CLIENT else packet

    net.route_hook = hook
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            await client.connect(SERVER, client_ctx, server_hostname=False)
            old = await server.accept()
            crashed = True  # the process dies: no close_notify goes out
        crashed = False
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            new = await server.accept()
            with pytest.raises(PeerRestarted):
                await old.receive()
            with pytest.raises(PeerRestarted):
                await old.send(b"x")
            await conn.send(b"hello again")
            assert await new.receive() == b"hello again"
            assert server.statistics().peers_restarted == 1
            assert server.statistics().peers == 1


async def test_hello_without_cookie_does_not_replace(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    """An attacker who cannot receive at the peer's address gets nowhere."""
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            # A spoofer sends hellos that claim to come from the client: one
            # without a cookie and one with a forged cookie.
            from .test_records import client_hello_datagram, client_hello_with_cookie

            spoof_host = ("10.0.0.66", 5000)

            def spoof(packet: Packet) -> Packet | None:
                if packet.source == spoof_host:
                    return Packet(CLIENT, packet.destination, packet.payload)
                return packet

            net.route_hook = spoof
            spoofer = await fake_socket(net, *spoof_host)
            await spoofer.sendto(client_hello_datagram(), SERVER)
            await spoofer.sendto(client_hello_with_cookie(b"\xaa" * 32), SERVER)
            await trio.sleep(1)
            stats = server.statistics()
            assert stats.cookies_sent == 1 + 2  # the client's and the spoofer's two
            assert stats.cookie_failures == 1
            assert server.statistics().peers_restarted == 0
            await conn.send(b"still here")
            assert await theirs.receive() == b"still here"


async def test_limits_bound_half_open_handshakes(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    stalled = {f"10.2.0.{i + 1}" for i in range(50)}

    def hook(packet: Packet) -> Packet | None:
        # The stalled clients never hear the server's flight, so their
        # handshakes stay half-open on the server.
        if packet.destination[0] in stalled and len(packet.payload) > 200:
            return None
        return packet

    net.route_hook = hook
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, max_handshakes=5,
        handshake_timeout=30,
    ) as server, trio.open_nursery() as nursery:
        await nursery.start(server.serve, echo)
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as good:
            conn = await good.connect(SERVER, client_ctx, server_hostname=False)

            async def stalled_client(host: str) -> None:
                async with DtlsEndpoint(await fake_socket(net, host, 5000), handshake_timeout=5) as ep:
                    with pytest.raises(trio_dtlsmux.HandshakeError):
                        await ep.connect(SERVER, client_ctx, server_hostname=False)

            peak = 0

            async def watch() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, server.statistics().handshakes_in_progress)
                    await trio.sleep(0.01)

            async with trio.open_nursery() as burst:
                watcher = trio.CancelScope()

                async def run_watch() -> None:
                    with watcher:
                        await watch()

                burst.start_soon(run_watch)
                async with trio.open_nursery() as clients:
                    for host in sorted(stalled):
                        clients.start_soon(stalled_client, host)
                watcher.cancel()
            stats = server.statistics()
            assert 1 <= peak <= 5
            # The other verified hellos wait for a slot (or were shed): no
            # SSL object, no association for them.
            assert stats.hellos_waiting + stats.hellos_dropped_limits >= 45
            assert stats.peers <= 1 + 5
            await conn.send(b"unaffected")
            assert await conn.receive() == b"unaffected"
        nursery.cancel_scope.cancel()


async def test_reaped_peers_are_freed(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    silenced: set[object] = set()
    # Peers that vanish without a word (no close_notify), as crashed or
    # unplugged devices do; only the idle timeout can clean up after them.
    net.route_hook = lambda packet: None if packet.source in silenced else packet
    refs: list[weakref.ref[object]] = []
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, idle_timeout=30) as server:
        for round_ in range(2):
            async with trio.open_nursery() as nursery:
                for i in range(100):
                    async def one(i: int = i, round_: int = round_) -> None:
                        sock = await fake_socket(net, f"10.3.{round_}.{i + 1}", 5000)
                        async with DtlsEndpoint(sock) as ep:
                            await ep.connect(SERVER, client_ctx, server_hostname=False)
                            silenced.add(sock.getsockname())
                    nursery.start_soon(one)
                    refs.append(weakref.ref(await server.accept()))
            assert server.statistics().peers == 100
            await trio.sleep(31)
            assert server.statistics().peers == 0
        gc.collect()
        assert server.statistics().peers_reaped == 200
        assert [r for r in refs if r() is not None] == []
        assert server.connections() == []


async def test_ended_peers_need_no_cycle_collector(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    """A storm of short-lived clients ends thousands of peers: each must be
    freed as soon as nothing holds its connection, by reference counting,
    not left in a cycle (peer <-> connection) for a full collection to find
    among every live object."""
    net = FakeNetwork()
    refs: list[weakref.ref[object]] = []
    gc.collect()
    gc.disable()
    try:
        async with DtlsEndpoint(
            await fake_socket(net, *SERVER), server_context=server_ctx
        ) as server:
            async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
                for _ in range(5):
                    conn = await client.connect(SERVER, client_ctx, server_hostname=False)
                    theirs = await server.accept()
                    refs.append(weakref.ref(theirs))
                    refs.append(weakref.ref(conn))
                    await conn.send(b"bye")
                    assert await theirs.receive() == b"bye"
                    await conn.aclose()
                    with pytest.raises(trio.EndOfChannel):
                        await theirs.receive()
                    del conn, theirs
                await trio.testing.wait_all_tasks_blocked()
                assert [r for r in refs if r() is not None] == []
    finally:
        gc.enable()


async def test_statistics_count_traffic(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, inbox_size=2) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            for i in range(5):
                await conn.send(b"%d" % i)
            await trio.sleep(1)
            stats = theirs.statistics()
            assert stats.messages_dropped == 3  # the inbox holds 2
            assert stats.messages_in == 2
            assert [theirs.receive_nowait(), theirs.receive_nowait()] == [b"0", b"1"]
            mine = conn.statistics()
            assert mine.messages_out == 5
            assert mine.established_at is not None
            assert stats.datagrams_in >= 5 + 1
            assert stats.bytes_in > 5 * 13
            eps = server.statistics()
            assert eps.cookies_sent == 1 and eps.handshakes_completed == 1
            assert eps.junk_dropped == 0
            # Junk from a stranger is counted, and nobody else notices.
            stranger = await fake_socket(net, "10.9.9.9", 9)
            await stranger.sendto(b"\x17garbage", SERVER)
            await stranger.sendto(b"\x16\xfe\xfd truncated hello", SERVER)
            await trio.sleep(1)
            assert server.statistics().junk_dropped == 2
            await conn.send(b"fine")
            assert await theirs.receive() == b"fine"


async def test_session_info_alpn_srtp_and_client_certificates(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned, tmp_path: object
) -> None:
    client_id = trio_dtlsmux.self_signed("client")
    directory = pathlib.Path(str(tmp_path))
    ccert, ckey = client_id.write(directory)
    server_ctx = trio_dtlsmux.server_context(
        identity, alpn=["coap"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"],
        require_client_cert=True, client_cafile=str(ccert),
    )
    client_ctx = trio_dtlsmux.client_context(
        fingerprint=identity.fingerprint, certfile=str(ccert), keyfile=str(ckey),
        alpn=["coap"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"],
    )
    keylog = io.BytesIO()
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, keylog=keylog) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            for side in (conn, theirs):
                assert side.alpn_protocol == b"coap"
                assert side.srtp_profile == b"SRTP_AES128_CM_SHA1_80"
                assert side.version == "DTLSv1.2"
                assert (side.cipher and "GCM" in side.cipher) or "CHACHA" in (side.cipher or "")
            assert conn.peer_certificate == identity.certificate
            assert theirs.peer_certificate == client_id.certificate
            assert theirs.peer_certificate_chain[0] == client_id.certificate
            label = b"EXTRACTOR-dtls_srtp"
            assert conn.export_keying_material(label, 60) == theirs.export_keying_material(label, 60)
            assert len(conn.export_keying_material(label, 60)) == 60
    lines = keylog.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(b"CLIENT_RANDOM ")
    assert len(lines[0].split()[1]) == 64 and len(lines[0].split()[2]) == 96
