"""The exceptions of the public API, in Trio's vocabulary.

Theory of operation
-------------------

Trio gives each failure of a channel a meaning, and we keep it:

* you closed it yourself → :class:`trio.ClosedResourceError`;
* the peer went away, was replaced or timed out → a subclass of
  :class:`trio.BrokenResourceError` (here: :class:`ConnectionLost` and its
  children), carrying what happened;
* the peer said goodbye with close_notify → :class:`trio.EndOfChannel` from
  ``receive``, so ``async for`` ends normally.

A handshake that fails raises :class:`HandshakeError`, which is also a
``BrokenResourceError`` so code that handles "the peer is unusable" in one
place keeps working. No ``OpenSSL.SSL.Error`` crosses the public API: the
association turns them into these classes with a readable reason.
"""

from __future__ import annotations

import enum

import trio

__all__ = [
    "ConnectionLost",
    "ConnectionTimedOut",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeTimeout",
    "PeerAlert",
    "PeerClosed",
    "PeerRestarted",
]


class HandshakeFailure(str, enum.Enum):
    """Why a handshake failed: :attr:`HandshakeError.kind`, and the keys of
    :attr:`EndpointStatistics.handshakes_failed <trio_dtlsmux.EndpointStatistics>`
    (by their ``value``).

    The members are strings too, so ``error.kind == "timeout"`` works.
    """

    #: ``handshake_timeout`` passed before the handshake finished.
    TIMEOUT = "timeout"
    #: The peer sent a fatal alert.
    ALERT = "alert"
    #: The peer's certificate (or its absence) failed our checks.
    VERIFICATION = "verification"
    #: Anything else that OpenSSL refused: a malformed or unacceptable message.
    PROTOCOL = "protocol"
    #: We gave up: ``connect`` was cancelled, or the endpoint closed.
    ABORTED = "aborted"
    #: Nothing listens at the peer's address: an ICMP port unreachable came
    #: back (connection refused; Linux, where the endpoint reads the socket's
    #: error queue).
    REFUSED = "refused"


class HandshakeError(trio.BrokenResourceError):
    """The DTLS handshake with a peer failed.

    Attributes:
      reason (str): one line saying what failed, for example
        ``"certificate verification failed: ..."`` or
        ``"peer sent fatal alert: handshake failure"``.
      kind (HandshakeFailure): the kind of failure, as the endpoint's
        statistics count it.
      alert (str | None): the alert the peer sent, if that is what ended it.
      peer_address: the peer's normalised socket address, or ``None`` when
        the error is not about one peer.
    """

    def __init__(
        self,
        reason: str,
        *,
        kind: HandshakeFailure = HandshakeFailure.PROTOCOL,
        alert: str | None = None,
        peer_address: object = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.alert = alert
        self.peer_address = peer_address


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within ``handshake_timeout`` seconds
    (its :attr:`~HandshakeError.kind` is :attr:`HandshakeFailure.TIMEOUT`)."""

    def __init__(self, reason: str, *, peer_address: object = None) -> None:
        super().__init__(
            reason, kind=HandshakeFailure.TIMEOUT, peer_address=peer_address
        )


class ConnectionLost(trio.BrokenResourceError):
    """The peer is gone; the base class of every "peer is gone" error.

    Attributes:
      peer_address: the peer's normalised socket address.
    """

    def __init__(self, message: str, *, peer_address: object = None) -> None:
        super().__init__(message)
        self.peer_address = peer_address


class ConnectionTimedOut(ConnectionLost):
    """Nothing valid arrived from the peer for ``idle_timeout`` seconds."""


class PeerRestarted(ConnectionLost):
    """The peer started a new handshake from the same address (RFC 6347 4.2.8).

    The new connection is handed to ``accept``/``serve``; this one is over.
    """


class PeerClosed(ConnectionLost):
    """Sending after the peer closed the connection with close_notify."""


class PeerAlert(ConnectionLost):
    """The peer ended the connection with a fatal alert.

    Attributes:
      alert (str): OpenSSL's description of the alert.
    """

    def __init__(
        self, message: str, *, alert: str, peer_address: object = None
    ) -> None:
        super().__init__(message, peer_address=peer_address)
        self.alert = alert


def openssl_reason(exc: BaseException) -> str:
    """OpenSSL's error queue (as pyOpenSSL reports it) as one readable line.

    pyOpenSSL raises ``SSL.Error([(library, function, reason), ...])``; the
    reasons are what a person wants to read. Anything else is shown as is.
    """
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(
            str(item[-1]) if isinstance(item, tuple) and item else str(item)
            for item in args[0]
        )
    if args:
        return " ".join(str(arg) for arg in args)
    return type(exc).__name__
