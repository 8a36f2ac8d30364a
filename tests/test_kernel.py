"""What the kernel tells us about a UDP socket: buffers, drops, ICMP errors.

These tests talk to the real Linux kernel over loopback (127.0.0.1, ::1), a
few datagrams each. Nothing sleeps: where the kernel works asynchronously,
a test polls the socket with a timeout, a bounded number of times.

The ICMP tests also pin down how ``IP_RECVERR`` changes ordinary reads and
sends, since the endpoint's receive loop relies on exactly that; the module
docstring of ``trio_dtlsmux._kernel`` lists the claims they check.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_dtlsmux import _kernel
from trio_dtlsmux._addresses import normalize_address
from trio_dtlsmux._kernel import (
    SocketError,
    buffer_limits,
    enable_error_queue,
    kernel_drops,
    read_error_queue,
    tune_buffers,
)

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="SO_MEMINFO, /proc/net/udp and IP_RECVERR are Linux interfaces",
)

V4 = "127.0.0.1"
V6 = "::1"
IP_RECVERR = 11
IPV6_RECVERR = 25


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind((V6, 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback (::1)")
both_families = pytest.mark.parametrize(
    "host", [V4, pytest.param(V6, marks=needs_ipv6)], ids=["ipv4", "ipv6"]
)

UdpFactory = Callable[..., socket.socket]


@pytest.fixture
def udp() -> Iterator[UdpFactory]:
    """Make non-blocking UDP sockets bound on loopback; all closed afterwards."""
    made: list[socket.socket] = []

    def make(
        host: str = V4, *, family: int | None = None, rcvbuf: int | None = None
    ) -> socket.socket:
        if family is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        made.append(sock)
        if family == socket.AF_INET6 and host == "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if rcvbuf is not None:
            # Set before bind, so that nothing arrives under the old size.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    yield make
    for sock in made:
        sock.close()


def closed_port(host: str) -> int:
    """A loopback port where, a moment ago, something listened."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for(sock: socket.socket, wanted: int, *, seconds: float = 5.0) -> int:
    """Poll until ``sock`` reports all of ``wanted``; return what it reported.

    ``POLLERR`` is reported whatever was asked for, so asking for ``POLLIN``
    also sees the error queue.
    """
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    deadline = time.monotonic() + seconds
    while True:
        events = poller.poll(max(0.0, deadline - time.monotonic()) * 1000)
        mask = events[0][1] if events else 0
        if mask & wanted == wanted or time.monotonic() >= deadline:
            return mask
        # Only some of what was wanted: give the kernel a moment (a poll
        # with a short timeout, not a sleep) and look again.
        poller.poll(10)


def events_now(sock: socket.socket) -> int:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    events = poller.poll(0)
    return events[0][1] if events else 0


def drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    got = []
    while True:
        try:
            got.append(sock.recvfrom(65536))
        except BlockingIOError:
            return got


def key(host: str, port: int) -> tuple[Any, ...]:
    """The endpoint's routing key for an address (4-tuple on IPv6 sockets)."""
    return normalize_address((host, port, 0, 0) if ":" in host else (host, port))


def refuse(sock: socket.socket, host: str) -> tuple[Any, ...]:
    """Send to a closed port and wait until the error is back; its key."""
    port = closed_port(host.removeprefix("::ffff:"))
    sock.sendto(b"anyone there?", (host, port))
    assert wait_for(sock, select.POLLERR) & select.POLLERR, "no ICMP error came back"
    return key(host, port)


# -- socket buffers ------------------------------------------------------------


@linux
def test_buffer_limits_are_the_sysctls() -> None:
    with open("/proc/sys/net/core/rmem_max") as rmem:
        with open("/proc/sys/net/core/wmem_max") as wmem:
            expected = (int(rmem.read()), int(wmem.read()))
    assert buffer_limits() == expected


@linux
def test_tune_buffers_reports_the_kernels_doubled_figures(udp: UdpFactory) -> None:
    sock = udp()
    rmem_max, wmem_max = buffer_limits()
    assert rmem_max is not None and wmem_max is not None
    receive, send = min(100_000, rmem_max), min(50_000, wmem_max)
    assert tune_buffers(sock, receive, send) == (2 * receive, 2 * send)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * receive
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * send


@linux
def test_tune_buffers_is_capped_by_the_sysctl_even_for_root(udp: UdpFactory) -> None:
    # Root could exceed rmem_max with SO_RCVBUFFORCE; the operator's limit
    # must win anyway.
    rmem_max, wmem_max = buffer_limits()
    assert rmem_max is not None and wmem_max is not None
    sock = udp()
    assert tune_buffers(sock, 4 * rmem_max, 4 * wmem_max) == (
        2 * rmem_max,
        2 * wmem_max,
    )
    # Past what a C int holds: clamped, not an OverflowError.
    assert tune_buffers(sock, 2**40, None)[0] == 2 * rmem_max


@linux
def test_tune_buffers_none_leaves_a_buffer_alone(udp: UdpFactory) -> None:
    sock = udp()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 20_000)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 30_000)
    assert tune_buffers(sock, 10_000, None) == (20_000, 40_000)
    assert tune_buffers(sock, None, 12_000) == (20_000, 24_000)
    assert tune_buffers(sock, None, None) == (20_000, 24_000)


@linux
def test_tune_buffers_sets_what_is_asked_even_if_smaller(udp: UdpFactory) -> None:
    sock = udp()
    tune_buffers(sock, 200_000, 200_000)
    assert tune_buffers(sock, 10_000, 10_000) == (20_000, 20_000)


def test_tune_buffers_rejects_negative_sizes(udp: UdpFactory) -> None:
    with pytest.raises(ValueError, match="negative"):
        tune_buffers(udp(), -1, None)
    with pytest.raises(ValueError, match="negative"):
        tune_buffers(udp(), None, -1)


@linux
async def test_tune_buffers_borrows_a_trio_socket_without_closing_it() -> None:
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind((V4, 0))
        assert tune_buffers(sock, 50_000, None)[0] == 100_000
        # Still open and usable.
        await sock.sendto(b"still here", sock.getsockname())
        with trio.fail_after(5):
            assert (await sock.recvfrom(100))[0] == b"still here"


# -- kernel drop count ---------------------------------------------------------


@linux
@both_families
def test_kernel_drops_counts_datagrams_that_did_not_fit(
    udp: UdpFactory, host: str
) -> None:
    # 4,096 bytes asked, 8,192 granted: a handful of 1,000-byte datagrams
    # (2,304 bytes each as the kernel counts them) fit, the rest are lost.
    receiver = udp(host, rcvbuf=4096)
    sender = udp(host)
    before = kernel_drops(receiver)
    assert before == 0
    sent = 64
    for index in range(sent):
        sender.sendto(b"%04d" % index + bytes(996), receiver.getsockname())

    received: list[tuple[bytes, Any]] = []

    def dropped() -> int:
        count = kernel_drops(receiver)
        assert count is not None
        return count - before

    for _ in range(50):
        received += drain(receiver)
        if len(received) + dropped() >= sent:
            break
        wait_for(receiver, select.POLLIN, seconds=0.1)
    assert 0 < len(received) < sent, "the buffer should have overflowed"
    assert dropped() == sent - len(received)
    # Both ways of asking read the same counter.
    assert _kernel._drops_from_meminfo(receiver) == dropped() + before
    assert _kernel._drops_from_proc(receiver) == dropped() + before


@linux
def test_kernel_drops_falls_back_to_proc(
    udp: UdpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = udp(rcvbuf=4096)
    sender = udp()
    for _ in range(16):
        sender.sendto(bytes(1000), receiver.getsockname())
    for _ in range(50):
        proc = _kernel._drops_from_proc(receiver)
        if proc:
            break
        wait_for(receiver, select.POLLIN, seconds=0.1)
    assert proc is not None and proc > 0
    monkeypatch.setattr(_kernel, "_drops_from_meminfo", lambda sock: None)
    assert kernel_drops(receiver) == proc


@linux
def test_proc_reader_finds_only_its_own_row(udp: UdpFactory) -> None:
    # Many sockets: the row is picked by inode, not by a number that happens
    # to appear somewhere else in the table.
    crowd = [udp() for _ in range(20)]
    victim = udp(rcvbuf=4096)
    sender = udp()
    for _ in range(16):
        sender.sendto(bytes(1000), victim.getsockname())
    for _ in range(50):
        if _kernel._drops_from_meminfo(victim):
            break
        wait_for(victim, select.POLLIN, seconds=0.1)
    drops = _kernel._drops_from_meminfo(victim)
    assert drops is not None and drops > 0
    assert _kernel._drops_from_proc(victim) == drops
    assert all(_kernel._drops_from_proc(sock) == 0 for sock in crowd)


@linux
def test_kernel_drops_is_none_where_unavailable(udp: UdpFactory) -> None:
    sock = udp()
    sock.close()
    assert kernel_drops(sock) is None
    assert _kernel._drops_from_proc(sock) is None
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        assert kernel_drops(unix) is None


# -- ICMP errors: enabling and reading -----------------------------------------


@linux
def test_enable_error_queue_sets_the_options(udp: UdpFactory) -> None:
    v4 = udp(V4)
    assert enable_error_queue(v4) is True
    assert v4.getsockopt(socket.IPPROTO_IP, IP_RECVERR) == 1
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
        assert enable_error_queue(unix) is False


@linux
@needs_ipv6
def test_enable_error_queue_on_ipv6_sets_both(udp: UdpFactory) -> None:
    v6 = udp("::")
    assert enable_error_queue(v6) is True
    assert v6.getsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR) == 1
    assert v6.getsockopt(socket.IPPROTO_IP, IP_RECVERR) == 1


@linux
def test_without_recverr_a_refusal_is_invisible(udp: UdpFactory) -> None:
    # The operators' finding: nothing tells an unconnected socket that the
    # port is closed. A socket with RECVERR sends second; once its error is
    # back, the first socket's would have been too.
    port = closed_port(V4)
    plain, watcher = udp(), udp()
    enable_error_queue(watcher)
    plain.sendto(b"hello?", (V4, port))
    watcher.sendto(b"hello?", (V4, port))
    assert wait_for(watcher, select.POLLERR) & select.POLLERR
    assert events_now(plain) == 0
    assert plain.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert read_error_queue(plain) == []


CASES = [
    pytest.param("127.0.0.1", "127.0.0.1", "icmp", id="ipv4"),
    pytest.param("::1", "::1", "icmp6", id="ipv6", marks=needs_ipv6),
    pytest.param("::", "::ffff:127.0.0.1", "icmp", id="ipv4-mapped", marks=needs_ipv6),
]


@linux
@pytest.mark.parametrize(("bind", "peer", "origin"), CASES)
def test_error_queue_names_the_closed_port(
    udp: UdpFactory, bind: str, peer: str, origin: str
) -> None:
    sock = udp(bind)
    assert enable_error_queue(sock)
    target = refuse(sock, peer)
    assert read_error_queue(sock) == [SocketError(errno.ECONNREFUSED, target, origin)]
    assert read_error_queue(sock) == []
    assert events_now(sock) == 0


@linux
@needs_ipv6
def test_ipv4_mapped_errors_need_ip_recverr(udp: UdpFactory) -> None:
    # Only IPV6_RECVERR, as a naive enable would set: the IPv4 error is lost.
    # A second socket with both options is the witness that it came back.
    half, full = udp("::"), udp("::")
    half.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    enable_error_queue(full)
    port = closed_port(V4)
    half.sendto(b"x", ("::ffff:127.0.0.1", port))
    full.sendto(b"x", ("::ffff:127.0.0.1", port))
    assert wait_for(full, select.POLLERR) & select.POLLERR
    assert read_error_queue(half) == []
    assert len(read_error_queue(full)) == 1


@linux
def test_several_errors_come_out_in_order(udp: UdpFactory) -> None:
    sock = udp()
    enable_error_queue(sock)
    first = refuse(sock, V4)
    # Reading SO_ERROR clears the pending error, so the next send goes out.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    second = refuse(sock, V4)
    assert [error.address for error in read_error_queue(sock)] == [first, second]


@linux
def test_read_error_queue_stops_at_its_limit(udp: UdpFactory) -> None:
    sock = udp()
    enable_error_queue(sock)
    targets = []
    for _ in range(3):
        targets.append(refuse(sock, V4))
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    assert [e.address for e in read_error_queue(sock, limit=2)] == targets[:2]
    # What is left still makes the socket poll as erroring.
    assert events_now(sock) & select.POLLERR
    assert [e.address for e in read_error_queue(sock)] == targets[2:]


@linux
def test_read_error_queue_never_waits_on_a_socket_timeout(udp: UdpFactory) -> None:
    sock = udp()
    enable_error_queue(sock)
    sock.settimeout(2.0)
    started = time.monotonic()
    assert read_error_queue(sock) == []
    assert time.monotonic() - started < 1.0
    assert sock.gettimeout() == 2.0


def test_extended_error_parsing() -> None:
    def ancillary(code: int, origin: int, level: int = socket.IPPROTO_IP) -> Any:
        data = struct.pack("=IBBBBII", code, origin, 3, 3, 0, 0, 0) + bytes(16)
        return [
            (level, IP_RECVERR if level == socket.IPPROTO_IP else IPV6_RECVERR, data)
        ]

    parse = _kernel._socket_error
    assert parse(ancillary(111, 2), ("10.0.0.1", 9)) == SocketError(
        111, ("10.0.0.1", 9), "icmp"
    )
    assert parse(ancillary(113, 3, socket.IPPROTO_IPV6), ("::1", 9, 7, 2)) == (
        SocketError(113, ("::1", 9, 0, 2), "icmp6")
    )
    assert parse(ancillary(90, 1), ("10.0.0.1", 9)).origin == "local"  # type: ignore[union-attr]
    assert parse(ancillary(42, 6), ("10.0.0.1", 9)).origin == "other"  # type: ignore[union-attr]
    assert parse(ancillary(111, 2), None) == SocketError(111, (), "icmp")
    # Truncated or foreign control messages carry no error.
    assert (
        parse([(socket.IPPROTO_IP, IP_RECVERR, b"\x6f\x00")], ("10.0.0.1", 9)) is None
    )
    assert parse([(socket.SOL_SOCKET, 1, bytes(32))], ("10.0.0.1", 9)) is None
    assert parse([], ("10.0.0.1", 9)) is None


def test_everything_degrades_off_linux(
    udp: UdpFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_kernel, "_LINUX", False)
    sock = udp()
    assert buffer_limits() == (None, None)
    assert kernel_drops(sock) is None
    assert enable_error_queue(sock) is False
    assert read_error_queue(sock) == []


# -- ICMP errors: what RECVERR does to ordinary reads and sends ----------------


@linux
@both_families
def test_recvfrom_raises_the_error_once_and_loses_nothing(
    udp: UdpFactory, host: str
) -> None:
    sock, peer = udp(host), udp(host)
    enable_error_queue(sock)
    target = refuse(sock, host)
    peer.sendto(b"data", sock.getsockname())
    assert (
        wait_for(sock, select.POLLIN | select.POLLERR) == select.POLLIN | select.POLLERR
    )
    # The pending error comes first, although a datagram waits...
    with pytest.raises(ConnectionRefusedError):
        sock.recvfrom(100)
    # ...once: the datagram is next, and the queue still has the details.
    assert sock.recvfrom(100) == (b"data", peer.getsockname())
    assert read_error_queue(sock) == [
        SocketError(errno.ECONNREFUSED, target, "icmp" if host == V4 else "icmp6")
    ]
    assert events_now(sock) == 0


@linux
@both_families
def test_draining_first_clears_the_pending_error(udp: UdpFactory, host: str) -> None:
    sock, peer = udp(host), udp(host)
    enable_error_queue(sock)
    target = refuse(sock, host)
    peer.sendto(b"data", sock.getsockname())
    wait_for(sock, select.POLLIN | select.POLLERR)
    assert [error.address for error in read_error_queue(sock)] == [target]
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
    assert sock.recvfrom(100) == (b"data", peer.getsockname())


@linux
@both_families
def test_sendto_raises_the_pending_error_and_does_not_send(
    udp: UdpFactory, host: str
) -> None:
    sock, peer = udp(host), udp(host)
    enable_error_queue(sock)
    target = refuse(sock, host)
    # A send to an innocent, listening peer takes the blame...
    with pytest.raises(ConnectionRefusedError):
        sock.sendto(b"lost", peer.getsockname())
    sock.sendto(b"second", peer.getsockname())
    assert wait_for(peer, select.POLLIN) & select.POLLIN
    # ...and its datagram never left: the peer's first datagram is the second.
    assert [data for data, _ in drain(peer)] == [b"second"]
    assert [error.address for error in read_error_queue(sock)] == [target]


@linux
def test_an_undrained_queue_polls_as_error_without_data(udp: UdpFactory) -> None:
    sock = udp()
    enable_error_queue(sock)
    refuse(sock, V4)
    assert events_now(sock) == select.POLLERR
    # Reporting the pending error does not empty the queue: still POLLERR,
    # while recvfrom has nothing. A loop that stopped here would spin.
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
    assert events_now(sock) == select.POLLERR
    with pytest.raises(BlockingIOError):
        sock.recvfrom(100)
    read_error_queue(sock)
    assert events_now(sock) == 0


@linux
def test_queued_errors_take_receive_buffer_room(udp: UdpFactory) -> None:
    sock = udp()
    enable_error_queue(sock)
    refuse(sock, V4)
    counters = _kernel._meminfo(sock)
    assert counters is not None and counters[_kernel._SK_MEMINFO_RMEM_ALLOC] > 0
    read_error_queue(sock)
    counters = _kernel._meminfo(sock)
    assert counters is not None and counters[_kernel._SK_MEMINFO_RMEM_ALLOC] == 0


# -- the same with Trio, and the receive loop the endpoint should run ----------


async def trio_udp(host: str = V4) -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def wait_for_error(sock: trio.socket.SocketType) -> None:
    # Any readiness will do here: these sockets receive nothing else.
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(sock)


@linux
async def test_wait_readable_wakes_for_the_error_queue_alone() -> None:
    with await trio_udp() as sock, await trio_udp() as peer:
        assert enable_error_queue(sock)
        await sock.sendto(b"x", (V4, closed_port(V4)))
        await wait_for_error(sock)
        # Trio's recvfrom reports the pending error...
        with pytest.raises(ConnectionRefusedError):
            await sock.recvfrom(100)
        # ...and with the queue still full, wait_readable returns at once
        # although there is nothing to read (so Trio's recvfrom would spin).
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(sock)
        assert read_error_queue(sock) != []

        # Drained, the socket sleeps until a datagram comes.
        woke = trio.Event()

        async def waiter() -> None:
            await trio.lowlevel.wait_readable(sock)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await peer.sendto(b"wake up", sock.getsockname())
            with trio.fail_after(5):
                await woke.wait()


class Refusals:
    """What the endpoint would do with errors: fail the peer at the address."""

    def __init__(self) -> None:
        self.by_address: dict[tuple[Any, ...], list[int]] = {}
        self.changed = trio.Event()

    def attribute(self, errors: list[SocketError]) -> None:
        for error in errors:
            self.by_address.setdefault(error.address, []).append(error.errno)
        if errors:
            self.changed.set()
            self.changed = trio.Event()

    async def wait_for(self, address: tuple[Any, ...]) -> None:
        with trio.fail_after(5):
            while address not in self.by_address:
                await self.changed.wait()


def twin(sock: trio.socket.SocketType) -> socket.socket:
    """A non-blocking stdlib socket on a duplicate of ``sock``'s descriptor."""
    raw = socket.socket(fileno=os.dup(sock.fileno()))
    raw.setblocking(False)
    return raw


async def receive_loop(
    raw: socket.socket,
    refusals: Refusals,
    inbox: trio.MemorySendChannel[tuple[bytes, Any]],
    wakeups: list[int],
) -> None:
    """The pattern: wait, read a batch; drain the queue on an error or when
    a wake-up brought nothing."""
    while True:
        await trio.lowlevel.wait_readable(raw)
        wakeups[0] += 1
        received = 0
        for _ in range(64):
            try:
                data, address = raw.recvfrom(65536)
            except BlockingIOError:
                break
            except OSError:
                refusals.attribute(read_error_queue(raw))
                continue
            received += 1
            inbox.send_nowait((data, normalize_address(address)))
        if not received:
            refusals.attribute(read_error_queue(raw))


def send(raw: socket.socket, refusals: Refusals, data: bytes, address: Any) -> bool:
    """The send path's half; whether the datagram went.

    A refused send whose queue names only others carried someone else's
    error, and its datagram never left: send it once more.
    """
    try:
        raw.sendto(data, address)
    except OSError:
        errors = read_error_queue(raw)
        refusals.attribute(errors)
        if not errors or normalize_address(address) in {e.address for e in errors}:
            return False
        try:
            raw.sendto(data, address)
        except OSError:
            refusals.attribute(read_error_queue(raw))
            return False
    return True


@linux
@pytest.mark.parametrize("host", [V4, pytest.param(V6, marks=needs_ipv6)])
async def test_receive_loop_pattern(host: str) -> None:
    refusals = Refusals()
    inbox_in, inbox = trio.open_memory_channel[tuple[bytes, Any]](10)
    wakeups = [0]
    with await trio_udp(host) as sock, await trio_udp(host) as peer:
        assert enable_error_queue(sock)
        with twin(sock) as raw:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_loop, raw, refusals, inbox_in, wakeups)
                await trio.testing.wait_all_tasks_blocked()

                # A closed port: the receive loop learns of it at once.
                closed = key(host, closed_port(host))
                assert send(raw, refusals, b"hello?", closed[:2])
                await refusals.wait_for(closed)

                # A live peer's datagram still arrives.
                await peer.sendto(b"from peer", sock.getsockname())
                with trio.fail_after(5):
                    assert await inbox.receive() == (
                        b"from peer",
                        normalize_address(peer.getsockname()),
                    )

                # Another closed port and, with no checkpoint in between, a
                # send to the live peer: the send meets the pending error,
                # attributes it, and sends again.
                other = key(host, closed_port(host))
                assert send(raw, refusals, b"hello?", other[:2])
                assert send(raw, refusals, b"to peer", peer.getsockname())
                assert other in refusals.by_address
                with trio.fail_after(5):
                    assert (await peer.recvfrom(100))[0] == b"to peer"

                # Nothing spins: every task goes to sleep.
                with trio.fail_after(5):
                    await trio.testing.wait_all_tasks_blocked()
                assert wakeups[0] <= 4
                nursery.cancel_scope.cancel()
    assert refusals.by_address == {
        closed: [errno.ECONNREFUSED],
        other: [errno.ECONNREFUSED],
    }


@linux
async def test_receive_loop_heals_when_a_send_took_the_error() -> None:
    # A careless send path took the pending error and left the queue full:
    # every wait for readability now returns at once. The loop drains on an
    # empty wake-up, so it goes back to sleep.
    refusals = Refusals()
    inbox_in, _inbox = trio.open_memory_channel[tuple[bytes, Any]](10)
    wakeups = [0]
    with await trio_udp() as sock, await trio_udp() as peer, twin(sock) as raw:
        assert enable_error_queue(sock)
        closed = refuse(raw, V4)
        with pytest.raises(ConnectionRefusedError):
            raw.sendto(b"careless", peer.getsockname())
        assert events_now(raw) == select.POLLERR
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_loop, raw, refusals, inbox_in, wakeups)
            with trio.fail_after(5):
                await trio.testing.wait_all_tasks_blocked()
            assert refusals.by_address == {closed: [errno.ECONNREFUSED]}
            assert wakeups == [1]
            nursery.cancel_scope.cancel()


@linux
async def test_trio_recvfrom_loop_with_a_draining_send_path() -> None:
    # Built on Trio's own recvfrom instead, the loop relies on the send path
    # to drain what a send took. No receive loop yet, so the pending error
    # is certainly met by the send.
    refusals = Refusals()
    with await trio_udp() as sock, await trio_udp() as peer, twin(sock) as raw:
        assert enable_error_queue(sock)
        closed = refuse(raw, V4)
        assert send(raw, refusals, b"to peer", peer.getsockname())
        assert refusals.by_address == {closed: [errno.ECONNREFUSED]}
        with trio.fail_after(5):
            assert (await peer.recvfrom(100))[0] == b"to peer"

        async def trio_loop() -> None:
            while True:
                try:
                    await sock.recvfrom(65536)
                except OSError:
                    refusals.attribute(read_error_queue(sock))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio_loop)
            with trio.fail_after(5):
                await trio.testing.wait_all_tasks_blocked()
            # An error while it waits inside recvfrom comes out of it.
            again = key(V4, closed_port(V4))
            await sock.sendto(b"hello?", again[:2])
            await refusals.wait_for(again)
            nursery.cancel_scope.cancel()


@linux
async def test_tune_and_read_through_fake_sockets_degrade() -> None:
    from trio_dtlsmux.testing import FakeNetwork

    fake = FakeNetwork(seed=1).socket()
    await fake.bind((V4, 0))
    assert kernel_drops(fake) is None
    assert enable_error_queue(fake) is False
    assert read_error_queue(fake) == []
    # FakeSocket keeps the options it is given, and reports them undoubled.
    assert tune_buffers(fake, 1000, 2000) == (1000, 2000)
