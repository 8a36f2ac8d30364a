"""A seeded, in-memory datagram network for testing code that speaks UDP.

:class:`FakeNetwork` stands in for the kernel's UDP stack. Its sockets
(:class:`FakeSocket`) offer the part of the trio socket API that a datagram
endpoint needs (``bind``, ``sendto``, ``recvfrom``, ``getsockname``,
``close``), so a :class:`~trio_dtlsmux.DtlsEndpoint` can be handed one in place
of ``trio.socket.socket(type=SOCK_DGRAM)``::

    net = FakeNetwork(seed=1, conditions=NetworkConditions(loss=0.05))
    server_sock = net.socket()
    await server_sock.bind(("10.0.0.1", 4433))
    client_sock = net.socket()
    await client_sock.bind(("10.0.0.2", 0))
    ...
    net.conditions = NetworkConditions(loss=0.3, reorder=0.1)  # any time
    assert net.statistics().dropped_mtu == 0

Packets can be lost, duplicated, delayed, reordered, corrupted or dropped for
being larger than the path MTU, as :class:`NetworkConditions` says. All of it
is reproducible: every random choice comes from one ``random.Random(seed)``
owned by the network, so the same sequence of ``sendto`` calls gives the same
outcome. (Trio may run tasks that are ready at the same moment in either
order, so a test that wants an exact replay should send from one task.)

Time is trio's clock and nothing else. A delayed packet waits in the network
until ``trio.current_time()`` reaches its arrival time; no background task,
thread or wall clock is involved, so ``trio.testing.MockClock`` (for example
pytest-trio's ``autojump_clock`` fixture) makes long delays and timeouts cost
nothing. Where a packet goes is decided when it arrives, not when it is sent:
a packet in flight to a peer that closes its socket and binds a new one on the
same address reaches the new socket, as it would on a real network.

Addresses are literals only: ``("10.0.0.1", 4433)`` for ``AF_INET`` and
``("fd00::1", 4433, 0, 0)`` (a 2-tuple is also accepted) for ``AF_INET6``.
Any address can be bound, which is how a test gives each peer its own host.
Binding ``""`` or the family's wildcard binds the network's default address for
that family instead, and port 0 picks a free ephemeral port.

Where this differs from a real trio socket:

* Every method other than ``close()`` raises :class:`trio.ClosedResourceError`
  on a closed socket, and a ``recvfrom`` blocked when the socket is closed
  wakes up with that error. A real trio socket raises ``OSError(EBADF)``.
* With ``icmp_unreachable=True``, a packet that reaches an address nobody has
  bound makes the next ``recvfrom`` of the socket bound at its source address
  raise :class:`ConnectionRefusedError`. Linux reports this only on connected
  UDP sockets; Windows reports it (as ``WSAECONNRESET``) on unconnected ones,
  which is the case this flag lets a test exercise.
* ``fileno()`` is ``-1``: a fake socket cannot be handed to
  ``trio.lowlevel.wait_readable``. Socket options are recorded and otherwise
  ignored.
"""

from __future__ import annotations

import builtins
import errno
import heapq
import ipaddress
import math
import os
import random
import socket as _socket
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeAlias

import attrs
import trio

__all__ = [
    "Address",
    "FakeNetwork",
    "FakeSocket",
    "NetworkConditions",
    "NetworkStatistics",
    "Packet",
]

#: A socket address: ``(host, port)`` for IPv4, ``(host, port, flowinfo,
#: scope_id)`` for IPv6. Typed loosely, like trio's own socket addresses.
Address: TypeAlias = tuple[Any, ...]

# An address as the network routes it: (canonical host, port).
_Key: TypeAlias = tuple[str, int]

_EPHEMERAL_FIRST = 49152
_EPHEMERAL_LAST = 65535
# The largest payload a UDP datagram can carry at all (without IPv6 jumbograms).
_MAX_PAYLOAD = {_socket.AF_INET: 65535 - 20 - 8, _socket.AF_INET6: 65535 - 8}
_WILDCARD = {_socket.AF_INET: "0.0.0.0", _socket.AF_INET6: "::"}


def _oserror(code: int, detail: str | None = None) -> OSError:
    message = os.strerror(code)
    if detail:
        message = f"{message}: {detail}"
    return OSError(code, message)


# ---------------------------------------------------------------------------
# Public value types
# ---------------------------------------------------------------------------


def _check_probability(
    instance: object, attribute: attrs.Attribute[float], value: float
) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, not {value!r}")


def _check_non_negative(
    instance: object, attribute: attrs.Attribute[float], value: float
) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"{attribute.name} must be a finite number >= 0, not {value!r}"
        )


def _to_delay(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    return (float(low), float(high))


def _check_delay(
    instance: object,
    attribute: attrs.Attribute[tuple[float, float]],
    value: tuple[float, float],
) -> None:
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
        raise ValueError(
            f"delay must be (low, high) with 0 <= low <= high, not {value!r}"
        )


def _check_mtu(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"mtu must be None or an int >= 0, not {value!r}")


@attrs.frozen(kw_only=True)
class NetworkConditions:
    """How the network treats each datagram. The default is a perfect network.

    Each datagram that passes the MTU check meets these, in this order:

    * ``loss``: probability that it is dropped.
    * ``duplicate``: probability that a second copy is delivered as well.
      Each copy then gets its own corruption, delay and reordering draws.
    * ``corrupt``: probability that one random byte of the copy is changed.
    * ``delay``: ``(low, high)`` seconds; the copy arrives after a delay drawn
      uniformly from that range. With ``low == high`` it is exact.
    * ``reorder``: probability that the copy is held back a further
      ``reorder_delay`` seconds, so that datagrams sent after it overtake it.

    ``mtu`` is the largest UDP *payload*, in bytes, that the path carries (not
    the IP MTU: IP and UDP headers are not counted). Larger datagrams are
    silently dropped, as a path that does not fragment would. ``None`` means no
    limit.
    """

    loss: float = attrs.field(default=0.0, validator=_check_probability)
    duplicate: float = attrs.field(default=0.0, validator=_check_probability)
    reorder: float = attrs.field(default=0.0, validator=_check_probability)
    delay: tuple[float, float] = attrs.field(
        default=(0.0, 0.0), converter=_to_delay, validator=_check_delay
    )
    mtu: int | None = attrs.field(default=None, validator=_check_mtu)
    corrupt: float = attrs.field(default=0.0, validator=_check_probability)
    reorder_delay: float = attrs.field(default=0.1, validator=_check_non_negative)


@attrs.frozen
class Packet:
    """One datagram on the wire.

    Addresses are in canonical form: the host as ``ipaddress`` prints it, and
    IPv6 addresses as 4-tuples ``(host, port, 0, 0)``.
    """

    source: Address
    destination: Address
    payload: bytes


@attrs.frozen(kw_only=True)
class NetworkStatistics:
    """Counts since the network was made; see :meth:`FakeNetwork.statistics`.

    Every datagram handed to ``sendto`` is counted in ``sent``. It may then be
    dropped by the route hook (``dropped_hook``), for its size
    (``dropped_mtu``) or at random (``dropped_loss``); otherwise it becomes one
    copy, or two (``duplicated`` counts second copies). Each copy is
    ``delivered`` into the receive queue of the socket bound at its
    destination when it arrives, or dropped because no socket is bound there
    (``dropped_no_listener``) or that socket's queue is full
    (``dropped_buffer_full``), or is still ``in_flight``. So::

        sent + duplicated == (dropped_hook + dropped_mtu + dropped_loss
                              + delivered + dropped_no_listener
                              + dropped_buffer_full + in_flight)

    ``corrupted`` and ``reordered`` count copies that were damaged or held
    back. A held-back copy is only actually overtaken if something else is
    sent to the same place before it arrives.
    """

    sent: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_mtu: int = 0
    dropped_hook: int = 0
    dropped_no_listener: int = 0
    dropped_buffer_full: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    in_flight: int = 0


@attrs.define
class _Counters:
    sent: int = 0
    delivered: int = 0
    dropped_loss: int = 0
    dropped_mtu: int = 0
    dropped_hook: int = 0
    dropped_no_listener: int = 0
    dropped_buffer_full: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0


def _parse_host(host: str, family: _socket.AddressFamily) -> str | None:
    """The canonical form of an IP literal, or ``None`` for a wildcard host."""
    if host == "":
        return None
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        raise _socket.gaierror(
            _socket.EAI_NONAME,
            f"FakeNetwork takes literal IP addresses only, not {host!r}",
        ) from None
    if parsed.version != (4 if family == _socket.AF_INET else 6):
        raise _oserror(
            errno.EAFNOSUPPORT, f"{host!r} is not an address for {family.name}"
        )
    if parsed.is_unspecified:
        return None
    return str(parsed)


def _concrete_host(host: str, family: _socket.AddressFamily) -> str:
    parsed = _parse_host(host, family)
    if parsed is None:
        raise ValueError(f"the default {family.name} host must not be a wildcard")
    return parsed


def _now_or_none() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:  # not inside trio.run (e.g. a sync fixture's teardown)
        return None


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------


class FakeNetwork:
    """An in-memory UDP network with seeded, adjustable misbehaviour.

    ``seed`` seeds the only source of randomness. ``conditions`` may be
    replaced at any time through the attribute of the same name; datagrams
    already in flight keep the fate they were given.

    ``recv_buffer`` is how many datagrams each socket's receive queue holds;
    datagrams arriving at a full queue are dropped, as a kernel does.

    With ``trace=True`` every datagram handed to ``sendto`` is appended, as
    sent (before the route hook and any damage), to :attr:`trace`, which keeps
    the latest ``trace_limit`` of them (all of them if ``None``).

    :attr:`route_hook`, if set, is called with each sent datagram, in send
    order, before the MTU check and the random conditions. It returns ``None``
    to drop the datagram or a :class:`Packet` to carry on with, which may have
    another payload, destination or (spoofed) source. It runs inside
    ``sendto``, so what it raises reaches the sender.

    ``icmp_unreachable``: see the module docstring. ``default_ipv4`` and
    ``default_ipv6`` are the addresses that binding a wildcard host gives.
    """

    def __init__(
        self,
        seed: int = 0,
        conditions: NetworkConditions | None = None,
        *,
        recv_buffer: int = 256,
        trace: bool = False,
        trace_limit: int | None = 100_000,
        icmp_unreachable: bool = False,
        default_ipv4: str = "127.0.0.1",
        default_ipv6: str = "::1",
    ) -> None:
        if recv_buffer < 1:
            raise ValueError(f"recv_buffer must be at least 1, not {recv_buffer!r}")
        if trace_limit is not None and trace_limit < 0:
            raise ValueError(f"trace_limit must be None or >= 0, not {trace_limit!r}")
        self.conditions: NetworkConditions = (
            conditions if conditions is not None else NetworkConditions()
        )
        #: Called with each sent datagram before the network's conditions
        #: apply: return it (or a changed :class:`Packet`) or ``None`` to drop it.
        self.route_hook: Callable[[Packet], Packet | None] | None = None
        #: Whether ``sendto`` appends to :attr:`trace`; may be switched at any time.
        self.tracing: bool = trace
        #: Sent datagrams in send order (only while :attr:`tracing` is true).
        self.trace: deque[Packet] = deque(maxlen=trace_limit)
        self._recv_buffer = recv_buffer
        self._icmp_unreachable = icmp_unreachable
        self._rng = random.Random(seed)
        self._default_host = {
            _socket.AF_INET: _concrete_host(default_ipv4, _socket.AF_INET),
            _socket.AF_INET6: _concrete_host(default_ipv6, _socket.AF_INET6),
        }
        self._bound: dict[_Key, FakeSocket] = {}
        # Copies in flight, ordered by (arrival time, sequence number), plus the
        # same (time, seq) pairs per destination and per source, so a receiver
        # knows when next to look. All three are popped together in _settle.
        self._in_flight: list[tuple[float, int, Packet]] = []
        self._due_to: dict[_Key, list[tuple[float, int]]] = {}
        self._due_from: dict[_Key, list[tuple[float, int]]] = {}
        self._seq = 0
        self._next_port = _EPHEMERAL_FIRST
        self._max_datagram_seen = 0
        self._counts = _Counters()

    # -- public API ----------------------------------------------------------

    def socket(
        self,
        family: int = _socket.AF_INET,
        type: int = _socket.SOCK_DGRAM,
        proto: int = 0,
    ) -> FakeSocket:
        """Make an unbound datagram socket on this network."""
        if family not in (_socket.AF_INET, _socket.AF_INET6):
            raise _oserror(errno.EAFNOSUPPORT, f"FakeNetwork has no family {family!r}")
        if type != _socket.SOCK_DGRAM:
            raise _oserror(errno.EPROTONOSUPPORT, "FakeNetwork only has SOCK_DGRAM")
        return FakeSocket(self, _socket.AddressFamily(family), proto)

    def statistics(self) -> NetworkStatistics:
        """Counts of what happened to the datagrams sent so far."""
        self._settle_now()
        return NetworkStatistics(
            in_flight=len(self._in_flight), **attrs.asdict(self._counts)
        )

    @property
    def max_datagram_seen(self) -> int:
        """Size of the largest payload ever handed to ``sendto``."""
        return self._max_datagram_seen

    @property
    def recv_buffer(self) -> int:
        """How many datagrams a socket's receive queue holds."""
        return self._recv_buffer

    @property
    def icmp_unreachable(self) -> bool:
        """Whether undeliverable datagrams make the sender's ``recvfrom`` fail."""
        return self._icmp_unreachable

    @icmp_unreachable.setter
    def icmp_unreachable(self, value: bool) -> None:
        self._icmp_unreachable = value
        for sock in list(self._bound.values()):
            sock._wake()  # blocked receivers recompute when to look next

    def __repr__(self) -> str:
        return (
            f"<FakeNetwork {len(self._bound)} bound sockets, "
            f"{len(self._in_flight)} datagrams in flight>"
        )

    # -- addresses -----------------------------------------------------------

    def _literal(self, host: str, family: _socket.AddressFamily) -> str:
        """The canonical form of ``host``; the wildcard becomes the default host."""
        parsed = _parse_host(host, family)
        if parsed is None:
            return self._default_host[family]
        return parsed

    def _parse(self, family: _socket.AddressFamily, address: object) -> _Key:
        if not isinstance(address, tuple):
            raise TypeError(
                f"{family.name} address must be a tuple, not {type(address).__name__}"
            )
        if family == _socket.AF_INET and len(address) != 2:
            raise _oserror(
                errno.EAFNOSUPPORT,
                f"AF_INET address must be (host, port), not {address!r}",
            )
        if family == _socket.AF_INET6 and not 2 <= len(address) <= 4:
            raise TypeError(
                "AF_INET6 address must be (host, port[, flowinfo[, scope_id]]), "
                f"not {address!r}"
            )
        host, port = address[0], address[1]
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, not {type(host).__name__}")
        if isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"port must be an int, not {type(port).__name__}")
        if not 0 <= port <= 65535:
            raise OverflowError(f"port must be 0-65535, not {port}")
        return (self._literal(host, family), port)

    @staticmethod
    def _external(key: _Key, family: _socket.AddressFamily) -> Address:
        if family == _socket.AF_INET6:
            return (key[0], key[1], 0, 0)
        return key

    # -- binding -------------------------------------------------------------

    def _bind(self, sock: FakeSocket, address: object) -> None:
        host, port = self._parse(sock.family, address)
        if sock._key is not None:
            raise _oserror(errno.EINVAL, "socket is already bound")
        # Bindings decide where arriving datagrams go, so let everything due
        # arrive under the old bindings first.
        self._settle_now()
        if port == 0:
            port = self._free_port(host)
        key = (host, port)
        if key in self._bound:
            raise _oserror(errno.EADDRINUSE, f"{self._external(key, sock.family)!r}")
        self._bound[key] = sock
        sock._key = key

    def _free_port(self, host: str) -> int:
        span = _EPHEMERAL_LAST - _EPHEMERAL_FIRST + 1
        for _ in range(span):
            port = self._next_port
            self._next_port = _EPHEMERAL_FIRST + (port - _EPHEMERAL_FIRST + 1) % span
            if (host, port) not in self._bound:
                return port
        raise _oserror(errno.EADDRINUSE, f"no free ephemeral port on {host}")

    def _unbind(self, sock: FakeSocket) -> None:
        self._settle_now()
        key = sock._key
        if key is not None and self._bound.get(key) is sock:
            del self._bound[key]

    # -- sending and arriving ------------------------------------------------

    def _send(self, sock: FakeSocket, data: bytes, address: object) -> None:
        destination = self._parse(sock.family, address)
        if destination[1] == 0:
            raise _oserror(errno.EINVAL, "cannot send to port 0")
        if len(data) > _MAX_PAYLOAD[sock.family]:
            raise _oserror(errno.EMSGSIZE, f"{len(data)} bytes")
        if sock._key is None:
            self._bind(sock, ("", 0))  # like the kernel's implicit bind
        assert sock._key is not None
        now = trio.current_time()
        self._settle(now)

        packet = Packet(
            source=self._external(sock._key, sock.family),
            destination=self._external(destination, sock.family),
            payload=data,
        )
        counts = self._counts
        counts.sent += 1
        self._max_datagram_seen = max(self._max_datagram_seen, len(data))
        if self.tracing:
            self.trace.append(packet)

        if self.route_hook is not None:
            changed = self.route_hook(packet)
            if changed is None:
                counts.dropped_hook += 1
                return
            packet = Packet(
                source=self._external(
                    self._parse(sock.family, changed.source), sock.family
                ),
                destination=self._external(
                    self._parse(sock.family, changed.destination), sock.family
                ),
                payload=bytes(changed.payload),
            )

        conditions = self.conditions
        rng = self._rng
        if conditions.mtu is not None and len(packet.payload) > conditions.mtu:
            counts.dropped_mtu += 1
            return
        if rng.random() < conditions.loss:
            counts.dropped_loss += 1
            return
        copies = 1
        if rng.random() < conditions.duplicate:
            copies = 2
            counts.duplicated += 1

        src_key: _Key = (packet.source[0], packet.source[1])
        dst_key: _Key = (packet.destination[0], packet.destination[1])
        low, high = conditions.delay
        for _ in range(copies):
            copy = packet
            if rng.random() < conditions.corrupt and packet.payload:
                damaged = bytearray(packet.payload)
                damaged[rng.randrange(len(damaged))] ^= rng.randrange(1, 256)
                copy = attrs.evolve(packet, payload=bytes(damaged))
                counts.corrupted += 1
            arrival = now + rng.uniform(low, high)
            if rng.random() < conditions.reorder:
                arrival += conditions.reorder_delay
                counts.reordered += 1
            self._seq += 1
            heapq.heappush(self._in_flight, (arrival, self._seq, copy))
            heapq.heappush(self._due_to.setdefault(dst_key, []), (arrival, self._seq))
            heapq.heappush(self._due_from.setdefault(src_key, []), (arrival, self._seq))

        self._settle(now)  # zero-delay copies arrive at once
        # A blocked receiver may now have something due sooner than it thought.
        for key in (dst_key, src_key):
            receiver = self._bound.get(key)
            if receiver is not None:
                receiver._wake()

    def _settle_now(self) -> None:
        now = _now_or_none()
        if now is not None:
            self._settle(now)

    def _settle(self, now: float) -> None:
        """Let every copy whose arrival time has come arrive, in order."""
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= now:
            _, _, packet = heapq.heappop(in_flight)
            dst_key: _Key = (packet.destination[0], packet.destination[1])
            src_key: _Key = (packet.source[0], packet.source[1])
            # The global minimum is also the minimum of each per-address heap.
            for table, key in ((self._due_to, dst_key), (self._due_from, src_key)):
                times = table[key]
                heapq.heappop(times)
                if not times:
                    del table[key]
            self._arrive(packet, src_key, dst_key)

    def _arrive(self, packet: Packet, src_key: _Key, dst_key: _Key) -> None:
        receiver = self._bound.get(dst_key)
        if receiver is None:
            self._counts.dropped_no_listener += 1
            if self._icmp_unreachable:
                sender = self._bound.get(src_key)
                if sender is not None:
                    sender._icmp_error = True
                    sender._wake()
            return
        if len(receiver._queue) >= self._recv_buffer:
            self._counts.dropped_buffer_full += 1
            return
        receiver._queue.append((packet.payload, packet.source))
        self._counts.delivered += 1
        receiver._wake()

    def _next_event(self, key: _Key | None) -> float:
        """When something may next happen that a receiver on ``key`` cares about."""
        if key is None:
            return math.inf
        soonest = math.inf
        times = self._due_to.get(key)
        if times:
            soonest = times[0][0]
        if self._icmp_unreachable:
            times = self._due_from.get(key)
            if times:
                soonest = min(soonest, times[0][0])
        return soonest


# ---------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------


class FakeSocket:
    """A datagram socket on a :class:`FakeNetwork`; make one with ``net.socket()``.

    Mirrors the subset of ``trio.socket.SocketType`` that a UDP endpoint uses.
    A socket that sends before binding is bound to the default address and a
    free ephemeral port, as the kernel would do.
    """

    def __init__(
        self,
        network: FakeNetwork,
        family: _socket.AddressFamily = _socket.AF_INET,
        proto: int = 0,
    ) -> None:
        self._network = network
        self._family = family
        self._proto = proto
        self._key: _Key | None = None
        self._closed = False
        self._queue: deque[tuple[bytes, Address]] = deque()
        self._icmp_error = False
        self._receiving = False
        self._lot = trio.lowlevel.ParkingLot()
        self._options: dict[tuple[int, int], int | bytes] = {}

    @property
    def network(self) -> FakeNetwork:
        return self._network

    @property
    def family(self) -> _socket.AddressFamily:
        return self._family

    @property
    def type(self) -> _socket.SocketKind:
        return _socket.SOCK_DGRAM

    @property
    def proto(self) -> int:
        return self._proto

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        """Always ``-1``: there is no file descriptor behind a fake socket."""
        return -1

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this FakeSocket was closed")

    def _wake(self) -> None:
        self._lot.unpark_all()

    def getsockname(self) -> Address:
        """The bound address, or the wildcard address and port 0 if unbound."""
        self._check_open()
        if self._key is None:
            return FakeNetwork._external((_WILDCARD[self._family], 0), self._family)
        return FakeNetwork._external(self._key, self._family)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Record a socket option. It has no effect on the fake network."""
        self._check_open()
        self._options[(level, option)] = value

    def getsockopt(self, level: int, option: int) -> int | bytes:
        """A value set with :meth:`setsockopt`, or ``0``."""
        self._check_open()
        return self._options.get((level, option), 0)

    async def bind(self, address: Address) -> None:
        """Bind to ``address``; port 0 picks a free port, host ``""`` the default.

        Raises ``OSError(EADDRINUSE)`` if another open socket holds the address.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        self._network._bind(self, address)

    async def sendto(
        self, data: bytes | bytearray | memoryview, address: Address, /
    ) -> int:
        """Hand one datagram to the network; never waits for it. Returns its size."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        payload = bytes(data)
        self._network._send(self, payload, address)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return len(payload)

    async def recvfrom(self, bufsize: int, /) -> tuple[bytes, Address]:
        """Wait for a datagram; return at most ``bufsize`` bytes of it and its source.

        Like a real UDP socket the rest of a longer datagram is discarded.
        Raises :class:`trio.ClosedResourceError` if the socket is or gets
        closed, :class:`ConnectionRefusedError` once after an ICMP-style
        error (see ``FakeNetwork(icmp_unreachable=True)``), and
        :class:`trio.BusyResourceError` if another task is already waiting.
        """
        if bufsize < 0:
            raise ValueError("negative buffersize in recvfrom")
        await trio.lowlevel.checkpoint_if_cancelled()
        network = self._network
        yielded = False
        while True:
            self._check_open()
            network._settle(trio.current_time())
            if self._icmp_error:
                self._icmp_error = False
                raise ConnectionRefusedError(
                    errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)
                )
            if self._queue:
                payload, source = self._queue.popleft()
                if not yielded:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return payload[:bufsize], source
            if self._receiving:
                raise trio.BusyResourceError(
                    "another task is already receiving on this FakeSocket"
                )
            self._receiving = True
            try:
                with trio.move_on_at(network._next_event(self._key)):
                    await self._lot.park()
            finally:
                self._receiving = False
            yielded = True

    def close(self) -> None:
        """Close the socket and free its address. Idempotent.

        Queued datagrams are discarded and a task blocked in ``recvfrom``
        gets :class:`trio.ClosedResourceError`.
        """
        if self._closed:
            return
        self._network._unbind(self)
        self._closed = True
        self._queue.clear()
        self._wake()

    def __enter__(self) -> FakeSocket:
        return self

    def __exit__(
        self,
        exc_type: builtins.type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            state = "closed"
        elif self._key is None:
            state = "unbound"
        else:
            state = f"bound to {FakeNetwork._external(self._key, self._family)!r}"
        return f"<FakeSocket {self._family.name} {state}>"
