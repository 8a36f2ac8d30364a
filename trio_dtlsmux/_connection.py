"""The application's handle on one peer: a ``trio.abc.Channel[bytes]``.

Theory of operation
-------------------

A :class:`DtlsConnection` is a thin handle over a :class:`PeerLink`, the
narrow interface the endpoint gives it for one peer: the association
(protocol state), the peer's inbox (:mod:`._inbox`, bounded, that the
receive task fills with ``send_nowait``), a way to transmit datagrams and a
way to end the association. It knows nothing else of the endpoint. The
connection turns the association's end state into the exception Trio users
expect: ``EndOfChannel`` after close_notify, ``ClosedResourceError`` after
we closed it, a ``BrokenResourceError`` subclass when the peer is gone.

Every async method is a Trio checkpoint: it checks for cancellation before
it acts (so an already-cancelled scope stops it with nothing done) and
yields before it returns, as Trio's own sockets do.
"""

from __future__ import annotations

from typing import Any, Protocol, final

import trio
from cryptography import x509
from OpenSSL import SSL

from ._association import Association, State
from ._inbox import Inbox
from ._sessions import session_to_bytes
from ._statistics import ConnectionStatistics
from ._util import NoPublicConstructor


class PeerLink(Protocol):
    """What a connection needs from its endpoint for one peer."""

    @property
    def association(self) -> Association: ...

    @property
    def inbox(self) -> Inbox: ...

    async def transmit(self, datagrams: list[bytes]) -> None:
        """Send datagrams to the peer, in order (socket errors are counted)."""

    def close(self) -> list[bytes]:
        """End the association now; returns the close_notify to send."""


def _bytes_of(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"send() takes a bytes-like message (bytes, bytearray or memoryview), "
        f"not {type(data).__name__}"
    )


@final
class DtlsConnection(trio.abc.Channel[bytes], metaclass=NoPublicConstructor):
    """One DTLS peer of a :class:`~trio_dtlsmux.DtlsEndpoint`.

    You get one from :meth:`DtlsEndpoint.accept`, :meth:`DtlsEndpoint.serve`
    or :meth:`DtlsEndpoint.connect`; there is no public constructor. Each
    :meth:`send` is one DTLS record and arrives as one message; ``async for
    msg in conn`` reads messages until the peer sends close_notify.

    Errors:

    * ``trio.ClosedResourceError`` after you (or the endpoint) closed it;
    * ``trio.EndOfChannel`` from :meth:`receive` after the peer's
      close_notify, and :class:`~trio_dtlsmux.PeerClosed` from :meth:`send`;
    * :class:`~trio_dtlsmux.ConnectionTimedOut`,
      :class:`~trio_dtlsmux.PeerRestarted`,
      :class:`~trio_dtlsmux.PeerAlert` (all ``trio.BrokenResourceError``)
      when the peer went silent, restarted, or sent a fatal alert.
    """

    _WHERE_TO_GET_ONE = "use DtlsEndpoint.connect(), accept() or serve()"

    def __init__(self, link: PeerLink) -> None:
        self._link = link
        self._association: Association = link.association
        self._inbox = link.inbox
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<DtlsConnection {self._association.role.value} "
            f"peer={self.peer_address!r} {self._association.state.value}>"
        )

    @property
    def peer_address(self) -> Any:
        """The peer's normalised socket address (``(host, port)`` for IPv4,
        ``(host, port, 0, scope_id)`` for IPv6)."""
        return self._association.address

    @property
    def established(self) -> bool:
        """True while the connection can carry messages."""
        return self._association.state is State.ESTABLISHED and not self._closed

    def get_cleartext_mtu(self) -> int:
        """The largest message :meth:`send` accepts, in bytes.

        DTLS does not fragment application data: a message is one record,
        and a record must fit the endpoint's ``mtu`` with its header and the
        cipher's overhead.
        """
        return self._association.cleartext_mtu()

    def statistics(self) -> ConnectionStatistics:
        """A frozen snapshot of this connection's counters."""
        return self._association.counters.snapshot()

    # -- Channel ------------------------------------------------------------

    async def send(self, value: bytes) -> None:
        """Encrypt ``value`` as one record and send it in one datagram.

        Raises:
          TypeError: ``value`` is not bytes-like.
          ValueError: ``value`` is empty, or larger than
            :meth:`get_cleartext_mtu`.
          trio.ClosedResourceError: you closed the connection.
          trio.BrokenResourceError: the peer is gone (see the class docs).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            datagrams = self._seal(value)
        except BaseException:
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise
        await self._link.transmit(datagrams)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _seal(self, value: object) -> list[bytes]:
        data = _bytes_of(value)
        if self._closed:
            raise trio.ClosedResourceError("this DtlsConnection was closed")
        association = self._association
        if association.state is State.CLOSED:
            raise trio.ClosedResourceError("the endpoint was closed")
        if not data:
            raise ValueError(
                "cannot send an empty message: OpenSSL does not write "
                "zero-length DTLS records"
            )
        if association.state is State.ESTABLISHED:
            limit = association.cleartext_mtu()
            if len(data) > limit:
                raise ValueError(
                    f"message of {len(data)} bytes is larger than this "
                    f"connection's cleartext MTU ({limit} bytes); DTLS does "
                    "not fragment application data, so split it yourself or "
                    "raise the endpoint's mtu"
                )
        return association.send_message(data)

    async def receive(self) -> bytes:
        """The next message from the peer.

        Raises:
          trio.EndOfChannel: the peer sent close_notify (``async for`` ends).
          trio.ClosedResourceError: you closed the connection.
          trio.BrokenResourceError: the peer is gone (see the class docs).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._closed:
            try:
                # Its own checkpoint when a message is there; a wait otherwise.
                return await self._inbox.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                pass
        await trio.lowlevel.cancel_shielded_checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this DtlsConnection was closed")
        raise self._why_inbox_ended()

    def receive_nowait(self) -> bytes:
        """A message if one is waiting in the inbox, else ``trio.WouldBlock``."""
        if self._closed:
            raise trio.ClosedResourceError("this DtlsConnection was closed")
        try:
            return self._inbox.receive_nowait()
        except trio.EndOfChannel:
            pass
        raise self._why_inbox_ended()

    def _why_inbox_ended(self) -> BaseException:
        """The exception for a reader once the inbox is drained and closed."""
        association = self._association
        if association.state is State.PEER_CLOSED:
            return trio.EndOfChannel()
        if association.state is State.CLOSED or association.error is None:
            return trio.ClosedResourceError("the connection was closed")
        return association.error

    async def aclose(self) -> None:
        """Send close_notify (once, best effort) and free the association.

        Idempotent. Blocked :meth:`receive` calls in other tasks get
        ``trio.ClosedResourceError``. As with every Trio resource, the
        connection is closed even if the call is cancelled; only the
        close_notify may then be skipped.
        """
        if not self._closed:
            self._closed = True
            self._inbox.close_receiving()
            # Usually the kernel takes it at once, cancelled or not; a send
            # that would have to wait is given up if the call is cancelled.
            await self._link.transmit(self._link.close())
        await trio.lowlevel.checkpoint()

    # -- session info ---------------------------------------------------------

    def _session(self) -> dict[str, Any]:
        return self._association.session_info

    def _live_ssl(self) -> SSL.Connection:
        ssl = self._association.ssl
        if ssl is None or self._association.state is not State.ESTABLISHED:
            raise trio.ClosedResourceError(
                "the connection is not established, so it has no live session"
            )
        return ssl

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The peer's certificate, or ``None`` if it sent none."""
        value = self._session().get("peer_certificate")
        return value if isinstance(value, x509.Certificate) else None

    @property
    def peer_certificate_chain(self) -> list[x509.Certificate]:
        """The certificates the peer sent, leaf first (may be empty)."""
        return list(self._session().get("peer_certificate_chain", ()))

    @property
    def alpn_protocol(self) -> bytes | None:
        """The ALPN protocol both sides agreed on, or ``None``."""
        value = self._session().get("alpn_protocol")
        return value if isinstance(value, bytes) else None

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite's OpenSSL name."""
        value = self._session().get("cipher")
        return value if isinstance(value, str) else None

    @property
    def version(self) -> str | None:
        """The negotiated protocol version, e.g. ``"DTLSv1.2"``."""
        value = self._session().get("version")
        return value if isinstance(value, str) else None

    @property
    def srtp_profile(self) -> bytes | None:
        """The SRTP protection profile selected (RFC 5764), or ``None``."""
        value = self._session().get("srtp_profile")
        return value if isinstance(value, bytes) else None

    @property
    def server_hostname(self) -> str | None:
        """Client role: the name the certificate was checked against.
        Server role: the SNI name the client sent, if any."""
        value = self._session().get("server_hostname")
        return value if isinstance(value, str) else None

    @property
    def session(self) -> bytes | None:
        """Client role: the session agreed, as bytes to keep (across restarts
        too) and pass to :meth:`DtlsEndpoint.connect` as ``session=`` for
        an abbreviated handshake. ``None`` on the server role, before the
        handshake, or where this pyOpenSSL cannot export sessions.

        It holds the session's master secret: keep it as secret as a key.
        """
        session = self._association.session
        return None if session is None else session_to_bytes(session)

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session (abbreviated:
        no certificate, no key exchange), on either role."""
        return self._association.session_reused

    @property
    def psk_identity(self) -> bytes | None:
        """The pre-shared key identity the handshake used, or ``None`` if it
        used a certificate suite.

        Server role: the identity the client sent, whose key it proved it
        has; this is how a server that serves many devices tells them apart
        (see :doc:`/howto/coaps`). Client role: the identity we sent.
        """
        value = self._session().get("psk_identity")
        return value if isinstance(value, bytes) else None

    def export_keying_material(
        self, label: bytes, length: int, context: bytes | None = None
    ) -> bytes:
        """Derive keying material from the session (RFC 5705).

        For DTLS-SRTP (RFC 5764, 4.2) the label is
        ``b"EXTRACTOR-dtls_srtp"`` and ``context`` is ``None``.

        Raises:
          trio.ClosedResourceError: the session is no longer live.
          ValueError: bad label or length.
        """
        if not isinstance(label, bytes) or not label:
            raise ValueError("label must be non-empty bytes")
        if isinstance(length, bool) or not isinstance(length, int) or length <= 0:
            raise ValueError(f"length must be a positive integer, not {length!r}")
        ssl = self._live_ssl()
        try:
            return ssl.export_keying_material(label, length, context)
        except SSL.Error as exc:
            raise ValueError(f"cannot export keying material: {exc}") from None
