"""What the protocol core tells the Trio layer: small frozen events.

Theory of operation
-------------------

The core (:mod:`._association` for one peer, :mod:`._demux` for the
endpoint) never reaches into the Trio layer. Every call into it returns the
datagrams to send and a list of these events, and the Trio layer reacts to
each one (the aioquic and h11 habit): it starts a timer task for a new peer,
hands a finished handshake to ``accept`` or ``connect``, puts a message in an
inbox, re-arms a timer, or forgets a peer that ended. Nothing is learnt by
comparing the core's state before and after a call.

Each event names its association, because one datagram can concern two (a
peer that restarts ends one association and starts another); the one
exception is ``OtherReceived``, a datagram that is not DTLS at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import attrs

if TYPE_CHECKING:
    from ._association import Association, State

__all__ = [
    "DeadlineChanged",
    "Event",
    "HandshakeCompleted",
    "MessageReceived",
    "OtherReceived",
    "PeerEnded",
    "PeerStarted",
]


@attrs.frozen(slots=True)
class PeerStarted:
    """A new association exists (a verified ClientHello, or ``connect``);
    it needs a timer task and, later, a connection handle."""

    association: Association


@attrs.frozen(slots=True)
class DeadlineChanged:
    """The association's :attr:`~._association.Association.deadline` moved
    earlier than the timer may be armed for (a new handshake flight started
    its retransmission timer). Later deadlines need no event: a timer that
    fires early finds nothing due and is re-armed."""

    association: Association


@attrs.frozen(slots=True)
class HandshakeCompleted:
    """The handshake finished; the peer can carry messages.

    ``keylog_line`` is the NSS key log line for this session when the
    endpoint keeps a key log, else ``None``.
    """

    association: Association
    keylog_line: bytes | None = None


@attrs.frozen(slots=True)
class MessageReceived:
    """One decrypted application message (one record) from the peer."""

    association: Association
    data: bytes


@attrs.frozen(slots=True)
class PeerEnded:
    """The association ended and is forgotten by the core.

    ``state`` says how (closed by us, by the peer, failed, broken, timed
    out, replaced) and ``error`` is what a user of the connection sees
    (``None`` when we or the peer closed it cleanly).
    """

    association: Association
    state: State
    error: BaseException | None


@attrs.frozen(slots=True)
class OtherReceived:
    """A datagram that is not DTLS by its first byte (RFC 7983: STUN, RTP,
    RTCP, ...), for the application; it belongs to no association."""

    data: bytes
    address: tuple[object, ...]


Event: TypeAlias = (
    PeerStarted
    | DeadlineChanged
    | HandshakeCompleted
    | MessageReceived
    | PeerEnded
    | OtherReceived
)
