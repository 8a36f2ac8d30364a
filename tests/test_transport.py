"""The transport on a real loopback socket: batches, triage, order."""

from __future__ import annotations

import socket

import trio
import trio.testing

from trio_dtlsmux._transport import Transport

from .conftest import udp_socket


async def test_newcomers_wait_for_the_rest_of_their_batch() -> None:
    # Under a storm of hellos, the peers already there are served first:
    # within a batch, what can_wait marks is handled after the others.
    sock = await udp_socket()
    transport = Transport(sock)
    transport.open()
    seen: list[bytes] = []

    def handler(data: bytes, address: object, now: float) -> list[bytes]:
        seen.append(data)
        return []

    datagrams = [b"\x16hello-1", b"\x17data-1", b"\x16hello-2", b"\x17data-2"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for datagram in datagrams:  # all queued before the loop reads any
            sender.sendto(datagram, sock.getsockname())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                transport.receive_loop, handler, lambda data, address: data[0] == 0x16
            )
            while len(seen) < len(datagrams):
                await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    transport.close()
    assert seen == [b"\x17data-1", b"\x17data-2", b"\x16hello-1", b"\x16hello-2"]
    assert transport.counters.datagrams_in == 4
