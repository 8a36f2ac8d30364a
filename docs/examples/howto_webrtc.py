"""How-to: DTLS-SRTP, WebRTC style: agree on SRTP keys over DTLS (RFC 5763,
RFC 5764), then carry STUN and SRTP on the DTLS endpoint's own socket
(RFC 7983)."""

from __future__ import annotations

import collections
import ipaddress
import secrets
import struct
from typing import Any

import attrs
import pylibsrtp
import trio
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

import trio_dtlsmux

PROFILES = ["SRTP_AES128_CM_SHA1_80"]
KEY_LENGTH, SALT_LENGTH = 16, 14  # for SRTP_AES128_CM_SHA1_80


def dtls_client_context(
    identity: trio_dtlsmux.SelfSigned, remote_fingerprint: str
) -> Any:
    # The fingerprint comes from the remote description (a=fingerprint in SDP).
    return trio_dtlsmux.client_context(
        certfile=identity,
        fingerprint=remote_fingerprint,
        srtp_profiles=PROFILES,
    )


def dtls_server_context(identity: trio_dtlsmux.SelfSigned) -> Any:
    context = trio_dtlsmux.server_context(identity, srtp_profiles=PROFILES)
    # Ask the client for its (self-signed) certificate and accept any; the
    # handler checks it against the fingerprint from the signalling channel.
    context.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        lambda conn, cert, errno, depth, ok: True,
    )
    return context


def fingerprint_matches(conn: trio_dtlsmux.DtlsConnection, expected: str) -> bool:
    cert = conn.peer_certificate
    if cert is None:
        return False
    # SDP writes "AB:CD:..."; compare the digits only, in one case.
    actual = cert.fingerprint(hashes.SHA256()).hex()
    return actual == expected.replace(":", "").lower()


@attrs.frozen
class SrtpKeys:
    profile: bytes
    local_key: bytes
    local_salt: bytes
    remote_key: bytes
    remote_salt: bytes


def srtp_keys(conn: trio_dtlsmux.DtlsConnection, *, dtls_client: bool) -> SrtpKeys:
    if conn.srtp_profile is None:
        raise ValueError("the peer agreed to no SRTP profile")
    material = conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (KEY_LENGTH + SALT_LENGTH)
    )
    # RFC 5764, 4.2: client key, server key, client salt, server salt.
    k, s = KEY_LENGTH, SALT_LENGTH
    client_key, server_key = material[:k], material[k : 2 * k]
    client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s :]
    if dtls_client:
        return SrtpKeys(conn.srtp_profile, client_key, client_salt, server_key, server_salt)
    return SrtpKeys(conn.srtp_profile, server_key, server_salt, client_key, client_salt)


# -- SRTP, with libsrtp (pip install pylibsrtp) ------------------------------

LIBSRTP_PROFILES = {
    b"SRTP_AES128_CM_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}


def srtp_sessions(keys: SrtpKeys) -> tuple[pylibsrtp.Session, pylibsrtp.Session]:
    """One session that protects what we send, one that unprotects what we
    receive; each with the key and salt of the side that sends."""
    profile = LIBSRTP_PROFILES[keys.profile]
    outbound = pylibsrtp.Session(
        pylibsrtp.Policy(
            key=keys.local_key + keys.local_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=profile,
        )
    )
    inbound = pylibsrtp.Session(
        pylibsrtp.Policy(
            key=keys.remote_key + keys.remote_salt,
            ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
            srtp_profile=profile,
        )
    )
    return outbound, inbound


def rtp_packet(
    ssrc: int, sequence: int, timestamp: int, payload: bytes, payload_type: int = 111
) -> bytes:
    """An RTP packet (RFC 3550, 5.1): version 2, no padding, extension or CSRC."""
    header = struct.pack(
        "!BBHII", 0x80, payload_type, sequence & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc
    )
    return header + payload


# -- What a datagram that is not DTLS is (RFC 7983) ---------------------------


def kind_of(datagram: bytes) -> str:
    """``"stun"``, ``"rtp"``, ``"rtcp"`` or ``"other"``, by the first byte."""
    first = datagram[0]  # receive_other() never returns an empty datagram
    if first <= 3:
        return "stun"
    if 128 <= first <= 191:
        # With rtcp-mux (RFC 5761, 4), RTCP's packet types 192-223 are where
        # RTP has its marker bit and payload type.
        second = datagram[1] if len(datagram) > 1 else 0
        return "rtcp" if 192 <= second <= 223 else "rtp"
    return "other"  # ZRTP (16-19), TURN channels (64-79), ...


# -- A minimal STUN binding (RFC 5389), without authentication ----------------

MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST, BINDING_SUCCESS = 0x0001, 0x0101
XOR_MAPPED_ADDRESS = 0x0020
_HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id


class BadStun(Exception):
    """A datagram that is not a STUN message this example can read."""


@attrs.frozen
class StunMessage:
    message_type: int
    transaction_id: bytes
    attributes: tuple[tuple[int, bytes], ...] = ()


def pack_stun(message: StunMessage) -> bytes:
    body = b"".join(
        struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)
        for kind, value in message.attributes
    )
    header = _HEADER.pack(
        message.message_type, len(body), MAGIC_COOKIE, message.transaction_id
    )
    return header + body


def parse_stun_untrusted(data: bytes) -> StunMessage:
    """Raises only BadStun, whatever the bytes."""
    if len(data) < _HEADER.size:
        raise BadStun("shorter than a STUN header")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000 or cookie != MAGIC_COOKIE:
        raise BadStun("no STUN header (RFC 5389, 6)")
    if length % 4 or length != len(data) - _HEADER.size:
        raise BadStun("the length does not match the datagram")
    attributes = []
    offset = _HEADER.size
    while offset < len(data):  # whole 4-byte words, so a 4-byte header fits
        kind, size = struct.unpack_from("!HH", data, offset)
        end = offset + 4 + size
        if end > len(data):
            raise BadStun("an attribute runs past the end")
        attributes.append((kind, data[offset + 4 : end]))
        offset = end + (-size % 4)
    return StunMessage(message_type, transaction_id, tuple(attributes))


def _xor(data: bytes, transaction_id: bytes) -> bytes:
    # RFC 5389, 15.2: the port with the cookie's high half, an IPv4 address
    # with the cookie, an IPv6 address with the cookie and transaction id.
    mask = struct.pack("!I", MAGIC_COOKIE) + transaction_id
    return bytes(a ^ b for a, b in zip(data, mask[: len(data)], strict=True))


def xor_mapped_address(address: tuple[Any, ...], transaction_id: bytes) -> bytes:
    """The XOR-MAPPED-ADDRESS value that tells a requester its address."""
    ip = ipaddress.ip_address(address[0])
    family = 0x01 if ip.version == 4 else 0x02
    port = address[1] ^ (MAGIC_COOKIE >> 16)
    return struct.pack("!xBH", family, port) + _xor(ip.packed, transaction_id)


def mapped_address_untrusted(message: StunMessage) -> tuple[str, int]:
    """The (host, port) in a response's XOR-MAPPED-ADDRESS; raises only BadStun."""
    values = [value for kind, value in message.attributes if kind == XOR_MAPPED_ADDRESS]
    if not values:
        raise BadStun("no XOR-MAPPED-ADDRESS")
    value = values[0]
    size = {1: 4, 2: 16}.get(value[1]) if len(value) >= 4 else None  # the family
    if size is None or len(value) != 4 + size:
        raise BadStun("a malformed XOR-MAPPED-ADDRESS")
    (port,) = struct.unpack_from("!H", value, 2)
    host = ipaddress.ip_address(_xor(value[4:], message.transaction_id))
    return str(host), port ^ (MAGIC_COOKIE >> 16)


# -- The application's side of the shared socket ------------------------------


@attrs.define
class _Binding:
    """A STUN transaction of ours, waiting for its answer."""

    address: tuple[Any, ...]
    done: trio.Event = attrs.Factory(trio.Event)
    mapped: tuple[str, int] | None = None


@attrs.frozen
class _Route:
    """The receiving half of a call: SRTP from its peer is checked, then queued."""

    inbound: pylibsrtp.Session
    deliver: trio.MemorySendChannel[bytes]


class MediaSocket:
    """Everything the endpoint does not take as DTLS, handled by one task.

    ``run`` reads ``endpoint.receive_other()``, answers STUN binding
    requests, completes our own STUN transactions, and decrypts SRTP from
    the peers we have a call with. Whatever else arrives (a forged or
    damaged packet, RTP from a stranger, more than a call's inbox holds) is
    dropped and counted in ``dropped``: nothing a peer sends can raise out
    of ``run``.
    """

    def __init__(self, endpoint: trio_dtlsmux.DtlsEndpoint, inbox_size: int = 64) -> None:
        self.endpoint = endpoint
        self.inbox_size = inbox_size
        self.dropped: collections.Counter[str] = collections.Counter()
        self._routes: dict[Any, _Route] = {}
        self._bindings: dict[bytes, _Binding] = {}

    async def run(self) -> None:
        """Until the endpoint closes."""
        try:
            while True:
                data, address = await self.endpoint.receive_other()
                await self._handle(data, address)
        except trio.ClosedResourceError:
            return

    async def _handle(self, data: bytes, address: Any) -> None:
        kind = kind_of(data)
        if kind == "stun":
            await self._stun(data, address)
            return
        # Media belongs to a call by the address it comes from, as DTLS
        # records belong to a connection.
        route = self._routes.get(address)
        if route is None or kind != "rtp":  # this example sends no RTCP
            self.dropped[kind if route is not None else f"{kind} from a stranger"] += 1
            return
        try:
            rtp = route.inbound.unprotect(data)
        except (pylibsrtp.Error, ValueError):
            # Forged, damaged, replayed, or larger than libsrtp's buffer.
            self.dropped["srtp unprotect failed"] += 1
            return
        try:
            route.deliver.send_nowait(rtp)
        except trio.WouldBlock:
            self.dropped["call inbox full"] += 1

    async def _stun(self, data: bytes, address: Any) -> None:
        try:
            message = parse_stun_untrusted(data)
            if message.message_type == BINDING_REQUEST:
                # No MESSAGE-INTEGRITY or FINGERPRINT checked or sent: ICE
                # would check the request against its ice-pwd first.
                mapped = xor_mapped_address(address, message.transaction_id)
                answer = StunMessage(
                    BINDING_SUCCESS, message.transaction_id, ((XOR_MAPPED_ADDRESS, mapped),)
                )
                await self.endpoint.send_other(pack_stun(answer), address)
                return
            binding = self._bindings.get(message.transaction_id)
            if (
                message.message_type != BINDING_SUCCESS
                or binding is None
                or binding.address[:2] != address[:2]
            ):
                self.dropped["stun not for us"] += 1
                return
            binding.mapped = mapped_address_untrusted(message)
            binding.done.set()
        except BadStun:
            self.dropped["bad stun"] += 1

    async def binding(
        self, address: tuple[Any, ...], *, rto: float = 0.5, attempts: int = 5
    ) -> tuple[str, int]:
        """Our (host, port) as seen from ``address``, by a STUN binding.

        The request is sent again, with the same transaction id, after
        ``rto`` seconds, then twice that, and so on (RFC 5389, 7.2.1).
        """
        transaction_id = secrets.token_bytes(12)
        binding = self._bindings[transaction_id] = _Binding(address)
        request = pack_stun(StunMessage(BINDING_REQUEST, transaction_id))
        try:
            for attempt in range(attempts):
                await self.endpoint.send_other(request, address)
                with trio.move_on_after(rto * 2**attempt):
                    await binding.done.wait()
                if binding.mapped is not None:
                    return binding.mapped
            raise TimeoutError(f"no STUN answer from {address!r}")
        finally:
            del self._bindings[transaction_id]

    def open_call(self, conn: trio_dtlsmux.DtlsConnection, keys: SrtpKeys) -> Call:
        """SRTP with the peer of ``conn``, keyed from its DTLS session.

        A new call from the same address (its DTLS session restarted, so the
        keys changed) replaces the old one, whose ``receive`` then ends.
        """
        outbound, inbound = srtp_sessions(keys)
        deliver, inbox = trio.open_memory_channel[bytes](self.inbox_size)
        old = self._routes.get(conn.peer_address)
        if old is not None:
            old.deliver.close()
        self._routes[conn.peer_address] = _Route(inbound, deliver)
        return Call(self.endpoint, conn.peer_address, outbound, inbox)


class Call:
    """SRTP with one peer: ``await call.send(rtp)``, ``await call.receive()``."""

    def __init__(
        self,
        endpoint: trio_dtlsmux.DtlsEndpoint,
        peer_address: Any,
        outbound: pylibsrtp.Session,
        inbox: trio.MemoryReceiveChannel[bytes],
    ) -> None:
        self.peer_address = peer_address
        self._endpoint = endpoint
        self._outbound = outbound
        self._inbox = inbox

    async def send(self, rtp: bytes) -> None:
        srtp = self._outbound.protect(rtp)
        await self._endpoint.send_other(srtp, self.peer_address)

    async def receive(self) -> bytes:
        """The next RTP packet from the peer, decrypted and authenticated."""
        return await self._inbox.receive()


# -- One side of a call -------------------------------------------------------


@attrs.frozen
class Remote:
    """What the signalling told us about the other side."""

    address: tuple[Any, ...]  # its media address (ICE's choice, here given)
    fingerprint: str  # a=fingerprint
    we_connect: bool  # a=setup: the "active" side is the DTLS client


@attrs.frozen
class CallReport:
    received: list[bytes]  # RTP packets, decrypted, in the order they came
    seen_as: tuple[str, int]  # our address as the other side saw it (STUN)
    dtls_messages: list[bytes]  # what the peer said over DTLS meanwhile
    dropped: dict[str, int]  # what the media socket dropped, by reason


async def dtls_connection(
    ep: trio_dtlsmux.DtlsEndpoint, identity: trio_dtlsmux.SelfSigned, remote: Remote
) -> trio_dtlsmux.DtlsConnection:
    if remote.we_connect:
        context = dtls_client_context(identity, remote.fingerprint)
        return await ep.connect(remote.address, context, server_hostname=False)
    while True:
        conn = await ep.accept()
        if conn.peer_address == remote.address and fingerprint_matches(
            conn, remote.fingerprint
        ):
            return conn
        await conn.aclose()  # not the peer that the signalling announced


async def one_side(
    sock: Any,
    identity: trio_dtlsmux.SelfSigned,
    remote: Remote,
    outgoing: list[bytes],
    *,
    packet_interval: float = 0.02,
    quiet: float = 1.0,
) -> CallReport:
    """Connectivity check, handshake, keys, then RTP both ways until the
    other side has been quiet for ``quiet`` seconds."""
    server_context = None if remote.we_connect else dtls_server_context(identity)
    async with (
        trio.open_nursery() as nursery,  # outlives the endpoint, so run() ends
        trio_dtlsmux.DtlsEndpoint(
            sock, server_context=server_context, other_datagrams=256
        ) as ep,
    ):
        media = MediaSocket(ep)
        nursery.start_soon(media.run)
        seen_as = await media.binding(remote.address)
        conn = await dtls_connection(ep, identity, remote)
        call = media.open_call(conn, srtp_keys(conn, dtls_client=remote.we_connect))

        # A real media stack starts sending at once, and the first packets
        # may come before the other side has its keys: they are lost. Here
        # both say over DTLS that they are ready, so every packet counts.
        await conn.send(b"keys ready")
        heard = [await conn.receive()]

        async def send_all() -> None:
            for packet in outgoing:
                await call.send(packet)
                await trio.sleep(packet_interval)

        received: list[bytes] = []
        async with trio.open_nursery() as streams:
            streams.start_soon(send_all)
            while True:
                with trio.move_on_after(quiet) as silence:
                    received.append(await call.receive())
                if silence.cancelled_caught:
                    break
        await conn.send(b"bye")
        heard.append(await conn.receive())
        await conn.aclose()
    return CallReport(received, seen_as, heard, dict(media.dropped))
