"""Every async method is a Trio checkpoint, and a cancelled scope stops it
before it acts.

These run on real loopback sockets: there a send usually goes straight to
the kernel without yielding, which is exactly where a missing checkpoint
hides (the fake network's sockets always yield).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from OpenSSL import SSL

from trio_dtlsmux import DtlsConnection, DtlsEndpoint

from .conftest import udp_socket


class Pair:
    def __init__(
        self, server: DtlsEndpoint, client: DtlsEndpoint, conn: DtlsConnection, peer: DtlsConnection
    ) -> None:
        self.server = server
        self.client = client
        self.conn = conn  # the client's connection
        self.peer = peer  # the server's side of it


@pytest.fixture
async def pair(server_ctx: SSL.Context, client_ctx: SSL.Context) -> AsyncIterator[Pair]:
    async with DtlsEndpoint(
        await udp_socket(), server_context=server_ctx
    ) as server, DtlsEndpoint(await udp_socket()) as client:
        with trio.fail_after(10):
            conn = await client.connect(
                server.socket.getsockname(), client_ctx, server_hostname=False
            )
            peer = await server.accept()
        yield Pair(server, client, conn, peer)


async def receive_exactly(conn: DtlsConnection, expected: bytes) -> None:
    with trio.fail_after(10):
        assert await conn.receive() == expected


async def test_send_is_a_checkpoint(pair: Pair) -> None:
    with trio.testing.assert_checkpoints():
        await pair.conn.send(b"one")
    await receive_exactly(pair.peer, b"one")


async def test_send_in_a_cancelled_scope_sends_nothing(pair: Pair) -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await pair.conn.send(b"never")
    assert scope.cancelled_caught
    assert pair.conn.statistics().messages_out == 0
    # The next message is the first the peer sees.
    await pair.conn.send(b"first")
    await receive_exactly(pair.peer, b"first")


async def test_a_send_loop_sees_its_deadline(pair: Pair) -> None:
    # Before the fix, `while True: await conn.send(x)` never yielded on a
    # real socket, so its scope's deadline could not end it.
    # (Bounded, so that a regression fails instead of hanging.)
    with trio.CancelScope() as scope:
        scope.cancel()
        for _ in range(1000):
            await pair.conn.send(b"x")
    assert scope.cancelled_caught
    assert pair.conn.statistics().messages_out == 0


async def test_receive_is_a_checkpoint_and_a_cancelled_one_takes_nothing(
    pair: Pair,
) -> None:
    await pair.conn.send(b"waiting")
    with trio.fail_after(10):
        while pair.peer.statistics().messages_in == 0:
            await trio.lowlevel.checkpoint()  # checkpoints only: let the receive task run
    with trio.CancelScope() as scope:
        scope.cancel()
        await pair.peer.receive()
    assert scope.cancelled_caught
    with trio.testing.assert_checkpoints():
        assert await pair.peer.receive() == b"waiting"


async def test_receive_after_the_end_is_a_checkpoint(pair: Pair) -> None:
    await pair.conn.aclose()
    with trio.fail_after(10):
        while pair.peer.established:
            await trio.lowlevel.checkpoint()
    with trio.testing.assert_checkpoints(), pytest.raises(trio.EndOfChannel):
        await pair.peer.receive()
    with trio.testing.assert_checkpoints(), pytest.raises(trio.ClosedResourceError):
        await pair.conn.receive()


async def test_aclose_is_a_checkpoint_every_time(pair: Pair) -> None:
    with trio.testing.assert_checkpoints():
        await pair.conn.aclose()
    with trio.testing.assert_checkpoints():
        await pair.conn.aclose()


async def test_aclose_in_a_cancelled_scope_still_closes(pair: Pair) -> None:
    # Trio's rule for aclose: the resource is closed even when the call is
    # cancelled (then it raises Cancelled).
    with trio.CancelScope() as scope:
        scope.cancel()
        await pair.conn.aclose()
    assert scope.cancelled_caught
    assert not pair.conn.established
    with pytest.raises(trio.ClosedResourceError):
        await pair.conn.send(b"after close")


async def test_accept_is_a_checkpoint_and_a_cancelled_one_takes_nothing(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    async with DtlsEndpoint(
        await udp_socket(), server_context=server_ctx
    ) as server, DtlsEndpoint(await udp_socket()) as client:
        with trio.fail_after(10):
            await client.connect(server.socket.getsockname(), client_ctx, server_hostname=False)
            while server.statistics().handshakes_completed == 0:
                await trio.lowlevel.checkpoint()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.accept()
        assert scope.cancelled_caught
        with trio.testing.assert_checkpoints():
            conn = await server.accept()
        assert conn.established


async def test_connect_in_a_cancelled_scope_does_nothing(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    async with DtlsEndpoint(
        await udp_socket(), server_context=server_ctx
    ) as server, DtlsEndpoint(await udp_socket()) as client:
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.connect(server.socket.getsockname(), client_ctx, server_hostname=False)
        assert scope.cancelled_caught
        after = client.statistics()
        assert after.datagrams_out == 0
        assert after.peers == 0
        assert after.handshakes_failed == {}
        with trio.testing.assert_checkpoints(), trio.fail_after(10):
            await client.connect(server.socket.getsockname(), client_ctx, server_hostname=False)


async def test_serve_in_a_cancelled_scope_does_nothing(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    handled: list[Any] = []

    async def handler(conn: DtlsConnection) -> None:
        handled.append(conn)

    async with DtlsEndpoint(
        await udp_socket(), server_context=server_ctx
    ) as server, DtlsEndpoint(await udp_socket()) as client:
        with trio.fail_after(10):
            await client.connect(server.socket.getsockname(), client_ctx, server_hostname=False)
            while server.statistics().handshakes_completed == 0:
                await trio.lowlevel.checkpoint()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.serve(handler)
        assert scope.cancelled_caught
        assert handled == []
        # The connection is still there for the next accept.
        with trio.fail_after(10):
            assert (await server.accept()).established


async def test_endpoint_entry_and_exit_are_checkpoints(server_ctx: SSL.Context) -> None:
    endpoint = DtlsEndpoint(await udp_socket(), server_context=server_ctx)
    entered = False
    try:
        with trio.testing.assert_checkpoints():
            await endpoint.__aenter__()
            entered = True
    finally:
        if entered:
            with trio.testing.assert_checkpoints():
                await endpoint.__aexit__(None, None, None)


async def test_entering_in_a_cancelled_scope_opens_nothing(server_ctx: SSL.Context) -> None:
    sock = await udp_socket()
    endpoint = DtlsEndpoint(sock, server_context=server_ctx)
    with trio.CancelScope() as scope:
        scope.cancel()
        async with endpoint:
            pytest.fail("the body ran in a cancelled scope")  # pragma: no cover
    assert scope.cancelled_caught
    # Nothing was started, so the endpoint can still be entered, and the
    # socket is still open.
    async with endpoint as ep:
        assert ep.socket is sock


async def test_the_other_datagram_methods_are_checkpoints(server_ctx: SSL.Context) -> None:
    async with DtlsEndpoint(
        await udp_socket(), server_context=server_ctx, other_datagrams=4
    ) as server, DtlsEndpoint(await udp_socket(), other_datagrams=4) as client:
        address = server.socket.getsockname()
        with trio.CancelScope() as scope:
            scope.cancel()
            await client.send_other(b"\x00cancelled", address)
        assert scope.cancelled_caught
        assert client.statistics().datagrams_out == 0
        with trio.testing.assert_checkpoints():
            await client.send_other(b"\x00stun", address)
        with trio.fail_after(10):
            while server.statistics().other_received == 0:
                await trio.lowlevel.checkpoint()
        with trio.CancelScope() as scope:
            scope.cancel()
            await server.receive_other()
        assert scope.cancelled_caught
        with trio.testing.assert_checkpoints():
            data, _ = await server.receive_other()
        assert data == b"\x00stun"


def test_every_async_method_is_covered() -> None:
    # A new async method must get a test here too.
    covered = {
        DtlsEndpoint: {
            "__aenter__",
            "__aexit__",
            "accept",
            "connect",
            "serve",
            "receive_other",
            "send_other",
        },
        # trio.abc's own: __anext__ is receive(), __aexit__ is aclose(),
        # __aenter__ only returns the connection.
        DtlsConnection: {"send", "receive", "aclose", "__anext__", "__aenter__", "__aexit__"},
    }
    for cls, names in covered.items():
        found = {
            name
            for name in dir(cls)
            if (not name.startswith("_") or name.startswith("__a"))
            and inspect.iscoroutinefunction(getattr(cls, name))
        }
        assert found == names, cls
