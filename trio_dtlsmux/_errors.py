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

import trio

__all__ = [
    "ConnectionLost",
    "ConnectionTimedOut",
    "HandshakeError",
    "HandshakeTimeout",
    "PeerAlert",
    "PeerClosed",
    "PeerRestarted",
]


class HandshakeError(trio.BrokenResourceError):
    """The DTLS handshake with a peer failed.

    Attributes:
      reason (str): one line saying what failed, for example
        ``"certificate verification failed: ..."`` or
        ``"peer sent fatal alert: handshake failure"``.
      alert (str | None): the alert the peer sent, if that is what ended it.
    """

    def __init__(self, reason: str, *, alert: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.alert = alert


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish within ``handshake_timeout`` seconds."""


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
