"""The Trio layer: one socket, one receive task, one timer task per peer.

Theory of operation
-------------------

This is the shape of the 2009 Asterisk design note, in Trio terms, and it is
only glue: every protocol decision is made by the core (:mod:`._demux` for
the endpoint, :mod:`._association` per peer), which does no I/O and reads no
clock. This module owns the Trio resources and moves bytes:

* the **nursery** of the endpoint, entered with ``async with``;
* the **receive task** (:mod:`._transport`) reads datagrams in batches and
  hands each to :meth:`Demux.receive_datagram <._demux.Demux.receive_datagram>`
  with the time it was read, sends the replies it gets back, and reacts to
  the events (:mod:`._events`): a message goes into the peer's inbox (a
  full inbox drops it and counts it), a new peer gets a timer task, a
  finished handshake goes to ``accept`` or ``connect``, an ended peer is
  forgotten;
* one **timer task per peer**: a cancel scope whose deadline is the
  association's :attr:`~._association.Association.deadline` (retransmission,
  handshake timeout or idle timeout); when it fires, the core's
  ``handle_timer`` does what is due. The deadline is armed lazily: a datagram
  only moves an idle deadline later, so it costs nothing here, and a timer
  that fires early finds nothing due and is armed again. A reap costs one
  heap pop, and nothing ever scans all peers (this answers the design note's
  open TODO);
* the **inboxes** and the **accept channel**, ``serve``, ``connect``, and
  the key log file.
"""

from __future__ import annotations

import math
import socket as _stdlib_socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

import trio
from OpenSSL import SSL

from ._addresses import is_ip_literal, normalize_address
from ._association import Association, Role, State
from ._config import EndpointConfig, make_config
from ._connection import DtlsConnection
from ._cookies import CookieJar
from ._demux import Demux
from ._errors import HandshakeError, HandshakeFailure
from ._events import (
    DeadlineChanged,
    Event,
    HandshakeCompleted,
    MessageReceived,
    OtherReceived,
    PeerEnded,
    PeerStarted,
)
from ._inbox import Inbox
from ._kernel import SocketError
from ._logs import FailureLog
from ._records import is_dtls
from ._sessions import session_from_bytes
from ._statistics import EndpointStatistics
from ._transport import Transport
from ._util import lone_exception, open_unwrapping_nursery, raise_unwrapped

#: Handshakes started per receive batch, by hellos as they come and again
#: by hellos drawn from the waiting room: each start is a few hundred
#: microseconds of OpenSSL's work, so a burst of hellos is cut into slices
#: of about 5 ms between two turns of the other tasks.
_STARTS_PER_BATCH = 16

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import (  # type: ignore[import-not-found,unused-ignore]
        BaseExceptionGroup,
    )

__all__ = ["DtlsEndpoint"]


def _check_address(address: object) -> str:
    """A ``(host, port)`` tuple from the caller, checked; returns the host."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise ValueError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
    return host


class _Peer:
    """The Trio layer's side of one peer; its connection's ``PeerLink``."""

    __slots__ = (
        "_endpoint",
        "association",
        "connection",
        "handshake_done",
        "inbox",
        "timer",
    )

    def __init__(self, endpoint: DtlsEndpoint, association: Association) -> None:
        self._endpoint = endpoint
        self.association = association
        self.inbox = Inbox(endpoint.config.inbox_size)
        self.handshake_done = trio.Event()
        self.timer: trio.CancelScope | None = None
        # The connection holds this peer (its link) and this peer holds the
        # connection until the association ends; then only the user's
        # handle keeps them, so an ended peer is freed by reference counting
        # rather than left for the cycle collector (a storm ends thousands).
        self.connection: DtlsConnection | None = DtlsConnection._create(self)

    async def transmit(self, datagrams: list[bytes]) -> None:
        if datagrams:
            await self._endpoint._transport.send(datagrams, self.association.address)

    def close(self) -> list[bytes]:
        return self._endpoint._close_association(self.association)


class DtlsEndpoint:
    """Many DTLS 1.2 peers, as servers and clients, over one UDP socket.

    ::

        async with DtlsEndpoint(sock, server_context=ctx) as ep:
            await ep.serve(handler)

    Args:
      sock: a bound ``trio.socket`` UDP socket (``SOCK_DGRAM``), or a
        :class:`trio_dtlsmux.testing.FakeSocket`. The endpoint owns it from
        now on and closes it when it exits.
      server_context: an ``OpenSSL.SSL.Context`` for the server role, or
        ``None`` to act only as a client (ClientHellos are then dropped and
        counted). The context may be shared by many endpoints.
      cookie_secret: the key behind the stateless cookies, for endpoints
        that share one service address (several processes or hosts behind
        a load balancer): ``bytes`` of at least 32 bytes, or a sequence of
        such keys, newest first, to rotate the secret without refusing the
        cookies already sent. Every instance given the same secret (and the
        same ``cookie_lifetime``) accepts the others' cookies; they count
        cookie epochs on the wall clock, so their clocks must agree to well
        within a ``cookie_lifetime``. ``None`` (the default) uses a random
        key known to this endpoint only. See :doc:`howto/deploy`.
      **options: see :class:`~trio_dtlsmux.EndpointConfig`; unknown or bad
        values raise ``TypeError``/``ValueError`` here.

    The endpoint is an async context manager; its nursery holds the receive
    task and one task per peer. Leaving the ``async with`` sends
    close_notify to every established peer, ends every task and closes the
    socket.
    """

    def __init__(
        self,
        sock: Any,
        *,
        server_context: SSL.Context | None = None,
        cookie_secret: bytes | Sequence[bytes] | None = None,
        **options: Any,
    ) -> None:
        sock_type = getattr(sock, "type", None)
        if sock_type is None or not callable(getattr(sock, "recvfrom", None)):
            raise TypeError(
                "DtlsEndpoint needs a trio socket (trio.socket.socket(...)), "
                f"not {type(sock).__name__}"
            )
        if isinstance(sock, _stdlib_socket.socket):
            raise TypeError(
                "DtlsEndpoint needs a trio socket, not a standard library socket; "
                "wrap it with trio.socket.from_stdlib_socket()"
            )
        if sock_type != _stdlib_socket.SOCK_DGRAM:
            raise ValueError("DtlsEndpoint needs a SOCK_DGRAM (UDP) socket")
        self.config: EndpointConfig = make_config(options)
        """The endpoint's options, validated and frozen."""
        # The secret is not an option in config: config is shown in reprs
        # and logs, and a secret should not be.
        cookies = CookieJar(lifetime=self.config.cookie_lifetime, secret=cookie_secret)
        self._demux = Demux(self.config, server_context, cookies=cookies)
        self._demux.starts_left = _STARTS_PER_BATCH
        self._transport = Transport(
            sock,
            receive_buffer=self.config.receive_buffer,
            send_buffer=self.config.send_buffer,
        )
        self._peers: dict[Association, _Peer] = {}
        self._accept_send, self._accept_receive = trio.open_memory_channel[
            DtlsConnection
        ](math.inf)
        self._other_send, self._other_receive = trio.open_memory_channel[
            tuple[bytes, Any]
        ](self.config.other_datagrams)
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._state = "new"
        self._keylog_file: IO[bytes] | None = None
        self._owns_keylog = False
        self._failure_log = FailureLog()

    # -- context manager ------------------------------------------------------

    async def __aenter__(self) -> DtlsEndpoint:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._state != "new":
            raise RuntimeError("a DtlsEndpoint can be entered only once")
        try:
            self._transport.sock.getsockname()
        except OSError as exc:
            raise ValueError(f"the socket is not usable: {exc}") from None
        keylog = self.config.keylog
        if isinstance(keylog, str):
            # A local append-only file: opening it does not block in any way
            # that matters, and the handshake path writes to it synchronously.
            self._keylog_file = open(keylog, "ab")  # noqa: ASYNC230, SIM115
            self._owns_keylog = True
        elif keylog is not None:
            self._keylog_file = keylog
        self._transport.open(self._on_socket_errors)
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._state = "open"
        self._nursery.start_soon(
            self._transport.receive_loop,
            self._on_datagram,
            self._demux.can_wait,
            self._admit_waiting,
        )
        await trio.lowlevel.cancel_shielded_checkpoint()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            if self._state == "open":
                await self._close_all()
        finally:
            self._state = "closed"
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            try:
                suppress = await self._nursery_manager.__aexit__(*exc_info)
            except BaseExceptionGroup as group:
                # The body of ``async with`` raised (or one task of ours did):
                # let that exception through as it was, not wrapped in the
                # group that the endpoint's nursery makes of it.
                lone = lone_exception(group)
                if lone is None:
                    raise
                if lone is not exc_info[1]:
                    raise_unwrapped(lone)
                suppress = False
            finally:
                self._transport.close()
                if self._owns_keylog and self._keylog_file is not None:
                    self._keylog_file.close()
        return bool(suppress)

    async def _close_all(self) -> None:
        self._state = "closing"
        self._accept_send.close()
        self._other_send.close()
        goodbyes, events = self._demux.close_all(trio.current_time())
        self._dispatch(events)
        with trio.CancelScope(shield=True):
            for address, datagrams in goodbyes:
                await self._transport.send(datagrams, address)

    def _check_open(self) -> trio.Nursery:
        if self._state != "open" or self._nursery is None:
            if self._state == "new":
                raise RuntimeError(
                    "use the DtlsEndpoint in 'async with DtlsEndpoint(...) as ep:' first"
                )
            raise trio.ClosedResourceError("this DtlsEndpoint is closed")
        return self._nursery

    # -- public API -------------------------------------------------------------

    @property
    def socket(self) -> Any:
        """The socket the endpoint owns (read its address with ``getsockname()``)."""
        return self._transport.sock

    def statistics(self) -> EndpointStatistics:
        """A frozen snapshot of the endpoint's counters."""
        transport = self._transport
        return self._demux.statistics(
            transport.counters,
            receive_buffer=transport.receive_buffer,
            send_buffer=transport.send_buffer,
            kernel_drops=transport.kernel_drops(),
        )

    def connections(self) -> list[DtlsConnection]:
        """The connections whose handshake has finished and that have not
        ended, oldest first (server and client roles alike)."""
        return [
            peer.connection
            for peer in self._peers.values()
            if peer.association.state is State.ESTABLISHED and peer.connection is not None
        ]

    async def accept(self) -> DtlsConnection:
        """Wait for the next peer whose handshake completed, and return it.

        Raises:
          RuntimeError: the endpoint has no ``server_context``.
          trio.ClosedResourceError: the endpoint is closed.
        """
        self._check_server()
        try:
            return await self._accept_receive.receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("this DtlsEndpoint is closed") from None

    async def receive_other(self) -> tuple[bytes, Any]:
        """The next datagram that is not DTLS, as ``(data, address)``.

        With ``other_datagrams=N``, datagrams whose first byte is not in
        DTLS's range (RFC 7983: 0-3 STUN, 128-191 RTP and RTCP, ...) wait
        here, up to ``N`` of them, whoever sent them; the address is
        normalised like ``conn.peer_address``. ``data`` is never empty (an
        empty datagram has no first byte and is counted as junk, so
        ``data[0]`` is always safe). DTLS peers are never slowed
        by them: when the inbox is full, new ones are dropped and counted
        (``statistics().other_dropped``).

        Raises:
          RuntimeError: the endpoint was made without ``other_datagrams``.
          trio.ClosedResourceError: the endpoint is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.config.other_datagrams == 0:
            raise RuntimeError(
                "this DtlsEndpoint drops datagrams that are not DTLS; pass "
                "other_datagrams=N (an inbox size) to DtlsEndpoint to receive them"
            )
        self._check_open()
        try:
            return await self._other_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            await trio.lowlevel.cancel_shielded_checkpoint()
            raise trio.ClosedResourceError("this DtlsEndpoint is closed") from None

    async def send_other(self, data: bytes, address: tuple[Any, ...]) -> None:
        """Send one datagram that is not DTLS (a STUN answer, an SRTP
        packet) from the endpoint's socket, in order with its DTLS traffic.

        It is sent as it is: nothing is encrypted or checked but its type
        and that its first byte is not DTLS's, so that the peer's endpoint
        does not take it for a DTLS record (RFC 7983). ``address`` is
        ``(host, port)`` as for :meth:`connect`: a name (a STUN server's,
        say) is resolved with ``trio.socket.getaddrinfo``.

        Raises:
          TypeError: ``data`` is not bytes-like.
          ValueError: ``data`` is empty or starts like DTLS (20-63), or
            ``address`` is not a ``(host, port)`` tuple.
          OSError: the host name does not resolve.
          trio.ClosedResourceError: the endpoint is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"send_other() takes a bytes-like datagram, not {type(data).__name__}"
            )
        datagram = bytes(data)
        if not datagram:
            raise ValueError("cannot send an empty datagram")
        if is_dtls(datagram):
            raise ValueError(
                f"a datagram whose first byte is {datagram[0]} (20-63) is DTLS "
                "to the peer (RFC 7983); send DTLS through a DtlsConnection"
            )
        _check_address(address)
        self._check_open()
        # Never hand a name to the socket: its sendto would resolve it with a
        # blocking lookup, inside Trio's loop.
        key = await self._resolve(address)
        self._check_open()
        await self._transport.send([datagram], key)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def serve(
        self,
        handler: Callable[..., Awaitable[object]],
        *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``handler(conn, *args)`` in a new task for every peer that connects.

        Returns when the endpoint closes (after every handler has finished).
        A handler that ends with one of this library's connection errors
        (the peer timed out, restarted, closed or broke, or you closed the
        connection) ends that peer quietly. Any other exception propagates
        out of ``serve``, cancelling the other handlers, as in any Trio
        nursery. Each connection is closed when its handler returns.
        """
        self._check_server()
        # The handlers' nursery is ours, their exceptions are not: a lone
        # one (or a Ctrl-C that lands in this task) comes out as it was.
        async with open_unwrapping_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    conn = await self._accept_receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return
                nursery.start_soon(self._run_handler, handler, conn, args)

    @staticmethod
    async def _run_handler(
        handler: Callable[..., Awaitable[object]],
        conn: DtlsConnection,
        args: tuple[Any, ...],
    ) -> None:
        try:
            await handler(conn, *args)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    def _check_server(self) -> None:
        self._check_open()
        if not self._demux.serves:
            raise RuntimeError(
                "this DtlsEndpoint has no server_context, so no peer can connect "
                "to it; pass server_context= to DtlsEndpoint"
            )

    async def connect(
        self,
        address: tuple[Any, ...],
        context: SSL.Context,
        *,
        server_hostname: str | bool | None = None,
        session: bytes | None = None,
    ) -> DtlsConnection:
        """Open a client connection to ``address`` over this endpoint's socket.

        Returns once the handshake is complete.

        Args:
          address: ``(host, port)``; ``host`` may be a name, resolved with
            ``trio.socket.getaddrinfo`` for the socket's family.
          context: an ``OpenSSL.SSL.Context`` for DTLS (for example from
            :func:`trio_dtlsmux.client_context`). It can be reused freely.
          server_hostname: the name (or IP literal) the certificate must
            match. By default the host of ``address``; ``False`` turns the
            name check off (pinned or self-signed peers). Only contexts made
            by :func:`~trio_dtlsmux.client_context` check names; a name is
            sent as SNI unless it is an IP literal.
          session: a session from an earlier connection's
            :attr:`DtlsConnection.session` to offer, for an abbreviated
            handshake if the server still knows it (see
            :attr:`DtlsConnection.session_reused`). By default the endpoint
            offers the last session it had with this address, name and
            context (``session_cache``), if any.

        Raises:
          HandshakeError: the handshake failed (alert, verification, timeout:
            :class:`HandshakeTimeout`).
          ValueError: there already is an association with that address, the
            address is malformed, ``session`` is not a session, or
            ``context`` was made by :func:`~trio_dtlsmux.server_context`.
          OSError: the host name does not resolve.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        if not isinstance(context, SSL.Context):
            raise TypeError(
                f"context must be an OpenSSL.SSL.Context, not {type(context).__name__}"
            )
        host = _check_address(address)
        if server_hostname is True:
            raise ValueError("server_hostname must be a name, None or False")
        offered = None if session is None else session_from_bytes(session, context)
        if server_hostname is None:
            expected: str | None = host
        elif server_hostname is False:
            expected = None
        else:
            expected = server_hostname
        key = await self._resolve(address)
        self._check_open()
        association, (first_flight, events) = self._demux.connect(
            context,
            key,
            server_hostname=expected,
            now=trio.current_time(),
            session=offered,
        )
        self._dispatch(events)
        peer = self._peers.get(association)
        try:
            await self._transport.send(first_flight, key)
            if peer is not None:
                await peer.handshake_done.wait()
        except BaseException:
            _, events = self._demux.abandon(
                association,
                "connect() was cancelled before the handshake finished",
                trio.current_time(),
            )
            self._dispatch(events)
            raise
        if association.state is not State.ESTABLISHED or peer is None:
            error = association.error
            if isinstance(error, HandshakeError):
                raise error
            raise HandshakeError(
                f"handshake with {key!r} ended: {association.state.value}",
                kind=HandshakeFailure.ABORTED,
                peer_address=key,
            )
        connection = peer.connection
        assert connection is not None  # the association is established
        return connection

    async def _resolve(self, address: tuple[Any, ...]) -> tuple[Any, ...]:
        host, port = address[0], address[1]
        family = self._transport.sock.family
        if is_ip_literal(host) and (
            (family == _stdlib_socket.AF_INET and ":" not in host)
            or (family == _stdlib_socket.AF_INET6 and ":" in host)
        ):
            if family == _stdlib_socket.AF_INET6:
                flow = address[2] if len(address) > 2 else 0
                scope = address[3] if len(address) > 3 else 0
                return normalize_address((host, port, flow, scope))
            return normalize_address((host, port))
        try:
            infos = await trio.socket.getaddrinfo(
                host, port, family=family, type=_stdlib_socket.SOCK_DGRAM
            )
        except _stdlib_socket.gaierror as exc:
            raise OSError(
                exc.errno, f"cannot resolve {host!r} for this socket's family: {exc}"
            ) from None
        if not infos:
            raise OSError(f"{host!r} has no address in this socket's family")
        return normalize_address(infos[0][4])

    # -- reacting to the core ----------------------------------------------------

    def _on_datagram(self, data: bytes, address: Any, now: float) -> list[bytes]:
        """The receive task's handler: route one datagram, return the replies."""
        replies, events = self._demux.receive_datagram(data, address, now)
        if events:
            self._dispatch(events)
        return replies

    def _admit_waiting(self, now: float) -> tuple[list[tuple[Any, list[bytes]]], bool]:
        """After each receive batch: start handshakes for a slice of the
        hellos waiting for a slot. A slice, so that a storm of them is
        interleaved with the peers already there instead of holding up
        their datagrams (each start costs a few hundred microseconds of
        OpenSSL's work)."""
        demux = self._demux
        demux.starts_left = _STARTS_PER_BATCH
        if not demux.waiting:
            return [], False
        sends, events = demux.admit_waiting(now, _STARTS_PER_BATCH)
        if events:
            self._dispatch(events)
        return sends, demux.can_admit

    def _on_socket_errors(self, errors: list[SocketError], now: float) -> None:
        """The transport read ICMP errors: let the core judge them."""
        for error in errors:
            if error.address:
                _, events = self._demux.socket_error(error.errno, error.address, now)
                if events:
                    self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        """Do in Trio what the core's events ask for."""
        for event in events:
            if isinstance(event, MessageReceived):
                peer = self._peers.get(event.association)
                try:
                    if peer is None:
                        raise trio.ClosedResourceError
                    peer.inbox.send_nowait(event.data)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    # Never block the receive task on one peer: drop, count.
                    event.association.message_dropped()
            elif isinstance(event, OtherReceived):
                try:
                    self._other_send.send_nowait((event.data, event.address))
                except (trio.WouldBlock, trio.ClosedResourceError):
                    self._demux.counters.other_dropped += 1
            elif isinstance(event, PeerStarted):
                self._adopt(event.association)
            elif isinstance(event, DeadlineChanged):
                self._rearm(event.association)
            elif isinstance(event, HandshakeCompleted):
                self._completed(event)
            elif isinstance(event, PeerEnded):
                self._ended(event)

    def _adopt(self, association: Association) -> None:
        nursery = self._check_open()
        peer = _Peer(self, association)
        self._peers[association] = peer
        nursery.start_soon(self._peer_timer, peer)

    def _rearm(self, association: Association) -> None:
        peer = self._peers.get(association)
        if peer is not None and peer.timer is not None:
            peer.timer.deadline = association.deadline

    def _completed(self, event: HandshakeCompleted) -> None:
        peer = self._peers.get(event.association)
        if peer is None:
            return
        if event.keylog_line is not None:
            self._write_keylog(event.keylog_line)
        peer.handshake_done.set()
        self._rearm(event.association)
        if event.association.role is Role.SERVER and peer.connection is not None:
            try:
                self._accept_send.send_nowait(peer.connection)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    def _ended(self, event: PeerEnded) -> None:
        error = event.error
        if event.state is State.FAILED and isinstance(error, HandshakeError):
            self._failure_log.handshake_failed(
                event.association.address,
                error.kind.value,
                error.reason,
                trio.current_time(),
            )
        peer = self._peers.pop(event.association, None)
        if peer is None:
            return
        peer.inbox.close_sending()
        peer.handshake_done.set()
        if peer.timer is not None:
            peer.timer.cancel()
        peer.connection = None

    def _close_association(self, association: Association) -> list[bytes]:
        """A connection is closed by its user: end it, return the goodbye."""
        out, events = self._demux.close(association, trio.current_time())
        self._dispatch(events)
        return out

    @trio.lowlevel.enable_ki_protection
    async def _peer_timer(self, peer: _Peer) -> None:
        """Sleep until the association's deadline, let the core act, repeat.

        Protected from Ctrl-C like the receive task (see there)."""
        association = peer.association
        while association.live:
            with trio.CancelScope(deadline=association.deadline) as peer.timer:
                await trio.sleep_forever()
            if not association.live:
                return
            datagrams, events = self._demux.handle_timer(
                association, trio.current_time()
            )
            if events:
                self._dispatch(events)
            if datagrams:
                await self._transport.send(datagrams, association.address)
            if self._demux.can_admit:
                # A handshake slot freed here (one timed out): hand it to a
                # waiting hello now, not at the next datagram.
                sends, _ = self._admit_waiting(trio.current_time())
                for address, flight in sends:
                    await self._transport.send(flight, address)

    def _write_keylog(self, line: bytes) -> None:
        keylog = self._keylog_file
        if keylog is None:
            return
        try:
            keylog.write(line)
            keylog.flush()
        except (OSError, ValueError):
            pass  # a broken key log must not break the peers
