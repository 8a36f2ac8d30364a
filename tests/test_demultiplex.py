"""One socket for DTLS, STUN and SRTP (RFC 7983): datagrams that are not DTLS
go to receive_other(), and send_other() sends them in order with DTLS."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing
from OpenSSL import SSL

from trio_dtlsmux import DtlsEndpoint
from trio_dtlsmux.testing import FakeNetwork

from .conftest import fake_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)
STRANGER = ("10.0.0.9", 9999)

STUN = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)  # a binding request
RTP = b"\x80\x60\x00\x01" + bytes(20)


async def test_other_datagrams_reach_receive_other_beside_dtls(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, other_datagrams=8
    ) as server, DtlsEndpoint(
        await fake_socket(net, *CLIENT), other_datagrams=8
    ) as client:
        conn = await client.connect(SERVER, client_ctx, server_hostname=False)
        theirs = await server.accept()
        # The same 5-tuple carries STUN, DTLS and RTP, as in WebRTC.
        await client.send_other(STUN, SERVER)
        await conn.send(b"dtls")
        await client.send_other(RTP, SERVER)
        assert await server.receive_other() == (STUN, CLIENT)
        assert await server.receive_other() == (RTP, CLIENT)
        assert await theirs.receive() == b"dtls"
        # The other way, and from someone without an association.
        await server.send_other(STUN[:1] + b"\x01" + STUN[2:], CLIENT)
        assert await client.receive_other() == (STUN[:1] + b"\x01" + STUN[2:], SERVER)
        stranger = await fake_socket(net, *STRANGER)
        await stranger.sendto(RTP, SERVER)
        assert await server.receive_other() == (RTP, STRANGER)
        stats = server.statistics()
        assert (stats.other_received, stats.other_dropped, stats.junk_dropped) == (3, 0, 0)
        assert theirs.statistics().records_rejected == 0


async def test_a_full_inbox_drops_and_counts_and_dtls_goes_on(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    net = FakeNetwork(recv_buffer=1000)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, other_datagrams=4
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT), other_datagrams=1) as client:
        conn = await client.connect(SERVER, client_ctx, server_hostname=False)
        theirs = await server.accept()
        for i in range(10):
            await client.send_other(RTP + bytes([i]), SERVER)
        await conn.send(b"still here")
        assert await theirs.receive() == b"still here"
        received = []
        for _ in range(4):
            received.append(await server.receive_other())
        assert [data[-1] for data, _ in received] == [0, 1, 2, 3]
        stats = server.statistics()
        assert (stats.other_received, stats.other_dropped) == (10, 6)
        with trio.move_on_after(1):
            await server.receive_other()
            pytest.fail("only four fitted")  # pragma: no cover


async def test_by_default_other_datagrams_are_junk(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        stranger = await fake_socket(net, *STRANGER)
        await stranger.sendto(STUN, SERVER)
        await trio.sleep(1)
        stats = server.statistics()
        assert (stats.junk_dropped, stats.other_received) == (1, 0)
        with pytest.raises(RuntimeError, match="other_datagrams"):
            await server.receive_other()


async def test_send_other_refuses_what_would_look_like_dtls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as ep:
        for first in (20, 22, 23, 63):
            with pytest.raises(ValueError, match="RFC 7983"):
                await ep.send_other(bytes([first]) + b"data", SERVER)
        with pytest.raises(ValueError, match="empty"):
            await ep.send_other(b"", SERVER)
        with pytest.raises(TypeError, match="bytes-like"):
            await ep.send_other("text", SERVER)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="tuple"):
            await ep.send_other(STUN, "10.0.0.1:4433")  # type: ignore[arg-type]
        assert ep.statistics().datagrams_out == 0
    with pytest.raises(trio.ClosedResourceError):
        await ep.send_other(STUN, SERVER)


async def test_an_empty_datagram_is_junk_not_other(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context
) -> None:
    # It has no first byte to demultiplex by; an application that reads
    # data[0] (as RFC 7983's demultiplexer does) must never be handed one.
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, other_datagrams=4
    ) as server:
        stranger = await fake_socket(net, *STRANGER)
        await stranger.sendto(b"", SERVER)
        await stranger.sendto(STUN, SERVER)
        assert await server.receive_other() == (STUN, STRANGER)
        stats = server.statistics()
        assert (stats.junk_dropped, stats.other_received) == (1, 1)


class _Names(trio.abc.HostnameResolver):
    """A resolver that knows one name, so no test depends on real DNS."""

    async def getaddrinfo(
        self,
        host: bytes | None,
        port: bytes | str | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[Any]:
        if host != b"stun.example":
            raise socket.gaierror(socket.EAI_NONAME, "unknown name")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (SERVER[0], int(port or 0)))]

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        raise NotImplementedError  # pragma: no cover


async def test_send_other_resolves_names_like_connect(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A STUN server is usually known by name. Before, the name went to the
    # socket's own sendto, which resolves it with a blocking lookup.
    net = FakeNetwork()
    previous = trio.socket.set_custom_hostname_resolver(_Names())
    try:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as ep:
            server = await fake_socket(net, *SERVER)
            await ep.send_other(STUN, ("stun.example", SERVER[1]))
            with trio.fail_after(1):
                assert await server.recvfrom(2048) == (STUN, CLIENT)
            with pytest.raises(OSError, match="resolve"):
                await ep.send_other(STUN, ("nowhere.example", 3478))
            with pytest.raises(ValueError, match="port"):
                await ep.send_other(STUN, (SERVER[0], "4433"))  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="host"):
                await ep.send_other(STUN, (None, 4433))  # type: ignore[arg-type]
            assert ep.statistics().datagrams_out == 1
    finally:
        trio.socket.set_custom_hostname_resolver(previous)
