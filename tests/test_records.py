"""The wire parsers: exact framing, and nothing but BadPacket on garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from trio_dtlsmux import _records as rec


def fresh_client() -> SSL.Connection:
    """An OpenSSL client that has just written its first ClientHello."""
    conn = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
    conn.set_ciphertext_mtu(1400)
    conn.set_connect_state()
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn


def client_hello_datagram() -> bytes:
    """A real ClientHello, as OpenSSL writes it."""
    return fresh_client().bio_read(65536)


HELLO = client_hello_datagram()


def client_hello_with_cookie(cookie: bytes) -> bytes:
    """A real second ClientHello, echoing ``cookie`` as OpenSSL does."""
    conn = fresh_client()
    first = rec.parse_client_hello_untrusted(conn.bio_read(65536))
    conn.bio_write(rec.encode_hello_verify_request(first.record_seq, cookie))
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def test_client_hello_fields() -> None:
    hello = rec.parse_client_hello_untrusted(HELLO)
    assert hello.version == rec.DTLS1_2_VERSION
    assert len(hello.random) == 32
    assert hello.cookie == b""
    assert hello.random in HELLO
    # The cookie input is the whole body minus the (empty) cookie vector and
    # the session id vector.
    session_id_length = HELLO[13 + 12 + 34]
    assert len(hello.cookie_input) == len(HELLO) - 13 - 12 - 1 - (1 + session_id_length)


def test_hello_verify_request_round_trip() -> None:
    cookie = bytes(range(32))
    datagram = rec.encode_hello_verify_request(7, cookie)
    assert len(datagram) == rec.hello_verify_request_size(32)
    [record] = rec.parse_records_untrusted(datagram)
    assert (record.content_type, record.epoch, record.seq) == (rec.HANDSHAKE, 0, 7)
    [fragment] = rec.parse_handshake_fragments_untrusted(record.payload)
    assert fragment.msg_type == rec.HS_HELLO_VERIFY_REQUEST
    assert fragment.body == b"\xfe\xff" + bytes([32]) + cookie
    # Smaller than the hello it answers: no amplification.
    assert len(datagram) < len(HELLO)


def test_hello_verify_request_is_accepted_by_openssl() -> None:
    conn = fresh_client()
    first = rec.parse_client_hello_untrusted(conn.bio_read(65536))
    conn.bio_write(rec.encode_hello_verify_request(first.record_seq, b"C" * 32))
    with pytest.raises(SSL.WantReadError):
        conn.do_handshake()
    second = rec.parse_client_hello_untrusted(conn.bio_read(65536))
    assert second.cookie == b"C" * 32
    assert second.random == first.random
    assert second.cookie_input == first.cookie_input


def test_split_datagram_keeps_records_whole() -> None:
    a = rec.encode_record(23, rec.DTLS1_2_VERSION, 1, 5, b"first")
    b = rec.encode_record(21, rec.DTLS1_2_VERSION, 1, 6, b"second!")
    assert rec.split_datagram_untrusted(a) == [(23, 1, a)]
    assert rec.split_datagram_untrusted(a + b) == [(23, 1, a), (21, 1, b)]
    with pytest.raises(rec.BadPacket):
        rec.split_datagram_untrusted(a + b[:-1])
    with pytest.raises(rec.BadPacket):
        rec.split_datagram_untrusted(a + b[:5])


def test_records_round_trip_with_48_bit_sequence_numbers() -> None:
    seq = (1 << 48) - 1
    data = rec.encode_record(22, rec.DTLS1_2_VERSION, 3, seq, b"xyz")
    [record] = rec.parse_records_untrusted(data)
    assert record == rec.Record(22, rec.DTLS1_2_VERSION, 3, seq, b"xyz")
    with pytest.raises(ValueError, match="48 bits"):
        rec.encode_record(22, rec.DTLS1_2_VERSION, 0, seq + 1, b"")


def test_split_handshake_record_fits_and_reassembles() -> None:
    [record] = rec.parse_records_untrusted(HELLO)
    pieces = rec.split_handshake_record(record, 100)
    assert len(pieces) > 1
    body = b""
    for piece in pieces:
        assert len(piece.encode()) <= 100
        [fragment] = rec.parse_handshake_fragments_untrusted(piece.payload)
        assert fragment.fragment_offset == len(body)
        body += fragment.body
    assert body == HELLO[13 + 12 :]


def test_pack_datagrams_respects_the_limit_and_order() -> None:
    records = [bytes([i]) * n for i, n in enumerate([100, 200, 50, 300, 10])]
    datagrams = rec.pack_datagrams(records, 310)
    assert all(len(d) <= 310 for d in datagrams)
    assert b"".join(datagrams) == b"".join(records)
    assert len(datagrams) == 3


def test_truncated_and_fragmented_hellos_are_rejected() -> None:
    for cut in (0, 5, 13, 20, 60, len(HELLO) - 1):
        with pytest.raises(rec.BadPacket):
            rec.parse_client_hello_untrusted(HELLO[:cut])
    # Mark it as a fragment (fragment_length smaller than length).
    fragmented = bytearray(HELLO)
    fragmented[13 + 9 : 13 + 12] = (int.from_bytes(HELLO[13 + 9 : 13 + 12], "big") - 1).to_bytes(3, "big")
    with pytest.raises(rec.BadPacket):
        rec.parse_client_hello_untrusted(bytes(fragmented))


# -- every parser of network bytes raises only BadPacket ---------------------

PARSERS = [
    rec.parse_client_hello_untrusted,
    rec.parse_records_untrusted,
    rec.split_datagram_untrusted,
    rec.parse_handshake_fragments_untrusted,
]


def mutations() -> st.SearchStrategy[bytes]:
    def mutate(data: bytes, positions: list[tuple[int, int]], cut: int) -> bytes:
        out = bytearray(data)
        for position, value in positions:
            out[position % len(out)] = value
        return bytes(out[: max(cut, 0) or len(out)])

    return st.builds(
        mutate,
        st.just(HELLO),
        st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
        st.integers(-50, len(HELLO)),
    )


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.__name__)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2048) | mutations())
def test_parsers_only_raise_bad_packet(parser: object, data: bytes) -> None:
    try:
        parser(data)  # type: ignore[operator]
    except rec.BadPacket:
        pass


def test_sniffing_helpers() -> None:
    one = rec.encode_record(rec.APPLICATION_DATA, rec.DTLS1_2_VERSION, 1, 7, b"payload")
    assert rec.is_single_application_record(one)
    assert not rec.is_single_application_record(one + one)  # two records
    assert not rec.is_single_application_record(one[:-1])  # truncated
    assert not rec.is_single_application_record(b"")
    alert = rec.encode_record(rec.ALERT, rec.DTLS1_2_VERSION, 1, 7, b"\x01\x00")
    assert not rec.is_single_application_record(alert)
    hello = rec.encode_record(
        rec.HANDSHAKE,
        rec.DTLS1_2_VERSION,
        0,
        0,
        rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, 3, 0, 0, b"abc"),
    )
    assert rec.may_be_client_hello(hello) and rec.starts_with_handshake(hello)
    later_epoch = hello[:3] + b"\x00\x01" + hello[5:]
    assert not rec.may_be_client_hello(later_epoch)
    assert rec.starts_with_handshake(later_epoch)
    assert not rec.may_be_client_hello(hello[: rec.RECORD_HEADER_SIZE])
    # RFC 7983: 20-63 is DTLS; STUN (0-3) and RTP (128-191) are not.
    assert [rec.is_dtls(bytes([b])) for b in (0, 3, 19, 20, 23, 63, 64, 128)] == [
        False, False, False, True, True, True, False, False
    ]
    assert not rec.is_dtls(b"")


def _with_session_id(datagram: bytes, session_id: bytes) -> bytes:
    """``datagram``'s hello with another session id (lengths fixed up)."""
    header = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE
    body = datagram[header:]
    old = body[34]
    new_body = body[:34] + bytes([len(session_id)]) + session_id + body[35 + old :]
    fragment = rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, len(new_body), 0, 0, new_body)
    return rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, 0, 0, fragment)


def test_the_cookie_input_leaves_out_the_session_id() -> None:
    # Mbed TLS 2.28, resuming by ticket, draws a new session id for its
    # second hello (the one with the cookie), against RFC 6347 4.2.1; a
    # cookie bound to the session id sent it cookie after cookie.
    first = rec.parse_client_hello_untrusted(_with_session_id(HELLO, b"A" * 32))
    second = rec.parse_client_hello_untrusted(_with_session_id(HELLO, b"B" * 32))
    empty = rec.parse_client_hello_untrusted(_with_session_id(HELLO, b""))
    assert first.cookie_input == second.cookie_input == empty.cookie_input
    assert first.random == second.random
    # The rest of the offer is still bound.
    assert first.cookie_input != rec.parse_client_hello_untrusted(HELLO[:-1] + b"\x01").cookie_input


def test_flight_helpers_agree_with_the_parsers() -> None:
    fragments = [
        rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, 5, 7, 0, b"abc"),
        rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, 5, 7, 3, b"de"),
        rec.encode_handshake_fragment(11, 0, 8, 0, b""),
    ]
    record = rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, 0, 3, b"".join(fragments))
    parsed = rec.parse_handshake_fragments_untrusted(rec.parse_records_untrusted(record)[0].payload)
    assert rec.handshake_message_seqs(record) == [f.message_seq for f in parsed] == [7, 7, 8]
    renumbered = rec.renumber_record(record, (1 << 48) - 1)
    [again] = rec.parse_records_untrusted(renumbered)
    assert (again.seq, again.epoch, again.payload) == ((1 << 48) - 1, 0, b"".join(fragments))
    with pytest.raises(ValueError, match="48 bits"):
        rec.renumber_record(record, 1 << 48)
