"""The endpoint's protocol core, driven by hand: no Trio, no sockets, ``now``
chosen by the test (aioquic's way of testing a connection).

Two :class:`Demux` instances, a server and a client, pass datagrams through
lists; every decision the endpoint makes about who may have an association
is checked step by step.
"""

from __future__ import annotations

import errno
import math
import random
from collections import Counter
from typing import Any

import pytest
from OpenSSL import SSL

from trio_dtlsmux import HandshakeFailure
from trio_dtlsmux import _records as rec
from trio_dtlsmux._association import Association, State
from trio_dtlsmux._config import EndpointConfig
from trio_dtlsmux._cookies import CookieJar
from trio_dtlsmux._demux import Demux
from trio_dtlsmux._events import (
    Event,
    HandshakeCompleted,
    MessageReceived,
    PeerEnded,
    PeerStarted,
)
from trio_dtlsmux._waiting import WaitingRoom

SERVER = ("192.0.2.1", 4433)
CLIENT = ("192.0.2.2", 5000)
OTHER = ("192.0.2.3", 6000)


def of(kind: type, events: list[Event]) -> list[Any]:
    return [event for event in events if isinstance(event, kind)]


class Link:
    """A server demux and a client demux joined by two lists of datagrams."""

    def __init__(
        self,
        server_ctx: SSL.Context | None,
        client_ctx: SSL.Context,
        config: EndpointConfig | None = None,
    ) -> None:
        self.config = config or EndpointConfig()
        self.server = Demux(self.config, server_ctx, cookies=CookieJar(random_bytes=bytes))
        self.client = Demux(self.config, None)
        self.client_ctx = client_ctx
        self.now = 0.0
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.server_events: list[Event] = []
        self.client_events: list[Event] = []
        #: Every datagram the client sent, in order.
        self.log: list[bytes] = []

    def connect(self) -> Association:
        association, (out, events) = self.client.connect(
            self.client_ctx, SERVER, server_hostname=None, now=self.now
        )
        self.to_server += out
        self.client_events += events
        return association

    def step(self) -> int:
        """Deliver what is queued once in each direction; returns how many."""
        to_server, self.to_server = self.to_server, []
        to_client, self.to_client = self.to_client, []
        self.log += to_server
        for datagram in to_server:
            out, events = self.server.receive_datagram(datagram, CLIENT, self.now)
            self.to_client += out
            self.server_events += events
        for datagram in to_client:
            out, events = self.client.receive_datagram(datagram, SERVER, self.now)
            self.to_server += out
            self.client_events += events
        return len(to_server) + len(to_client)

    def verified_hello(self) -> bytes:
        """Connect and let the cookie exchange happen; returns the client's
        second hello (the one with the cookie), not yet delivered."""
        self.connect()
        self.step()  # hello -> server; HelloVerifyRequest queued
        self.step()  # HelloVerifyRequest -> client; hello with cookie queued
        [hello] = self.to_server
        self.to_server = []
        self.log.append(hello)
        assert rec.parse_client_hello_untrusted(hello).cookie
        return hello

    def run(self) -> None:
        while self.step():
            pass

    def established(self) -> tuple[Association, Association]:
        client = self.connect()
        self.run()
        server = self.server.get(CLIENT)
        assert server is not None
        assert client.state is State.ESTABLISHED and server.state is State.ESTABLISHED
        return client, server


@pytest.fixture
def link(server_ctx: SSL.Context, client_ctx: SSL.Context) -> Link:
    return Link(server_ctx, client_ctx)


def test_a_hello_without_cookie_costs_one_small_reply_and_no_state(link: Link) -> None:
    link.connect()
    [hello] = link.to_server
    out, events = link.server.receive_datagram(hello, CLIENT, 0.0)
    [reply] = out
    assert events == []
    assert len(reply) <= len(hello)  # no amplification
    assert link.server.peers == 0
    assert link.server.counters.cookies_sent == 1


def test_a_verified_hello_creates_the_association(link: Link) -> None:
    with_cookie = link.verified_hello()
    out, events = link.server.receive_datagram(with_cookie, CLIENT, 0.0)
    assert out, "the server's first flight"
    [started] = of(PeerStarted, events)
    assert started.association is link.server.get(CLIENT)
    assert (link.server.peers, link.server.handshaking) == (1, 1)
    # The association counted the datagram that created it.
    assert started.association.counters.datagrams_in == 1


def test_the_handshake_completes_on_both_sides(link: Link) -> None:
    client, server = link.established()
    assert of(HandshakeCompleted, link.client_events)[0].association is client
    assert of(HandshakeCompleted, link.server_events)[0].association is server
    assert link.server.counters.handshakes_completed == 1
    assert (link.server.peers, link.server.handshaking) == (1, 0)
    [datagram] = client.send_message(b"hello")
    _, events = link.server.receive_datagram(datagram, CLIENT, 1.0)
    assert events == [MessageReceived(server, b"hello")]


def test_a_wrong_cookie_is_counted_and_answered_again(link: Link) -> None:
    with_cookie = link.verified_hello()
    hello = rec.parse_client_hello_untrusted(with_cookie)
    forged = bytearray(with_cookie)
    forged[with_cookie.index(hello.cookie)] ^= 1
    out, events = link.server.receive_datagram(bytes(forged), CLIENT, 0.0)
    assert len(out) == 1 and events == []
    assert link.server.counters.cookie_failures == 1
    # The same cookie from another address is no good either.
    out, events = link.server.receive_datagram(with_cookie, OTHER, 0.0)
    assert events == [] and link.server.peers == 0
    assert link.server.counters.cookie_failures == 2


def test_junk_from_strangers_is_dropped_and_counted(link: Link) -> None:
    for junk in (b"", b"\x17" + bytes(40), b"\x16\xfe\xfd" + bytes(5), bytes(range(256))):
        assert link.server.receive_datagram(junk, OTHER, 0.0) == ([], [])
    assert link.server.counters.junk_dropped == 4
    assert link.server.peers == 0


def test_without_a_server_context_hellos_are_dropped(client_ctx: SSL.Context) -> None:
    link = Link(None, client_ctx)
    link.connect()
    [hello] = link.to_server
    assert link.server.receive_datagram(hello, CLIENT, 0.0) == ([], [])
    assert link.server.counters.hellos_dropped_no_server == 1


def verified_hello_from(
    link: Link, address: tuple[str, int], client_ctx: SSL.Context, now: float = 0.0
) -> tuple[Demux, bytes]:
    """Another client at ``address`` does the cookie exchange with the link's
    server; returns that client and its verified hello, not yet delivered."""
    client = Demux(link.config, None)
    _, (out, _) = client.connect(client_ctx, SERVER, server_hostname=None, now=now)
    [reply] = link.server.receive_datagram(out[0], address, now)[0]
    [hello] = client.receive_datagram(reply, SERVER, now)[0]
    return client, hello


def test_a_verified_hello_over_max_handshakes_waits_for_a_slot(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    link = Link(server_ctx, client_ctx, EndpointConfig(max_handshakes=1))
    link.connect()
    link.step()
    link.step()  # the first client's verified hello is on its way
    other, hello2 = verified_hello_from(link, OTHER, client_ctx)
    link.step()  # ... and takes the only slot
    assert link.server.handshaking == 1
    # The second verified hello finds the slot taken: no association, no
    # reply, just its bytes in the waiting room (retransmissions included).
    for _ in range(3):
        assert link.server.receive_datagram(hello2, OTHER, 0.0) == ([], [])
    assert (link.server.peers, link.server.waiting) == (1, 1)
    assert link.server.counters.hellos_dropped_limits == 0
    assert not link.server.can_admit
    assert link.server.admit_waiting(0.0, 16) == ([], [])
    # The first handshake ends; the waiting hello gets the slot.
    link.run()
    assert link.server.get(CLIENT).state is State.ESTABLISHED
    assert link.server.can_admit
    sends, events = link.server.admit_waiting(0.5, 16)
    [(address, flight)] = sends
    assert address == OTHER and flight
    [started] = of(PeerStarted, events)
    assert started.association.address == OTHER
    assert (link.server.peers, link.server.waiting) == (2, 0)
    # The second client completes with the flight it was sent.
    pending = list(flight)
    while pending:
        replies = []
        for datagram in pending:
            replies += other.receive_datagram(datagram, SERVER, 0.5)[0]
        pending = []
        for datagram in replies:
            pending += link.server.receive_datagram(datagram, OTHER, 0.5)[0]
    assert link.server.get(OTHER).state is State.ESTABLISHED
    assert link.server.counters.handshakes_completed == 2


def test_the_waiting_room_admits_everyone_a_slice_at_a_time(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    config = EndpointConfig(max_handshakes=3)
    link = Link(server_ctx, client_ctx, config)
    addresses = [("192.0.2.9", 7000 + i) for i in range(6)]
    hellos = {}
    for address in addresses:
        _, hellos[address] = verified_hello_from(link, address, client_ctx)
        link.server.receive_datagram(hellos[address], address, 0.0)
    assert (link.server.handshaking, link.server.waiting) == (3, 3)
    # Free the slots: the three handshakes time out. The waiting clients
    # have kept resending their hellos meanwhile.
    now = config.handshake_timeout + 1
    for address in addresses[:3]:
        link.server.handle_timer(link.server.get(address), now)
    for address in addresses[3:]:
        assert link.server.receive_datagram(hellos[address], address, now - 0.5) == ([], [])
    assert (link.server.handshaking, link.server.waiting) == (0, 3)
    sends, _ = link.server.admit_waiting(now, 2)
    first = [address for address, _ in sends]
    assert len(first) == 2 and link.server.can_admit
    sends, _ = link.server.admit_waiting(now, 2)
    second = [address for address, _ in sends]
    assert sorted(first + second) == addresses[3:]
    assert not link.server.can_admit and link.server.waiting == 0


def test_the_waiting_room_draws_at_random() -> None:
    """A client stuck behind stalled half-open handshakes gets the same
    chance as any other at each free slot: its place in line is no penalty."""
    room = WaitingRoom(1.0, 60.0, random.Random(7))
    hello = rec.ClientHello(record_seq=0, version=0, random=b"", cookie=b"", cookie_input=b"")
    first_draws: Counter[int] = Counter()
    for _ in range(400):
        for port in range(10):
            room.put(("192.0.2.9", port), hello, b"", 0.0)
        # A retransmission refreshes an entry; it does not add one.
        room.put(("192.0.2.9", 9), hello, b"again", 1.0)
        assert len(room) == 10
        key, _, _, _ = room.draw(1.0)
        first_draws[key[1]] += 1
        drawn = {key[1]} | {room.draw(1.0)[0][1] for _ in range(9)}
        assert drawn == set(range(10)) and len(room) == 0
    # Each of the 10 came first about 40 times in 400; first come first
    # served would give port 0 all 400.
    assert min(first_draws.values()) >= 15 and max(first_draws.values()) <= 70


def test_waiting_hellos_count_against_max_connections(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    link = Link(server_ctx, client_ctx, EndpointConfig(max_handshakes=1, max_connections=2))
    addresses = [("192.0.2.9", 7000 + i) for i in range(3)]
    for address in addresses:
        _, hello = verified_hello_from(link, address, client_ctx)
        assert link.server.receive_datagram(hello, address, 0.0) == ([], []) or (
            address == addresses[0]
        )
    # One handshaking, one waiting, and the third shed: together they would
    # be more peers than max_connections allows.
    assert (link.server.peers, link.server.waiting) == (1, 1)
    assert link.server.counters.hellos_dropped_limits == 1


def test_a_waiting_hello_whose_client_went_quiet_is_shed(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    config = EndpointConfig(max_handshakes=1, handshake_timeout=10.0)
    link = Link(server_ctx, client_ctx, config)
    first, second, third = (("192.0.2.9", 7000 + i) for i in range(3))
    hellos = {}
    for address in (first, second, third):
        _, hellos[address] = verified_hello_from(link, address, client_ctx)
        link.server.receive_datagram(hellos[address], address, 0.0)
    assert link.server.waiting == 2
    # The third client resends its hello as its doubling timer says (1, 2,
    # 4, 8 s later); the second was heard once, 15 s ago: it has given up.
    for when in (1.0, 3.0, 7.0, 15.0):
        link.server.receive_datagram(hellos[third], third, when)
    link.server.handle_timer(link.server.get(first), 11.0)  # its handshake times out
    admitted = []
    while link.server.waiting:
        sends, _ = link.server.admit_waiting(15.5, 16)
        admitted += [address for address, _ in sends]
        for address in admitted:  # free the slot again, whoever took it
            association = link.server.get(address)
            if association is not None:
                link.server.handle_timer(association, 30.0)
    assert admitted == [third]
    assert link.server.counters.hellos_dropped_limits == 1


def test_the_waiting_room_judges_a_client_gone_by_its_doubling_timer() -> None:
    hello = rec.ClientHello(record_seq=0, version=0, random=b"", cookie=b"", cookie_input=b"")
    key = ("192.0.2.9", 1)

    def alive_at(sent: list[float], now: float) -> bool:
        room = WaitingRoom(1.0, 60.0, random.Random(1))
        for when in sent:
            room.put(key, hello, b"", when)
        return room.draw(now)[3]

    # Heard once: the first resend is due within the initial timeout; it
    # gets three, as a storm may hold its resend back or drop it.
    assert alive_at([0.0], 3.0) and not alive_at([0.0], 3.1)
    # Last gap 1 s: the next is due within 2 s; three initial timeouts still.
    assert alive_at([0.0, 1.0], 4.0) and not alive_at([0.0, 1.0], 4.1)
    # Last gap 4 s: the next is due within 8 s (12 s with the margin).
    assert alive_at([0.0, 1.0, 3.0, 7.0], 19.0)
    assert not alive_at([0.0, 1.0, 3.0, 7.0], 19.1)
    # The doubling stops at max_timeout.
    assert alive_at([0.0, 50.0], 50.0 + 90.0) and not alive_at([0.0, 50.0], 50.0 + 90.5)


def test_a_closing_endpoint_forgets_its_waiting_hellos(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    link = Link(server_ctx, client_ctx, EndpointConfig(max_handshakes=1))
    for i in range(2):
        address = ("192.0.2.9", 7000 + i)
        _, hello = verified_hello_from(link, address, client_ctx)
        link.server.receive_datagram(hello, address, 0.0)
    assert link.server.waiting == 1
    link.server.close_all(1.0)
    assert link.server.waiting == 0
    assert link.server.admit_waiting(1.0, 16) == ([], [])


def test_a_peer_that_restarts_replaces_its_association(link: Link, client_ctx: SSL.Context) -> None:
    _, old = link.established()
    # The same address, a new client (a new random), with a valid cookie.
    fresh = Link(None, client_ctx)
    fresh.server = link.server
    verified = fresh.verified_hello()
    out, events = link.server.receive_datagram(verified, CLIENT, 2.0)
    assert out
    [ended] = of(PeerEnded, events)
    assert (ended.association, ended.state) == (old, State.REPLACED)
    [started] = of(PeerStarted, events)
    assert started.association is link.server.get(CLIENT)
    assert started.association is not old
    assert link.server.counters.peers_restarted == 1
    assert link.server.peers == 1


def test_a_retransmitted_hello_goes_to_its_association(link: Link) -> None:
    verified = link.verified_hello()
    link.server.receive_datagram(verified, CLIENT, 0.0)
    association = link.server.get(CLIENT)
    # The same hello again (its flight was lost): no restart, no new peer.
    _out, events = link.server.receive_datagram(verified, CLIENT, 0.5)
    assert of(PeerStarted, events) == [] and of(PeerEnded, events) == []
    assert link.server.get(CLIENT) is association
    assert link.server.counters.peers_restarted == 0


def test_the_hello_of_an_ended_association_is_refused_while_its_cookie_lives(
    link: Link,
) -> None:
    client, _ = link.established()
    [verified] = [
        d for d in link.log if rec.may_be_client_hello(d)
        and rec.parse_client_hello_untrusted(d).cookie
    ]
    out, _ = link.client.close(client, 1.0)
    for datagram in out:
        link.server.receive_datagram(datagram, CLIENT, 1.0)
    assert link.server.peers == 0
    # A replay (or a very late retransmission) of that hello: its cookie
    # still verifies, but it starts nothing.
    assert link.server.receive_datagram(verified, CLIENT, 2.0) == ([], [])
    assert link.server.peers == 0
    assert link.server.counters.cookie_failures == 1


def test_the_idle_timeout_reaps_through_the_timer(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    link = Link(server_ctx, client_ctx, EndpointConfig(idle_timeout=30.0))
    _, server = link.established()
    assert server.deadline == 30.0
    # The timer fires early after traffic moved the deadline: nothing.
    assert link.server.handle_timer(server, 29.0) == ([], [])
    _out, events = link.server.handle_timer(server, 30.0)
    [ended] = of(PeerEnded, events)
    assert ended.state is State.TIMED_OUT
    assert link.server.counters.peers_reaped == 1
    assert link.server.peers == 0 and link.server.get(CLIENT) is None
    assert server.deadline == math.inf


def test_a_port_unreachable_ends_a_handshake_at_once(link: Link) -> None:
    client = link.connect()
    # Nothing listens at SERVER: the ICMP error names its address.
    _out, events = link.client.socket_error(errno.ECONNREFUSED, SERVER, 0.1)
    [ended] = of(PeerEnded, events)
    assert ended.state is State.FAILED
    assert ended.error.kind is HandshakeFailure.REFUSED
    assert link.client.counters.handshakes_failed == {"refused": 1}
    assert link.client.peers == 0
    # Other errors, and errors about nobody, change nothing.
    link2 = Link(None, link.client_ctx)
    link2.connect()
    assert link2.client.socket_error(errno.EHOSTUNREACH, SERVER, 0.1) == ([], [])
    assert link2.client.socket_error(errno.ECONNREFUSED, OTHER, 0.1) == ([], [])
    assert link2.client.peers == 1
    del client


def test_a_port_unreachable_leaves_an_established_peer_alone(link: Link) -> None:
    client, _ = link.established()
    assert link.client.socket_error(errno.ECONNREFUSED, SERVER, 5.0) == ([], [])
    assert client.state is State.ESTABLISHED


def test_closing_says_goodbye_to_the_established_and_aborts_the_rest(
    link: Link, client_ctx: SSL.Context
) -> None:
    link.established()
    other = Demux(link.config, None)
    _, (out, _) = other.connect(client_ctx, SERVER, server_hostname=None, now=0.0)
    [reply] = link.server.receive_datagram(out[0], OTHER, 0.0)[0]
    [verified] = other.receive_datagram(reply, SERVER, 0.0)[0]
    link.server.receive_datagram(verified, OTHER, 0.0)
    assert (link.server.peers, link.server.handshaking) == (2, 1)
    goodbyes, events = link.server.close_all(1.0)
    assert [address for address, _ in goodbyes] == [CLIENT]
    assert {e.state for e in of(PeerEnded, events)} == {State.CLOSED, State.FAILED}
    assert link.server.counters.handshakes_failed == {"aborted": 1}
    assert link.server.peers == 0
    # And no new peer is accepted afterwards.
    late = Link(None, client_ctx)
    late.server = link.server
    late.connect()
    late.step()
    assert link.server.peers == 0
    assert link.server.counters.hellos_dropped_no_server >= 1


def test_one_association_per_address(link: Link) -> None:
    link.connect()
    with pytest.raises(ValueError, match="already has an association"):
        link.client.connect(link.client_ctx, SERVER, server_hostname=None, now=0.0)


def test_a_server_context_is_refused_for_connect(
    link: Link, server_ctx: SSL.Context
) -> None:
    with pytest.raises(ValueError, match="client_context"):
        link.client.connect(server_ctx, OTHER, server_hostname=None, now=0.0)
    assert link.client.peers == 0


def test_only_a_newcomers_handshake_may_wait(link: Link) -> None:
    client, _ = link.established()
    [data] = client.send_message(b"x")
    hello = link.log[0]
    assert link.server.can_wait(hello, OTHER)  # a stranger's hello
    assert not link.server.can_wait(hello, CLIENT)  # a peer we have
    assert not link.server.can_wait(data, OTHER)  # not a handshake
