"""The socket: batched reads, ordered sends, and socket errors counted.

Theory of operation
-------------------

The endpoint owns one UDP socket, because with UDP there is no socket per
connection and OpenSSL cannot tell peers apart. This module is the only code
that touches it.

* On a real socket the transport keeps a non-blocking **twin** (a duplicated
  descriptor). The receive loop waits for readability once and then drains
  whatever the kernel has queued, up to a batch, reading the clock once per
  batch; each datagram is handed to a synchronous handler that returns the
  replies. Datagrams the endpoint says may wait (handshakes: a stranger's
  hello, a peer still handshaking) are held back, in order, and handled
  after the others for at most ``_DEFERRED_BUDGET`` of each turn, so that a
  storm of handshakes cannot hold up established peers; the rest wait for
  the next turn, and beyond ``_MAX_DEFERRED`` new ones are dropped and
  counted. Work the endpoint deferred (hellos waiting for a handshake slot)
  runs at the end of each turn. Fakes (``trio_dtlsmux.testing.FakeSocket``) and sockets without a
  descriptor are read one ``recvfrom`` at a time.
* **Sends keep their order.** A send goes straight to the kernel through the
  twin while the kernel has room. Only a send that must wait goes through
  Trio's socket, behind one lock (a trio socket refuses two tasks waiting to
  write at once), and while one waits, later sends queue behind it rather
  than overtake it.
* **Socket errors are counted, never raised**: ENOBUFS, an ICMP error or
  EMSGSIZE concern one datagram; EBADF means the endpoint is closing.
* **The kernel's side** (:mod:`._kernel`): at open the socket's buffers are
  raised to the configured sizes, and on Linux its error queue is turned on
  (``IP_RECVERR``), so an ICMP port-unreachable names the peer it is about.
  Once it is on, a pending ICMP error makes the next ``recvfrom`` or
  ``sendto`` fail, whatever address that one is for; so after any such
  failure, and after any wake-up that brought no datagram, the queue is
  drained and each error handed to the error handler with its address. A
  send that failed on another peer's error is made once more.
"""

from __future__ import annotations

import errno
import os
import socket as _stdlib_socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from ._addresses import normalize_address
from ._kernel import (
    SocketError,
    enable_error_queue,
    kernel_drops,
    read_error_queue,
    tune_buffers,
)
from ._statistics import TrafficCounters

__all__ = ["DatagramHandler", "ErrorHandler", "Transport"]

_RECV_SIZE = 65536
#: Datagrams read per turn of the receive task.
_RECV_BATCH = 1024
#: Datagrams that may wait (handshakes) held back at most, across turns.
_MAX_DEFERRED = 4096
#: Seconds of each turn spent on the datagrams that wait, at most.
_DEFERRED_BUDGET = 0.005

#: ``handler(data, address, now) -> replies to address``
DatagramHandler = Callable[[bytes, Any, float], list[bytes]]
#: ``can_wait(data, address) -> bool``: may this datagram be handled after
#: the rest of its batch (a newcomer's hello, under load)?
Triage = Callable[[bytes, Any], bool]


#: ``after_batch(now) -> (sends, more)``: work deferred to the end of a batch
#: (waiting hellos admitted): ``(address, datagrams)`` pairs to send, and
#: whether more is ready to run after the other tasks have had a turn.
AfterBatch = Callable[[float], tuple[list[tuple[Any, list[bytes]]], bool]]


def _never(data: bytes, address: Any) -> bool:
    return False


def _nothing_after(now: float) -> tuple[list[tuple[Any, list[bytes]]], bool]:
    return [], False
#: ``on_errors(errors, now)``: ICMP errors from the socket's error queue
ErrorHandler = Callable[[list[SocketError], float], None]


def _ignore_errors(errors: list[SocketError], now: float) -> None:
    pass


def _kernel_socket(sock: Any) -> _stdlib_socket.socket | None:
    """A non-blocking twin of a real trio socket, for the fast paths.

    Reading what is already queued and writing while the kernel has room
    need no scheduler round trip. The twin shares the kernel socket (a
    duplicated descriptor), so it sees the same datagrams and sends from
    the same address. Fakes and anything without a real descriptor get
    ``None`` and use the trio socket alone.
    """
    if not isinstance(sock, trio.socket.SocketType):
        return None
    try:
        fd = sock.fileno()
        if fd < 0:
            return None
        raw = _stdlib_socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError):
        return None
    raw.setblocking(False)
    return raw


class Transport:
    """One UDP socket, read in batches and written in order."""

    def __init__(
        self,
        sock: Any,
        *,
        receive_buffer: int | None = None,
        send_buffer: int | None = None,
    ) -> None:
        self.sock = sock
        self.counters = TrafficCounters()
        #: What the socket's buffers are after open(), as the kernel reports
        #: them (Linux reports twice the size set: its bookkeeping budget).
        self.receive_buffer: int | None = None
        self.send_buffer: int | None = None
        self._wanted_buffers = (receive_buffer, send_buffer)
        self._raw: _stdlib_socket.socket | None = None
        self._error_queue = False
        self._on_errors: ErrorHandler = _ignore_errors
        self._send_lock = trio.Lock()
        # Tasks inside _send_waiting; while there are any, nobody may jump
        # the queue with a direct send.
        self._send_waiters = 0

    def open(self, on_errors: ErrorHandler | None = None) -> None:
        """Make the twin (if the socket has a real descriptor), raise the
        buffers, and turn on the error queue, whose errors go to
        ``on_errors``."""
        self._raw = _kernel_socket(self.sock)
        if on_errors is not None:
            self._on_errors = on_errors
        self._tune_buffers()
        if self._raw is not None:
            self._error_queue = enable_error_queue(self._raw)

    def _tune_buffers(self) -> None:
        target: Any = self._raw if self._raw is not None else self.sock
        try:
            have = (
                int(target.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF)),
                int(target.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_SNDBUF)),
            )
        except (OSError, AttributeError, TypeError, ValueError):
            return  # a socket-like object without options: leave it alone
        # Only ever raise: a socket its owner enlarged keeps what it has.
        wanted = [
            size if size is not None and size > current else None
            for size, current in zip(self._wanted_buffers, have, strict=True)
        ]
        try:
            self.receive_buffer, self.send_buffer = tune_buffers(target, *wanted)
        except (OSError, ValueError):
            self.receive_buffer, self.send_buffer = have

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped for this socket (None: unknown)."""
        if self._raw is None:
            return None
        try:
            return kernel_drops(self._raw)
        except OSError:
            return None

    def _drain_errors(self, now: float) -> list[SocketError]:
        """Take the socket's queued ICMP errors and hand them on."""
        if not self._error_queue or self._raw is None:
            return []
        try:
            errors = read_error_queue(self._raw)
        except OSError:
            return []
        if errors:
            self.counters.socket_errors += len(errors)
            self._on_errors(errors, now)
        return errors

    def close(self) -> None:
        self.sock.close()
        if self._raw is not None:
            self._raw.close()

    # -- sending -------------------------------------------------------------

    async def send(self, datagrams: list[bytes], address: Any) -> None:
        """Send datagrams to one address, in order; errors are counted.

        This is not a checkpoint when the kernel takes every datagram at
        once (the usual case): the receive loop sends replies without
        yielding between datagrams, and callers that must checkpoint do so.
        """
        for index, datagram in enumerate(datagrams):
            if not self._try_send(datagram, address):
                await self._send_waiting(datagrams[index:], address)
                return

    def _try_send(self, datagram: bytes, address: Any) -> bool:
        """Send one datagram if the kernel takes it now.

        Returns False, having done nothing, when it has to wait: there is no
        twin, the socket's buffer is full, or other sends are already
        waiting (which would be overtaken).
        """
        raw = self._raw
        if raw is None or self._send_waiters:
            return False
        counters = self.counters
        try:
            raw.sendto(datagram, address)
        except BlockingIOError:
            return False
        except OSError:
            if not self._sent_after_error(raw, datagram, address):
                return True
        counters.datagrams_out += 1
        counters.bytes_out += len(datagram)
        return True

    def _sent_after_error(
        self, raw: _stdlib_socket.socket, datagram: bytes, address: Any
    ) -> bool:
        """A send failed: was it another peer's ICMP error? Then the
        datagram never left; drain the queue and send it once more.

        Returns whether the datagram was sent in the end. ENOBUFS, EMSGSIZE
        and this peer's own ICMP error concern this datagram only; EBADF
        means the endpoint is closing.
        """
        errors = self._drain_errors(trio.current_time())
        if errors and not any(error.address == normalize_address(address) for error in errors):
            try:
                raw.sendto(datagram, address)
                return True
            except OSError:
                pass
        if not errors:
            self.counters.socket_errors += 1
        return False

    async def _send_waiting(self, datagrams: list[bytes], address: Any) -> None:
        counters = self.counters
        lock = self._send_lock
        self._send_waiters += 1
        try:
            # A free lock is taken without a checkpoint: a yield here would
            # let an endpoint that is closing cancel an alert or a goodbye.
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                for datagram in datagrams:
                    try:
                        await self.sock.sendto(datagram, address)
                    except OSError as exc:
                        if exc.errno == errno.EBADF:
                            counters.socket_errors += 1
                            return  # the socket is closed: the endpoint is ending
                        # This datagram only (another peer's ICMP error is
                        # drained and handed on; this one is not retried).
                        if not self._drain_errors(trio.current_time()):
                            counters.socket_errors += 1
                        continue
                    except (trio.ClosedResourceError, trio.BusyResourceError):
                        counters.socket_errors += 1
                        return
                    counters.datagrams_out += 1
                    counters.bytes_out += len(datagram)
            finally:
                lock.release()
        finally:
            self._send_waiters -= 1

    # -- receiving -------------------------------------------------------------

    @trio.lowlevel.enable_ki_protection
    async def receive_loop(
        self,
        handler: DatagramHandler,
        can_wait: Triage = _never,
        after_batch: AfterBatch = _nothing_after,
    ) -> None:
        """Read datagrams until the socket closes, handing each to
        ``handler`` and sending the replies it returns.

        Within each batch, the datagrams for which ``can_wait`` is true
        (newcomers' hellos) are handled after all the others, so that under
        a storm of handshakes the peers already there are served first.
        After each batch ``after_batch`` runs the deferred work (a slice of
        the hellos waiting for a handshake slot); while it says more is
        ready, the loop only yields to the other tasks before reading and
        running it again, instead of waiting for the next datagram.

        Ctrl-C never lands in the middle of routing a datagram: the task
        is protected, so Trio delivers the ``KeyboardInterrupt`` to the
        main task at its next checkpoint instead.
        """
        if self._raw is None:
            await self._receive_one_at_a_time(handler, after_batch)
        else:
            await self._receive_batched(self._raw, handler, can_wait, after_batch)

    async def _run_after(self, after_batch: AfterBatch, now: float) -> bool:
        """Run the deferred work once and send what it made; whether more
        is ready."""
        sends, more = after_batch(now)
        for address, datagrams in sends:
            await self.send(datagrams, address)
        return more

    async def _receive_one_at_a_time(
        self, handler: DatagramHandler, after_batch: AfterBatch
    ) -> None:
        sock = self.sock
        counters = self.counters
        while True:
            while await self._run_after(after_batch, trio.current_time()):
                await trio.lowlevel.checkpoint()
            try:
                data, address = await sock.recvfrom(_RECV_SIZE)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                # ICMP errors (ECONNREFUSED after sending to a closed port)
                # concern one peer; the endpoint goes on.
                counters.socket_errors += 1
                continue
            except trio.ClosedResourceError:
                return
            counters.datagrams_in += 1
            counters.bytes_in += len(data)
            replies = handler(data, address, trio.current_time())
            if replies:
                await self.send(replies, address)

    async def _receive_batched(
        self,
        raw: _stdlib_socket.socket,
        handler: DatagramHandler,
        can_wait: Triage,
        after_batch: AfterBatch,
    ) -> None:
        """Everything the kernel has queued, read per wake-up of the task.

        One wait for readability per batch, not a scheduler round trip per
        datagram; the batch is capped so the loop stays fair to the other
        tasks, and one clock reading serves the whole batch.
        """
        counters = self.counters
        recvfrom = raw.recvfrom
        clock = time.perf_counter
        more = False
        # Datagrams that may wait (handshakes), oldest first, kept across
        # turns while established peers are served first.
        later: deque[tuple[bytes, Any]] = deque()
        while True:
            polled = more
            try:
                if more:
                    # Work is ready: let the other tasks run, then read what
                    # came meanwhile (if anything) and go on.
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(raw)
            except (trio.ClosedResourceError, OSError):
                return
            now = trio.current_time()
            received = False
            for _ in range(_RECV_BATCH):
                try:
                    data, address = recvfrom(_RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    # ICMP errors (ECONNREFUSED after sending to a closed
                    # port) concern one peer; the endpoint goes on.
                    if not self._drain_errors(now):
                        counters.socket_errors += 1
                    continue
                received = True
                counters.datagrams_in += 1
                counters.bytes_in += len(data)
                if can_wait(data, address):
                    if len(later) < _MAX_DEFERRED:
                        later.append((data, address))
                    else:
                        counters.handshake_datagrams_dropped += 1
                    continue
                replies = handler(data, address, now)
                if replies:
                    await self.send(replies, address)
            if later:
                budget_end = clock() + _DEFERRED_BUDGET
                while later:
                    data, address = later.popleft()
                    replies = handler(data, address, now)
                    if replies:
                        await self.send(replies, address)
                    if clock() >= budget_end:
                        break
            more = await self._run_after(after_batch, now) or bool(later)
            if not received and not polled:
                # Woken with nothing to read: the error queue has something
                # (its errors keep the socket readable until drained).
                self._drain_errors(now)
