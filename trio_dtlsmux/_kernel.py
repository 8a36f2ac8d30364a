"""What the kernel knows about a UDP socket, for the endpoint's transport.

Theory of operation
-------------------

One UDP socket carries every peer, so three things the kernel keeps per
socket matter to the whole endpoint, and none of them is visible through
``recvfrom``/``sendto`` alone:

* **Buffers.** Datagrams wait in the socket's receive buffer until the
  receive task reads them. When a burst (hundreds of simultaneous
  handshakes) outruns the task, the kernel drops what does not fit, without
  telling anyone. :func:`tune_buffers` asks for more room, within the limits
  the operator set (``net.core.rmem_max``/``wmem_max``, read by
  :func:`buffer_limits`).
* **Drops.** The kernel does count those drops, per socket.
  :func:`kernel_drops` reads the count so that ``statistics()`` can show it.
* **ICMP errors.** A datagram sent to a port where nothing listens comes
  back as ICMP port unreachable. An unconnected UDP socket ignores it unless
  ``IP_RECVERR``/``IPV6_RECVERR`` is on (:func:`enable_error_queue`); then
  the kernel keeps each error, with the address the failed datagram was sent
  to, in the socket's error queue (:func:`read_error_queue`), so the
  endpoint can fail that one peer's handshake at once instead of waiting out
  its timeout.

Everything here is Linux-specific. Off Linux, or when the kernel lacks an
option, each function answers "don't know" (``None``, ``False``, ``[]``) or
leaves the socket alone; nothing raises for "unsupported". Functions take a
stdlib :class:`socket.socket` or anything with ``fileno()`` and ``family``
(a Trio socket); the latter is borrowed through a second stdlib socket
object on the same descriptor, which is detached, never closed.

What ``IP_RECVERR`` does to ordinary reads and sends (Linux)
------------------------------------------------------------

Each of these is checked by a test in ``tests/test_kernel.py``:

* An ICMP error queues an entry in the error queue **and** sets the
  socket's pending error (``SO_ERROR``). A pending error is reported by the
  *next* ``recvfrom`` **or** ``sendto`` on the socket, once, before
  anything else (as ``ConnectionRefusedError`` for port unreachable):
  ``recvfrom`` raises it even if datagrams are waiting (they are not lost;
  the next ``recvfrom`` returns them), and ``sendto`` raises it **without
  sending its datagram**, whichever peer that was meant for.
* Reading the error queue clears the pending error (after the last ICMP
  entry is read, the kernel resets it), so a loop that drains the queue
  first never sees the error from ``recvfrom``.
* While the error queue is not empty, ``poll`` reports ``POLLERR`` (without
  ``POLLIN`` if no datagram waits), ``epoll`` reports ``EPOLLERR``, and
  ``trio.lowlevel.wait_readable`` wakes. So once the pending error has been
  reported (by a ``sendto``, say) and the queue is left undrained, every
  wait for readability returns at once while ``recvfrom`` has nothing:
  Trio's ``recvfrom`` then spins. Whoever sees an ``OSError`` from
  ``recvfrom`` or ``sendto`` must drain the queue before waiting again.
* Queued errors take room in the receive buffer (they are charged to it
  like datagrams), another reason to drain promptly.
* On a dual-stack IPv6 socket, errors about IPv4-mapped peers come through
  the IPv4 stack and are queued only if ``IP_RECVERR`` is on as well;
  :func:`enable_error_queue` sets both. They are read like the others, with
  an IPv4-mapped address.
* Per the kernel source (``udp_send_skb``; not tested here), ``IP_RECVERR``
  also makes ``sendto`` report ``ENOBUFS`` when a local queue is full,
  which is otherwise swallowed.

The receive loop the endpoint should run, on a non-blocking stdlib socket
sharing the Trio socket's kernel socket (a twin on a duplicated
descriptor): wait, read a batch, and drain
the queue after an error or after a wake-up that brought no datagram::

    while True:
        await trio.lowlevel.wait_readable(raw)
        received = 0
        for _ in range(batch):
            try:
                data, address = raw.recvfrom(bufsize)
            except BlockingIOError:
                break
            except OSError:             # the pending error of an ICMP message
                attribute(read_error_queue(raw))
                continue
            received += 1
            ...                         # route the datagram
        if not received:                # woken by the error queue alone
            attribute(read_error_queue(raw))

where ``attribute`` fails the association at each ``error.address``. The
last two lines make the loop heal itself whoever took the pending error.
The send path does its part: on ``OSError`` from ``sendto``, drain and
attribute the queue, and if it held errors but none about the destination
just sent to, the error was someone else's and that datagram never left:
send it once more. A loop built on Trio's own ``recvfrom``, which waits
inside, cannot heal itself; there the send path's draining is what keeps
it from spinning.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import attrs

from ._addresses import normalize_address

__all__ = [
    "DEFAULT_RECEIVE_BUFFER",
    "DEFAULT_SEND_BUFFER",
    "SocketError",
    "buffer_limits",
    "enable_error_queue",
    "kernel_drops",
    "read_error_queue",
    "tune_buffers",
]

#: What the endpoint should ask for by default, in bytes.
#:
#: A buffer is a ceiling, not an allocation: it costs memory only while
#: datagrams wait in it. The kernel charges each queued datagram its
#: "truesize", the payload plus its bookkeeping, which on loopback is 1,280
#: bytes for a 200-byte ClientHello and 2,304 for a full 1,400-byte datagram
#: (measured on Linux 6.18), and on real network cards often a whole 2 or 4
#: KiB page. Linux's usual default of 212,992 bytes therefore holds only 92
#: full-size datagrams or 166 hellos (measured): 300 clients whose hellos
#: arrive together overflow it. Asked for 4 MiB, Linux grants a budget of 8
#: MiB (it doubles requests; see :func:`tune_buffers`), which held 3,640
#: full-size datagrams on loopback, and would still hold 2,000 at a 4 KiB
#: page each: several per peer for a burst of hundreds of handshakes. Under
#: the usual ``rmem_max`` of 212,992 the request gets 425,984, still twice
#: the default; the operator raises ``rmem_max`` to get the rest.
DEFAULT_RECEIVE_BUFFER: Final = 4 * 1024 * 1024
#: Sending rarely waits: a datagram leaves the send buffer once the device
#: has transmitted it, and a full buffer makes Trio's ``sendto`` wait rather
#: than drop. 1 MiB lets a burst of handshake flights (a certificate chain is
#: several datagrams per peer) go out without waiting.
DEFAULT_SEND_BUFFER: Final = 1 * 1024 * 1024

_LINUX: Final = sys.platform.startswith("linux")

# Linux's option numbers; Python's socket module does not define them all.
_IP_RECVERR: Final = 11
_IPV6_RECVERR: Final = 25
_SO_MEMINFO: Final = 55
_MSG_ERRQUEUE: Final = 0x2000
_MSG_DONTWAIT: Final = 0x40

# SO_MEMINFO is an array of u32 indexed by SK_MEMINFO_* (include/uapi/linux/
# sock_diag.h); drops is the ninth (Linux 4.12 and later).
_SK_MEMINFO_RMEM_ALLOC: Final = 0
_SK_MEMINFO_DROPS: Final = 8

# struct sock_extended_err (include/uapi/linux/errqueue.h): ee_errno (u32),
# ee_origin, ee_type, ee_code, ee_pad (u8 each), ee_info, ee_data (u32).
_EXTENDED_ERR: Final = struct.Struct("=IBBBBII")
_ORIGINS: Final = {1: "local", 2: "icmp", 3: "icmp6"}
# Room for the extended error and its offender address (16 + 28 bytes), plus
# any other control messages the user enabled on the socket.
_ANCILLARY_SPACE: Final = 1024

# setsockopt takes a C int: larger requests are clamped to it first (the
# kernel then clamps to rmem_max/wmem_max anyway).
_INT_MAX: Final = 2**31 - 1

# A socket (or an option) that this kernel cannot do.
_UNSUPPORTED: Final = frozenset(
    {_errno.ENOPROTOOPT, _errno.EOPNOTSUPP, _errno.EINVAL, _errno.ENOTSUP}
)


class _SocketLike(Protocol):
    @property
    def family(self) -> int: ...

    def fileno(self) -> int: ...


@attrs.frozen
class SocketError:
    """One entry of a socket's error queue.

    ``errno`` is what went wrong (``errno.ECONNREFUSED`` for ICMP port
    unreachable, ``EHOSTUNREACH``, ``ENETUNREACH``, ``EMSGSIZE``...).
    ``address`` is where the failed datagram was going, normalised like the
    endpoint's routing keys (:func:`~trio_dtlsmux._addresses.normalize_address`),
    so it finds the association; it is ``()`` in the unlikely case that the
    kernel gave none. ``origin`` says who reported it: ``"icmp"``,
    ``"icmp6"``, ``"local"`` (this host's own stack), or ``"other"``.
    """

    errno: int
    address: tuple[Any, ...]
    origin: str


@contextmanager
def _stdlib(sock: _SocketLike) -> Iterator[socket.socket | None]:
    """``sock`` as a stdlib socket whose calls never wait on a timeout.

    A stdlib socket with a timeout polls before each call, which would turn
    a read of an empty error queue into a wait; those, and other socket
    objects, are reached through a second object on the same descriptor.
    None if there is no descriptor: a closed socket, or a fake one
    (``trio_dtlsmux.testing.FakeSocket.fileno()`` is -1).
    """
    try:
        fd = sock.fileno()
    except (AttributeError, OSError):
        fd = -1
    if fd < 0:
        yield None
        return
    if isinstance(sock, socket.socket):
        timeout = sock.gettimeout()
        if timeout is None or timeout == 0:
            yield sock
            return
    try:
        borrowed = socket.socket(fileno=fd)
    except OSError:  # not a socket after all
        yield None
        return
    try:
        yield borrowed
    finally:
        borrowed.detach()


# -- buffers -------------------------------------------------------------------


def _read_sysctl(path: str) -> int | None:
    try:
        with open(path, "rb") as file:
            return int(file.read().strip())
    except (OSError, ValueError):
        return None


def buffer_limits() -> tuple[int | None, int | None]:
    """The largest receive and send buffers a socket may ask for, in bytes.

    These are ``net.core.rmem_max`` and ``net.core.wmem_max``; each is None
    where it cannot be read (not Linux, or no ``/proc``). A socket asking
    for more gets the limit, which Linux then reports doubled (see
    :func:`tune_buffers`).
    """
    if not _LINUX:
        return (None, None)
    return (
        _read_sysctl("/proc/sys/net/core/rmem_max"),
        _read_sysctl("/proc/sys/net/core/wmem_max"),
    )


def _request(sock: Any, option: int, size: int | None) -> None:
    if size is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, min(size, _INT_MAX))
    except OSError as exc:
        # Some systems refuse a size beyond their limit (macOS: ENOBUFS)
        # rather than clamping it; the buffer stays as it was.
        if exc.errno not in _UNSUPPORTED | {_errno.ENOBUFS}:
            raise


def tune_buffers(
    sock: _SocketLike, receive: int | None, send: int | None
) -> tuple[int, int]:
    """Ask for receive and send buffers of these sizes; return what the socket has.

    ``None`` leaves that buffer alone. A request is set as asked, smaller
    or larger than before, but the kernel caps it at ``net.core.rmem_max``
    (``wmem_max`` for sending) for every process, root included: the
    ``SO_RCVBUFFORCE`` options that bypass the limit are deliberately not
    used, so the operator's sysctl stays the last word.

    The result is ``(SO_RCVBUF, SO_SNDBUF)`` as the kernel reports it
    afterwards. On Linux that is twice the size set (asking for 4 MiB under
    a 4 MiB limit reports 8 MiB; under the usual 208 KiB limit, 416 KiB):
    the kernel doubles the request to leave room for its per-datagram
    bookkeeping, and the doubled figure is the budget it actually compares
    queued memory against, the one ``ss -u -m`` shows as ``rb``/``tb``. It
    is reported as is, not halved, so it can be compared with those tools.

    The socket's own ``setsockopt``/``getsockopt`` are used (stdlib and Trio
    sockets, and ``FakeSocket``, which reports what was set); an object
    with only ``fileno()`` is reached through its descriptor.
    """
    for size in (receive, send):
        if size is not None and size < 0:
            raise ValueError(f"a buffer size cannot be negative, got {size}")
    if hasattr(sock, "setsockopt") and hasattr(sock, "getsockopt"):
        return _tune(sock, receive, send)
    with _stdlib(sock) as stdlib:
        if stdlib is None:
            raise ValueError(f"{sock!r} has no socket descriptor")
        return _tune(stdlib, receive, send)


def _tune(sock: Any, receive: int | None, send: int | None) -> tuple[int, int]:
    _request(sock, socket.SO_RCVBUF, receive)
    _request(sock, socket.SO_SNDBUF, send)
    return (
        int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)),
        int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)),
    )


# -- drops ---------------------------------------------------------------------


def _meminfo(sock: _SocketLike) -> tuple[int, ...] | None:
    """The socket's ``SO_MEMINFO`` counters, or None if they cannot be read.

    That includes a closed socket: a statistics snapshot taken while the
    endpoint closes should show "unknown", not fail.
    """
    if not _LINUX:
        return None
    try:
        with _stdlib(sock) as stdlib:
            if stdlib is None:
                return None
            raw = stdlib.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 64)
    except OSError:
        return None
    count = len(raw) // 4
    return struct.unpack(f"={count}I", raw[: count * 4])


def _drops_from_meminfo(sock: _SocketLike) -> int | None:
    counters = _meminfo(sock)
    if counters is None or len(counters) <= _SK_MEMINFO_DROPS:
        return None
    return counters[_SK_MEMINFO_DROPS]


def _drops_from_proc(sock: _SocketLike) -> int | None:
    """The ``drops`` column of ``/proc/net/udp`` or ``udp6`` for this socket.

    The row is found by the socket's inode. Only the rows that contain the
    inode's digits are split, so the cost is reading the file, which the
    kernel writes out for every UDP socket of the network namespace.
    """
    if not _LINUX:
        return None
    if sock.family == socket.AF_INET:
        path = "/proc/net/udp"
    elif sock.family == socket.AF_INET6:
        path = "/proc/net/udp6"
    else:
        return None
    try:
        inode = b"%d" % os.fstat(sock.fileno()).st_ino
        with open(path, "rb") as file:
            table = file.read()
    except (OSError, ValueError):
        return None
    # Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref
    # pointer drops.
    needle = b" " + inode + b" "
    at = table.find(needle)
    while at != -1:
        start = table.rfind(b"\n", 0, at) + 1
        end = table.find(b"\n", at)
        fields = table[start : end if end != -1 else len(table)].split()
        if len(fields) > 12 and fields[9] == inode:
            try:
                return int(fields[12])
            except ValueError:
                return None
        at = table.find(needle, at + 1)
    return None


def kernel_drops(sock: _SocketLike) -> int | None:
    """Datagrams the kernel dropped for this socket since it was made.

    Mostly datagrams that arrived while the receive buffer was full; the
    same counter also takes datagrams with a bad checksum and those a
    socket filter refused. It is a 32-bit counter that wraps. None where
    the kernel does not say (not Linux, another family, a closed socket).

    This is the ``drops`` column of ``/proc/net/udp`` (``udp6`` for IPv6
    sockets). The same counter is read here through ``getsockopt(SO_MEMINFO)``
    (Linux 4.12 and later): one system call, 4 us whatever the number of
    sockets, where reading the file took 70 us with 12 UDP sockets on the
    host and 7 to 13 ms with 2,000 (``python -m benchmarks.kernelcost``),
    and the file lists only the reader's network namespace. The file is
    the fallback.
    """
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    drops = _drops_from_meminfo(sock)
    if drops is None:
        drops = _drops_from_proc(sock)
    return drops


# -- ICMP errors ---------------------------------------------------------------


def _set_flag(sock: socket.socket, level: int, option: int) -> bool:
    try:
        sock.setsockopt(level, option, 1)
    except OSError:
        return False
    return True


def enable_error_queue(sock: _SocketLike) -> bool:
    """Have the kernel queue ICMP errors for this socket; whether it worked.

    Sets ``IP_RECVERR`` on an IPv4 socket; ``IPV6_RECVERR`` on an IPv6 one,
    and ``IP_RECVERR`` too, best effort, since errors about IPv4-mapped
    peers of a dual-stack socket come through the IPv4 stack. False off
    Linux, for other families, or when the kernel refuses.

    Once this is on, the socket's reads and sends report ICMP errors; see
    the module's notes for what the receive loop and send path must do.
    """
    if not _LINUX:
        return False
    family = sock.family
    if family not in (socket.AF_INET, socket.AF_INET6):
        return False
    with _stdlib(sock) as stdlib:
        if stdlib is None:
            return False
        if family == socket.AF_INET:
            return _set_flag(stdlib, socket.IPPROTO_IP, _IP_RECVERR)
        if not _set_flag(stdlib, socket.IPPROTO_IPV6, _IPV6_RECVERR):
            return False
        _set_flag(stdlib, socket.IPPROTO_IP, _IP_RECVERR)
        return True


def _socket_error(
    ancillary: list[tuple[int, int, bytes]], address: Any
) -> SocketError | None:
    """The error in one error-queue message, or None if it carries none."""
    for level, kind, data in ancillary:
        if (level, kind) not in (
            (socket.IPPROTO_IP, _IP_RECVERR),
            (socket.IPPROTO_IPV6, _IPV6_RECVERR),
        ):
            continue
        if len(data) < _EXTENDED_ERR.size:
            continue
        code, origin = _EXTENDED_ERR.unpack_from(data)[:2]
        if isinstance(address, tuple) and len(address) >= 2:
            where = normalize_address(address)
        else:
            where = ()
        return SocketError(code, where, _ORIGINS.get(origin, "other"))
    return None


def read_error_queue(sock: _SocketLike, *, limit: int = 256) -> list[SocketError]:
    """Take the errors waiting in the socket's error queue, oldest first.

    Never waits: reading stops when the queue is empty, or after ``limit``
    entries so that a flood of errors cannot hold up the caller (what is
    left keeps the socket polling as readable, and ICMP entries keep the
    pending error set, so the caller comes back). Reading the last ICMP
    entry clears the pending error. Empty off Linux or if the queue is not
    enabled (:func:`enable_error_queue`). Entries without an extended
    error (nothing this library enables produces them) are skipped.
    """
    if not _LINUX:
        return []
    errors: list[SocketError] = []
    with _stdlib(sock) as stdlib:
        if stdlib is None:
            return errors
        for _ in range(limit):
            try:
                _, ancillary, _, address = stdlib.recvmsg(
                    0, _ANCILLARY_SPACE, _MSG_ERRQUEUE | _MSG_DONTWAIT
                )
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _UNSUPPORTED:
                    break
                raise
            error = _socket_error(ancillary, address)
            if error is not None:
                errors.append(error)
    return errors
