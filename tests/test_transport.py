"""The transport on a real loopback socket: batches, triage, order."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from trio_dtlsmux import _transport
from trio_dtlsmux._transport import Transport

from .conftest import udp_socket


def is_handshake(data: bytes, address: object) -> bool:
    return data[0] == 0x16


async def open_transport() -> Transport:
    transport = Transport(await udp_socket())
    transport.open()
    return transport


async def run_until(
    transport: Transport,
    handler: Callable[[bytes, object, float], list[bytes]],
    done: Callable[[], Awaitable[object]],
) -> None:
    """Run the receive loop (handshake records may wait) until ``done()``
    returns, then close the transport."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(transport.receive_loop, handler, is_handshake)
            await done()
            nursery.cancel_scope.cancel()
    transport.close()


async def test_newcomers_wait_for_the_rest_of_their_batch() -> None:
    # Under a storm of hellos, the peers already there are served first:
    # within a batch, what can_wait marks is handled after the others.
    transport = await open_transport()
    seen: list[bytes] = []

    def handler(data: bytes, address: object, now: float) -> list[bytes]:
        seen.append(data)
        return []

    datagrams = [b"\x16hello-1", b"\x17data-1", b"\x16hello-2", b"\x17data-2"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:  # all queued before the loop reads any
            sender.sendto(datagram, transport.sock.getsockname())

    async def all_seen() -> None:
        while len(seen) < len(datagrams):
            await trio.testing.wait_all_tasks_blocked()

    await run_until(transport, handler, all_seen)
    assert seen == [b"\x17data-1", b"\x17data-2", b"\x16hello-1", b"\x16hello-2"]
    assert transport.counters.datagrams_in == 4


async def test_handshakes_are_served_in_slices_between_established_peers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With no time budget, each turn of the loop handles one datagram that
    # may wait; whatever an established peer sent meanwhile goes first.
    monkeypatch.setattr(_transport, "_DEFERRED_BUDGET", 0.0)
    transport = await open_transport()
    target = transport.sock.getsockname()
    seen: list[bytes] = []
    all_seen = trio.Event()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def handler(data: bytes, address: object, now: float) -> list[bytes]:
        seen.append(data)
        if len(seen) == 4:
            all_seen.set()
        if data == b"\x16hello-1":
            # Arrives while hello-2 and hello-3 still wait.
            sender.sendto(b"\x17data-1", target)
        return []

    with sender:
        for datagram in (b"\x16hello-1", b"\x16hello-2", b"\x16hello-3"):
            sender.sendto(datagram, target)
        await run_until(transport, handler, all_seen.wait)
    assert seen == [b"\x16hello-1", b"\x17data-1", b"\x16hello-2", b"\x16hello-3"]


async def test_held_back_datagrams_are_bounded_and_the_excess_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_transport, "_MAX_DEFERRED", 2)
    transport = await open_transport()
    seen: list[bytes] = []

    def handler(data: bytes, address: object, now: float) -> list[bytes]:
        seen.append(data)
        return []

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for i in range(4):
            sender.sendto(b"\x16hello-%d" % i, transport.sock.getsockname())
        sender.sendto(b"\x17data", transport.sock.getsockname())

    async def all_read() -> None:
        while transport.counters.datagrams_in < 5:
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()

    await run_until(transport, handler, all_read)
    # Established traffic is never the one shed.
    assert seen == [b"\x17data", b"\x16hello-0", b"\x16hello-1"]
    assert transport.counters.handshake_datagrams_dropped == 2


async def test_deferred_work_runs_again_without_a_new_datagram() -> None:
    transport = await open_transport()
    peer = await udp_socket()
    calls = 0

    def after_batch(now: float) -> tuple[list[tuple[object, list[bytes]]], bool]:
        # Three slices of work, each with a datagram to send.
        nonlocal calls
        calls += 1
        if calls > 3:
            return [], False
        return [(peer.getsockname(), [b"slice %d" % calls])], calls < 3

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"\x17wake up", transport.sock.getsockname())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                transport.receive_loop, lambda *args: [], lambda *args: False, after_batch
            )
            received = [(await peer.recvfrom(100))[0] for _ in range(3)]
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    transport.close()
    peer.close()
    assert received == [b"slice 1", b"slice 2", b"slice 3"]
    assert calls == 3  # and then it waited for a datagram
