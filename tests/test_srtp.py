"""The DTLS-SRTP how-to's media half (docs/examples/howto_webrtc.py), taken
apart: SRTP with libsrtp, the minimal STUN binding against RFC 5769's test
vector, and a call on a network that tampers, replays, forges and translates
addresses. tests/test_docs.py runs the same example on a perfect network.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import hypothesis.strategies as st
import pylibsrtp
import pytest
import trio
import trio.testing
from hypothesis import given

import trio_dtlsmux
from trio_dtlsmux.testing import FakeNetwork, FakeSocket, Packet

from .test_docs import load

howto = load("howto_webrtc")

ALICE, BOB = ("10.0.0.1", 5000), ("10.0.0.2", 6000)
FORGER, STRANGER = ("10.0.0.66", 6666), ("10.0.0.99", 9999)

# RFC 5769, 2.2: a sample IPv4 Binding success response (with SOFTWARE,
# MESSAGE-INTEGRITY and FINGERPRINT, which the example skips over), whose
# XOR-MAPPED-ADDRESS is 192.0.2.1 port 32853.
RFC5769_IPV4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)
RFC5769_TRANSACTION_ID = bytes.fromhex("b7e7a701bc34d686fa87dfae")


def keys_pair() -> tuple[Any, Any]:
    """What the DTLS client and server derive, without a handshake."""
    client_key, server_key = bytes(range(16)), bytes(range(16, 32))
    client_salt, server_salt = bytes(range(32, 46)), bytes(range(46, 60))
    profile = b"SRTP_AES128_CM_SHA1_80"
    client = howto.SrtpKeys(profile, client_key, client_salt, server_key, server_salt)
    server = howto.SrtpKeys(profile, server_key, server_salt, client_key, client_salt)
    return client, server


def rtp(n: int, ssrc: int = 0x1234) -> bytes:
    return howto.rtp_packet(ssrc, n, n * 960, b"sample %d" % n)


BOB_SENT = [rtp(n, 0xB0B) for n in range(3)]


# -- SRTP ------------------------------------------------------------------------


def test_srtp_sessions_agree_crosswise_and_refuse_what_they_should() -> None:
    client_keys, server_keys = keys_pair()
    client_out, client_in = howto.srtp_sessions(client_keys)
    server_out, server_in = howto.srtp_sessions(server_keys)
    first, second = client_out.protect(rtp(1)), client_out.protect(rtp(2))
    assert first[:12] == rtp(1)[:12]  # the header is authenticated, not encrypted
    assert first[12:] != rtp(1)[12:] and len(first) == len(rtp(1)) + 10
    assert server_in.unprotect(first) == rtp(1)
    assert client_in.unprotect(server_out.protect(rtp(1, 0x99))) == rtp(1, 0x99)

    tampered = bytearray(second)
    tampered[15] ^= 0x01
    with pytest.raises(pylibsrtp.Error, match="authentication"):
        server_in.unprotect(bytes(tampered))
    assert server_in.unprotect(second) == rtp(2)  # the real one still goes
    with pytest.raises(pylibsrtp.Error, match="replay"):
        server_in.unprotect(second)
    # Reflected back at its sender: the other direction has other keys.
    with pytest.raises(pylibsrtp.Error):
        client_in.unprotect(client_out.protect(rtp(3)))
    # libsrtp's buffer holds 1,500 bytes: a bigger datagram is a ValueError,
    # not a pylibsrtp.Error, which is why the example catches both.
    with pytest.raises(ValueError, match="too long"):
        server_in.unprotect(b"\x80" + bytes(1600))


def test_kind_of_follows_rfc_7983_and_rfc_5761() -> None:
    kinds = {
        b"\x00\x01": "stun",
        b"\x03": "stun",
        b"\x10\x00": "other",  # ZRTP
        b"\x40\x00": "other",  # a TURN channel
        b"\x80\x6f": "rtp",
        b"\x80\xef": "rtp",  # marker bit, payload type 111
        b"\x80\xc8": "rtcp",  # sender report (200)
        b"\x81\xcc": "rtcp",  # an application-defined report (204)
        b"\xbf": "rtp",
        b"\xc0\x00": "other",
        b"\xff": "other",
    }
    assert {data: howto.kind_of(data) for data in kinds} == kinds


# -- STUN ------------------------------------------------------------------------


def test_the_rfc_5769_response_gives_its_mapped_address() -> None:
    message = howto.parse_stun_untrusted(RFC5769_IPV4_RESPONSE)
    assert message.message_type == howto.BINDING_SUCCESS
    assert message.transaction_id == RFC5769_TRANSACTION_ID
    assert [kind for kind, _ in message.attributes] == [0x8022, 0x0020, 0x0008, 0x8028]
    assert message.attributes[0][1] == b"test vector"  # padding stripped
    assert howto.mapped_address_untrusted(message) == ("192.0.2.1", 32853)
    # Our encoder writes the attribute byte for byte as the RFC does.
    ours = howto.xor_mapped_address(("192.0.2.1", 32853), RFC5769_TRANSACTION_ID)
    assert ours == bytes.fromhex("0001a147e112a643")


def test_ipv6_mapped_addresses_xor_with_the_transaction_id() -> None:
    # RFC 5769, 2.3: the same transaction id, 2001:db8:1234:5678:11:2233:4455:6677.
    address = ("2001:db8:1234:5678:11:2233:4455:6677", 32853, 0, 0)
    value = howto.xor_mapped_address(address, RFC5769_TRANSACTION_ID)
    assert value == bytes.fromhex("0002a1470113a9faa5d3f179bc25f4b5bed2b9d9")
    response = howto.StunMessage(
        howto.BINDING_SUCCESS, RFC5769_TRANSACTION_ID, ((howto.XOR_MAPPED_ADDRESS, value),)
    )
    parsed = howto.parse_stun_untrusted(howto.pack_stun(response))
    assert parsed == response
    assert howto.mapped_address_untrusted(parsed) == (address[0], 32853)


def test_a_binding_request_is_a_bare_header() -> None:
    request = howto.pack_stun(howto.StunMessage(howto.BINDING_REQUEST, bytes(range(12))))
    assert request == bytes.fromhex("000100002112a442") + bytes(range(12))
    assert howto.kind_of(request) == "stun"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (RFC5769_IPV4_RESPONSE[:19], "shorter"),
        (b"\x80" + RFC5769_IPV4_RESPONSE[1:], "no STUN header"),  # top bits set
        (RFC5769_IPV4_RESPONSE[:4] + b"\x21\x12\xa4\x43" + RFC5769_IPV4_RESPONSE[8:], "no STUN"),
        (RFC5769_IPV4_RESPONSE[:-4], "length"),
        (RFC5769_IPV4_RESPONSE[:2] + b"\x00\x3d" + RFC5769_IPV4_RESPONSE[4:] + b"x", "length"),
        (
            b"\x01\x01\x00\x04" + RFC5769_IPV4_RESPONSE[4:20] + b"\x00\x20\x00\x08",
            "past the end",
        ),
    ],
)
def test_bad_stun_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(howto.BadStun, match=why):
        howto.parse_stun_untrusted(data)


@pytest.mark.parametrize(
    "value",
    [b"", b"\x00\x01\xa1", b"\x00\x03\xa1\x47\xe1\x12\xa6\x43", b"\x00\x01\xa1\x47" + bytes(16)],
)
def test_a_malformed_mapped_address_is_refused(value: bytes) -> None:
    message = howto.StunMessage(howto.BINDING_SUCCESS, bytes(12), ((0x0020, value),))
    with pytest.raises(howto.BadStun, match="malformed"):
        howto.mapped_address_untrusted(message)
    with pytest.raises(howto.BadStun, match="no XOR-MAPPED-ADDRESS"):
        howto.mapped_address_untrusted(attrs.evolve(message, attributes=()))


@given(st.binary(max_size=80))
def test_stun_parsing_raises_only_bad_stun(data: bytes) -> None:
    for candidate in (data, RFC5769_IPV4_RESPONSE[:20] + data, _framed(data)):
        try:
            message = howto.parse_stun_untrusted(candidate)
            howto.mapped_address_untrusted(message)
        except howto.BadStun:
            pass


def _framed(body: bytes) -> bytes:
    """``body`` padded and behind a header that says its length, so that
    the attribute walk gets to see it."""
    body += bytes(-len(body) % 4)
    return struct.pack("!HHI", 0x0101, len(body), howto.MAGIC_COOKIE) + bytes(12) + body


# -- Calls on a network that misbehaves ----------------------------------------


@attrs.define
class Setup:
    net: FakeNetwork
    alice: trio_dtlsmux.SelfSigned = attrs.Factory(lambda: trio_dtlsmux.self_signed("alice"))
    bob: trio_dtlsmux.SelfSigned = attrs.Factory(lambda: trio_dtlsmux.self_signed("bob"))
    sent: list[bytes] = attrs.Factory(lambda: [rtp(n, 0xA11CE) for n in range(50)])
    hooks: list[Callable[[Packet], Packet | None]] = attrs.Factory(list)

    def route(self, packet: Packet) -> Packet | None:
        for hook in self.hooks:
            changed = hook(packet)
            if changed is None:
                return None
            packet = changed
        return packet


@pytest.fixture
def setup() -> Setup:
    net = FakeNetwork(seed=7)
    result = Setup(net)
    net.route_hook = result.route
    return result


async def call(setup: Setup, alice_as: tuple[str, int] = ALICE) -> tuple[Any, Any]:
    """Alice (the DTLS client) sends ``setup.sent``, Bob sends three packets."""
    reports: list[Any] = [None, None]
    alice_sock = await bound(setup.net, ALICE)
    bob_sock = await bound(setup.net, BOB)

    async def alice() -> None:
        remote = howto.Remote(BOB, setup.bob.fingerprint, we_connect=True)
        reports[0] = await howto.one_side(alice_sock, setup.alice, remote, setup.sent)

    async def bob() -> None:
        remote = howto.Remote(alice_as, setup.alice.fingerprint, we_connect=False)
        reports[1] = await howto.one_side(bob_sock, setup.bob, remote, BOB_SENT)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(alice)
            nursery.start_soon(bob)
    return reports[0], reports[1]


async def bound(net: FakeNetwork, address: tuple[str, int]) -> FakeSocket:
    sock = net.socket()
    await sock.bind(address)
    return sock


async def test_the_example_drops_and_counts_what_it_cannot_trust(
    autojump_clock: trio.testing.MockClock, setup: Setup
) -> None:
    from_alice: list[bytes] = []
    twenty_sent = trio.Event()

    def tamper_with_the_tenth(packet: Packet) -> Packet:
        if packet.source != ALICE or howto.kind_of(packet.payload) != "rtp":
            return packet
        from_alice.append(packet.payload)
        if len(from_alice) == 20:
            twenty_sent.set()
        if len(from_alice) == 10:
            damaged = bytearray(packet.payload)
            damaged[20] ^= 0x40
            return attrs.evolve(packet, payload=bytes(damaged))
        return packet

    def forge(packet: Packet) -> Packet:  # the forger sends as Alice
        return attrs.evolve(packet, source=ALICE) if packet.source == FORGER else packet

    setup.hooks += [tamper_with_the_tenth, forge]
    answers: list[tuple[bytes, Any]] = []

    async def attacker() -> None:
        forger, stranger = await bound(setup.net, FORGER), await bound(setup.net, STRANGER)
        await twenty_sent.wait()
        replayed = from_alice[4]
        for datagram in (
            replayed,  # libsrtp's replay window
            b"\x80\x6f" + bytes(1600),  # more than libsrtp's buffer: ValueError
            b"\x80\xc8\x00\x06" + bytes(24),  # RTCP, which the example does not use
            b"\x10" + bytes(20),  # ZRTP
        ):
            await forger.sendto(datagram, BOB)
        request = howto.pack_stun(howto.StunMessage(howto.BINDING_REQUEST, b"q" * 12))
        stray_answer = RFC5769_IPV4_RESPONSE  # answers nothing Bob asked
        for datagram in (rtp(1, 0xBAD), b"\x00\x01\x00", stray_answer, request):
            await stranger.sendto(datagram, BOB)
        answers.append(await stranger.recvfrom(2048))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(attacker)
        alice, bob = await call(setup)

    assert bob.received == setup.sent[:9] + setup.sent[10:]
    assert bob.dropped == {
        "srtp unprotect failed": 3,  # the tampered, the replayed, the oversized
        "rtcp": 1,
        "other": 1,
        "rtp from a stranger": 1,
        "bad stun": 1,
        "stun not for us": 1,
    }
    assert alice.received == BOB_SENT and alice.dropped == {}
    assert bob.dtls_messages == alice.dtls_messages == [b"keys ready", b"bye"]
    # The stranger's binding request was answered all the same (see the
    # how-to's warning), with the stranger's own address.
    [(answer, source)] = answers
    assert source == BOB
    message = howto.parse_stun_untrusted(answer)
    assert (message.message_type, message.transaction_id) == (howto.BINDING_SUCCESS, b"q" * 12)
    assert howto.mapped_address_untrusted(message) == STRANGER


async def test_behind_a_nat_stun_tells_the_public_address(
    autojump_clock: trio.testing.MockClock, setup: Setup
) -> None:
    public = ("203.0.113.7", 40000)

    def nat(packet: Packet) -> Packet:
        if packet.source == ALICE:
            return attrs.evolve(packet, source=public)
        if packet.destination == public:
            return attrs.evolve(packet, destination=ALICE)
        return packet

    setup.hooks.append(nat)
    alice, bob = await call(setup, alice_as=public)
    assert alice.seen_as == public  # what Alice would put in an ICE candidate
    assert bob.seen_as == BOB
    assert (bob.received, alice.received) == (setup.sent, BOB_SENT)
    assert alice.dropped == bob.dropped == {}


async def test_the_dtls_server_takes_only_the_peer_the_signalling_announced(
    autojump_clock: trio.testing.MockClock, setup: Setup
) -> None:
    reports: list[Any] = []

    async def bob() -> None:
        remote = howto.Remote(ALICE, setup.alice.fingerprint, we_connect=False)
        sock = await bound(setup.net, BOB)
        reports.append(await howto.one_side(sock, setup.bob, remote, []))

    # Alice's certificate, from an address the signalling did not give.
    context = howto.dtls_client_context(setup.alice, setup.bob.fingerprint)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bob)
            async with trio_dtlsmux.DtlsEndpoint(await bound(setup.net, STRANGER)) as other:
                conn = await other.connect(BOB, context, server_hostname=False)
                alice_sock = await bound(setup.net, ALICE)
                remote = howto.Remote(BOB, setup.bob.fingerprint, we_connect=True)
                nursery.start_soon(howto.one_side, alice_sock, setup.alice, remote, setup.sent)
                with pytest.raises(trio.EndOfChannel):
                    await conn.receive()
    assert reports[0].received == setup.sent


@asynccontextmanager
async def media_pair(
    net: FakeNetwork, inbox_size: int = 64
) -> AsyncIterator[tuple[Any, Any, Any, Any]]:
    """Two media sockets, a DTLS connection between them, and no call yet."""
    identity = trio_dtlsmux.self_signed()
    server_context = trio_dtlsmux.server_context(identity, srtp_profiles=howto.PROFILES)
    client_context = trio_dtlsmux.client_context(
        fingerprint=identity.fingerprint, srtp_profiles=howto.PROFILES
    )
    async with (
        trio.open_nursery() as nursery,
        trio_dtlsmux.DtlsEndpoint(
            await bound(net, ALICE), other_datagrams=16
        ) as alice_ep,
        trio_dtlsmux.DtlsEndpoint(
            await bound(net, BOB), server_context=server_context, other_datagrams=16
        ) as bob_ep,
    ):
        alice, bob = howto.MediaSocket(alice_ep, inbox_size), howto.MediaSocket(bob_ep, inbox_size)
        nursery.start_soon(alice.run)
        nursery.start_soon(bob.run)
        alice_conn = await alice_ep.connect(BOB, client_context, server_hostname=False)
        bob_conn = await bob_ep.accept()
        yield alice, alice_conn, bob, bob_conn


async def test_the_keys_follow_rfc_5764s_layout(autojump_clock: trio.testing.MockClock) -> None:
    # Two ends of this example agree whatever the split; another stack only
    # if it is the RFC's: client key, server key, client salt, server salt.
    async with media_pair(FakeNetwork()) as (_, alice_conn, _, bob_conn):
        material = alice_conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 60)
        assert bob_conn.export_keying_material(b"EXTRACTOR-dtls_srtp", 60) == material
        client = howto.srtp_keys(alice_conn, dtls_client=True)
        assert (client.local_key, client.remote_key) == (material[:16], material[16:32])
        assert (client.local_salt, client.remote_salt) == (material[32:46], material[46:])
        assert client.profile == alice_conn.srtp_profile == b"SRTP_AES128_CM_SHA1_80"


async def test_a_full_call_inbox_drops_and_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with media_pair(FakeNetwork(), inbox_size=4) as (alice, alice_conn, bob, bob_conn):
        alice_call = alice.open_call(alice_conn, howto.srtp_keys(alice_conn, dtls_client=True))
        bob_call = bob.open_call(bob_conn, howto.srtp_keys(bob_conn, dtls_client=False))
        for n in range(10):
            await alice_call.send(rtp(n))
        await trio.testing.wait_all_tasks_blocked()
        assert [await bob_call.receive() for _ in range(4)] == [rtp(n) for n in range(4)]
        assert bob.dropped == {"call inbox full": 6}
        assert bob.endpoint.statistics().other_dropped == 0  # the library kept up


async def test_a_new_call_from_the_same_address_replaces_the_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with media_pair(FakeNetwork()) as (alice, alice_conn, bob, bob_conn):
        old = bob.open_call(bob_conn, howto.srtp_keys(bob_conn, dtls_client=False))
        new = bob.open_call(bob_conn, howto.srtp_keys(bob_conn, dtls_client=False))
        with pytest.raises(trio.EndOfChannel):
            await old.receive()
        alice_call = alice.open_call(alice_conn, howto.srtp_keys(alice_conn, dtls_client=True))
        await alice_call.send(rtp(1))
        assert await new.receive() == rtp(1)


async def test_a_stun_binding_retransmits_then_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork(trace=True)
    async with media_pair(net) as (alice, _, _, _):
        started = trio.current_time()
        with pytest.raises(TimeoutError, match="no STUN answer"):
            await alice.binding(("10.0.0.3", 3478))
        # 0.5 + 1 + 2 + 4 + 8 seconds, five times the same transaction.
        assert trio.current_time() - started == pytest.approx(15.5)
        requests = {p.payload for p in net.trace if p.destination == ("10.0.0.3", 3478)}
        assert len(requests) == 1 and len([p for p in net.trace if p.payload in requests]) == 5

        # The first request is lost, and someone who saw it answers from
        # elsewhere with a false address; the answer to the request sent
        # 0.5 s later is the one that counts.
        lost: list[Packet] = []
        seen = trio.Event()

        def lose_the_first(packet: Packet) -> Packet | None:
            if packet.destination == BOB and not lost:
                lost.append(packet)
                seen.set()
                return None
            return packet

        async def impostor() -> None:
            sock = await bound(net, STRANGER)
            await seen.wait()
            transaction_id = howto.parse_stun_untrusted(lost[0].payload).transaction_id
            false = howto.xor_mapped_address(("192.0.2.66", 1), transaction_id)
            answer = howto.StunMessage(
                howto.BINDING_SUCCESS, transaction_id, ((howto.XOR_MAPPED_ADDRESS, false),)
            )
            await sock.sendto(howto.pack_stun(answer), ALICE)

        net.route_hook = lose_the_first
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(impostor)
            assert await alice.binding(BOB) == ALICE
        assert trio.current_time() - started == pytest.approx(0.5)
        assert len(lost) == 1
        assert alice.dropped == {"stun not for us": 1}
