"""The sans-IO association, driven by hand with an explicit ``now``."""

from __future__ import annotations

import math

import pytest
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import (
    HandshakeError,
    HandshakeFailure,
    HandshakeTimeout,
    SelfSigned,
    _recordio,
)
from trio_dtlsmux import _records as rec
from trio_dtlsmux._association import Association, Role, State
from trio_dtlsmux._config import EndpointConfig
from trio_dtlsmux._cookies import CookieJar
from trio_dtlsmux._demux import prepare_server_context
from trio_dtlsmux._events import (
    DeadlineChanged,
    Event,
    HandshakeCompleted,
    MessageReceived,
    PeerEnded,
)

ADDR_C = ("192.0.2.1", 1111)


def messages_in(events: list[Event]) -> list[bytes]:
    return [event.data for event in events if isinstance(event, MessageReceived)]


def datagrams(output: tuple[list[bytes], list[Event]]) -> list[bytes]:
    return output[0]

ADDR_S = ("192.0.2.2", 2222)


class Pair:
    """A client and a server association joined by lists of datagrams."""

    def __init__(
        self,
        server_ctx: SSL.Context,
        client_ctx: SSL.Context,
        config: EndpointConfig | None = None,
    ) -> None:
        self.config = config or EndpointConfig()
        prepare_server_context(server_ctx)
        self.server_ctx = server_ctx
        self.now = 0.0
        self.client = Association(
            client_ctx,
            role=Role.CLIENT,
            address=ADDR_S,
            config=self.config,
            now=self.now,
            server_hostname=None,
        )
        # Stateless cookie round trip, as the endpoint does it.
        jar = CookieJar()
        [hello1], events = self.client.start(self.now)
        assert [type(event) for event in events] == [DeadlineChanged]
        first = rec.parse_client_hello_untrusted(hello1)
        cookie = jar.make(ADDR_C, first, self.now)
        out, _ = self.client.receive_datagram(
            rec.encode_hello_verify_request(first.record_seq, cookie), self.now
        )
        [hello2] = out
        second = rec.parse_client_hello_untrusted(hello2)
        assert jar.verify(ADDR_C, second, self.now)
        self.server = Association(
            server_ctx,
            role=Role.SERVER,
            address=ADDR_C,
            config=self.config,
            now=self.now,
            first_record_seq=second.record_seq,
            client_random=second.random,
        )
        self.to_client, _ = self.server.start_server(hello2, self.now)
        self.to_server: list[bytes] = []
        self.client_events: list[Event] = []
        self.server_events: list[Event] = []
        self.client_messages: list[bytes] = []
        self.server_messages: list[bytes] = []

    def deliver(self, *, drop: set[int] | None = None) -> None:
        """Deliver everything queued, in both directions, until quiet."""
        drop = drop or set()
        index = 0
        while self.to_client or self.to_server:
            to_client, self.to_client = self.to_client, []
            to_server, self.to_server = self.to_server, []
            for datagram in to_client:
                if index not in drop:
                    out, events = self.client.receive_datagram(datagram, self.now)
                    self.to_server += out
                    self.client_messages += messages_in(events)
                    self.client_events += events
                index += 1
            for datagram in to_server:
                if index not in drop:
                    out, events = self.server.receive_datagram(datagram, self.now)
                    self.to_client += out
                    self.server_messages += messages_in(events)
                    self.server_events += events
                index += 1

    def fire_timers(self) -> None:
        self.now = min(self.client.deadline, self.server.deadline)
        assert math.isfinite(self.now)
        self.to_server += datagrams(self.client.handle_timer(self.now))
        self.to_client += datagrams(self.server.handle_timer(self.now))


@pytest.fixture(params=[True, False], ids=["fast-records", "public-records"])
def pair(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> Pair:
    # Every test of an established pair runs on both record paths.
    monkeypatch.setattr(_recordio, "use_fast_path", request.param)
    return Pair(server_ctx, client_ctx)


def test_handshake_then_one_message_per_record(pair: Pair) -> None:
    pair.deliver()
    assert pair.client.state is State.ESTABLISHED
    assert pair.server.state is State.ESTABLISHED
    [one] = pair.client.send_message(b"one")
    [two] = pair.client.send_message(b"two")
    # Two records in one datagram are two messages, not one merged one.
    out, events = pair.server.receive_datagram(one + two, pair.now)
    assert messages_in(events) == [b"one", b"two"]
    assert out == []


def test_replayed_record_is_rejected_and_counted(pair: Pair) -> None:
    pair.deliver()
    [datagram] = pair.client.send_message(b"once")
    assert messages_in(pair.server.receive_datagram(datagram, pair.now)[1]) == [b"once"]
    assert pair.server.receive_datagram(datagram, pair.now) == ([], [])
    assert pair.server.counters.records_rejected == 1
    assert pair.server.counters.messages_in == 1


def test_corrupted_record_is_rejected(pair: Pair) -> None:
    pair.deliver()
    [datagram] = pair.client.send_message(b"secret")
    broken = datagram[:-1] + bytes([datagram[-1] ^ 0xFF])
    assert pair.server.receive_datagram(broken, pair.now) == ([], [])
    assert pair.server.counters.records_rejected == 1
    # The real one still arrives afterwards.
    assert messages_in(pair.server.receive_datagram(datagram, pair.now)[1]) == [b"secret"]


def count_handshake_datagrams(server_ctx: SSL.Context, client_ctx: SSL.Context) -> int:
    pair = Pair(server_ctx, client_ctx)
    count = 0
    while pair.to_client or pair.to_server:
        count += len(pair.to_client) + len(pair.to_server)
        to_client, pair.to_client = pair.to_client, []
        to_server, pair.to_server = pair.to_server, []
        for d in to_client:
            pair.to_server += datagrams(pair.client.receive_datagram(d, 0.0))
        for d in to_server:
            pair.to_client += datagrams(pair.server.receive_datagram(d, 0.0))
    return count


def test_any_lost_handshake_datagram_is_retransmitted(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    total = count_handshake_datagrams(server_ctx, client_ctx)
    assert total >= 3  # server flight, client flight, server final flight
    for lost in range(total):
        pair = Pair(server_ctx, client_ctx)
        pair.deliver(drop={lost})
        for _ in range(10):
            if pair.client.state is State.ESTABLISHED and pair.server.state is State.ESTABLISHED:
                break
            pair.fire_timers()
            pair.deliver()
        assert pair.client.state is State.ESTABLISHED, lost
        assert pair.server.state is State.ESTABLISHED, lost
        retransmissions = (
            pair.client.counters.handshake_retransmissions
            + pair.server.counters.handshake_retransmissions
        )
        assert retransmissions >= 1, lost
        [datagram] = pair.server.send_message(b"after loss")
        assert messages_in(pair.client.receive_datagram(datagram, pair.now)[1]) == [
            b"after loss"
        ]


def test_lost_final_flight_is_resent_when_the_peer_repeats(pair: Pair) -> None:
    # Deliver until the server has sent its final flight, then lose it.
    while pair.server.state is not State.ESTABLISHED:
        to_client, pair.to_client = pair.to_client, []
        for d in to_client:
            out, _ = pair.client.receive_datagram(d, pair.now)
            pair.to_server += out
        to_server, pair.to_server = pair.to_server, []
        for d in to_server:
            out, _ = pair.server.receive_datagram(d, pair.now)
            pair.to_client += out
    assert pair.to_client, "the server's final flight"
    pair.to_client = []  # lost
    assert pair.client.state is State.HANDSHAKING
    # The client's timer repeats its flight; the established server answers.
    pair.fire_timers()
    assert pair.to_server
    pair.deliver()
    assert pair.client.state is State.ESTABLISHED
    assert pair.server.counters.handshake_retransmissions == 1


def test_backoff_doubles_up_to_the_cap(server_ctx: SSL.Context, client_ctx: SSL.Context) -> None:
    config = EndpointConfig(
        initial_retransmit_timeout=1.0, max_retransmit_timeout=4.0, handshake_timeout=100
    )
    pair = Pair(server_ctx, client_ctx, config)
    pair.to_client = []  # server flight lost, forever
    gaps = []
    last = pair.now
    for _ in range(5):
        deadline = pair.client.deadline
        gaps.append(deadline - last)
        last = deadline
        assert datagrams(pair.client.handle_timer(deadline)), "a retransmission"
    assert gaps == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_handshake_timeout(server_ctx: SSL.Context, client_ctx: SSL.Context) -> None:
    config = EndpointConfig(handshake_timeout=5.0)
    pair = Pair(server_ctx, client_ctx, config)
    pair.to_client = []
    while pair.client.state is State.HANDSHAKING:
        now = pair.client.deadline
        assert now <= 5.0
        pair.client.handle_timer(now)
    assert pair.client.state is State.FAILED
    assert isinstance(pair.client.error, HandshakeTimeout)
    assert pair.client.error.kind is HandshakeFailure.TIMEOUT
    assert pair.client.ssl is None  # freed


def test_wrong_pin_fails_with_a_reason(server_ctx: SSL.Context) -> None:
    import trio_dtlsmux

    other = trio_dtlsmux.self_signed()
    pair = Pair(server_ctx, trio_dtlsmux.client_context(fingerprint=other.fingerprint))
    pair.deliver()
    assert pair.client.state is State.FAILED
    assert isinstance(pair.client.error, HandshakeError)
    assert "verification" in str(pair.client.error)
    assert pair.client.error.kind is HandshakeFailure.VERIFICATION
    assert pair.client.error.peer_address == ADDR_S
    # The server was told with an alert and failed too.
    assert pair.server.state is State.FAILED
    assert isinstance(pair.server.error, HandshakeError)
    assert pair.server.error.kind is HandshakeFailure.ALERT
    [ended] = [e for e in pair.server_events if isinstance(e, PeerEnded)]
    assert ended.state is State.FAILED and ended.error is pair.server.error


def test_close_notify(pair: Pair) -> None:
    pair.deliver()
    [goodbye], events = pair.client.close()
    assert events == [PeerEnded(pair.client, State.CLOSED, None)]
    assert pair.client.state is State.CLOSED
    assert pair.client.close() == ([], [])  # once
    out, events = pair.server.receive_datagram(goodbye, pair.now)
    assert events == [PeerEnded(pair.server, State.PEER_CLOSED, None)]
    assert pair.server.state is State.PEER_CLOSED
    # The server answers with its own close_notify (RFC 5246 7.2.1), once.
    [answer] = out
    assert rec.parse_records_untrusted(answer)[0].content_type == rec.ALERT
    assert pair.server.receive_datagram(goodbye, pair.now) == ([], [])


def test_cleartext_mtu_fits_the_datagram(pair: Pair, identity: SelfSigned) -> None:
    pair.deliver()
    limit = pair.client.cleartext_mtu()
    [datagram] = pair.client.send_message(b"x" * limit)
    assert len(datagram) <= pair.config.mtu


def test_handshake_completion_is_an_event_with_the_key_log_line(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    import io

    pair = Pair(server_ctx, client_ctx, EndpointConfig(keylog=io.BytesIO()))
    pair.deliver()
    [client_done] = [e for e in pair.client_events if isinstance(e, HandshakeCompleted)]
    [server_done] = [e for e in pair.server_events if isinstance(e, HandshakeCompleted)]
    assert client_done.association is pair.client
    assert client_done.keylog_line is not None
    assert client_done.keylog_line.startswith(b"CLIENT_RANDOM ")
    # Both sides log the same session.
    assert client_done.keylog_line == server_done.keylog_line
    # Without a key log, no secrets leave the association.
    plain = Pair(server_ctx, client_ctx)
    plain.deliver()
    [done] = [e for e in plain.client_events if isinstance(e, HandshakeCompleted)]
    assert done.keylog_line is None


def test_the_timer_covers_the_idle_timeout(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    pair = Pair(server_ctx, client_ctx, EndpointConfig(idle_timeout=10.0))
    pair.deliver()
    assert pair.server.state is State.ESTABLISHED
    # Established: the deadline is the last valid datagram plus the timeout.
    assert pair.server.deadline == pair.now + 10.0
    pair.now = 6.0
    [datagram] = pair.client.send_message(b"still here")
    pair.server.receive_datagram(datagram, pair.now)
    # A datagram moves the deadline later; a timer armed for the old one
    # fires early, finds nothing due, and nothing happens.
    assert pair.server.handle_timer(10.0) == ([], [])
    assert pair.server.state is State.ESTABLISHED
    assert pair.server.deadline == 16.0
    # A forged record does not keep the peer alive.
    pair.server.receive_datagram(datagram[:-1] + b"\x00", 12.0)
    assert pair.server.deadline == 16.0
    out, events = pair.server.handle_timer(16.0)
    assert out == []
    [ended] = events
    assert isinstance(ended, PeerEnded)
    assert ended.state is State.TIMED_OUT
    assert isinstance(ended.error, trio_dtlsmux.ConnectionTimedOut)
    assert pair.server.deadline == math.inf
    assert pair.server.ssl is None


def test_no_idle_timeout_means_no_deadline(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    pair = Pair(server_ctx, client_ctx, EndpointConfig(idle_timeout=None))
    pair.deliver()
    assert pair.server.state is State.ESTABLISHED
    assert pair.server.deadline == math.inf


def test_a_new_flight_moves_the_deadline_earlier_and_says_so(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    config = EndpointConfig(initial_retransmit_timeout=1.0, max_retransmit_timeout=8.0)
    pair = Pair(server_ctx, client_ctx, config)
    server_flight, pair.to_client = pair.to_client, []
    # The client's hello is retransmitted twice: its backoff is now 4 s.
    for _ in range(2):
        pair.now = pair.client.deadline
        pair.client.handle_timer(pair.now)
    assert pair.client.deadline == pair.now + 4.0
    # The server's flight arrives at last: the client's next flight starts
    # its timer afresh, earlier than the armed deadline, and says so.
    events: list[Event] = []
    for datagram in server_flight:
        events += pair.client.receive_datagram(datagram, pair.now)[1]
    assert [e for e in events if isinstance(e, DeadlineChanged)] == [
        DeadlineChanged(pair.client)
    ]
    assert pair.client.deadline == pair.now + 1.0


def test_a_message_travels_in_a_datagram_of_its_own(pair: Pair) -> None:
    # Found with Mbed TLS's test proxy: a retransmission OpenSSL wrote on its
    # own went out packed in one datagram in front of the next message.
    pair.deliver()
    ssl = pair.server.ssl
    assert ssl is not None
    stray = rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, 1, 99, b"x" * 20)
    # As if OpenSSL had written it: into the connection's output BIO.
    assert SSL._lib.BIO_write(ssl._from_ssl, stray, len(stray)) == len(stray)  # type: ignore[attr-defined]
    out = pair.server.send_message(b"alone")
    assert out[0] == stray
    assert rec.is_single_application_record(out[-1])
    assert messages_in(pair.client.receive_datagram(out[-1], pair.now)[1]) == [b"alone"]
