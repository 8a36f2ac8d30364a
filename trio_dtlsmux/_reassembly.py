"""Reassembly of fragmented ClientHellos before any association exists.

Theory of operation
-------------------

A DTLS handshake message may be split over several records, each carrying
``message_seq``, ``fragment_offset`` and ``fragment_length`` in its
handshake header (RFC 6347, section 4.2.2), and a ClientHello that does not
fit the client's path MTU must be (section 4.2.3). Clients on small-MTU
links meet this first, and so does any client whose hello grows: a session
ticket (RFC 5077), a long ALPN list, many cipher suites or extensions.

The endpoint checks a cookie before it allocates anything per peer
(section 4.2.1), and our cookie is a MAC over the whole hello (see
``_cookies``), so a fragmented hello has to be put back together before
anything is known about its sender. trio's DTLS refuses fragmented hellos
for that reason; OpenSSL's ``DTLSv1_listen`` looks at the first fragment
only, needs the cookie inside it, and leaves the rest to the handshake that
follows. This module accepts them whole, at a bounded price: a
:class:`HelloReassembler` is a small table that holds partial hellos from
addresses without an association, and nothing else. It does no I/O and
reads no clock; the caller passes ``now``.

What it returns. When the last missing byte arrives, :meth:`feed_untrusted`
returns one synthesised datagram: a single epoch-0 handshake record holding
the whole ClientHello as one unfragmented message (``fragment_offset`` 0,
``fragment_length`` equal to ``length``), with the record version and
sequence number of the record that carried offset 0. That is exactly what
a client that never fragmented would have sent, so the existing cookie
check, ``parse_client_hello_untrusted`` and OpenSSL's ``DTLSv1_listen`` all
take it as they are. Feeding the reassembled message to OpenSSL is
legitimate because the handshake transcript (the Finished MAC) is computed
as if every message had been sent in a single fragment (section 4.2.6). Any
record sequence number of the client's would do for the server's reply
(section 4.2.1 asks the server to echo the hello's): all of this hello's
records are newer than anything the client sent before. Offset 0's is
chosen because it does not depend on the order in which the other
fragments arrive; if offset 0 itself arrives twice (a retransmitted
flight), the first copy counts.

A datagram whose first record already holds the whole ClientHello is
returned untouched and costs no table lookup: the common case stays as
fast as before.

Bounds. Before the cookie is checked anyone can send anything from any
address, so every resource is bounded:

* At most ``max_entries`` partial hellos; a new one pushes out the oldest.
* At most one per source address, and that address is the whole key. Only
  the address binds every fragment to a sender: the client random is in the
  first fragment alone, and ``message_seq`` and ``length`` are chosen by
  the sender, so keying on them would let one address hold many entries.
  Within an entry, ``(message_seq, length)`` says which message it is: a
  fragment of another message from the same address replaces the entry (a
  client that restarted, or moved from its first hello to its second).
* At most ``max_message_bytes`` per hello; a longer one is refused. The
  buffer for a message is allocated in full by its first fragment, so the
  table's payload never exceeds ``max_entries * max_message_bytes``.
* At most ``max_ranges`` disjoint received pieces per entry, so the
  bookkeeping of what has arrived stays small even when a sender chooses
  one-byte fragments with gaps between them.
* An entry lives ``lifetime`` seconds from its first fragment; later
  fragments do not extend it, so no sender can keep an entry alive. The
  default of 5 seconds covers a client's first two retransmissions of the
  same flight (1 s, then 2 s later: section 4.2.4.1), which resend every
  fragment and so fill any hole.

Fragments may arrive in any order, repeated, overlapping and several to a
datagram (section 4.1.1). Overlapping bytes must agree with what is held: a
retransmission carries the same message (section 4.2.4), possibly cut at
other places (section 4.2.3), so bytes that differ mean another message or
an attacker. If they
do not, the entry is dropped and the datagram that contradicted it starts a
fresh one, as a new message would. A datagram is parsed completely before
it touches the table, so a malformed one changes nothing.

The synthesised datagram is never larger than the datagrams that carried
its fragments put together (each fragment brings its own 25 bytes of
headers), so the endpoint's rule of never answering a hello with more
bytes than it received still holds when applied to it.

What a flood can do. Nothing here is authenticated: whoever can spoof a
client's address can spoil its reassembly (a contradicting fragment, or one
of another message, replaces its entry), and a flood of fragments from many
addresses evicts an entry once ``max_entries`` newer ones have arrived, so a
client whose fragments are that far apart must wait for its retransmission
or for the flood to end. Whole hellos never touch the table, so clients
that do not fragment are not affected at all.

Every drop is counted in :class:`ReassemblyCounters`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import attrs

from . import _records as rec
from ._records import BadPacket

DEFAULT_MAX_ENTRIES: Final = 256
DEFAULT_MAX_MESSAGE_BYTES: Final = 8192
DEFAULT_LIFETIME: Final = 5.0
DEFAULT_MAX_RANGES: Final = 32

#: The longest hello that still fits one record once reassembled
#: (RFC 5246, section 6.2.1: a record carries at most 2^14 bytes).
MAX_MESSAGE_BYTES_LIMIT: Final = rec.MAX_PLAINTEXT - rec.HANDSHAKE_HEADER_SIZE

_HEADERS: Final = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE
_EPOCH_0: Final = b"\x00\x00"
_OFFSET_0: Final = b"\x00\x00\x00"


class ReassemblyCounters:
    """What the table did, as plain integers for the endpoint's statistics.

    Attributes:
      fragments_accepted: ClientHello fragments merged into an entry
        (repeats that agree with what is held included).
      hellos_reassembled: complete hellos returned as one datagram.
      datagrams_malformed: datagrams refused with :class:`BadPacket`: not
        epoch-0 handshake records carrying fragments of one ClientHello.
      datagrams_too_big: datagrams refused because their hello is longer
        than ``max_message_bytes``.
      fragments_scattered: fragments refused because their entry already
        holds ``max_ranges`` disjoint pieces and this one would add another.
      entries_conflicting: entries dropped because a fragment's bytes
        disagreed with bytes already held at the same offsets.
      entries_replaced: entries dropped because the same address sent a
        fragment of another message (other ``message_seq`` or ``length``).
      entries_evicted: entries dropped to make room for a newer one.
      entries_expired: entries dropped ``lifetime`` after their first
        fragment, still incomplete.
    """

    __slots__ = (
        "datagrams_malformed",
        "datagrams_too_big",
        "entries_conflicting",
        "entries_evicted",
        "entries_expired",
        "entries_replaced",
        "fragments_accepted",
        "fragments_scattered",
        "hellos_reassembled",
    )

    def __init__(self) -> None:
        self.fragments_accepted = 0
        self.hellos_reassembled = 0
        self.datagrams_malformed = 0
        self.datagrams_too_big = 0
        self.fragments_scattered = 0
        self.entries_conflicting = 0
        self.entries_replaced = 0
        self.entries_evicted = 0
        self.entries_expired = 0

    def snapshot(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@attrs.frozen(slots=True)
class HelloFragment:
    """One ClientHello fragment and the record that carried it."""

    record_version: int
    record_seq: int
    fragment_offset: int
    body: bytes


@attrs.frozen(slots=True)
class FragmentedHello:
    """The ClientHello fragments of one datagram, all of one message."""

    message_seq: int
    length: int
    fragments: tuple[HelloFragment, ...]


def opens_with_whole_hello(datagram: bytes) -> bool:
    """Whether the first record's first handshake message is a ClientHello
    that is not fragmented. A cheap look at fixed offsets; it proves
    nothing else about the datagram."""
    return (
        len(datagram) >= _HEADERS
        and datagram[0] == rec.HANDSHAKE
        and datagram[3:5] == _EPOCH_0
        and (datagram[11] << 8 | datagram[12]) >= rec.HANDSHAKE_HEADER_SIZE
        and datagram[13] == rec.HS_CLIENT_HELLO
        and datagram[19:22] == _OFFSET_0
        and datagram[14:17] == datagram[22:25]
    )


def parse_hello_fragments_untrusted(datagram: bytes) -> FragmentedHello:
    """Every ClientHello fragment in ``datagram``.

    Every record must be an epoch-0 handshake record, and every fragment in
    them a ClientHello fragment of the same message (``message_seq`` and
    ``length``): a client's first and third flights hold nothing else.
    Anything else raises :class:`BadPacket`.
    """
    message: tuple[int, int] | None = None
    fragments = []
    for record in rec.iter_records_untrusted(datagram):
        if record.content_type != rec.HANDSHAKE or record.epoch != 0:
            raise BadPacket("not a plaintext handshake record")
        for fragment in rec.parse_handshake_fragments_untrusted(record.payload):
            if fragment.msg_type != rec.HS_CLIENT_HELLO:
                raise BadPacket("handshake fragment is not a ClientHello")
            this = (fragment.message_seq, fragment.length)
            if message is None:
                message = this
            elif this != message:
                raise BadPacket("fragments of two messages in one datagram")
            fragments.append(
                HelloFragment(
                    record.version, record.seq, fragment.fragment_offset, fragment.body
                )
            )
    if message is None:
        raise BadPacket("no handshake fragment")
    return FragmentedHello(message[0], message[1], tuple(fragments))


class _Entry:
    """One partial hello: its buffer and which byte ranges have arrived."""

    __slots__ = (
        "buffer",
        "expires_at",
        "length",
        "message_seq",
        "ranges",
        "record_seq",
        "record_version",
    )

    def __init__(self, message_seq: int, length: int, expires_at: float) -> None:
        self.message_seq = message_seq
        self.length = length
        self.expires_at = expires_at
        self.buffer = bytearray(length)
        # Received ranges as a flat sorted list [start0, end0, start1, ...]
        # of half-open intervals that neither overlap nor touch.
        self.ranges: list[int] = []
        # From the record that carried offset 0; None until it arrives.
        self.record_seq: int | None = None
        self.record_version = 0

    def complete(self) -> bool:
        return self.ranges == [0, self.length]

    def add(self, fragment: HelloFragment, max_ranges: int) -> bool | None:
        """Merge one fragment: True if merged, None if refused for scattering,
        False if its bytes contradict bytes already held. Nothing changes
        unless it returns True."""
        start = fragment.fragment_offset
        body = fragment.body
        end = start + len(body)
        if start == end:
            return True
        buffer = self.buffer
        ranges = self.ranges
        before: list[int] = []
        after: list[int] = []
        low, high = start, end
        for i in range(0, len(ranges), 2):
            r_start, r_end = ranges[i], ranges[i + 1]
            if r_end < start:
                before += (r_start, r_end)
            elif r_start > end:
                after += (r_start, r_end)
            else:
                # Overlapping or touching: held bytes must match, then merge.
                a, b = max(r_start, start), min(r_end, end)
                if a < b and buffer[a:b] != body[a - start : b - start]:
                    return False
                low, high = min(low, r_start), max(high, r_end)
        merged = [*before, low, high, *after]
        if len(merged) > 2 * max_ranges:
            return None
        buffer[start:end] = body
        self.ranges = merged
        if start == 0 and self.record_seq is None:
            self.record_seq = fragment.record_seq
            self.record_version = fragment.record_version
        return True

    def datagram(self) -> bytes:
        """The whole hello as one record with one unfragmented message."""
        assert self.record_seq is not None
        message = rec.encode_handshake_fragment(
            rec.HS_CLIENT_HELLO, self.length, self.message_seq, 0, bytes(self.buffer)
        )
        return rec.encode_record(
            rec.HANDSHAKE, self.record_version, 0, self.record_seq, message
        )


class HelloReassembler:
    """A bounded table of partial ClientHellos, keyed by source address.

    Feed it datagrams from addresses that have no association and that open
    with an epoch-0 handshake record; see the module docstring for the
    rules.
    """

    __slots__ = (
        "_bytes_held",
        "_entries",
        "counters",
        "lifetime",
        "max_entries",
        "max_message_bytes",
        "max_ranges",
    )

    def __init__(
        self,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        lifetime: float = DEFAULT_LIFETIME,
        max_ranges: int = DEFAULT_MAX_RANGES,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        if not 0 < max_message_bytes <= MAX_MESSAGE_BYTES_LIMIT:
            raise ValueError(
                f"max_message_bytes must be between 1 and {MAX_MESSAGE_BYTES_LIMIT}, "
                f"not {max_message_bytes!r}"
            )
        if not lifetime > 0:
            raise ValueError(f"lifetime must be positive, not {lifetime!r}")
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be at least 1, not {max_ranges!r}")
        self.max_entries = max_entries
        self.max_message_bytes = max_message_bytes
        self.lifetime = lifetime
        self.max_ranges = max_ranges
        self.counters = ReassemblyCounters()
        self._entries: OrderedDict[tuple[object, ...], _Entry] = OrderedDict()
        self._bytes_held = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes_held(self) -> int:
        """Bytes of message buffers held, at most ``max_entries *
        max_message_bytes``."""
        return self._bytes_held

    @property
    def deadline(self) -> float:
        """When the oldest entry expires (``inf`` if there is none)."""
        for entry in self._entries.values():
            return entry.expires_at
        return float("inf")

    def expire(self, now: float) -> None:
        """Drop every entry whose lifetime has passed.

        :meth:`feed_untrusted` does this itself; call it from a periodic
        clean-up to free memory while no fragments arrive.
        """
        entries = self._entries
        # Insertion order is expiry order: every entry lives ``lifetime``
        # from its insertion, and a replaced entry is inserted afresh.
        while entries:
            address, entry = next(iter(entries.items()))
            if entry.expires_at > now:
                break
            self._remove(address)
            self.counters.entries_expired += 1

    def feed_untrusted(
        self, address: tuple[object, ...], datagram: bytes, now: float
    ) -> bytes | None:
        """Take one datagram from ``address`` that opens with a ClientHello
        (or a fragment of one).

        Returns ``datagram`` itself if its first record holds a whole
        ClientHello (no table entry is touched), the synthesised datagram
        once the hello is complete, or None while it is incomplete or when
        the datagram was refused for a limit. Raises :class:`BadPacket`
        (only) if the datagram is malformed; the table is then unchanged.
        """
        if opens_with_whole_hello(datagram):
            return datagram
        counters = self.counters
        try:
            hello = parse_hello_fragments_untrusted(datagram)
        except BadPacket:
            counters.datagrams_malformed += 1
            raise
        self.expire(now)
        if hello.length > self.max_message_bytes:
            counters.datagrams_too_big += 1
            return None
        entry = self._entries.get(address)
        if entry is not None:
            if (entry.message_seq, entry.length) != (hello.message_seq, hello.length):
                self._remove(address)
                counters.entries_replaced += 1
            elif self._merge(entry, hello):
                return self._finish(address, entry)
            else:
                self._remove(address)
                counters.entries_conflicting += 1
        entry = _Entry(hello.message_seq, hello.length, now + self.lifetime)
        if not self._merge(entry, hello):
            # The datagram contradicts itself.
            counters.entries_conflicting += 1
            return None
        if entry.complete():
            # Whole in one datagram: never enters the table, evicts nobody.
            counters.hellos_reassembled += 1
            return entry.datagram()
        if entry.ranges:
            self._insert(address, entry)
        return None

    def _merge(self, entry: _Entry, hello: FragmentedHello) -> bool:
        """Merge a datagram's fragments; False on a contradiction."""
        counters = self.counters
        for fragment in hello.fragments:
            added = entry.add(fragment, self.max_ranges)
            if added is None:
                counters.fragments_scattered += 1
            elif added:
                counters.fragments_accepted += 1
            else:
                return False
        return True

    def _finish(self, address: tuple[object, ...], entry: _Entry) -> bytes | None:
        if not entry.complete():
            return None
        self._remove(address)
        self.counters.hellos_reassembled += 1
        return entry.datagram()

    def _insert(self, address: tuple[object, ...], entry: _Entry) -> None:
        entries = self._entries
        while len(entries) >= self.max_entries:
            oldest = next(iter(entries))
            self._remove(oldest)
            self.counters.entries_evicted += 1
        entries[address] = entry
        self._bytes_held += entry.length

    def _remove(self, address: tuple[object, ...]) -> None:
        entry = self._entries.pop(address)
        self._bytes_held -= entry.length
