"""The data path's two record paths behave the same (see ``_recordio``).

Every case runs on the fast path (OpenSSL's C functions through pyOpenSSL's
cffi binding) and on the public path (pyOpenSSL's methods), with plain
pyOpenSSL connections on both sides.
"""

from __future__ import annotations

import pytest
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import SelfSigned, _recordio
from trio_dtlsmux._recordio import FastRecordIO, PublicRecordIO, RecordIO

from .conftest import drain_bio

PATHS = [FastRecordIO, PublicRecordIO]


def _step(conn: SSL.Connection) -> None:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass


class Pair:
    """An established client/server pair of plain pyOpenSSL connections."""

    def __init__(self, identity: SelfSigned, path: type[RecordIO]) -> None:
        # A plain client context: unlike ours it allows renegotiation, which
        # the fatal-alert case needs.
        self.client = SSL.Connection(SSL.Context(SSL.DTLS_METHOD), None)
        self.client.set_connect_state()
        self.server = SSL.Connection(trio_dtlsmux.server_context(identity), None)
        self.server.set_accept_state()
        self.server.set_options(SSL.OP_NO_RENEGOTIATION)
        for conn in (self.client, self.server):
            conn.set_ciphertext_mtu(1400)
        for _ in range(10):
            for source, sink in ((self.client, self.server), (self.server, self.client)):
                _step(source)
                for datagram in drain_bio(source):
                    sink.bio_write(datagram)
        assert self.server.get_protocol_version_name() == "DTLSv1.2"
        self.client_io = path(self.client)  # type: ignore[call-arg]
        self.server_io = path(self.server)  # type: ignore[call-arg]


@pytest.fixture(params=PATHS, ids=["fast", "public"])
def pair(request: pytest.FixtureRequest, identity: SelfSigned) -> Pair:
    return Pair(identity, request.param)


def test_the_fast_path_is_in_use_with_this_pyopenssl(identity: SelfSigned) -> None:
    # If pyOpenSSL renames what the fast path needs, this fails rather than
    # the library silently running at half speed.
    conn = SSL.Connection(trio_dtlsmux.server_context(identity), None)
    assert isinstance(_recordio.record_io(conn), FastRecordIO)


def test_the_public_path_can_be_chosen(
    identity: SelfSigned, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_recordio, "use_fast_path", False)
    conn = SSL.Connection(trio_dtlsmux.server_context(identity), None)
    assert isinstance(_recordio.record_io(conn), PublicRecordIO)


def test_seal_and_open_one_message_per_record(pair: Pair) -> None:
    records = [pair.client_io.seal(b"m%d" % i * 40, 1401) for i in range(3)]
    assert all(record[0] == 23 for record in records)
    assert [pair.server_io.open(r) for r in records] == [b"m%d" % i * 40 for i in range(3)]
    # And the other way, read by pyOpenSSL itself.
    pair.client.bio_write(pair.server_io.seal(b"reply", 1401))
    assert pair.client.recv(100) == b"reply"


def test_a_replayed_or_corrupted_record_is_dropped(pair: Pair) -> None:
    record = pair.client_io.seal(b"once", 1401)
    corrupted = record[:-1] + bytes([record[-1] ^ 1])
    assert pair.server_io.open(corrupted) is None
    assert pair.server_io.open(record) == b"once"
    assert pair.server_io.open(record) is None
    # Nothing was left in OpenSSL's error queue to confuse the next call.
    assert pair.server_io.open(pair.client_io.seal(b"next", 1401)) == b"next"


def test_close_notify_is_zero_return(pair: Pair) -> None:
    assert pair.client.shutdown() is False  # sent; the reply not yet seen
    [goodbye] = drain_bio(pair.client)
    with pytest.raises(SSL.ZeroReturnError):
        pair.server_io.open(goodbye)


def test_a_fatal_alert_raises_what_pyopenssl_raises(pair: Pair) -> None:
    # The client tries to renegotiate; the server refuses with a warning,
    # and the client answers that with a fatal handshake_failure alert.
    pair.client.renegotiate()
    _step(pair.client)
    [hello] = drain_bio(pair.client)
    assert pair.server_io.open(hello) is None
    for datagram in drain_bio(pair.server):
        pair.client.bio_write(datagram)
    with pytest.raises(SSL.Error):
        pair.client.do_handshake()
    [alert] = drain_bio(pair.client)
    assert alert[0] == 21  # an (encrypted) alert record
    with pytest.raises(SSL.Error, match="alert handshake failure") as info:
        pair.server_io.open(alert)
    assert type(info.value) is SSL.Error


def test_seal_after_our_own_shutdown_raises(pair: Pair) -> None:
    assert pair.server.shutdown() is False
    drain_bio(pair.server)
    with pytest.raises(SSL.Error):
        pair.server_io.seal(b"too late", 1401)
