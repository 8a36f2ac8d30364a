"""Real UDP on loopback with the real clock.

OpenSSL keeps wall-clock timers of its own; these tests make sure they and
ours cooperate on a real clock. They are few and bounded in time.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, HandshakeError, SelfSigned

from .conftest import echo, udp_socket


class DroppingSocket:
    """A real socket that loses chosen outgoing datagrams (by index)."""

    def __init__(self, sock: trio.socket.SocketType, drop: set[int]) -> None:
        self._sock = sock
        self._drop = drop
        self.sent: list[bytes] = []
        self.family = sock.family
        self.type = sock.type

    async def sendto(self, data: bytes, address: Any) -> int:
        index = len(self.sent)
        self.sent.append(data)
        if index in self._drop:
            return len(data)
        return await self._sock.sendto(data, address)

    async def recvfrom(self, size: int) -> tuple[bytes, Any]:
        return await self._sock.recvfrom(size)

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_echo_over_loopback(
    host: str, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    server_sock = await udp_socket(host)
    with trio.fail_after(10):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server:
            async with DtlsEndpoint(await udp_socket(host)) as client, trio.open_nursery() as nursery:
                await nursery.start(server.serve, echo)
                conn = await client.connect(
                    server_sock.getsockname(), client_ctx, server_hostname=False
                )
                for size in (1, 100, conn.get_cleartext_mtu()):
                    await conn.send(b"m" * size)
                    assert await conn.receive() == b"m" * size
                with pytest.raises(ValueError, match="empty"):
                    await conn.send(b"")
                with pytest.raises(ValueError, match="cleartext MTU"):
                    await conn.send(b"m" * (conn.get_cleartext_mtu() + 1))
                with pytest.raises(TypeError, match="bytes-like"):
                    await conn.send("text")  # type: ignore[arg-type]
                await conn.send(bytearray(b"still works"))
                assert await conn.receive() == b"still works"
                assert conn.version == "DTLSv1.2"
                await conn.aclose()
                nursery.cancel_scope.cancel()
    assert server.statistics().handshakes_completed == 1


async def test_lost_final_flight_datagram_on_the_real_clock(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    server_sock = await udp_socket()
    # Client datagrams: 0 = first hello, 1 = hello with cookie, 2 = final flight.
    lossy = DroppingSocket(await udp_socket(), drop={2})
    with trio.fail_after(10):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server:
            async with DtlsEndpoint(lossy) as client, trio.open_nursery() as nursery:
                await nursery.start(server.serve, echo)
                start = trio.current_time()
                conn = await client.connect(
                    server_sock.getsockname(), client_ctx, server_hostname=False
                )
                elapsed = trio.current_time() - start
                await conn.send(b"ping")
                assert await conn.receive() == b"ping"
                assert conn.statistics().handshake_retransmissions >= 1
                nursery.cancel_scope.cancel()
    # The default first retransmission is after 1 s; allow a few periods.
    assert 0.9 <= elapsed < 4.0
    assert len(lossy.sent) >= 4  # the final flight was sent again


async def test_200_concurrent_handshakes(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    server_sock = await udp_socket()
    address = server_sock.getsockname()
    results: list[bytes] = []

    async def one_client(i: int) -> None:
        async with DtlsEndpoint(await udp_socket()) as client:
            conn = await client.connect(address, client_ctx, server_hostname=False)
            # 200 peers at once can overflow a socket buffer, and DTLS does
            # not resend application data, so the echo is retried.
            while True:
                await conn.send(b"%d" % i)
                with trio.move_on_after(2):
                    results.append(await conn.receive())
                    return

    with trio.fail_after(90):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, echo)
                async with trio.open_nursery() as clients:
                    for i in range(200):
                        clients.start_soon(one_client, i)
                nursery.cancel_scope.cancel()
    assert sorted(results) == sorted(b"%d" % i for i in range(200))
    stats = server.statistics()
    assert stats.handshakes_completed == 200
    assert stats.peers == 0


async def test_hostname_mismatch_fails_quickly(
    server_ctx: SSL.Context, identity: SelfSigned
) -> None:
    server_sock = await udp_socket()
    ctx = trio_dtlsmux.client_context(cadata=identity.cert_pem)
    with trio.fail_after(5):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server:
            async with DtlsEndpoint(await udp_socket()) as client:
                start = trio.current_time()
                with pytest.raises(HandshakeError) as caught:
                    await client.connect(
                        server_sock.getsockname(), ctx, server_hostname="example.com"
                    )
                assert trio.current_time() - start < 1.0
                # The client's alert is on its way; let the server read it
                # (checkpoints only, no sleeping on the clock).
                while not server.statistics().handshakes_failed:
                    await trio.lowlevel.checkpoint()
    assert "example.com" in str(caught.value)
    assert server.statistics().handshakes_failed.get("alert") == 1


async def test_connect_by_name_checks_that_name(
    server_ctx: SSL.Context, identity: SelfSigned
) -> None:
    server_sock = await udp_socket()
    port = server_sock.getsockname()[1]
    ctx = trio_dtlsmux.client_context(cadata=identity.cert_pem)
    with trio.fail_after(5):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server:
            async with DtlsEndpoint(await udp_socket()) as client, trio.open_nursery() as nursery:
                await nursery.start(server.serve, echo)
                conn = await client.connect(("localhost", port), ctx)
                assert conn.server_hostname == "localhost"
                assert conn.peer_address == ("127.0.0.1", port)
                await conn.send(b"hi")
                assert await conn.receive() == b"hi"
                nursery.cancel_scope.cancel()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux reports drops")
async def test_buffers_are_raised_and_kernel_drops_are_reported(
    server_ctx: SSL.Context,
) -> None:
    import socket as stdlib_socket

    # A burst the receive task cannot read in time is dropped by the kernel;
    # before, statistics() never showed it.
    sock = await udp_socket()
    default = sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF)
    async with DtlsEndpoint(sock, server_context=server_ctx) as ep:
        stats = ep.statistics()
        assert stats.receive_buffer is not None and stats.receive_buffer > default
        assert stats.send_buffer is not None
        assert stats.kernel_drops == 0
    small = await udp_socket()
    small.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    address = small.getsockname()
    async with DtlsEndpoint(
        small, server_context=server_ctx, receive_buffer=None
    ) as ep:
        with stdlib_socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM) as flood:
            # All sent before the endpoint's task runs again: most cannot fit.
            for _ in range(200):
                flood.sendto(b"\x17" + bytes(600), address)
        stats = ep.statistics()
        assert stats.receive_buffer is not None and stats.receive_buffer <= 2 * 4096
        assert stats.kernel_drops is not None and stats.kernel_drops > 0
        with trio.fail_after(10):
            while ep.statistics().datagrams_in + (ep.statistics().kernel_drops or 0) < 200:
                await trio.testing.wait_all_tasks_blocked()
        final = ep.statistics()
        # Every datagram is accounted for: read (and dropped as junk) or
        # dropped by the kernel.
        assert final.datagrams_in + (final.kernel_drops or 0) == 200
        assert final.junk_dropped == final.datagrams_in
