"""The sans-IO association, driven by hand with an explicit ``now``."""

from __future__ import annotations

import math

import pytest
from OpenSSL import SSL

from trio_dtlsmux import HandshakeError, HandshakeTimeout, SelfSigned, _recordio
from trio_dtlsmux import _records as rec
from trio_dtlsmux._association import Association, Role, State
from trio_dtlsmux._config import EndpointConfig
from trio_dtlsmux._cookies import CookieJar
from trio_dtlsmux._endpoint import _prepare_server_context

ADDR_C = ("192.0.2.1", 1111)
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
        _prepare_server_context(server_ctx)
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
        [hello1] = self.client.start(self.now)
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
        self.to_client: list[bytes] = self.server.start_server(hello2, self.now)
        self.to_server: list[bytes] = []
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
                    out, msgs = self.client.receive_datagram(datagram, self.now)
                    self.to_server += out
                    self.client_messages += msgs
                index += 1
            for datagram in to_server:
                if index not in drop:
                    out, msgs = self.server.receive_datagram(datagram, self.now)
                    self.to_client += out
                    self.server_messages += msgs
                index += 1

    def fire_timers(self) -> None:
        self.now = min(self.client.deadline, self.server.deadline)
        assert math.isfinite(self.now)
        self.to_server += self.client.handle_timer(self.now)
        self.to_client += self.server.handle_timer(self.now)


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
    out, messages = pair.server.receive_datagram(one + two, pair.now)
    assert messages == [b"one", b"two"]
    assert out == []


def test_replayed_record_is_rejected_and_counted(pair: Pair) -> None:
    pair.deliver()
    [datagram] = pair.client.send_message(b"once")
    assert pair.server.receive_datagram(datagram, pair.now)[1] == [b"once"]
    assert pair.server.receive_datagram(datagram, pair.now)[1] == []
    assert pair.server.counters.records_rejected == 1
    assert pair.server.counters.messages_in == 1


def test_corrupted_record_is_rejected(pair: Pair) -> None:
    pair.deliver()
    [datagram] = pair.client.send_message(b"secret")
    broken = datagram[:-1] + bytes([datagram[-1] ^ 0xFF])
    assert pair.server.receive_datagram(broken, pair.now)[1] == []
    assert pair.server.counters.records_rejected == 1
    # The real one still arrives afterwards.
    assert pair.server.receive_datagram(datagram, pair.now)[1] == [b"secret"]


def count_handshake_datagrams(server_ctx: SSL.Context, client_ctx: SSL.Context) -> int:
    pair = Pair(server_ctx, client_ctx)
    count = 0
    while pair.to_client or pair.to_server:
        count += len(pair.to_client) + len(pair.to_server)
        to_client, pair.to_client = pair.to_client, []
        to_server, pair.to_server = pair.to_server, []
        for d in to_client:
            pair.to_server += pair.client.receive_datagram(d, 0.0)[0]
        for d in to_server:
            pair.to_client += pair.server.receive_datagram(d, 0.0)[0]
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
        assert pair.client.receive_datagram(datagram, pair.now)[1] == [b"after loss"]


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
        assert pair.client.handle_timer(deadline), "a retransmission"
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
    assert pair.client.failure_kind == "timeout"
    assert pair.client.ssl is None  # freed


def test_wrong_pin_fails_with_a_reason(server_ctx: SSL.Context) -> None:
    import trio_dtlsmux

    other = trio_dtlsmux.self_signed()
    pair = Pair(server_ctx, trio_dtlsmux.client_context(fingerprint=other.fingerprint))
    pair.deliver()
    assert pair.client.state is State.FAILED
    assert isinstance(pair.client.error, HandshakeError)
    assert "verification" in str(pair.client.error)
    assert pair.client.failure_kind == "verification"
    # The server was told with an alert and failed too.
    assert pair.server.state is State.FAILED
    assert pair.server.failure_kind == "alert"


def test_close_notify(pair: Pair) -> None:
    pair.deliver()
    [goodbye] = pair.client.close()
    assert pair.client.state is State.CLOSED
    assert pair.client.close() == []  # once
    _, messages = pair.server.receive_datagram(goodbye, pair.now)
    assert messages == []
    assert pair.server.state is State.PEER_CLOSED


def test_cleartext_mtu_fits_the_datagram(pair: Pair, identity: SelfSigned) -> None:
    pair.deliver()
    limit = pair.client.cleartext_mtu()
    [datagram] = pair.client.send_message(b"x" * limit)
    assert len(datagram) <= pair.config.mtu
