"""One peer's DTLS state around a pyOpenSSL connection, with no I/O and no clock.

Theory of operation
-------------------

An :class:`Association` owns one ``SSL.Connection`` whose input and output are
memory BIOs. The Trio layer hands it datagrams and the current time; every
input method answers ``(datagrams to send, events)`` (see :mod:`._events`),
and :attr:`Association.deadline` says when :meth:`Association.handle_timer`
wants to run next. It never touches a socket or reads a clock, so the whole
protocol is tested deterministically.

The timer is the whole timer (the aioquic habit): while handshaking it covers
retransmission and ``handshake_timeout``; once established, the idle timeout
(the last valid datagram plus ``idle_timeout``, which answers the Asterisk
design note's "figure out how to handle timing out connections"). A datagram
only ever moves the idle deadline later, so the Trio layer arms its timer
lazily: when it fires early, :meth:`handle_timer` finds nothing due and the
timer is armed again for the new deadline. Only a new handshake flight moves
the deadline earlier, and that is announced with a ``DeadlineChanged`` event.

Lifecycle. Everything that decides what an association may still do lives in
:class:`State` and :meth:`Association._transition` (the h11 habit): one enum,
one table of allowed moves, and the error a user sees in each end state.

Flights and retransmission (RFC 6347, 4.2.4). OpenSSL writes a whole flight
into the memory BIO at once. We split it into records and pack the records
into datagrams of at most ``mtu`` bytes. The endpoint, not OpenSSL, owns the
retransmission timer, because OpenSSL's own timer reads the wall clock: under
``trio.testing.MockClock`` it would never fire, and on a real clock it fires
on its own schedule inside any call into the library. Two rules keep the two
timers from corrupting each other:

* Every plaintext (epoch 0) record we send gets a sequence number from our
  own counter, never OpenSSL's. Retransmitted records then always carry a
  fresh number, so the peer's replay window never rejects them, whoever
  triggered the retransmission.
* Output is classified. It is a *new flight* if it carries a handshake
  message with a higher ``message_seq`` than any we sent, or a
  ChangeCipherSpec when the stored flight had none (the server's final
  flight is just CCS and an encrypted Finished). Only a new flight replaces
  the stored flight and resets the backoff. Anything else is OpenSSL
  retransmitting on its own: it is sent, and our timer backs off.

When our timer fires we first give OpenSSL ``DTLSv1_handle_timeout``: if its
wall-clock timer has expired too, it re-encrypts the flight's epoch-1 records
with fresh sequence numbers, which is the best possible retransmission.
Otherwise we resend the stored flight ourselves. The interval starts at
``initial_retransmit_timeout`` and doubles up to ``max_retransmit_timeout``.

The last flight of a handshake (the side that finishes by *sending*, usually
the server) is kept after the handshake: if the peer repeats its own last
flight, ours was lost, and we resend it (RFC 6347, 4.2.4 and the state
machine of its figure 3). It is
dropped once the peer's first application data proves it arrived.

Data. Each application-data record is fed to OpenSSL on its own and read
back at once, so one record is one message. OpenSSL silently drops records
that fail to decrypt or are replays; we count those.
"""

from __future__ import annotations

import enum
import math
from typing import Any

from OpenSSL import SSL

from . import _records as rec
from ._addresses import is_ip_literal
from ._config import EndpointConfig
from ._errors import (
    ConnectionLost,
    ConnectionTimedOut,
    HandshakeError,
    HandshakeFailure,
    HandshakeTimeout,
    PeerAlert,
    PeerClosed,
    PeerRestarted,
    openssl_reason,
)
from ._events import (
    DeadlineChanged,
    Event,
    HandshakeCompleted,
    MessageReceived,
    PeerEnded,
)
from ._psk import psk_identity, timeout_note
from ._recordio import RecordIO, record_io
from ._sessions import keep_resumable, session_reused
from ._statistics import ConnectionCounters
from ._verification import check_resumed_session

_BIO_CHUNK = 65536

#: What every input method returns: datagrams to send, and events.
Output = tuple[list[bytes], list[Event]]


class Role(enum.Enum):
    """Which side of the handshake an association plays."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """Where an association is in its life."""

    HANDSHAKING = "handshaking"
    ESTABLISHED = "established"
    CLOSED = "closed"  # we closed it (aclose or endpoint exit)
    PEER_CLOSED = "peer closed"  # close_notify received
    FAILED = "failed"  # the handshake failed
    BROKEN = "broken"  # fatal alert or error after the handshake
    TIMED_OUT = "timed out"  # idle timeout
    REPLACED = "replaced"  # the peer restarted (RFC 6347 4.2.8)


_LIVE = frozenset({State.HANDSHAKING, State.ESTABLISHED})
# Endings after which the session may be resumed: nothing went wrong with it.
_CLEAN_ENDS = frozenset(
    {State.CLOSED, State.PEER_CLOSED, State.TIMED_OUT, State.REPLACED}
)
_ALLOWED: dict[State, frozenset[State]] = {
    State.HANDSHAKING: frozenset(
        {State.ESTABLISHED, State.FAILED, State.CLOSED, State.REPLACED, State.TIMED_OUT}
    ),
    State.ESTABLISHED: frozenset(
        {State.PEER_CLOSED, State.CLOSED, State.BROKEN, State.TIMED_OUT, State.REPLACED}
    ),
}


def _alert_in(reason: str) -> str | None:
    """The alert text in an OpenSSL reason, if the peer sent one."""
    lowered = reason.lower()
    marker = "alert "
    index = lowered.find(marker)
    if index < 0:
        return None
    return reason[index + len(marker) :].split(";")[0].strip()


class Association:
    """One peer's DTLS session: a sans-I/O wrapper around ``SSL.Connection``.

    Attributes ``server_hostname`` and ``verify_failure`` are read and written
    by the verify callback of :func:`trio_dtlsmux.client_context` (see
    :class:`trio_dtlsmux.contexts.PeerIdentityTarget`).
    """

    def __init__(
        self,
        context: SSL.Context,
        *,
        role: Role,
        address: Any,
        config: EndpointConfig,
        now: float,
        server_hostname: str | None = None,
        first_record_seq: int = 0,
        client_random: bytes | None = None,
        session: SSL.Session | None = None,
    ) -> None:
        self.role = role
        self.context = context
        self.address = address
        self.config = config
        self.state: State = State.HANDSHAKING
        # True while HANDSHAKING or ESTABLISHED; kept by _transition (it is
        # read for every datagram, so it is an attribute, not a property).
        self.live: bool = True
        self.error: BaseException | None = None
        self.counters: ConnectionCounters = ConnectionCounters()
        self.server_hostname = server_hostname
        self.verify_failure: str | None = None
        self.client_random = client_random
        self.handshake_deadline: float = now + config.handshake_timeout
        self._idle_timeout = config.idle_timeout
        self._events: list[Event] = []
        self._goodbye: list[bytes] = []

        self._epoch0_seq = first_record_seq
        self._max_msg_seq = -1
        self._flight: list[rec.RawRecord] = []
        self._flight_has_ccs = False
        self._rto = config.initial_retransmit_timeout
        self._retransmit_at = math.inf
        self._final_resend_ok_at = -math.inf
        self._cleartext_mtu: int | None = None
        self.session_info: dict[str, Any] = {}
        #: Client role: the session agreed, to offer again (_sessions).
        self.session: SSL.Session | None = None
        #: Whether the handshake resumed a session (abbreviated handshake).
        self.session_reused: bool = False

        ssl = SSL.Connection(context, None)
        ssl.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION)
        # Without a ciphertext MTU a memory-BIO DTLS connection has no idea
        # how large a datagram may be and fails the handshake.
        ssl.set_ciphertext_mtu(config.mtu)
        ssl.set_app_data(self)
        if role is Role.CLIENT:
            ssl.set_connect_state()
            if server_hostname and not is_ip_literal(server_hostname):
                ssl.set_tlsext_host_name(server_hostname.encode("idna"))
            if session is not None:
                ssl.set_session(session)
        else:
            ssl.set_accept_state()
        self._ssl: SSL.Connection | None = ssl
        # The data path once established (see _recordio).
        self._io: RecordIO | None = None

    def __repr__(self) -> str:
        return f"<Association {self.role.value} {self.address!r} {self.state.value}>"

    # -- lifecycle ---------------------------------------------------------

    def _transition(self, new: State, error: BaseException | None = None) -> bool:
        """Move to ``new``; the only place ``state`` changes.

        Returns False (and changes nothing) if the association already
        ended: the first ending wins, so a late timer or datagram cannot
        overwrite why a connection ended. An ending is announced with a
        ``PeerEnded`` event.
        """
        allowed = _ALLOWED.get(self.state)
        if allowed is None or new not in allowed:
            return False
        resumable = self.state is State.ESTABLISHED and new in _CLEAN_ENDS
        self.state = new
        self.live = new in _LIVE
        if new is not State.ESTABLISHED:
            self.error = error
            self._free(resumable=resumable)
            self._events.append(PeerEnded(self, new, error))
        return True

    def _free(self, *, resumable: bool) -> None:
        """Drop the SSL object and buffers; the peer is done.

        A session that ended cleanly stays resumable (see _sessions); one
        that failed or broke does not.
        """
        if self._ssl is not None:
            if resumable:
                keep_resumable(self._ssl)
            self._ssl.set_app_data(None)
            self._ssl = None
        self._io = None
        self._flight = []
        self._retransmit_at = math.inf

    def _output(self, datagrams: list[bytes]) -> Output:
        """``datagrams`` and the events gathered since the last call (and
        the close_notify that answers the peer's, if it just came)."""
        if self._goodbye:
            datagrams = datagrams + self._goodbye
            self._goodbye = []
        events = self._events
        if events:
            self._events = []
            return datagrams, events
        return datagrams, []

    @property
    def deadline(self) -> float:
        """When :meth:`handle_timer` wants to run (``inf``: never).

        Handshaking: the next retransmission or the handshake timeout.
        Established: the idle timeout after the last valid datagram.
        """
        if self.state is State.ESTABLISHED:
            if self._idle_timeout is None:
                return math.inf
            counters = self.counters
            last = counters.last_datagram_at
            if last is None:
                last = counters.established_at or 0.0
            return last + self._idle_timeout
        if self.state is State.HANDSHAKING:
            return min(self._retransmit_at, self.handshake_deadline)
        return math.inf

    def replace(self) -> Output:
        """A verified new handshake from the same address replaces this one."""
        self._transition(
            State.REPLACED,
            PeerRestarted(
                f"{self.address!r} started a new handshake", peer_address=self.address
            ),
        )
        return self._output([])

    def abandon(self, reason: str) -> Output:
        """Give up on a handshake that will not finish (``connect`` was
        cancelled, or the endpoint is closing)."""
        if self.state is State.HANDSHAKING:
            self._fail(HandshakeFailure.ABORTED, reason)
        return self._output([])

    def refused(self) -> Output:
        """An ICMP port unreachable came back from the peer's address.

        A handshake fails at once ("connection refused"): nothing listens
        there. An established peer is left to its idle timeout, as an ICMP
        error can be forged by anyone on the path and proves nothing about a
        live session.
        """
        if self.state is State.HANDSHAKING:
            self._fail(
                HandshakeFailure.REFUSED,
                f"connection refused: nothing listens at {self.address!r}",
            )
        return self._output([])

    def close(self) -> Output:
        """Our side closes: returns the close_notify datagram, sent once."""
        ssl = self._ssl
        out: list[bytes] = []
        if self.state is State.ESTABLISHED and ssl is not None:
            try:
                ssl.shutdown()
            except SSL.Error:
                pass
            out = self._pack(self._drain(), count=True)
        self._transition(State.CLOSED, None)
        return self._output(out)

    # -- handshake ---------------------------------------------------------

    def start(self, now: float) -> Output:
        """Client: make the first flight."""
        return self._output(self._drive_handshake(now))

    def start_server(self, client_hello: bytes, now: float) -> Output:
        """Server: feed the verified ClientHello (the datagram that carried
        it, which is counted here) and answer it."""
        assert self._ssl is not None
        counters = self.counters
        counters.datagrams_in += 1
        counters.bytes_in += len(client_hello)
        counters.last_datagram_at = now
        self._ssl.bio_write(client_hello)
        try:
            self._ssl.DTLSv1_listen()
        except SSL.Error as exc:
            self._fail(HandshakeFailure.PROTOCOL, f"bad ClientHello: {openssl_reason(exc)}")
            return self._output([])
        return self._output(self._drive_handshake(now))

    def _drive_handshake(self, now: float) -> list[bytes]:
        ssl = self._ssl
        assert ssl is not None
        done = False
        failure: SSL.Error | None = None
        try:
            ssl.do_handshake()
            done = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            failure = exc
        records = self._drain()
        out = self._send_output(records, now) if records else []
        if failure is not None:
            self._fail_from_ssl(failure)
            return out
        if done:
            refusal = self._check_resumed(ssl)
            if refusal is not None:
                # OpenSSL is done, we are not: say goodbye and fail.
                try:
                    ssl.shutdown()
                except SSL.Error:
                    pass
                out += self._pack(self._drain(), count=True)
                self._fail(
                    HandshakeFailure.VERIFICATION,
                    f"certificate verification failed: {refusal}",
                )
                return out
            self._established(now, sent_final_flight=bool(records))
        return out

    def _check_resumed(self, ssl: SSL.Connection) -> str | None:
        """Client role: a resumed session shows no certificate, so judge the
        one it holds as the context would (see _verification)."""
        if self.role is not Role.CLIENT or not session_reused(ssl):
            return None
        return check_resumed_session(self.context, ssl, self.server_hostname)

    def _established(self, now: float, *, sent_final_flight: bool) -> None:
        ssl = self._ssl
        assert ssl is not None
        self._transition(State.ESTABLISHED)
        self.counters.established_at = now
        self._retransmit_at = math.inf
        if not sent_final_flight:
            self._flight = []
        self._cleartext_mtu = self._compute_cleartext_mtu(ssl)
        self._io = record_io(ssl)
        self.session_reused = session_reused(ssl)
        if self.role is Role.CLIENT:
            self.session = ssl.get_session()
        self.session_info = self._snapshot_session(ssl)
        keylog_line = None
        if self.config.keylog is not None:
            client_random = ssl.client_random()
            master = ssl.master_key()
            if client_random and master:
                keylog_line = b"CLIENT_RANDOM %s %s\n" % (
                    client_random.hex().encode(),
                    master.hex().encode(),
                )
        self._events.append(HandshakeCompleted(self, keylog_line))

    def _snapshot_session(self, ssl: SSL.Connection) -> dict[str, Any]:
        """What the handshake agreed, kept after the SSL object is freed."""
        if self.role is Role.SERVER:
            sni = ssl.get_servername()
            name = sni.decode("ascii", "replace") if sni else None
        else:
            name = self.server_hostname
        leaf = ssl.get_peer_certificate(as_cryptography=True)
        chain = list(ssl.get_peer_cert_chain(as_cryptography=True) or [])
        if leaf is not None and (not chain or chain[0] != leaf):
            # OpenSSL leaves the client's own certificate out of the chain it
            # reports on the server side; we always report the leaf first.
            chain.insert(0, leaf)
        return {
            "cipher": ssl.get_cipher_name(),
            "version": ssl.get_protocol_version_name(),
            "alpn_protocol": ssl.get_alpn_proto_negotiated() or None,
            "srtp_profile": ssl.get_selected_srtp_profile() or None,
            "peer_certificate": leaf,
            "peer_certificate_chain": chain,
            "server_hostname": name,
            "psk_identity": psk_identity(ssl),
        }

    def _fail(
        self, kind: HandshakeFailure, reason: str, *, alert: str | None = None
    ) -> None:
        error = (
            HandshakeTimeout(reason, peer_address=self.address)
            if kind is HandshakeFailure.TIMEOUT
            else HandshakeError(reason, kind=kind, alert=alert, peer_address=self.address)
        )
        self._transition(State.FAILED, error)

    def _fail_from_ssl(self, exc: SSL.Error) -> None:
        reason = openssl_reason(exc)
        if self.verify_failure is not None:
            self._fail(
                HandshakeFailure.VERIFICATION,
                f"certificate verification failed: {self.verify_failure}",
            )
            return
        alert = _alert_in(reason)
        if "certificate verify failed" in reason or "did not return a certificate" in reason:
            # A required client certificate that never came is a failed
            # check of the peer's identity, like a bad one.
            self._fail(
                HandshakeFailure.VERIFICATION,
                f"certificate verification failed: {reason}",
            )
        elif alert is not None:
            self._fail(
                HandshakeFailure.ALERT, f"peer sent fatal alert: {alert}", alert=alert
            )
        else:
            self._fail(HandshakeFailure.PROTOCOL, f"handshake failed: {reason}")

    def handle_timer(self, now: float) -> Output:
        """Run whatever is due at ``now``: a retransmission, the handshake
        timeout or the idle timeout. Nothing, if nothing is due yet."""
        if self.state is State.ESTABLISHED:
            if now >= self.deadline:
                self._transition(
                    State.TIMED_OUT,
                    ConnectionTimedOut(
                        f"no datagram from {self.address!r} within the idle timeout",
                        peer_address=self.address,
                    ),
                )
            return self._output([])
        if self.state is not State.HANDSHAKING:
            return self._output([])
        if now >= self.handshake_deadline:
            self._fail(
                HandshakeFailure.TIMEOUT,
                f"handshake with {self.address!r} did not finish within "
                f"{self.config.handshake_timeout} s"
                + timeout_note(self._ssl, server=self.role is Role.SERVER),
            )
            return self._output([])
        if now < self._retransmit_at:
            return self._output([])
        ssl = self._ssl
        assert ssl is not None
        try:
            ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail_from_ssl(exc)
            return self._output([])
        records = self._drain()
        self.counters.handshake_retransmissions += 1
        self._rto = min(self._rto * 2, self.config.max_retransmit_timeout)
        self._retransmit_at = now + self._rto
        if records:
            # OpenSSL's own timer had expired as well and it rebuilt the
            # flight (with fresh epoch-1 sequence numbers).
            return self._output(self._pack(records, count=True))
        return self._output(self._pack(self._flight, count=True))

    def _send_output(self, records: list[rec.RawRecord], now: float) -> list[bytes]:
        """Classify OpenSSL's output as a new flight or a retransmission.

        One output can hold both: when OpenSSL's wall-clock timer has expired
        by the time the peer's next flight arrives, it first retransmits the
        old flight and then writes the new one. The peer has moved on, so the
        stale part is neither sent nor kept; only the new flight is.
        """
        start: int | None = None  # where a new flight begins
        previous_max = self._max_msg_seq
        has_handshake = False
        has_ccs = False
        for index, (content_type, epoch, raw) in enumerate(records):
            if content_type == rec.HANDSHAKE:
                has_handshake = True
                if epoch != 0:
                    continue
                for message_seq in rec.handshake_message_seqs(raw):
                    if message_seq > previous_max:
                        self._max_msg_seq = max(self._max_msg_seq, message_seq)
                        if start is None:
                            start = index
            elif content_type == rec.CHANGE_CIPHER_SPEC:
                has_ccs = True
                if not self._flight_has_ccs and start is None:
                    start = index
        if start is not None:
            records = records[start:]
            self._flight = [
                r for r in records if r[0] in (rec.HANDSHAKE, rec.CHANGE_CIPHER_SPEC)
            ]
            self._flight_has_ccs = any(r[0] == rec.CHANGE_CIPHER_SPEC for r in records)
            self._rto = self.config.initial_retransmit_timeout
            self._retransmit_at = now + self._rto
            self._events.append(DeadlineChanged(self))
        elif has_handshake or has_ccs:
            # OpenSSL retransmitted on its own wall-clock timer.
            self.counters.handshake_retransmissions += 1
            self._rto = min(self._rto * 2, self.config.max_retransmit_timeout)
            self._retransmit_at = now + self._rto
        return self._pack(records, count=True)

    # -- records in and out ------------------------------------------------

    def _drain_bytes(self) -> bytes:
        """Everything OpenSSL has written to its output BIO."""
        ssl = self._ssl
        if ssl is None:
            return b""
        chunks = []
        while True:
            try:
                chunk = ssl.bio_read(_BIO_CHUNK)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _BIO_CHUNK:
                break  # a short read means the BIO is empty
        return b"".join(chunks)

    def _drain(self) -> list[rec.RawRecord]:
        """OpenSSL's output, split into records (no objects built: this is
        every handshake's path)."""
        data = self._drain_bytes()
        if not data:
            return []
        try:
            return rec.split_datagram_untrusted(data)
        except rec.BadPacket:  # pragma: no cover - OpenSSL's own output
            return []

    def _pack(self, records: list[rec.RawRecord], *, count: bool) -> list[bytes]:
        """Records into datagrams of at most ``mtu``; plaintext (epoch 0)
        records get our own sequence numbers (see the module's notes)."""
        mtu = self.config.mtu
        encoded = []
        for _content_type, epoch, raw in records:
            if epoch != 0:
                encoded.append(raw)
            elif len(raw) <= mtu:
                encoded.append(rec.renumber_record(raw, self._epoch0_seq))
                self._epoch0_seq += 1
            else:
                # OpenSSL keeps to the MTU it is given; this is the safety
                # net for a record that would not fit a datagram.
                [record] = rec.parse_records_untrusted(raw)
                for piece in rec.split_handshake_record(record, mtu):
                    encoded.append(
                        rec.encode_record(
                            piece.content_type,
                            piece.version,
                            0,
                            self._epoch0_seq,
                            piece.payload,
                        )
                    )
                    self._epoch0_seq += 1
        datagrams = rec.pack_datagrams(encoded, mtu)
        if count:
            counters = self.counters
            counters.datagrams_out += len(datagrams)
            counters.bytes_out += sum(map(len, datagrams))
        return datagrams

    def receive_datagram(self, data: bytes, now: float) -> Output:
        """Feed one datagram from the peer; returns datagrams and events
        (``MessageReceived`` for each message, in order)."""
        counters = self.counters
        counters.datagrams_in += 1
        counters.bytes_in += len(data)
        io = self._io
        if io is not None and rec.is_single_application_record(data):
            # The common case, kept short: one application-data record.
            message = self._open_record(io, data)
            if message is not None:
                counters.last_datagram_at = now
                return [], [MessageReceived(self, message)]
            if not self.live:
                counters.last_datagram_at = now
            return self._output([])
        if self._ssl is None:
            return self._output([])
        try:
            records = rec.split_datagram_untrusted(data)
        except rec.BadPacket:
            counters.records_rejected += 1
            return self._output([])
        if self.state is State.HANDSHAKING:
            return self._output(self._receive_handshaking(records, now))
        return self._output(self._receive_established(records, now))

    def _receive_handshaking(
        self, records: list[tuple[int, int, bytes]], now: float
    ) -> list[bytes]:
        ssl = self._ssl
        assert ssl is not None
        for _content_type, _epoch, raw in records:
            ssl.bio_write(raw)
        self.counters.last_datagram_at = now
        out = self._drive_handshake(now)
        if self.state is State.ESTABLISHED:
            # Application data that overtook the peer's Finished was
            # buffered by OpenSSL; it is readable now.
            self._read_pending(4 * self.config.mtu)
        return out

    def _read_pending(self, size: int) -> None:
        ssl = self._ssl
        while ssl is not None and self.state is State.ESTABLISHED:
            try:
                message = ssl.recv(size)
            except SSL.WantReadError:
                return
            except SSL.ZeroReturnError:
                self._peer_closed()
                return
            except SSL.Error as exc:
                self._broken(exc)
                return
            self.counters.messages_in += 1
            self._events.append(MessageReceived(self, message))

    def _open_record(self, io: RecordIO, record: bytes) -> bytes | None:
        """Decrypt one application-data or alert record of the peer's.

        Returns the message, or None: the record was dropped (counted), or
        it ended the connection (close_notify or a fatal alert; the state
        says which).
        """
        try:
            message = io.open(record)
        except SSL.ZeroReturnError:
            self._peer_closed()
            return None
        except SSL.Error as exc:
            self._broken(exc)
            return None
        if message is None:
            # OpenSSL dropped it: bad MAC, replay, or (rarely) a warning
            # alert that needs no action. A forged alert must be counted
            # like forged data, so both are.
            self.counters.records_rejected += 1
            return None
        self.counters.messages_in += 1
        if self._flight:
            # The peer's application data proves our final flight arrived;
            # it need not be kept any longer.
            self._flight = []
        return message

    def _receive_established(
        self, records: list[tuple[int, int, bytes]], now: float
    ) -> list[bytes]:
        io = self._io
        assert io is not None
        counters = self.counters
        events = self._events
        out: list[bytes] = []
        valid = False
        for content_type, _epoch, raw in records:
            if content_type == rec.APPLICATION_DATA or content_type == rec.ALERT:
                message = self._open_record(io, raw)
                if message is not None:
                    events.append(MessageReceived(self, message))
                    valid = True
                elif not self.live:
                    valid = True
                    break
            elif content_type in (rec.HANDSHAKE, rec.CHANGE_CIPHER_SPEC):
                # The peer repeats its last flight: ours was lost. Resend it,
                # once per burst (its flight may span several datagrams).
                if self._flight and now >= self._final_resend_ok_at:
                    self._final_resend_ok_at = (
                        now + self.config.initial_retransmit_timeout / 2
                    )
                    counters.handshake_retransmissions += 1
                    out.extend(self._pack(self._flight, count=True))
                elif not self._flight:
                    # Nothing of ours can answer it: a stale or forged record.
                    counters.records_rejected += 1
            else:
                counters.records_rejected += 1
        if valid:
            counters.last_datagram_at = now
        return out

    def _peer_closed(self) -> None:
        """The peer sent close_notify: answer with ours (RFC 5246 7.2.1: the
        other party MUST respond with a close_notify), then end."""
        ssl = self._ssl
        if ssl is not None and self.state is State.ESTABLISHED:
            try:
                ssl.shutdown()
            except SSL.Error:
                pass
            self._goodbye = self._pack(self._drain(), count=True)
        self._transition(State.PEER_CLOSED, None)

    def _broken(self, exc: SSL.Error) -> None:
        reason = openssl_reason(exc)
        alert = _alert_in(reason)
        if alert is not None:
            error: ConnectionLost = PeerAlert(
                f"{self.address!r} sent fatal alert: {alert}",
                alert=alert,
                peer_address=self.address,
            )
        else:
            error = ConnectionLost(
                f"connection to {self.address!r} failed: {reason}",
                peer_address=self.address,
            )
        self._transition(State.BROKEN, error)

    # -- application data --------------------------------------------------

    def send_error(self) -> BaseException:
        """The exception a ``send`` gets on an association that has ended."""
        if self.state is State.PEER_CLOSED:
            return PeerClosed(
                f"{self.address!r} closed the connection", peer_address=self.address
            )
        if self.error is not None:
            return self.error
        return ConnectionLost(
            f"connection to {self.address!r} is {self.state.value}",
            peer_address=self.address,
        )

    def message_dropped(self) -> None:
        """The Trio layer could not deliver a message (its inbox was full or
        closed): count it as dropped rather than received."""
        counters = self.counters
        counters.messages_dropped += 1
        counters.messages_in -= 1

    def cleartext_mtu(self) -> int:
        """The largest message one record can carry within the ``mtu``."""
        if self._cleartext_mtu is None:
            return min(
                self.config.mtu - rec.MAX_RECORD_OVERHEAD, rec.MAX_PLAINTEXT
            )
        return self._cleartext_mtu

    def _compute_cleartext_mtu(self, ssl: SSL.Connection) -> int:
        try:
            value = ssl.get_cleartext_mtu()
        except (SSL.Error, AttributeError, NotImplementedError):
            value = 0
        if value <= 0:
            cipher = (ssl.get_cipher_name() or "").upper()
            if "GCM" in cipher or "CCM" in cipher:
                overhead = rec.AEAD_OVERHEAD
            elif "CHACHA" in cipher:
                overhead = rec.CHACHA20_OVERHEAD
            else:
                overhead = rec.CBC_OVERHEAD
            value = self.config.mtu - rec.RECORD_HEADER_SIZE - overhead
        # A record never carries more than 2**14 bytes of plaintext (RFC 5246,
        # 6.2.1), however large the datagrams may be.
        return min(value, rec.MAX_PLAINTEXT)

    def send_message(self, data: bytes) -> list[bytes]:
        """Encrypt one message into one record; returns the datagram(s)."""
        io = self._io
        if io is None or self.state is not State.ESTABLISHED:
            raise self.send_error()
        # Ask for what a record can be (it fits the MTU), not for 64 KiB:
        # the buffer is allocated per call.
        limit = self.config.mtu + 1
        try:
            record = io.seal(data, limit)
        except SSL.Error as exc:
            self._broken(exc)
            raise self.send_error() from None
        counters = self.counters
        counters.messages_out += 1
        if len(record) < limit and rec.is_single_application_record(record):
            # One encrypted record that fits: the datagram as OpenSSL wrote it.
            counters.datagrams_out += 1
            counters.bytes_out += len(record)
            return [record]
        # Something else came out with it (a retransmission OpenSSL made on
        # its own), or more than a datagram's worth (send() checks sizes, so
        # that is only a safety net). The message travels in a datagram of
        # its own, so that a peer (or a middlebox) that expects application
        # data alone in a datagram gets it that way.
        records = rec.split_datagram_untrusted(record + self._drain_bytes())
        messages = [r for r in records if r[0] == rec.APPLICATION_DATA]
        others = [r for r in records if r[0] != rec.APPLICATION_DATA]
        out = self._pack(others, count=True)
        for message in messages:
            out += self._pack([message], count=True)
        return out

    # -- session info ------------------------------------------------------

    @property
    def ssl(self) -> SSL.Connection | None:
        return self._ssl
