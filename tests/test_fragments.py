"""Reassembly of fragmented ClientHellos, driven by hand with an explicit ``now``."""

from __future__ import annotations

import itertools
import random
import shutil
import socket
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import _records as rec
from trio_dtlsmux._cookies import CookieJar
from trio_dtlsmux._reassembly import (
    HelloReassembler,
    opens_with_whole_hello,
    parse_hello_fragments_untrusted,
)

from .conftest import drain_bio
from .test_records import HELLO

ADDR = ("192.0.2.1", 1111)
OTHER = ("192.0.2.7", 7777)


def fragment(
    offset: int,
    body: bytes,
    *,
    length: int,
    message_seq: int = 0,
    record_seq: int = 0,
    version: int = rec.DTLS1_0_VERSION,
    msg_type: int = rec.HS_CLIENT_HELLO,
) -> bytes:
    """One record carrying one handshake fragment."""
    payload = rec.encode_handshake_fragment(msg_type, length, message_seq, offset, body)
    return rec.encode_record(rec.HANDSHAKE, version, 0, record_seq, payload)


def split(message: bytes, cuts: list[int], **kwargs: int) -> list[bytes]:
    """``message`` as fragment records cut at ``cuts``, record seqs 0, 1, ..."""
    bounds = [0, *sorted(cuts), len(message)]
    return [
        fragment(a, message[a:b], length=len(message), record_seq=i, **kwargs)
        for i, (a, b) in enumerate(itertools.pairwise(bounds))
    ]


def whole(message: bytes, *, message_seq: int = 0, record_seq: int = 0) -> bytes:
    """What the reassembler must return for ``message``."""
    return fragment(
        0, message, length=len(message), message_seq=message_seq, record_seq=record_seq
    )


BODY = HELLO[rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE :]


# -- the common case costs nothing ------------------------------------------


def test_whole_hello_passes_through_untouched() -> None:
    table = HelloReassembler()
    assert opens_with_whole_hello(HELLO)
    assert table.feed_untrusted(ADDR, HELLO, 0.0) is HELLO
    assert len(table) == 0
    assert set(table.counters.snapshot().values()) == {0}


def test_a_split_hello_comes_back_as_the_original() -> None:
    # What our own association does to a hello that does not fit its MTU:
    # every piece keeps the original record sequence number.
    [record] = rec.parse_records_untrusted(HELLO)
    pieces = [piece.encode() for piece in rec.split_handshake_record(record, 100)]
    assert len(pieces) > 2
    table = HelloReassembler()
    results = [table.feed_untrusted(ADDR, piece, 0.0) for piece in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    assert results[-1] == HELLO
    assert rec.parse_client_hello_untrusted(HELLO) == rec.parse_client_hello_untrusted(
        results[-1]
    )
    assert len(table) == 0 and table.bytes_held == 0
    assert table.counters.fragments_accepted == len(pieces)
    assert table.counters.hellos_reassembled == 1


def test_record_seq_and_version_come_from_offset_zero() -> None:
    pieces = split(BODY, [50, 120], message_seq=1)
    # Offset 0 travels in record 0; deliver it last and re-label the others.
    first, *rest = pieces
    relabelled = [
        fragment(
            f.fragment_offset,
            f.body,
            length=len(BODY),
            message_seq=1,
            record_seq=40 + i,
            version=rec.DTLS1_2_VERSION,
        )
        for i, piece in enumerate(rest)
        for f in rec.parse_handshake_fragments_untrusted(
            piece[rec.RECORD_HEADER_SIZE :]
        )
    ]
    table = HelloReassembler()
    assert [table.feed_untrusted(ADDR, p, 0.0) for p in relabelled] == [None, None]
    out = table.feed_untrusted(ADDR, first, 0.0)
    assert out == whole(BODY, message_seq=1, record_seq=0)
    [record] = rec.parse_records_untrusted(out)
    assert (record.version, record.seq) == (rec.DTLS1_0_VERSION, 0)


def test_the_first_copy_of_offset_zero_gives_the_record_seq() -> None:
    original = split(BODY, [100])
    retransmitted = [
        fragment(0, BODY[:100], length=len(BODY), record_seq=9),
        fragment(100, BODY[100:], length=len(BODY), record_seq=10),
    ]
    table = HelloReassembler()
    assert table.feed_untrusted(ADDR, original[0], 0.0) is None
    assert table.feed_untrusted(ADDR, retransmitted[0], 1.0) is None
    assert table.feed_untrusted(ADDR, retransmitted[1], 1.0) == whole(
        BODY, record_seq=0
    )


def test_fragments_packed_in_one_datagram() -> None:
    a, b, c = split(BODY, [70, 140])
    table = HelloReassembler()
    assert table.feed_untrusted(ADDR, c + a, 0.0) is None
    assert table.feed_untrusted(ADDR, b, 0.0) == whole(BODY)


def test_a_hello_whole_in_one_datagram_never_enters_the_table() -> None:
    table = HelloReassembler(max_entries=1)
    assert table.feed_untrusted(OTHER, split(BODY, [10])[0], 0.0) is None
    assert table.feed_untrusted(ADDR, b"".join(split(BODY, [30, 60])), 0.0) == whole(
        BODY
    )
    assert len(table) == 1  # OTHER was not evicted
    assert table.counters.entries_evicted == 0


def test_overlaps_that_agree_are_merged() -> None:
    table = HelloReassembler()
    length = len(BODY)
    for start, end in [
        (100, 180),
        (0, 120),
        (150, length - 10),
        (90, 110),
        (length - 20, length),
    ]:
        out = table.feed_untrusted(
            ADDR, fragment(start, BODY[start:end], length=length), 0.0
        )
    assert out == whole(BODY)
    assert table.counters.fragments_accepted == 5


def test_a_repeat_after_completion_starts_afresh() -> None:
    pieces = split(BODY, [100])
    table = HelloReassembler()
    for piece in pieces:
        out = table.feed_untrusted(ADDR, piece, 0.0)
    assert out == whole(BODY)
    assert table.feed_untrusted(ADDR, pieces[0], 0.1) is None
    assert len(table) == 1


# -- conflicts and replacement ------------------------------------------------


def test_overlap_that_disagrees_drops_the_entry() -> None:
    length = len(BODY)
    changed = BODY[:60] + b"X" * 40 + BODY[100:]
    table = HelloReassembler()
    assert (
        table.feed_untrusted(ADDR, fragment(0, BODY[:100], length=length), 0.0) is None
    )
    # Bytes 60..100 disagree: the old entry goes, the newcomer starts afresh.
    assert (
        table.feed_untrusted(ADDR, fragment(50, changed[50:150], length=length), 0.0)
        is None
    )
    assert table.counters.entries_conflicting == 1
    assert len(table) == 1
    out = table.feed_untrusted(ADDR, fragment(0, changed[:50], length=length), 0.0)
    assert out is None  # 150.. is still missing: nothing of the old entry is kept
    out = table.feed_untrusted(ADDR, fragment(150, changed[150:], length=length), 0.0)
    assert out == whole(changed)


def test_a_datagram_that_contradicts_itself_is_dropped() -> None:
    length = len(BODY)
    datagram = fragment(0, BODY[:80], length=length) + fragment(
        40, b"Y" * 80, length=length
    )
    table = HelloReassembler()
    assert table.feed_untrusted(ADDR, datagram, 0.0) is None
    assert table.counters.entries_conflicting == 1
    assert len(table) == 0


def test_another_message_from_the_same_address_replaces_the_entry() -> None:
    first = split(BODY, [100], message_seq=0)
    second = split(BODY + b"\x00" * 32, [100], message_seq=1)
    table = HelloReassembler()
    assert table.feed_untrusted(ADDR, first[0], 0.0) is None
    assert table.feed_untrusted(OTHER, first[0], 0.0) is None
    assert table.feed_untrusted(ADDR, second[1], 0.0) is None
    assert table.counters.entries_replaced == 1
    assert len(table) == 2
    # The first message cannot be finished any more; the second can.
    assert table.feed_untrusted(ADDR, second[0], 0.0) == whole(
        BODY + b"\x00" * 32, message_seq=1
    )
    # A different length is a different message too.
    assert table.feed_untrusted(OTHER, split(BODY[:-1], [100])[1], 0.0) is None
    assert table.counters.entries_replaced == 2


# -- bounds -------------------------------------------------------------------


def test_a_hello_longer_than_the_limit_is_refused() -> None:
    table = HelloReassembler(max_message_bytes=len(BODY) - 1)
    assert table.feed_untrusted(ADDR, split(BODY, [100])[0], 0.0) is None
    assert table.counters.datagrams_too_big == 1
    assert len(table) == 0 and table.bytes_held == 0
    exact = HelloReassembler(max_message_bytes=len(BODY))
    for piece in split(BODY, [100]):
        out = exact.feed_untrusted(ADDR, piece, 0.0)
    assert out == whole(BODY)


def test_entries_expire_lifetime_after_their_first_fragment() -> None:
    a, b, c = split(BODY, [60, 120])
    table = HelloReassembler(lifetime=5.0)
    assert table.deadline == float("inf")
    assert table.feed_untrusted(ADDR, a, 10.0) is None
    assert table.deadline == 15.0
    assert table.feed_untrusted(ADDR, b, 14.9) is None
    assert table.deadline == 15.0  # later fragments do not extend the lifetime
    table.expire(14.99)
    assert len(table) == 1
    # At 15.0 the entry is gone; the last fragment starts a new one.
    assert table.feed_untrusted(ADDR, c, 15.0) is None
    assert table.counters.entries_expired == 1
    assert table.deadline == 20.0
    table.expire(20.0)
    assert len(table) == 0 and table.bytes_held == 0
    assert table.counters.entries_expired == 2


def test_the_oldest_entry_is_evicted_first() -> None:
    pieces = split(BODY, [100])
    table = HelloReassembler(max_entries=3)
    addresses = [("192.0.2.1", port) for port in range(5)]
    for i, address in enumerate(addresses):
        assert table.feed_untrusted(address, pieces[0], float(i)) is None
    assert len(table) == 3
    assert table.counters.entries_evicted == 2
    assert table.bytes_held == 3 * len(BODY)
    # Ports 0 and 1 are gone: their second half starts an entry (evicting 2).
    assert table.feed_untrusted(addresses[0], pieces[1], 5.0) is None
    assert table.counters.entries_evicted == 3
    # Ports 3 and 4 are still there.
    assert table.feed_untrusted(addresses[3], pieces[1], 5.0) == whole(BODY)
    assert table.feed_untrusted(addresses[4], pieces[1], 5.0) == whole(BODY)
    assert len(table) == 1


def test_scattered_fragments_are_refused_beyond_max_ranges() -> None:
    length = len(BODY)
    table = HelloReassembler(max_ranges=2)

    def piece(a: int, b: int) -> bytes:
        return fragment(a, BODY[a:b], length=length)

    assert table.feed_untrusted(ADDR, piece(0, 10), 0.0) is None
    assert table.feed_untrusted(ADDR, piece(20, 30), 0.0) is None
    assert table.feed_untrusted(ADDR, piece(40, 50), 0.0) is None  # a third range
    assert table.counters.fragments_scattered == 1
    # Closing a gap is always allowed, and makes room again.
    assert table.feed_untrusted(ADDR, piece(10, 20), 0.0) is None
    assert table.feed_untrusted(ADDR, piece(40, 50), 0.0) is None
    assert table.feed_untrusted(ADDR, piece(30, 40), 0.0) is None
    assert table.feed_untrusted(ADDR, piece(50, length), 0.0) == whole(BODY)
    assert table.counters.fragments_scattered == 1


def test_constructor_checks_its_limits() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        HelloReassembler(max_entries=0)
    with pytest.raises(ValueError, match="max_message_bytes"):
        HelloReassembler(max_message_bytes=rec.MAX_PLAINTEXT)
    with pytest.raises(ValueError, match="lifetime"):
        HelloReassembler(lifetime=0)
    with pytest.raises(ValueError, match="max_ranges"):
        HelloReassembler(max_ranges=0)


# -- malformed input ----------------------------------------------------------


def malformed_datagrams() -> list[bytes]:
    good = split(BODY, [100])[0]
    epoch_1 = bytearray(good)
    epoch_1[3:5] = b"\x00\x01"
    return [
        b"",
        good[:20],
        good[:-1],
        bytes(epoch_1),
        rec.encode_record(rec.APPLICATION_DATA, rec.DTLS1_2_VERSION, 0, 0, good[13:]),
        fragment(0, BODY[:100], length=len(BODY), msg_type=rec.HS_HELLO_VERIFY_REQUEST),
        good + fragment(100, BODY[100:], length=len(BODY), message_seq=1),
        good + split(BODY[:-1], [100])[1],
        good + rec.encode_record(rec.ALERT, rec.DTLS1_2_VERSION, 0, 1, b"\x02\x28"),
        rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, 0, 0, b""),
        # The fragment runs past the end of its message.
        fragment(0, BODY, length=len(BODY) - 1),
    ]


@pytest.mark.parametrize("datagram", malformed_datagrams())
def test_malformed_datagrams_raise_bad_packet_and_change_nothing(
    datagram: bytes,
) -> None:
    table = HelloReassembler()
    assert table.feed_untrusted(OTHER, split(BODY, [100])[0], 0.0) is None
    before = (len(table), table.bytes_held)
    with pytest.raises(rec.BadPacket):
        table.feed_untrusted(ADDR, datagram, 0.0)
    with pytest.raises(rec.BadPacket):
        table.feed_untrusted(OTHER, datagram, 0.0)
    assert (len(table), table.bytes_held) == before
    assert table.counters.datagrams_malformed == 2
    # OTHER's entry is intact.
    assert table.feed_untrusted(OTHER, split(BODY, [100])[1], 0.0) == whole(BODY)


def test_parse_reports_every_fragment() -> None:
    datagram = b"".join(split(BODY, [30, 60], message_seq=3))
    hello = parse_hello_fragments_untrusted(datagram)
    assert (hello.message_seq, hello.length) == (3, len(BODY))
    assert [
        (f.record_seq, f.fragment_offset, len(f.body)) for f in hello.fragments
    ] == [
        (0, 0, 30),
        (1, 30, 30),
        (2, 60, len(BODY) - 60),
    ]


def test_any_fragmentation_in_any_order_reassembles() -> None:
    rng = random.Random(1234)
    for _ in range(200):
        message = rng.randbytes(rng.randint(1, 3000))
        pieces = []
        for _ in range(rng.randint(1, 30)):
            a = rng.randrange(len(message))
            b = rng.randint(a + 1, min(len(message), a + 400))
            pieces.append(fragment(a, message[a:b], length=len(message), message_seq=1))
        # Make sure everything is covered at least once.
        pieces += split(
            message,
            sorted(rng.sample(range(1, len(message)), min(5, len(message) - 1))),
            message_seq=1,
        )
        pieces += rng.sample(pieces, len(pieces) // 3)
        rng.shuffle(pieces)
        datagrams = rec.pack_datagrams(pieces, rng.choice([1, 600, 1400]))
        table = HelloReassembler(max_ranges=64)
        results = [table.feed_untrusted(ADDR, d, 0.0) for d in datagrams]
        done = [r for r in results if r is not None]
        assert done, "completed"
        record = rec.parse_records_untrusted(done[0])[0]
        frag = rec.parse_handshake_fragments_untrusted(record.payload)[0]
        assert (frag.fragment_offset, frag.length, frag.message_seq) == (
            0,
            len(message),
            1,
        )
        assert frag.body == message


# -- a real OpenSSL client, fragmenting its hello at the smallest MTU ---------

# OpenSSL refuses SSL_set_mtu below 256 on a memory BIO (its smallest
# "probable MTU", less the BIO's overhead, which is 0 here).
SMALL_MTU = 256
ALPN = [b"protocol-%03d" % i for i in range(40)]


def small_mtu(conn: SSL.Connection) -> SSL.Connection:
    conn.set_options(SSL.OP_NO_QUERY_MTU)
    conn.set_ciphertext_mtu(SMALL_MTU)
    return conn


def records_out(conn: SSL.Connection) -> list[bytes]:
    """What ``conn`` wrote, one encoded record a list item."""
    return [r.encode() for r in rec.parse_records_untrusted(b"".join(drain_bio(conn)))]


def advance(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def through_table(
    table: HelloReassembler, datagrams: list[bytes], rng: random.Random, now: float
) -> tuple[bytes, int]:
    """Deliver ``datagrams`` shuffled, two of them twice. Returns the hello
    that comes out, and how many times it was reassembled (a repeat after
    completion starts afresh, and may complete again)."""
    sent = datagrams + rng.sample(datagrams, min(2, len(datagrams)))
    rng.shuffle(sent)
    out = [(d, table.feed_untrusted(ADDR, d, now)) for d in sent]
    done = [hello for _, hello in out if hello is not None]
    assert done and all(hello == done[0] for hello in done)
    return done[0], sum(hello is not None and hello is not d for d, hello in out)


def hello_fragment_counts(records: list[bytes]) -> list[int]:
    """For each record, how many ClientHello fragments it carries."""
    counts = []
    for record in records:
        [parsed] = rec.parse_records_untrusted(record)
        fragments = rec.parse_handshake_fragments_untrusted(parsed.payload)
        assert all(f.msg_type == rec.HS_CLIENT_HELLO for f in fragments)
        counts.append(len(fragments))
    return counts


class Server:
    """A pyOpenSSL server fed only what the table and the cookie check let
    through, as the endpoint would feed it."""

    def __init__(self, context: SSL.Context, hello: bytes) -> None:
        self.conn = small_mtu(SSL.Connection(context, None))
        self.conn.set_accept_state()
        self.conn.bio_write(hello)
        self.conn.DTLSv1_listen()
        self.flights: list[list[bytes]] = []


def finish_handshake(client: SSL.Connection, server: Server) -> None:
    """Move datagrams both ways, one at a time, until both sides are done."""
    client_done = server_done = False
    for _ in range(10):
        server_done = advance(server.conn) or server_done
        flight = records_out(server.conn)
        if flight:
            server.flights.append(flight)
        for datagram in rec.pack_datagrams(flight, SMALL_MTU):
            client.bio_write(datagram)
            client_done = advance(client) or client_done
        for datagram in rec.pack_datagrams(records_out(client), SMALL_MTU):
            server.conn.bio_write(datagram)
            server_done = advance(server.conn) or server_done
        if client_done and server_done:
            return
    raise AssertionError("the handshake did not finish")


class Connected:
    def __init__(self, server: Server, first: list[bytes], second: list[bytes]) -> None:
        self.server = server
        self.first = first  # the client's records: first hello
        self.second = second  # second hello, with the cookie
        self.reassembled = 0


def connect(
    client: SSL.Connection,
    server_ctx: SSL.Context,
    table: HelloReassembler,
    pack: int,
    rng: random.Random,
) -> Connected:
    """The cookie exchange through ``table``, then the whole handshake."""
    jar = CookieJar()
    client.set_connect_state()
    assert not advance(client)
    first = records_out(client)
    datagram, reassembled = through_table(
        table, rec.pack_datagrams(first, pack), rng, 0.0
    )
    hello = rec.parse_client_hello_untrusted(datagram)
    assert hello.cookie == b""
    client.bio_write(
        rec.encode_hello_verify_request(hello.record_seq, jar.make(ADDR, hello, 0.0))
    )
    assert not advance(client)
    second = records_out(client)
    datagram, again = through_table(table, rec.pack_datagrams(second, pack), rng, 0.5)
    verified = rec.parse_client_hello_untrusted(datagram)
    assert jar.verify(ADDR, verified, 0.5)
    assert verified.random == hello.random
    connected = Connected(Server(server_ctx, datagram), first, second)
    connected.reassembled = reassembled + again
    finish_handshake(client, connected.server)
    return connected


def exchange_data(client: SSL.Connection, server: SSL.Connection) -> None:
    client.write(b"ping")
    for datagram in records_out(client):
        server.bio_write(datagram)
    assert server.read(100) == b"ping"
    server.write(b"pong")
    for datagram in records_out(server):
        client.bio_write(datagram)
    assert client.read(100) == b"pong"


@pytest.mark.parametrize(
    "pack", [SMALL_MTU, 3 * SMALL_MTU], ids=["one-record-a-datagram", "packed"]
)
def test_openssl_client_with_a_long_alpn_list_connects(
    server_ctx: SSL.Context, client_ctx: SSL.Context, pack: int
) -> None:
    server_ctx.set_cookie_verify_callback(lambda conn, cookie: True)
    client = small_mtu(SSL.Connection(client_ctx, None))
    client.set_alpn_protos(ALPN)
    table = HelloReassembler()
    connected = connect(client, server_ctx, table, pack, random.Random(pack))
    first, second = connected.first, connected.second
    # OpenSSL really fragments: each record one fragment, none over the MTU.
    assert hello_fragment_counts(first) == [1] * len(first)
    assert hello_fragment_counts(second) == [1] * len(second)
    assert len(first) >= 3 and len(second) >= 3
    assert max(map(len, first + second)) == SMALL_MTU
    exchange_data(client, connected.server.conn)
    counters = table.counters
    assert counters.hellos_reassembled == connected.reassembled >= 2
    assert counters.fragments_accepted >= len(first) + len(second)
    assert counters.datagrams_malformed == counters.entries_conflicting == 0


def test_a_session_ticket_fragments_the_hello_and_the_session_resumes(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    server_ctx.set_cookie_verify_callback(lambda conn, cookie: True)
    rng = random.Random(7)
    # A full handshake; its hellos fit the MTU and pass through untouched.
    client = small_mtu(SSL.Connection(client_ctx, None))
    table = HelloReassembler()
    connected = connect(client, server_ctx, table, SMALL_MTU, rng)
    assert len(connected.first) == len(connected.second) == 1
    assert table.counters.hellos_reassembled == connected.reassembled == 0
    session = client.get_session()
    # Without close_notify, freeing the connection marks its session
    # unresumable (OpenSSL's ssl_clear_bad_session).
    client.shutdown()
    del client, connected

    resuming = small_mtu(SSL.Connection(client_ctx, None))
    resuming.set_session(session)
    table = HelloReassembler()
    connected = connect(resuming, server_ctx, table, SMALL_MTU, rng)
    assert len(connected.first) >= 2 and len(connected.second) >= 2
    assert table.counters.hellos_reassembled == connected.reassembled >= 2
    # An abbreviated handshake: the server's first flight already ends with
    # ChangeCipherSpec, and carries no Certificate.
    flight = [rec.parse_records_untrusted(r)[0] for r in connected.server.flights[0]]
    assert rec.CHANGE_CIPHER_SPEC in {r.content_type for r in flight}
    assert not any(
        r.content_type == rec.HANDSHAKE and r.epoch == 0 and r.payload[0] == 11
        for r in flight
    )
    exchange_data(resuming, connected.server.conn)


# -- floods and garbage -------------------------------------------------------


def check_invariants(table: HelloReassembler) -> None:
    """What the table promises, recounted from its insides."""
    entries = table._entries
    assert len(entries) <= table.max_entries
    held = sum(len(entry.buffer) for entry in entries.values())
    assert held == table.bytes_held <= table.max_entries * table.max_message_bytes
    expiries = [entry.expires_at for entry in entries.values()]
    assert expiries == sorted(expiries)
    for entry in entries.values():
        assert len(entry.buffer) == entry.length <= table.max_message_bytes
        ranges = entry.ranges
        assert len(ranges) % 2 == 0 and 0 < len(ranges) <= 2 * table.max_ranges
        assert all(
            a < b for a, b in itertools.pairwise(ranges)
        )  # disjoint, not touching
        assert ranges[0] >= 0 and ranges[-1] <= entry.length


def test_a_flood_of_random_fragments_stays_within_the_bounds() -> None:
    rng = random.Random(20240601)
    table = HelloReassembler()
    bound = table.max_entries * table.max_message_bytes
    limit = table.max_message_bytes
    # A few addresses keep sending pieces of one message each, with random
    # bytes, so their entries grow, overlap and conflict; everyone else is a
    # new address with a new message.
    regular_lengths = [rng.randrange(1, limit) for _ in range(16)]
    noise = rng.randbytes(1 << 16)
    legit = BODY * 3
    now = 0.0
    highest = 0
    completed = started = 0
    for i in range(100_000):
        if i and i % 30_000 == 0:
            now += 2 * table.lifetime  # a quiet spell: everything expires
        now += 0.0001
        if i % 100 == 0:
            # A real client in the middle of it all: three fragments, with a
            # hundred flood datagrams between them.
            part = (i // 100) % 3
            started += part == 0
            cut = [0, 200, 400, len(legit)]
            piece = fragment(
                cut[part], legit[cut[part] : cut[part + 1]], length=len(legit)
            )
            if table.feed_untrusted(("192.0.2.200", i // 300), piece, now) is not None:
                completed += 1
            continue
        roll = rng.random()
        if roll < 0.02:
            datagram = b"\x16" + rng.randbytes(rng.randrange(80))
            address: tuple[object, ...] = ("203.0.113.9", 1)
        else:
            if roll < 0.25:
                port = rng.randrange(len(regular_lengths))
                address = ("198.51.100.1", port)
                length = regular_lengths[port]
                message_seq = int(rng.random() < 0.05)  # now and then, a new message
            else:
                address = (f"203.0.113.{rng.randrange(256)}", rng.randrange(65536))
                length = rng.randrange(1, 2 * limit)
                message_seq = 0
            pieces = []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                offset = rng.randrange(length)
                size = rng.randrange(min(length - offset, 1200) + 1)
                start = rng.randrange(len(noise) - size)
                body = noise[start : start + size]
                pieces.append(
                    fragment(offset, body, length=length, message_seq=message_seq)
                )
            datagram = b"".join(pieces)
        try:
            table.feed_untrusted(address, datagram, now)
        except rec.BadPacket:
            pass
        assert table.bytes_held <= bound and len(table) <= table.max_entries
        highest = max(highest, table.bytes_held)
        if i % 997 == 0:
            check_invariants(table)
    check_invariants(table)
    counters = table.counters
    # Every kind of trouble happened, and the table was full.
    assert counters.datagrams_malformed > 0
    assert counters.datagrams_too_big > 0
    assert counters.entries_evicted > 0
    assert counters.entries_expired > 0
    assert counters.entries_replaced > 0
    assert counters.entries_conflicting > 0
    assert len(table) == table.max_entries or counters.entries_evicted > 10_000
    assert highest > bound // 3
    # Every real client got through, but the last: its later fragments
    # would come after the end of the flood.
    assert started == 334
    assert completed == 333


def test_the_table_fills_to_exactly_its_bound_and_no_further() -> None:
    table = HelloReassembler(max_entries=50, max_message_bytes=4000)
    longest = fragment(0, b"x" * 10, length=4000)
    for port in range(500):
        assert table.feed_untrusted(("192.0.2.1", port), longest, port * 0.001) is None
        assert table.bytes_held == min(port + 1, 50) * 4000
    assert table.counters.entries_evicted == 450
    check_invariants(table)


def real_fragments() -> list[bytes]:
    pieces = split(BODY, [60, 120])
    return [*pieces, pieces[0] + pieces[2], b"".join(pieces)]


def mutated_fragments() -> st.SearchStrategy[bytes]:
    def mutate(data: bytes, positions: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(data)
        for position, value in positions:
            out[position % len(out)] = value
        return bytes(out[: max(cut, 0) or len(out)])

    return st.builds(
        mutate,
        st.sampled_from(real_fragments()),
        st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 255)), max_size=8),
        st.integers(-50, 400),
    )


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048) | mutated_fragments())
def test_the_parser_raises_only_bad_packet(data: bytes) -> None:
    try:
        parse_hello_fragments_untrusted(data)
    except rec.BadPacket:
        pass


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 5),  # which address
            st.binary(max_size=600)
            | mutated_fragments()
            | st.sampled_from(real_fragments()),
            st.floats(0, 3),  # time passing
        ),
        max_size=40,
    )
)
def test_the_table_survives_anything(steps: list[tuple[int, bytes, float]]) -> None:
    table = HelloReassembler(
        max_entries=3, max_message_bytes=600, lifetime=5, max_ranges=3
    )
    now = 0.0
    for port, data, elapsed in steps:
        now += elapsed
        try:
            out = table.feed_untrusted(("192.0.2.1", port), data, now)
        except rec.BadPacket:
            out = None
        if out is not None and out is not data:
            # Whatever comes out is one record with one whole message.
            [record] = rec.parse_records_untrusted(out)
            [frag] = rec.parse_handshake_fragments_untrusted(record.payload)
            assert frag.fragment_offset == 0 and len(frag.body) == frag.length
        check_invariants(table)


# -- openssl s_client, which we did not write ---------------------------------

OPENSSL = shutil.which("openssl")


@pytest.mark.interop
@pytest.mark.skipif(OPENSSL is None, reason="no openssl command line")
def test_openssl_s_client_at_mtu_256_fragments_its_hello_and_connects(
    server_ctx: SSL.Context,
) -> None:
    """Real loopback UDP: s_client's own MTU handling, not ours."""
    assert OPENSSL is not None
    server_ctx.set_cookie_verify_callback(lambda conn, cookie: True)
    table = HelloReassembler()
    jar = CookieJar()
    hello_datagrams: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [OPENSSL, "s_client", "-dtls1_2", "-mtu", "256", "-quiet",
             "-alpn", ",".join(p.decode() for p in ALPN),
             "-connect", f"127.0.0.1:{port}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            server: Server | None = None
            done = False
            while not done:
                datagram, peer = sock.recvfrom(65536)
                now = time.monotonic()
                if server is None:
                    hello_datagrams.append(datagram)
                    whole_hello = table.feed_untrusted(peer, datagram, now)
                    if whole_hello is None:
                        continue
                    hello = rec.parse_client_hello_untrusted(whole_hello)
                    if not jar.verify(peer, hello, now):
                        cookie = jar.make(peer, hello, now)
                        reply = rec.encode_hello_verify_request(
                            hello.record_seq, cookie
                        )
                        sock.sendto(reply, peer)
                        continue
                    server = Server(server_ctx, whole_hello)
                    done = advance(server.conn)
                else:
                    server.conn.bio_write(datagram)
                    done = advance(server.conn)
                for out in rec.pack_datagrams(records_out(server.conn), SMALL_MTU):
                    sock.sendto(out, peer)
            assert server is not None
            server.conn.write(b"hello, small world\n")
            server.conn.shutdown()  # s_client exits on close_notify
            for out in records_out(server.conn):
                sock.sendto(out, peer)
            stdout, _ = proc.communicate(timeout=10)
        finally:
            proc.kill()
            proc.wait()
    assert stdout == b"hello, small world\n"
    # s_client's -mtu is the link MTU: 256 less 28 bytes of IPv4 and UDP.
    assert max(map(len, hello_datagrams)) == 228
    assert len(hello_datagrams) >= 6  # two hellos, three or more pieces each
    assert table.counters.hellos_reassembled == 2


# -- through the endpoint ------------------------------------------------------


async def test_our_client_at_mtu_256_fragments_its_hello_and_the_endpoint_reassembles(
    autojump_clock: object, identity: trio_dtlsmux.SelfSigned
) -> None:
    # Before: the server dropped every fragmented hello as junk, so such a
    # client could never connect.
    from trio_dtlsmux import DtlsEndpoint
    from trio_dtlsmux.testing import FakeNetwork, Packet

    from .conftest import fake_socket

    names = [p.decode() for p in ALPN]
    server_ctx = trio_dtlsmux.server_context(identity, alpn=names)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint, alpn=names)
    net = FakeNetwork()
    sizes: list[int] = []
    def hook(packet: Packet) -> Packet:
        if packet.source == ("10.0.0.2", 5000):
            sizes.append(len(packet.payload))
        return packet

    net.route_hook = hook
    async with DtlsEndpoint(
        await fake_socket(net, "10.0.0.1", 4433), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, "10.0.0.2", 5000), mtu=256) as client:
        conn = await client.connect(("10.0.0.1", 4433), client_ctx, server_hostname=False)
        theirs = await server.accept()
        assert conn.alpn_protocol == theirs.alpn_protocol == ALPN[0]
        await conn.send(b"small world")
        assert await theirs.receive() == b"small world"
        stats = server.statistics()
    assert max(sizes) <= 256  # what the client sent
    # Both hellos (without and with the cookie) came in pieces.
    assert stats.fragmented_hellos_completed == 2
    assert stats.hello_fragments_dropped == 0
    assert stats.junk_dropped == 0


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command line")
async def test_openssl_s_client_at_mtu_256_connects_to_the_endpoint(
    identity: trio_dtlsmux.SelfSigned,
) -> None:
    import trio

    from trio_dtlsmux import DtlsEndpoint

    from .conftest import udp_socket

    names = [p.decode() for p in ALPN]
    server_ctx = trio_dtlsmux.server_context(identity, alpn=names)
    sock = await udp_socket()
    port = sock.getsockname()[1]
    assert OPENSSL is not None
    with trio.fail_after(20):
        async with DtlsEndpoint(sock, server_context=server_ctx) as server:
            proc = await trio.lowlevel.open_process(
                [OPENSSL, "s_client", "-dtls1_2", "-mtu", "256", "-quiet",
                 "-alpn", ",".join(names), "-connect", f"127.0.0.1:{port}"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                theirs = await server.accept()
                assert theirs.alpn_protocol == ALPN[0]
                assert proc.stdout is not None
                await theirs.send(b"hello, small world\n")
                seen = b""
                while b"\n" not in seen:
                    seen += await proc.stdout.receive_some(4096)
                assert seen == b"hello, small world\n"
            finally:
                proc.kill()
                await proc.wait()
            assert server.statistics().fragmented_hellos_completed == 2
