"""One peer's inbox: the messages the receive task delivered, waiting for
the application to read them.

A ``trio.open_memory_channel`` would do, and did, but an endpoint makes one
per peer: in a handshake storm thousands a second, and a server with many
established peers keeps thousands alive. A memory channel pair is about a
dozen objects that the cycle collector tracks (its state, two ordered
dicts of waiting tasks, sets of open handles, parking lots, statistics),
and making one was about 7 % of the server's CPU per handshake in a
profile. What a peer needs is smaller: one producer that never waits (the
receive task drops a message when the inbox is full, and counts it) and
readers that wait in order. This is that: a deque of messages and a dict of
waiting tasks, with Trio's low-level parking.

The semantics are a memory channel's, as the connection relies on them:

* ``send_nowait``: hands the message to the longest-waiting reader, or
  queues it if fewer than ``capacity`` are queued, or raises
  ``trio.WouldBlock``; ``trio.BrokenResourceError`` once the readers'
  side is closed, ``trio.ClosedResourceError`` once the sending side is.
* ``close_sending``: readers drain what is queued, then get
  ``trio.EndOfChannel``.
* ``close_receiving``: queued messages are discarded and readers (waiting
  or later) get ``trio.ClosedResourceError``.
* ``receive`` is a checkpoint whether or not a message is waiting; a
  reader cancelled while waiting loses nothing (a message is only ever
  handed to a reader that Trio will resume).
"""

from __future__ import annotations

from collections import deque

import outcome
import trio

__all__ = ["Inbox"]


class Inbox:
    """A bounded FIFO of messages; see the module docs."""

    __slots__ = ("_capacity", "_messages", "_readers", "_receiving_closed", "_sending_closed")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._messages: deque[bytes] = deque()
        # Waiting readers, oldest first (a dict: O(1) removal on cancel).
        self._readers: dict[trio.lowlevel.Task, None] = {}
        self._sending_closed = False
        self._receiving_closed = False

    def __len__(self) -> int:
        """Messages queued."""
        return len(self._messages)

    def send_nowait(self, message: bytes) -> None:
        if self._sending_closed:
            raise trio.ClosedResourceError("the inbox's sending side is closed")
        if self._receiving_closed:
            raise trio.BrokenResourceError("the inbox's readers are gone")
        readers = self._readers
        if readers:
            task = next(iter(readers))
            del readers[task]
            trio.lowlevel.reschedule(task, outcome.Value(message))
            return
        if len(self._messages) >= self._capacity:
            raise trio.WouldBlock
        self._messages.append(message)

    def close_sending(self) -> None:
        """No more messages will come: readers get ``EndOfChannel`` once
        the queue is empty."""
        if self._sending_closed:
            return
        self._sending_closed = True
        self._wake_all(trio.EndOfChannel)

    def close_receiving(self) -> None:
        """The readers are done: queued messages are dropped, and every
        reader gets ``ClosedResourceError``."""
        if self._receiving_closed:
            return
        self._receiving_closed = True
        self._messages.clear()
        self._wake_all(trio.ClosedResourceError)

    def _wake_all(self, error: type[Exception]) -> None:
        readers, self._readers = self._readers, {}
        for task in readers:
            trio.lowlevel.reschedule(task, outcome.Error(error()))

    def receive_nowait(self) -> bytes:
        if self._receiving_closed:
            raise trio.ClosedResourceError("the inbox was closed")
        if self._messages:
            return self._messages.popleft()
        if self._sending_closed:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    async def receive(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            message = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message
        task = trio.lowlevel.current_task()
        readers = self._readers
        readers[task] = None

        def abort(_: object) -> trio.lowlevel.Abort:
            readers.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        delivered: bytes = await trio.lowlevel.wait_task_rescheduled(abort)
        return delivered
