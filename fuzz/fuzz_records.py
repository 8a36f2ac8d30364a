"""A coverage-guided fuzzer (atheris, libFuzzer) for the wire parsers.

Every function in ``trio_dtlsmux._records`` whose name ends in ``_untrusted``
reads bytes from the network. The contract is that each one returns or
raises :class:`~trio_dtlsmux._records.BadPacket`, nothing else, and that what
it returns describes its input exactly. :func:`check` states that contract as
assertions; any other exception, or a failed assertion, is a crash that
atheris reports together with the input that caused it.

Run it by hand (atheris is not a test dependency)::

    pip install atheris
    python fuzz/fuzz_records.py --write-seeds fuzz/corpus   # once: real datagrams
    python fuzz/fuzz_records.py fuzz/corpus -max_total_time=600

Arguments after the script name go to libFuzzer (``-runs=``, ``-jobs=``,
``-max_len=``, a corpus directory, a crash file to replay...). See
``fuzz/README.md``.

The test suite imports this file without atheris and runs :func:`check` on
every datagram of a real session and on Hypothesis-made inputs, so the
harness cannot rot unnoticed.
"""

from __future__ import annotations

import os
import sys

from trio_dtlsmux import _records as rec


def check_records(data: bytes) -> list[rec.Record] | None:
    """The two record splitters agree, and round-trip the datagram."""
    try:
        records = rec.parse_records_untrusted(data)
    except rec.BadPacket:
        records = None
    try:
        parts = rec.split_datagram_untrusted(data)
    except rec.BadPacket:
        parts = None
    if not data:
        # split_datagram_untrusted refuses an empty datagram outright; the
        # general parser sees no records in it.
        assert records == [] and parts is None
        return records
    assert (records is None) == (parts is None), "the two splitters disagree"
    if records is None or parts is None:
        return None
    assert b"".join(r.encode() for r in records) == data
    assert b"".join(raw for _, _, raw in parts) == data
    assert len(parts) == len(records)
    for record, (content_type, epoch, raw) in zip(records, parts, strict=True):
        assert (record.content_type, record.epoch) == (content_type, epoch)
        assert raw == record.encode()
        assert 0 <= record.seq < 1 << 48
    # The lazy iterator yields the same records before it would fail.
    assert list(rec.iter_records_untrusted(data)) == records
    return records


def check_fragments(payload: bytes) -> None:
    """Handshake fragments stay inside their record and their message."""
    try:
        fragments = rec.parse_handshake_fragments_untrusted(payload)
    except rec.BadPacket:
        return
    rebuilt = b"".join(
        rec.encode_handshake_fragment(
            f.msg_type, f.length, f.message_seq, f.fragment_offset, f.body
        )
        for f in fragments
    )
    assert rebuilt == payload
    for fragment in fragments:
        assert fragment.fragment_offset + len(fragment.body) <= fragment.length


def check_client_hello(data: bytes) -> None:
    """A parsed ClientHello is consistent with the bytes it came from."""
    try:
        hello = rec.parse_client_hello_untrusted(data)
    except rec.BadPacket:
        return
    assert len(hello.random) == 32
    assert len(hello.cookie) <= 255
    header = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE
    body_length = int.from_bytes(data[header - 3 : header], "big")
    # The cookie input is the body minus the session id and cookie vectors
    # (length bytes included), so two hellos that differ only in those
    # share it.
    session_id_length = data[header + 34]
    assert (
        len(hello.cookie_input) + 1 + session_id_length + 1 + len(hello.cookie)
        == body_length
    )
    assert data[header : header + 2] == hello.version.to_bytes(2, "big")
    assert data[header + 2 : header + 34] == hello.random
    assert hello.cookie in data
    # Re-splitting the hello into fragments of any size keeps it whole.
    hello_record = rec.Record(
        rec.HANDSHAKE,
        rec.DTLS1_2_VERSION,
        0,
        0,
        data[rec.RECORD_HEADER_SIZE : header + body_length],
    )
    pieces = rec.split_handshake_record(hello_record, 100)
    assert all(len(piece.encode()) <= 100 for piece in pieces)
    body = b"".join(
        rec.parse_handshake_fragments_untrusted(piece.payload)[0].body
        for piece in pieces
    )
    assert body == data[header : header + body_length]


def check(data: bytes) -> None:
    """The whole contract, for one input. Raises on a violation."""
    records = check_records(data)
    check_fragments(data)
    for record in records or []:
        if record.content_type == rec.HANDSHAKE:
            check_fragments(record.payload)
    check_client_hello(data)


def TestOneInput(data: bytes) -> None:
    check(data)


def write_seeds(directory: str) -> int:
    """Write every datagram of a real session (and a few hand-made ones) as
    seed files, one per datagram. Returns how many were written."""
    import trio
    import trio.testing

    import trio_dtlsmux
    from trio_dtlsmux.testing import FakeNetwork

    identity = trio_dtlsmux.self_signed()
    server_ctx = trio_dtlsmux.server_context(identity)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)

    async def session() -> list[bytes]:
        net = FakeNetwork(trace=True)
        server_sock = net.socket()
        await server_sock.bind(("10.0.0.1", 4433))
        client_sock = net.socket()
        await client_sock.bind(("10.0.0.2", 5000))
        async with (
            trio_dtlsmux.DtlsEndpoint(server_sock, server_context=server_ctx) as server,
            trio_dtlsmux.DtlsEndpoint(client_sock) as client,
        ):
            conn = await client.connect(
                ("10.0.0.1", 4433), client_ctx, server_hostname=False
            )
            theirs = await server.accept()
            await conn.send(b"seed")
            await theirs.receive()
            await theirs.send(b"seed")
            await conn.receive()
        return [p.payload for p in net.trace]

    datagrams = trio.run(session, clock=trio.testing.MockClock(autojump_threshold=0))
    datagrams += [
        rec.encode_hello_verify_request(0, bytes(32)),
        rec.encode_record(
            rec.HANDSHAKE,
            rec.DTLS1_2_VERSION,
            0,
            0,
            rec.encode_handshake_fragment(1, 10, 0, 0xFFFFFF, b""),
        ),
        b"",
    ]
    os.makedirs(directory, exist_ok=True)
    for i, datagram in enumerate(datagrams):
        with open(os.path.join(directory, f"seed-{i:03d}"), "wb") as f:
            f.write(datagram)
    return len(datagrams)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"wrote {write_seeds(argv[2])} seeds to {argv[2]}")
        return
    try:
        import atheris
    except ImportError:
        sys.exit("this harness needs atheris: pip install atheris")
    atheris.instrument_all()  # the parsers are already imported
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
