"""A peer's inbox: a memory channel's semantics, with less to it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_dtlsmux._inbox import Inbox


async def test_messages_queue_up_to_capacity_then_would_block() -> None:
    inbox = Inbox(2)
    inbox.send_nowait(b"1")
    inbox.send_nowait(b"2")
    with pytest.raises(trio.WouldBlock):
        inbox.send_nowait(b"3")
    assert len(inbox) == 2
    assert [await inbox.receive(), inbox.receive_nowait()] == [b"1", b"2"]
    with pytest.raises(trio.WouldBlock):
        inbox.receive_nowait()


async def test_a_waiting_reader_gets_the_message_even_with_no_room() -> None:
    # inbox_size=0: a message goes only to a reader that already waits.
    inbox = Inbox(0)
    with pytest.raises(trio.WouldBlock):
        inbox.send_nowait(b"nobody waits")
    got: dict[int, bytes] = {}

    async def reader(index: int) -> None:
        got[index] = await inbox.receive()

    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(reader, index)
            await trio.testing.wait_all_tasks_blocked()
        inbox.send_nowait(b"first")
        inbox.send_nowait(b"second")
    # Readers are served in the order they started waiting.
    assert got == {0: b"first", 1: b"second"}


async def test_close_sending_lets_readers_drain_then_end() -> None:
    inbox = Inbox(4)
    inbox.send_nowait(b"last words")
    inbox.close_sending()
    inbox.close_sending()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        inbox.send_nowait(b"too late")
    assert await inbox.receive() == b"last words"
    with pytest.raises(trio.EndOfChannel):
        await inbox.receive()
    with pytest.raises(trio.EndOfChannel):
        inbox.receive_nowait()


async def test_close_sending_wakes_waiting_readers() -> None:
    inbox = Inbox(4)
    async with trio.open_nursery() as nursery:
        errors: list[type[BaseException]] = []

        async def reader() -> None:
            try:
                await inbox.receive()
            except trio.EndOfChannel as exc:
                errors.append(type(exc))

        nursery.start_soon(reader)
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close_sending()
    assert errors == [trio.EndOfChannel, trio.EndOfChannel]


async def test_close_receiving_discards_and_fails_readers_and_senders() -> None:
    inbox = Inbox(4)
    inbox.send_nowait(b"unread")
    async with trio.open_nursery() as nursery:
        failed = trio.Event()

        async def reader() -> None:
            assert inbox.receive_nowait() == b"unread"
            inbox.send_nowait(b"unread too")
            with pytest.raises(trio.ClosedResourceError):
                assert inbox.receive_nowait() == b"unread too"
                await inbox.receive()  # waits: nothing queued
            failed.set()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        inbox.close_receiving()
        await failed.wait()
    assert len(inbox) == 0
    with pytest.raises(trio.ClosedResourceError):
        inbox.receive_nowait()
    with pytest.raises(trio.BrokenResourceError):
        inbox.send_nowait(b"no one reads")


async def test_a_cancelled_reader_loses_nothing() -> None:
    inbox = Inbox(4)
    scopes: list[trio.CancelScope] = []

    async def reader() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await inbox.receive()
            pytest.fail("the cancelled reader got a message")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        scopes[0].cancel()
    inbox.send_nowait(b"kept")
    assert inbox.receive_nowait() == b"kept"


async def test_receive_is_a_checkpoint_even_with_a_message_waiting() -> None:
    inbox = Inbox(4)
    inbox.send_nowait(b"waiting")
    with trio.CancelScope() as scope:
        scope.cancel()
        await inbox.receive()
    assert scope.cancelled_caught
    assert inbox.receive_nowait() == b"waiting"  # still there
    inbox.send_nowait(b"again")
    with trio.testing.assert_checkpoints():
        assert await inbox.receive() == b"again"
