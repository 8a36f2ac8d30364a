"""The endpoint's protocol core: many peers on one socket, with no I/O.

Theory of operation
-------------------

One UDP socket carries every peer, and the only thing that tells peers apart
is the source address (the Asterisk design note's caveat). :class:`Demux`
owns everything the endpoint decides about that, synchronously and with the
time passed in:

* the **peer table**: normalised address -> :class:`~._association.Association`;
* the **stateless cookie check** (RFC 6347, 4.2.1): a ClientHello from an
  unknown address costs one HMAC and one small HelloVerifyRequest, and only a
  hello that echoes a valid cookie creates an association. Nothing is
  allocated per peer before that;
* **spent hellos**: a verified hello whose association has ended is refused
  for as long as its cookie would still verify, so a replay cannot start (or
  replace) an association;
* **restarts** (RFC 6347, 4.2.8): a verified hello with a new random from an
  address we already serve replaces the old association;
* **limits** and the **waiting room** (:mod:`._waiting`): ``max_connections``
  associations at most, of which ``max_handshakes`` handshaking. A verified
  hello that finds every handshake slot taken waits, as the bytes of its
  datagram, until :meth:`Demux.admit_waiting` draws it for a free slot;
  waiting hellos count against ``max_connections``, and beyond that a
  hello is shed. A storm of thousands of devices reconnecting at once is
  then served at the speed of the CPU, instead of by the clients' doubling
  retransmission timers;
* **demultiplexing** (RFC 7983), when asked for: a datagram whose first
  byte is not DTLS's (STUN, RTP, RTCP on a WebRTC or SIP media socket) is
  handed to the application as ``OtherReceived``, whoever sent it;
* the **server context's preparation**, and the endpoint's protocol counters.

Every method returns ``(datagrams, events)`` like the association does, and
the demux watches the events of its associations to keep its table and
counters (a ``PeerEnded`` removes the peer). The Trio layer sends the
datagrams and reacts to the same events. Bad bytes from the network end here:
they are dropped and counted, and never reach another peer.
"""

from __future__ import annotations

import errno
import math
import random
import weakref
from collections.abc import Iterator
from typing import Any

from OpenSSL import SSL

from . import _records as rec
from ._addresses import normalize_address
from ._association import Association, Output, Role, State
from ._config import EndpointConfig
from ._cookies import COOKIE_LENGTH, CookieJar
from ._events import (
    Event,
    HandshakeCompleted,
    MessageReceived,
    OtherReceived,
    PeerEnded,
    PeerStarted,
)
from ._reassembly import HelloReassembler
from ._sessions import SessionCache
from ._statistics import EndpointCounters, EndpointStatistics, TrafficCounters
from ._waiting import WaitingRoom
from .contexts import check_context_role

__all__ = ["Demux", "prepare_server_context"]

# Contexts this library has prepared for the server role. pyOpenSSL freezes a
# context after its first Connection, so the preparation happens once per
# context and is remembered here rather than repeated (which would raise).
_prepared_contexts: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def _accept_verified_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
    # The demux checks every cookie (HMAC, address, expiry) before an
    # SSL.Connection exists; OpenSSL's DTLSv1_listen only needs to be told.
    return True


def prepare_server_context(context: SSL.Context) -> None:
    """Make ``context`` ready to serve peers of a demux (once per context)."""
    if not isinstance(context, SSL.Context):
        raise TypeError(
            f"server_context must be an OpenSSL.SSL.Context, not {type(context).__name__}"
        )
    check_context_role(context, "server", "DtlsEndpoint(server_context=...)")
    if context in _prepared_contexts:
        return
    try:
        context.set_cookie_verify_callback(_accept_verified_cookie)
        # An idle peer needs no I/O buffers; OpenSSL frees them between
        # records (about 10 KiB per peer, which adds up at 10,000 peers).
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    except ValueError:
        raise ValueError(
            "this SSL.Context has already been used for a connection, and "
            "pyOpenSSL no longer lets it be configured; pass a context to "
            "DtlsEndpoint (as server_context) before using it elsewhere, or "
            "build a fresh one (trio_dtlsmux.server_context makes one)"
        ) from None
    _prepared_contexts.add(context)


class Demux:
    """Routes datagrams to associations and decides who may have one.

    Args:
      config: the endpoint's options.
      server_context: the context for peers that connect to us, or ``None``
        (ClientHellos are then dropped and counted).
      cookies: the cookie jar; by default a fresh one with a random secret.
      rng: the waiting room's draws (tests replay them); by default seeded
        from the operating system.
    """

    def __init__(
        self,
        config: EndpointConfig,
        server_context: SSL.Context | None,
        *,
        cookies: CookieJar | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if server_context is not None:
            prepare_server_context(server_context)
        self.config = config
        self.counters = EndpointCounters()
        self._server_context = server_context
        self._accepting = server_context is not None
        self._table: dict[tuple[Any, ...], Association] = {}
        self._handshaking: set[Association] = set()
        self._spent_hellos: dict[tuple[tuple[Any, ...], bytes], float] = {}
        #: Handshakes a verified hello may still start at once, before the
        #: Trio layer's next turn (it sets this per receive batch, so that a
        #: burst of hellos cannot hold up the peers already there); the
        #: others wait for :meth:`admit_waiting`. Unlimited by default.
        self.starts_left: float = math.inf
        self._waiting = WaitingRoom(
            config.initial_retransmit_timeout, config.max_retransmit_timeout, rng
        )
        self._cookies = cookies or CookieJar(lifetime=config.cookie_lifetime)
        self._reassembly = HelloReassembler()
        self._sessions = SessionCache(config.session_cache)
        self._demultiplex = config.other_datagrams > 0
        self._hvr_size = rec.hello_verify_request_size(COOKIE_LENGTH)

    # -- what the endpoint asks ----------------------------------------------

    @property
    def serves(self) -> bool:
        """Whether peers can connect to us (there is a server context)."""
        return self._server_context is not None

    @property
    def peers(self) -> int:
        """Associations held now (handshaking and established)."""
        return len(self._table)

    @property
    def handshaking(self) -> int:
        """Associations still handshaking."""
        return len(self._handshaking)

    @property
    def waiting(self) -> int:
        """Verified hellos waiting for a handshake slot."""
        return len(self._waiting)

    @property
    def can_admit(self) -> bool:
        """Whether :meth:`admit_waiting` has work: a hello waits, and a
        slot is free."""
        return bool(self._waiting) and self._slot_free()

    def get(self, address: Any) -> Association | None:
        """The association with ``address``, if there is one."""
        return self._table.get(normalize_address(address))

    def __iter__(self) -> Iterator[Association]:
        return iter(list(self._table.values()))

    def statistics(self, traffic: TrafficCounters, **live: Any) -> EndpointStatistics:
        """A snapshot of the endpoint's counters: the demux's own, the
        transport's ``traffic`` and what the caller knows live."""
        reassembly = self._reassembly.counters
        return self.counters.snapshot(
            traffic,
            peers=len(self._table),
            handshakes_in_progress=len(self._handshaking),
            hellos_waiting=len(self._waiting),
            fragmented_hellos_completed=reassembly.hellos_reassembled,
            hello_fragments_dropped=(
                reassembly.datagrams_malformed
                + reassembly.datagrams_too_big
                + reassembly.fragments_scattered
                + reassembly.entries_conflicting
                + reassembly.entries_replaced
                + reassembly.entries_evicted
                + reassembly.entries_expired
            ),
            **live,
        )

    def stop_accepting(self) -> None:
        """From now on, ClientHellos are dropped (the endpoint is closing)."""
        self._accepting = False
        self._waiting.clear()

    # -- input -----------------------------------------------------------------

    def can_wait(self, data: bytes, address: Any) -> bool:
        """Whether ``data`` may wait while established peers are served
        first: a handshake record from an address without an association
        (a new peer's hello), or anything from a peer still handshaking
        (all of it, so that its datagrams keep their order). Under a storm
        of handshakes, the peers already there keep their round trips, and
        the handshakes' work and the shedding happen in what time is left."""
        key = address if len(address) == 2 else normalize_address(address)
        association = self._table.get(key)
        if association is None:
            return rec.starts_with_handshake(data)
        return association in self._handshaking

    def receive_datagram(self, data: bytes, address: Any, now: float) -> Output:
        """One datagram from ``address``: returns the replies to it, and events."""
        # recvfrom reports IPv4 peers as (host, port) already.
        key = address if len(address) == 2 else normalize_address(address)
        if self._demultiplex and data and not rec.is_dtls(data):
            # RFC 7983: STUN, RTP and RTCP share the socket (and the peer's
            # address) with DTLS; the first byte tells them apart. An empty
            # datagram has no first byte: it is nobody's, and junk.
            self.counters.other_received += 1
            return [], [OtherReceived(data, key)]
        association = self._table.get(key)
        try:
            if association is None:
                return self._receive_stranger(data, key, now)
            if association.role is Role.SERVER and rec.may_be_client_hello(data):
                restart = self._maybe_restart(association, data, key, now)
                if restart is not None:
                    return restart
            replies, events = association.receive_datagram(data, now)
        except SSL.Error:
            # OpenSSL refused bytes we fed it in a way the association did
            # not expect; the datagram is junk, the endpoint lives.
            self.counters.junk_dropped += 1
            return [], []
        if events:
            self._observe(events, now)
        return replies, events

    def handle_timer(self, association: Association, now: float) -> Output:
        """Run what is due for ``association`` (its timer fired)."""
        out, events = association.handle_timer(now)
        if events:
            self._observe(events, now)
        return out, events

    def socket_error(self, code: int, address: Any, now: float) -> Output:
        """An ICMP error came back for a datagram sent to ``address``
        (``code`` is its errno). A port unreachable (``ECONNREFUSED``) ends a
        handshake with that address at once; anything else, and any error
        about an established peer, changes nothing (ICMP is easy to forge,
        and host unreachable may pass)."""
        if code != errno.ECONNREFUSED:
            return [], []
        association = self._table.get(normalize_address(address))
        if association is None:
            return [], []
        out, events = association.refused()
        if events:
            self._observe(events, now)
        return out, events

    def connect(
        self,
        context: SSL.Context,
        address: Any,
        *,
        server_hostname: str | None,
        now: float,
        session: SSL.Session | None = None,
    ) -> tuple[Association, Output]:
        """Start a client handshake with ``address``; returns the new
        association, its first flight and events (``PeerStarted`` first).

        It offers ``session``, or else the last session the cache holds for
        this address, name and context.

        Raises:
          ValueError: there already is an association with that address, or
            ``context`` was made by ``server_context()``.
        """
        check_context_role(context, "client", "connect()")
        key = normalize_address(address)
        if key in self._table:
            raise ValueError(
                f"this endpoint already has an association with {key!r}; a socket "
                "holds at most one per peer address (close it first)"
            )
        if session is None:
            session = self._sessions.get(key, server_hostname, context)
        association = Association(
            context,
            role=Role.CLIENT,
            address=key,
            config=self.config,
            now=now,
            server_hostname=server_hostname,
            session=session,
        )
        self._table[key] = association
        self._handshaking.add(association)
        out, events = association.start(now)
        events.insert(0, PeerStarted(association))
        self._observe(events, now)
        return association, (out, events)

    def close(self, association: Association, now: float) -> Output:
        """Our side ends ``association`` (close_notify if established)."""
        out, events = association.close()
        if events:
            self._observe(events, now)
        return out, events

    def abandon(self, association: Association, reason: str, now: float) -> Output:
        """Give up on a handshake (``connect`` was cancelled)."""
        out, events = association.abandon(reason)
        if events:
            self._observe(events, now)
        return out, events

    def close_all(self, now: float) -> tuple[list[tuple[Any, list[bytes]]], list[Event]]:
        """The endpoint closes: no new peers, and every association ends.

        Returns the goodbyes as ``(address, datagrams)`` pairs, and events.
        """
        self.stop_accepting()
        goodbyes = []
        events: list[Event] = []
        for association in list(self._table.values()):
            if association in self._handshaking:
                out, ended = self.abandon(
                    association, "the endpoint closed before the handshake finished", now
                )
            else:
                out, ended = self.close(association, now)
            if out:
                goodbyes.append((association.address, out))
            events.extend(ended)
        return goodbyes, events

    # -- bookkeeping -----------------------------------------------------------

    def _observe(self, events: list[Event], now: float) -> None:
        """Keep the table and counters in step with the associations."""
        for event in events:
            if type(event) is MessageReceived:
                continue  # the common case, first
            if isinstance(event, HandshakeCompleted):
                association = event.association
                self._handshaking.discard(association)
                self.counters.handshakes_completed += 1
                if association.session is not None:
                    self._sessions.remember(
                        association.address,
                        association.server_hostname,
                        association.context,
                        association.session,
                    )
            elif isinstance(event, PeerEnded):
                self._forget(event, now)

    def _forget(self, ended: PeerEnded, now: float) -> None:
        association = ended.association
        key = association.address
        if self._table.get(key) is association:
            del self._table[key]
        if association in self._handshaking:
            self._handshaking.discard(association)
            kind = getattr(ended.error, "kind", None)
            if ended.state is State.FAILED and kind is not None:
                self.counters.handshake_failed(kind.value)
        if ended.state is State.TIMED_OUT:
            self.counters.peers_reaped += 1
        if association.client_random is not None:
            self._spend_hello(key, association.client_random, now)

    def _spend_hello(self, key: tuple[Any, ...], client_random: bytes, now: float) -> None:
        """Remember a ClientHello whose association has ended.

        Its cookie stays valid for up to ``max_age`` of the cookie jar (two
        lifetimes, three with a shared secret), so a late
        retransmission or a replay of that plaintext hello would otherwise
        start a new handshake (or, at an address with a live association,
        replace it). Entries expire with the cookie and are capped, so this
        costs at most ``max_connections`` small entries; it only ever holds
        hellos that had passed the cookie check.
        """
        spent = self._spent_hellos
        while spent:
            oldest = next(iter(spent))
            if spent[oldest] > now and len(spent) < self.config.max_connections:
                break
            del spent[oldest]
        spent[(key, client_random)] = now + self._cookies.max_age

    # -- ClientHellos ----------------------------------------------------------

    def _receive_stranger(self, data: bytes, key: tuple[Any, ...], now: float) -> Output:
        counters = self.counters
        if not rec.starts_with_handshake(data):
            counters.junk_dropped += 1
            return [], []
        if self._accepting:
            # A hello that came in fragments is put back together first, in
            # a bounded table (see _reassembly); a whole one passes as is.
            try:
                whole = self._reassembly.feed_untrusted(key, data, now)
            except rec.BadPacket:
                counters.junk_dropped += 1
                return [], []
            if whole is None:
                counters.hello_fragments_in += 1
                return [], []
            data = whole
        try:
            hello = rec.parse_client_hello_untrusted(data)
        except rec.BadPacket:
            counters.junk_dropped += 1
            return [], []
        if not self._accepting:
            counters.hellos_dropped_no_server += 1
            return [], []
        reply = self._check_cookie(hello, data, key, now)
        if reply is not None:
            return reply, []
        waiting = self._waiting
        if key in waiting:
            # A retransmission: the client is still there.
            waiting.put(key, hello, data, now)
            return [], []
        if not waiting and self.starts_left > 0 and self._slot_free():
            self.starts_left -= 1
            return self._new_server_peer(hello, data, key, now)
        if len(self._table) + len(waiting) >= self.config.max_connections:
            counters.hellos_dropped_limits += 1
            return [], []
        waiting.put(key, hello, data, now)
        return [], []

    def admit_waiting(
        self, now: float, limit: int
    ) -> tuple[list[tuple[Any, list[bytes]]], list[Event]]:
        """Start handshakes for up to ``limit`` waiting hellos, drawn at
        random, while there are free slots; the caller calls again once the
        peers already there have had their turn.

        A hello whose client has stopped resending it (see
        :mod:`._waiting`) is shed on the way and counted in
        ``hellos_dropped_limits``. Returns the first flights as ``(address,
        datagrams)`` pairs, and events.
        """
        waiting = self._waiting
        sends: list[tuple[Any, list[bytes]]] = []
        events: list[Event] = []
        while waiting and limit > 0 and self._slot_free():
            key, hello, data, alive = waiting.draw(now)
            if not alive or key in self._table:
                self.counters.hellos_dropped_limits += 1
                continue
            out, started = self._new_server_peer(hello, data, key, now)
            if out:
                sends.append((key, out))
            events.extend(started)
            limit -= 1
        return sends, events

    def _slot_free(self, replacing: Association | None = None) -> bool:
        """Whether one more handshake fits in ``max_connections`` and
        ``max_handshakes`` (with ``replacing`` gone first, for a restart)."""
        peers = len(self._table)
        handshaking = len(self._handshaking)
        if replacing is not None:
            peers -= 1
            if replacing in self._handshaking:
                handshaking -= 1
        config = self.config
        return handshaking < config.max_handshakes and peers < config.max_connections

    def _maybe_restart(
        self, association: Association, data: bytes, key: tuple[Any, ...], now: float
    ) -> Output | None:
        """A ClientHello from an address we already serve (RFC 6347 4.2.8).

        Returns the outcome if the hello was handled here, or None to let the
        association see it (a retransmission of the hello that created it).
        """
        try:
            hello = rec.parse_client_hello_untrusted(data)
        except rec.BadPacket:
            return None
        if hello.random == association.client_random:
            return None
        reply = self._check_cookie(hello, data, key, now)
        if reply is not None:
            return reply, []
        # A verified hello with a new random: the peer really restarted.
        # Only someone who receives at this address could echo the cookie.
        if not self._slot_free(replacing=association):
            self.counters.hellos_dropped_limits += 1
            return [], []
        _, ended = association.replace()
        self.counters.peers_restarted += 1
        self._observe(ended, now)
        replies, started = self._new_server_peer(hello, data, key, now)
        return replies, ended + started

    def _check_cookie(
        self, hello: rec.ClientHello, data: bytes, key: tuple[Any, ...], now: float
    ) -> list[bytes] | None:
        """None if the hello carries a valid cookie; else the reply to send."""
        counters = self.counters
        if hello.cookie and self._cookies.verify(key, hello, now):
            if self._spent_hellos.get((key, hello.random), -math.inf) > now:
                # A hello whose association has come and gone: a replay or a
                # very late retransmission. Nothing to answer.
                counters.cookie_failures += 1
                return []
            return None
        if hello.cookie:
            counters.cookie_failures += 1
        if len(data) < self._hvr_size:
            # Answering would send more than we received.
            counters.junk_dropped += 1
            return []
        counters.cookies_sent += 1
        cookie = self._cookies.make(key, hello, now)
        return [rec.encode_hello_verify_request(hello.record_seq, cookie)]

    def _new_server_peer(
        self, hello: rec.ClientHello, data: bytes, key: tuple[Any, ...], now: float
    ) -> Output:
        assert self._server_context is not None
        association = Association(
            self._server_context,
            role=Role.SERVER,
            address=key,
            config=self.config,
            now=now,
            first_record_seq=hello.record_seq,
            client_random=hello.random,
        )
        self._table[key] = association
        self._handshaking.add(association)
        replies, events = association.start_server(data, now)
        events.insert(0, PeerStarted(association))
        self._observe(events, now)
        return replies, events
