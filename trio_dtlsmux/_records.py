"""DTLS 1.2 record and handshake framing, with no I/O and no state.

Theory of operation
-------------------

OpenSSL does the cryptography, but the endpoint still has to look at the
bytes on the wire for four reasons:

* to route: a ClientHello from an unknown address is answered statelessly
  with a HelloVerifyRequest (RFC 6347, section 4.2.1) before any per-peer
  object exists, so the server parses it itself;
* to pack: OpenSSL writes a whole flight into its memory BIO as a run of
  records, and the endpoint decides how records share datagrams
  (section 4.1.1: several records may travel in one datagram, but a record
  never spans two);
* to retransmit: the endpoint owns the retransmission timer (section 4.2.4)
  and renumbers the plaintext epoch-0 records it resends, so it must read and
  rewrite record headers;
* to deliver one message per record: each application-data record is fed to
  OpenSSL on its own.

Every function that reads bytes from the network ends in ``_untrusted`` and
raises only :class:`BadPacket`, so the receive loop can catch exactly that,
count the drop and go on.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Final

import attrs

# Content types (RFC 5246, section 6.2.1).
CHANGE_CIPHER_SPEC: Final = 20
ALERT: Final = 21
HANDSHAKE: Final = 22
APPLICATION_DATA: Final = 23

# Handshake message types that the endpoint itself looks at.
HS_CLIENT_HELLO: Final = 1
HS_HELLO_VERIFY_REQUEST: Final = 3

RECORD_HEADER_SIZE: Final = 13
HANDSHAKE_HEADER_SIZE: Final = 12

# The HelloVerifyRequest carries DTLS 1.0's version number whatever version
# is negotiated later (RFC 6347, section 4.2.1).
DTLS1_0_VERSION: Final = 0xFEFF
DTLS1_2_VERSION: Final = 0xFEFD

# What a record adds to its plaintext, besides the header: an 8-byte explicit
# nonce and a 16-byte tag for AES-GCM and AES-CCM, a 16-byte tag for
# ChaCha20-Poly1305, and at most IV + MAC + padding (16 + 48 + 16) for the CBC
# suites a hand-built context may allow.
AEAD_OVERHEAD: Final = 24
CHACHA20_OVERHEAD: Final = 16
CBC_OVERHEAD: Final = 80
#: The most a record of any suite adds to a message, header included.
MAX_RECORD_OVERHEAD: Final = RECORD_HEADER_SIZE + CBC_OVERHEAD
#: The largest plaintext one record may carry (RFC 5246, 6.2.1).
MAX_PLAINTEXT: Final = 1 << 14

_MAX_SEQ: Final = (1 << 48) - 1

_HANDSHAKE_BYTE: Final = bytes([HANDSHAKE])
_EPOCH_0: Final = b"\x00\x00"

_record_header = struct.Struct("!BHHHIH")  # type, version, epoch, seq(hi16, lo32), length
_handshake_header = struct.Struct("!B3sH3s3s")
_short_header = struct.Struct("!B2xH6xH")  # type, epoch, length
_unpack_length = struct.Struct("!H").unpack_from


class BadPacket(Exception):
    """Bytes from the network that are not what they claim to be.

    The only exception an ``*_untrusted`` parser may raise. It never leaves
    the library: the endpoint counts the datagram as junk and drops it.
    """


@attrs.frozen(slots=True)
class Record:
    """One DTLS record: a header and its (possibly encrypted) payload."""

    content_type: int
    version: int
    epoch: int
    seq: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_record(
            self.content_type, self.version, self.epoch, self.seq, self.payload
        )


@attrs.frozen(slots=True)
class HandshakeFragment:
    """One fragment of a plaintext handshake message (RFC 6347, 4.2.2)."""

    msg_type: int
    length: int
    message_seq: int
    fragment_offset: int
    body: bytes


@attrs.frozen(slots=True)
class ClientHello:
    """The parts of a ClientHello the stateless cookie check needs.

    ``cookie_input`` is every field of the hello except the cookie itself
    and the session id, so that a cookie binds the offer the client made
    (RFC 6347, 4.2.1 recommends including the hello's parameters) but not
    the session id some clients change between their two hellos.
    """

    record_seq: int
    version: int
    random: bytes
    cookie: bytes
    cookie_input: bytes


def is_dtls(data: bytes) -> bool:
    """Whether a datagram's first byte is in DTLS's range (RFC 7983: 20-63)."""
    return bool(data) and 20 <= data[0] <= 63


def starts_with_handshake(data: bytes) -> bool:
    """Whether a datagram opens with a handshake record (any epoch)."""
    return data[:1] == _HANDSHAKE_BYTE


def may_be_client_hello(data: bytes) -> bool:
    """A cheap look: does the datagram open with an epoch-0 handshake record
    whose first message is a ClientHello? Parse it to be sure."""
    return (
        data[:1] == _HANDSHAKE_BYTE
        and data[3:5] == _EPOCH_0
        and len(data) > RECORD_HEADER_SIZE
        and data[RECORD_HEADER_SIZE] == HS_CLIENT_HELLO
    )


def is_single_application_record(data: bytes) -> bool:
    """Whether the datagram is exactly one application-data record: the data
    path's common case, checked without building anything."""
    return (
        len(data) >= RECORD_HEADER_SIZE
        and data[0] == APPLICATION_DATA
        and len(data) == RECORD_HEADER_SIZE + _unpack_length(data, 11)[0]
    )


def encode_record(
    content_type: int, version: int, epoch: int, seq: int, payload: bytes
) -> bytes:
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"record sequence number {seq} does not fit in 48 bits")
    return (
        _record_header.pack(
            content_type, version, epoch, seq >> 32, seq & 0xFFFFFFFF, len(payload)
        )
        + payload
    )


def iter_records_untrusted(data: bytes) -> Iterator[Record]:
    """Split a datagram (or OpenSSL's output) into records.

    A truncated header or a length that runs past the end raises
    :class:`BadPacket`; records read before the damage have already been
    yielded, which matches section 4.1.2.7's "discard the rest" rule for a
    malformed datagram only if the caller stops at the exception.
    """
    offset = 0
    end = len(data)
    unpack_from = _record_header.unpack_from
    while offset < end:
        if end - offset < RECORD_HEADER_SIZE:
            raise BadPacket("truncated record header")
        content_type, version, epoch, seq_hi, seq_lo, length = unpack_from(
            data, offset
        )
        start = offset + RECORD_HEADER_SIZE
        offset = start + length
        if offset > end:
            raise BadPacket("record length runs past the end of the datagram")
        yield Record(
            content_type, version, epoch, (seq_hi << 32) | seq_lo, data[start:offset]
        )


def split_datagram_untrusted(data: bytes) -> list[tuple[int, int, bytes]]:
    """The records of a datagram as ``(content_type, epoch, record bytes)``.

    The data path's fast variant of :func:`parse_records_untrusted`: it
    keeps each record's bytes whole, ready to be fed to OpenSSL, and does
    not build :class:`Record` objects. A datagram that holds exactly one
    record is returned without copying.
    """
    end = len(data)
    if end < RECORD_HEADER_SIZE:
        raise BadPacket("truncated record header")
    unpack_from = _short_header.unpack_from
    content_type, epoch, length = unpack_from(data, 0)
    if RECORD_HEADER_SIZE + length == end:
        return [(content_type, epoch, data)]
    records = []
    offset = 0
    while offset < end:
        if end - offset < RECORD_HEADER_SIZE:
            raise BadPacket("truncated record header")
        content_type, epoch, length = unpack_from(data, offset)
        stop = offset + RECORD_HEADER_SIZE + length
        if stop > end:
            raise BadPacket("record length runs past the end of the datagram")
        records.append((content_type, epoch, data[offset:stop]))
        offset = stop
    return records


#: One record as the flight code handles it: (content type, epoch, the
#: record's bytes, header included).
RawRecord = tuple[int, int, bytes]


def handshake_message_seqs(record: bytes) -> list[int]:
    """The ``message_seq`` of every fragment in a plaintext handshake record
    (header included), without building anything else. For OpenSSL's own
    output; a record that does not parse stops the list where it breaks."""
    seqs = []
    offset = RECORD_HEADER_SIZE
    end = len(record)
    while offset + HANDSHAKE_HEADER_SIZE <= end:
        seqs.append(_unpack_length(record, offset + 4)[0])
        length = int.from_bytes(record[offset + 9 : offset + 12], "big")
        offset += HANDSHAKE_HEADER_SIZE + length
    return seqs


def renumber_record(record: bytes, seq: int) -> bytes:
    """``record`` (header included) with the sequence number ``seq``."""
    if not 0 <= seq <= _MAX_SEQ:
        raise ValueError(f"record sequence number {seq} does not fit in 48 bits")
    return record[:5] + seq.to_bytes(6, "big") + record[11:]


def parse_records_untrusted(data: bytes) -> list[Record]:
    """All records of a datagram, or :class:`BadPacket` if any is malformed."""
    return list(iter_records_untrusted(data))


def parse_handshake_fragments_untrusted(payload: bytes) -> list[HandshakeFragment]:
    """The handshake fragments in the payload of one plaintext record."""
    fragments = []
    offset = 0
    end = len(payload)
    while offset < end:
        if end - offset < HANDSHAKE_HEADER_SIZE:
            raise BadPacket("truncated handshake header")
        msg_type, length_b, message_seq, frag_off_b, frag_len_b = (
            _handshake_header.unpack_from(payload, offset)
        )
        length = int.from_bytes(length_b, "big")
        frag_offset = int.from_bytes(frag_off_b, "big")
        frag_length = int.from_bytes(frag_len_b, "big")
        start = offset + HANDSHAKE_HEADER_SIZE
        offset = start + frag_length
        if offset > end:
            raise BadPacket("handshake fragment runs past the end of its record")
        if frag_offset + frag_length > length:
            raise BadPacket("handshake fragment runs past the end of its message")
        fragments.append(
            HandshakeFragment(
                msg_type, length, message_seq, frag_offset, payload[start:offset]
            )
        )
    return fragments


def encode_handshake_fragment(
    msg_type: int, length: int, message_seq: int, fragment_offset: int, body: bytes
) -> bytes:
    return (
        _handshake_header.pack(
            msg_type,
            length.to_bytes(3, "big"),
            message_seq,
            fragment_offset.to_bytes(3, "big"),
            len(body).to_bytes(3, "big"),
        )
        + body
    )


class _Reader:
    """Bounds-checked reads over a ClientHello body."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise BadPacket("ClientHello field runs past the end")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def vector(self, length_size: int) -> bytes:
        n = int.from_bytes(self.take(length_size), "big")
        return self.take(n)


def parse_client_hello_untrusted(datagram: bytes) -> ClientHello:
    """Read the ClientHello that opens ``datagram``.

    Only an unfragmented ClientHello in the first record, epoch 0, is
    accepted. A fragmented one cannot be checked statelessly, and real
    clients keep their first hello within one datagram.
    """
    if len(datagram) < RECORD_HEADER_SIZE:
        raise BadPacket("datagram shorter than a record header")
    content_type, _version, epoch, seq_hi, seq_lo, length = (
        _record_header.unpack_from(datagram, 0)
    )
    if content_type != HANDSHAKE or epoch != 0:
        raise BadPacket("not a plaintext handshake record")
    payload = datagram[RECORD_HEADER_SIZE : RECORD_HEADER_SIZE + length]
    if len(payload) != length:
        raise BadPacket("record length runs past the end of the datagram")
    if length < HANDSHAKE_HEADER_SIZE:
        raise BadPacket("truncated handshake header")
    msg_type, length_b, _message_seq, frag_off_b, frag_len_b = (
        _handshake_header.unpack_from(payload, 0)
    )
    if msg_type != HS_CLIENT_HELLO:
        raise BadPacket("first handshake message is not a ClientHello")
    body_length = int.from_bytes(length_b, "big")
    if int.from_bytes(frag_off_b, "big") != 0 or (
        int.from_bytes(frag_len_b, "big") != body_length
    ):
        raise BadPacket("fragmented ClientHello")
    body = payload[HANDSHAKE_HEADER_SIZE : HANDSHAKE_HEADER_SIZE + body_length]
    if len(body) != body_length:
        raise BadPacket("ClientHello runs past the end of its record")

    reader = _Reader(body)
    version = int.from_bytes(reader.take(2), "big")
    random = reader.take(32)
    session_id_start = reader.offset
    session_id = reader.vector(1)
    cookie_start = reader.offset
    cookie = reader.vector(1)
    cookie_end = reader.offset
    cipher_suites = reader.vector(2)
    compression = reader.vector(1)
    if not cipher_suites or len(cipher_suites) % 2 or not compression:
        raise BadPacket("ClientHello offers no cipher suite or no compression")
    if reader.offset < len(body):
        # Extensions are optional; if present they must fill the body exactly.
        extensions = reader.vector(2)
        if reader.offset != len(body):
            raise BadPacket("trailing bytes after ClientHello extensions")
        del extensions
    del session_id, cookie_start
    return ClientHello(
        record_seq=(seq_hi << 32) | seq_lo,
        version=version,
        random=random,
        cookie=cookie,
        # Neither the cookie nor the session id: some clients (Mbed TLS 2.28
        # resuming by ticket) draw a new session id for the hello that
        # carries the cookie, against RFC 6347 4.2.1. A cookie must prove
        # that the client receives at its address; binding it to the
        # session id adds nothing to that, and refusing them loops forever.
        cookie_input=body[:session_id_start] + body[cookie_end:],
    )


def encode_hello_verify_request(record_seq: int, cookie: bytes) -> bytes:
    """A HelloVerifyRequest datagram (RFC 6347, 4.2.1).

    It reuses the ClientHello's record sequence number so the client can
    match it, and message_seq 0, as a stateless server must.
    """
    body = DTLS1_0_VERSION.to_bytes(2, "big") + bytes([len(cookie)]) + cookie
    fragment = encode_handshake_fragment(HS_HELLO_VERIFY_REQUEST, len(body), 0, 0, body)
    return encode_record(HANDSHAKE, DTLS1_0_VERSION, 0, record_seq, fragment)


def hello_verify_request_size(cookie_length: int) -> int:
    return RECORD_HEADER_SIZE + HANDSHAKE_HEADER_SIZE + 3 + cookie_length


def split_handshake_record(record: Record, max_size: int) -> list[Record]:
    """Re-fragment a plaintext handshake record so each piece fits ``max_size``.

    OpenSSL already respects the MTU it is given; this is the safety net for
    a record that would not fit a datagram (section 4.2.3 allows any
    fragmentation of a handshake message). Sequence numbers are left to the
    caller, who renumbers epoch-0 records anyway.
    """
    room = max_size - RECORD_HEADER_SIZE - HANDSHAKE_HEADER_SIZE
    if record.content_type != HANDSHAKE or record.epoch != 0 or room <= 0:
        return [record]
    pieces = []
    for fragment in parse_handshake_fragments_untrusted(record.payload):
        body = fragment.body
        for start in range(0, max(len(body), 1), room):
            chunk = body[start : start + room]
            pieces.append(
                Record(
                    HANDSHAKE,
                    record.version,
                    0,
                    record.seq,
                    encode_handshake_fragment(
                        fragment.msg_type,
                        fragment.length,
                        fragment.message_seq,
                        fragment.fragment_offset + start,
                        chunk,
                    ),
                )
            )
    return pieces


def pack_datagrams(records: list[bytes], max_size: int) -> list[bytes]:
    """Pack encoded records into as few datagrams of at most ``max_size``.

    Records keep their order; a record larger than ``max_size`` travels
    alone (the caller has already tried to split it).
    """
    datagrams: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for record in records:
        if current and size + len(record) > max_size:
            datagrams.append(b"".join(current))
            current = []
            size = 0
        current.append(record)
        size += len(record)
    if current:
        datagrams.append(b"".join(current))
    return datagrams
