"""The Trio layer: one UDP socket, one receive task, one task per peer.

Theory of operation
-------------------

This is the shape of the 2009 Asterisk design note, in Trio terms. The
endpoint owns the socket, because with UDP there is no socket per connection
and OpenSSL cannot tell peers apart; OpenSSL only sees memory BIOs.

* The **receive task** reads datagrams and routes each one by its normalised
  source address to that peer's association (a dict lookup). A ClientHello
  from an unknown address is answered statelessly (:mod:`._cookies`); only a
  verified one creates an association. The task never blocks on a peer: a
  full inbox drops the message and counts it.
* Each **peer task** first drives the handshake's timers (retransmission and
  ``handshake_timeout``) from the deadline its association computes, then
  becomes the idle watchdog: a cancel scope whose deadline is the last valid
  datagram plus ``idle_timeout``. The deadline is moved lazily: when it fires
  the task looks at the last activity and either reaps the peer or sleeps
  again. A datagram costs one attribute write, a reap costs one heap pop, and
  nothing ever scans all peers (this answers the design note's open TODO).
* On a real socket the endpoint also keeps a non-blocking twin of it (a
  duplicated descriptor): the receive task drains whatever the kernel has
  queued after each wake-up, and sends go straight to the kernel when it
  has room. Only a send that must wait goes through Trio's socket, behind
  one lock (a trio socket refuses two tasks waiting to write at once), and
  while one waits, later sends queue behind it rather than overtake it.

All protocol decisions are in :mod:`._association`; this module moves bytes
and applies the deadlines it is given.
"""

from __future__ import annotations

import errno
import math
import os
import socket as _stdlib_socket
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import IO, Any

import trio
from OpenSSL import SSL

from . import _records as rec
from ._association import Association, Role, State, is_ip_literal
from ._config import EndpointConfig, make_config
from ._connection import _PRIVATE, DtlsConnection
from ._cookies import COOKIE_LENGTH, CookieJar
from ._errors import HandshakeError
from ._statistics import EndpointCounters, EndpointStatistics

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import (  # type: ignore[import-not-found,unused-ignore]
        BaseExceptionGroup,
    )

__all__ = ["DtlsEndpoint"]

_RECV_SIZE = 65536
_RECV_BATCH = 64


def _kernel_socket(sock: Any) -> _stdlib_socket.socket | None:
    """A non-blocking twin of a real trio socket, for the fast paths.

    Reading what is already queued and writing while the kernel has room
    need no scheduler round trip. The twin shares the kernel socket (a
    duplicated descriptor), so it sees the same datagrams and sends from
    the same address. Fakes and anything without a real descriptor get
    ``None`` and use the trio socket alone.
    """
    if not isinstance(sock, trio.socket.SocketType):
        return None
    try:
        fd = sock.fileno()
        if fd < 0:
            return None
        raw = _stdlib_socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError):
        return None
    raw.setblocking(False)
    return raw

# Contexts this library has prepared for the server role. pyOpenSSL freezes a
# context after its first Connection, so the preparation happens once per
# context and is remembered here rather than repeated (which would raise).
_prepared_contexts: weakref.WeakSet[SSL.Context] = weakref.WeakSet()


def _accept_verified_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
    # The endpoint checks every cookie (HMAC, address, expiry) before an
    # SSL.Connection exists; OpenSSL's DTLSv1_listen only needs to be told.
    return True


def _prepare_server_context(context: SSL.Context) -> None:
    if not isinstance(context, SSL.Context):
        raise TypeError(
            f"server_context must be an OpenSSL.SSL.Context, not {type(context).__name__}"
        )
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


def normalize_address(address: Any) -> tuple[Any, ...]:
    """The routing key for a socket address.

    IPv4 addresses are ``(host, port)``. IPv6 addresses are
    ``(host, port, 0, scope_id)``: the flow label is not part of who the
    peer is, and a 2-tuple given by a user gains the zero scope id that
    ``recvfrom`` reports, so replies find their association.
    """
    if len(address) == 2:
        return (address[0], address[1])
    return (address[0], address[1], 0, address[3] if len(address) > 3 else 0)


class _Peer:
    """What the Trio layer keeps per peer (the protocol state is in
    ``association``)."""

    __slots__ = (
        "__weakref__",
        "association",
        "connection",
        "handshake_done",
        "inbox_receive",
        "inbox_send",
        "wake",
    )

    def __init__(self, association: Association, inbox_size: int) -> None:
        self.association = association
        self.inbox_send, self.inbox_receive = trio.open_memory_channel[bytes](
            inbox_size
        )
        self.wake = trio.Event()
        self.handshake_done = trio.Event()
        self.connection: DtlsConnection | None = None


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
        if server_context is not None:
            _prepare_server_context(server_context)
        self._sock = sock
        self._raw: _stdlib_socket.socket | None = None
        self._server_context = server_context
        self._peers: dict[tuple[Any, ...], _Peer] = {}
        self._handshaking = 0
        self._spent_hellos: dict[tuple[tuple[Any, ...], bytes], float] = {}
        self._counters = EndpointCounters()
        self._cookies = CookieJar(lifetime=self.config.cookie_lifetime)
        self._hvr_size = rec.hello_verify_request_size(COOKIE_LENGTH)
        self._accept_send, self._accept_receive = trio.open_memory_channel[
            DtlsConnection
        ](math.inf)
        self._send_lock = trio.Lock()
        # Tasks inside _send_waiting; while there are any, nobody may jump
        # the queue with a direct send.
        self._send_waiters = 0
        self._nursery: trio.Nursery | None = None
        self._nursery_manager: Any = None
        self._state = "new"
        self._keylog_file: IO[bytes] | None = None
        self._owns_keylog = False

    # -- context manager ------------------------------------------------------

    async def __aenter__(self) -> DtlsEndpoint:
        if self._state != "new":
            raise RuntimeError("a DtlsEndpoint can be entered only once")
        try:
            self._sock.getsockname()
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
        self._raw = _kernel_socket(self._sock)
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        self._state = "open"
        self._nursery.start_soon(self._receive_loop)
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
                # The body of ``async with`` raised and no task of ours did:
                # let the body's exception through as it was, not wrapped in
                # the group that the endpoint's nursery makes of it.
                if len(group.exceptions) == 1 and group.exceptions[0] is exc_info[1]:
                    suppress = False
                else:
                    raise
            finally:
                self._sock.close()
                if self._raw is not None:
                    self._raw.close()
                if self._owns_keylog and self._keylog_file is not None:
                    self._keylog_file.close()
        return bool(suppress)

    async def _close_all(self) -> None:
        self._state = "closing"
        self._accept_send.close()
        goodbyes = []
        for peer in list(self._peers.values()):
            goodbyes.append((self._close_peer(peer), peer.association.address))
        with trio.CancelScope(shield=True):
            for datagrams, address in goodbyes:
                await self._send_datagrams(datagrams, address)

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
        return self._sock

    def statistics(self) -> EndpointStatistics:
        """A frozen snapshot of the endpoint's counters."""
        return self._counters.snapshot(
            peers=len(self._peers), handshakes_in_progress=self._handshaking
        )

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
        async with trio.open_nursery() as nursery:
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
        if self._server_context is None:
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

        Raises:
          HandshakeError: the handshake failed (alert, verification, timeout:
            :class:`HandshakeTimeout`).
          ValueError: there already is an association with that address, or
            the address is malformed.
          OSError: the host name does not resolve.
        """
        nursery = self._check_open()
        if not isinstance(context, SSL.Context):
            raise TypeError(
                f"context must be an OpenSSL.SSL.Context, not {type(context).__name__}"
            )
        if not isinstance(address, tuple) or len(address) < 2:
            raise ValueError(f"address must be a (host, port) tuple, not {address!r}")
        host, port = address[0], address[1]
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be a non-empty string, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"port must be an integer from 1 to 65535, not {port!r}")
        if server_hostname is True:
            raise ValueError("server_hostname must be a name, None or False")
        if server_hostname is None:
            expected: str | None = host
        elif server_hostname is False:
            expected = None
        else:
            expected = server_hostname
        key = await self._resolve(address)
        nursery = self._check_open()
        if key in self._peers:
            raise ValueError(
                f"this endpoint already has an association with {key!r}; a socket "
                "holds at most one per peer address (close it first)"
            )
        now = trio.current_time()
        association = Association(
            context,
            role=Role.CLIENT,
            address=key,
            config=self.config,
            now=now,
            server_hostname=expected,
            keylog=self._write_keylog if self._keylog_file is not None else None,
        )
        peer = self._add_peer(association)
        try:
            first_flight = association.start(now)
            nursery.start_soon(self._peer_task, peer)
            await self._send_datagrams(first_flight, key)
            await peer.handshake_done.wait()
        except BaseException:
            if association.state is State.HANDSHAKING:
                association.abandon(
                    HandshakeError("connect() was cancelled before the handshake finished")
                )
                self._ended(peer)
            raise
        if association.state is not State.ESTABLISHED or peer.connection is None:
            error = association.error
            if isinstance(error, HandshakeError):
                raise error
            raise HandshakeError(f"handshake with {key!r} ended: {association.state.value}")
        return peer.connection

    async def _resolve(self, address: tuple[Any, ...]) -> tuple[Any, ...]:
        host, port = address[0], address[1]
        family = self._sock.family
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

    # -- peers ----------------------------------------------------------------

    def _add_peer(self, association: Association) -> _Peer:
        peer = _Peer(association, self.config.inbox_size)
        peer.connection = DtlsConnection(_PRIVATE, self, peer)
        self._peers[association.address] = peer
        self._handshaking += 1
        return peer

    def _ended(self, peer: _Peer) -> None:
        """Forget a peer whose association has ended; idempotent."""
        key = peer.association.address
        if self._peers.get(key) is peer:
            del self._peers[key]
        if not peer.handshake_done.is_set():
            self._handshaking -= 1
            peer.handshake_done.set()
            if peer.association.failure_kind is not None:
                self._counters.handshake_failed(peer.association.failure_kind)
        if peer.association.client_random is not None:
            self._spend_hello(key, peer.association.client_random)
        peer.inbox_send.close()
        peer.wake.set()

    def _spend_hello(self, key: tuple[Any, ...], client_random: bytes) -> None:
        """Remember a ClientHello whose association has ended.

        Its cookie stays valid for up to two cookie lifetimes, so a late
        retransmission or a replay of that plaintext hello would otherwise
        start a new handshake (or, at an address with a live association,
        replace it). Entries expire with the cookie and are capped, so this
        costs at most ``max_connections`` small entries; it only ever holds
        hellos that had passed the cookie check.
        """
        now = trio.current_time()
        spent = self._spent_hellos
        while spent:
            oldest = next(iter(spent))
            if spent[oldest] > now and len(spent) < self.config.max_connections:
                break
            del spent[oldest]
        spent[(key, client_random)] = now + 2 * self.config.cookie_lifetime

    def _close_peer(self, peer: _Peer) -> list[bytes]:
        datagrams = peer.association.close()
        self._ended(peer)
        return datagrams

    def _write_keylog(self, line: bytes) -> None:
        keylog = self._keylog_file
        if keylog is None:
            return
        try:
            keylog.write(line)
            keylog.flush()
        except (OSError, ValueError):
            pass  # a broken key log must not break the peers

    async def _peer_task(self, peer: _Peer) -> None:
        association = peer.association
        try:
            while association.state is State.HANDSHAKING:
                peer.wake = trio.Event()
                with trio.move_on_at(association.deadline):
                    await peer.wake.wait()
                    continue
                datagrams = association.handle_timer(trio.current_time())
                await self._send_datagrams(datagrams, association.address)
            if association.state is State.ESTABLISHED:
                self._handshaking -= 1
                self._counters.handshakes_completed += 1
                peer.handshake_done.set()
                if association.role is Role.SERVER:
                    assert peer.connection is not None
                    try:
                        self._accept_send.send_nowait(peer.connection)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        pass
                await self._watch_idle(peer)
        finally:
            self._ended(peer)

    async def _watch_idle(self, peer: _Peer) -> None:
        association = peer.association
        counters = association.counters
        idle_timeout = self.config.idle_timeout
        while association.state is State.ESTABLISHED:
            if idle_timeout is None:
                deadline = math.inf
            else:
                last = counters.last_datagram_at or counters.established_at or 0.0
                deadline = last + idle_timeout
                if trio.current_time() >= deadline:
                    association.expire()
                    self._counters.peers_reaped += 1
                    return
            peer.wake = trio.Event()
            with trio.move_on_at(deadline):
                await peer.wake.wait()

    # -- datagrams ------------------------------------------------------------

    async def _send_datagrams(self, datagrams: list[bytes], address: Any) -> None:
        """Send datagrams to one peer; socket errors are counted, not raised.

        This is not a checkpoint when the kernel takes every datagram at
        once (the usual case): the receive task sends replies without
        yielding between datagrams, and callers that must checkpoint do so.
        """
        for index, datagram in enumerate(datagrams):
            if not self._try_send(datagram, address):
                await self._send_waiting(datagrams[index:], address)
                return

    def _try_send(self, datagram: bytes, address: Any) -> bool:
        """Send one datagram if the kernel takes it now.

        Returns False, having done nothing, when it has to wait: there is no
        kernel-socket twin, the socket's buffer is full, or other sends are
        already waiting (which would be overtaken).
        """
        raw = self._raw
        if raw is None or self._send_waiters:
            return False
        counters = self._counters
        try:
            raw.sendto(datagram, address)
        except BlockingIOError:
            return False
        except OSError:
            # ENOBUFS, ICMP errors, EMSGSIZE concern this datagram only;
            # EBADF means the endpoint is closing.
            counters.socket_errors += 1
            return True
        counters.datagrams_out += 1
        counters.bytes_out += len(datagram)
        return True

    async def _send_waiting(self, datagrams: list[bytes], address: Any) -> None:
        counters = self._counters
        lock = self._send_lock
        # A trio socket refuses two tasks waiting to write at once, so sends
        # that may wait are serialised.
        self._send_waiters += 1
        try:
            try:
                lock.acquire_nowait()
            except trio.WouldBlock:
                await lock.acquire()
            try:
                for datagram in datagrams:
                    try:
                        await self._sock.sendto(datagram, address)
                    except OSError as exc:
                        counters.socket_errors += 1
                        if exc.errno == errno.EBADF:
                            return  # the socket is closed: the endpoint is ending
                        # Anything else (ENOBUFS, ICMP errors, EMSGSIZE)
                        # concerns this datagram only.
                        continue
                    except (trio.ClosedResourceError, trio.BusyResourceError):
                        counters.socket_errors += 1
                        return
                    counters.datagrams_out += 1
                    counters.bytes_out += len(datagram)
            finally:
                lock.release()
        finally:
            self._send_waiters -= 1

    async def _receive_loop(self) -> None:
        if self._raw is None:
            await self._receive_loop_trio()
        else:
            await self._receive_loop_batched(self._raw)

    async def _receive_loop_trio(self) -> None:
        """One datagram per ``recvfrom``: fakes and sockets without a twin."""
        sock = self._sock
        counters = self._counters
        while True:
            try:
                data, address = await sock.recvfrom(_RECV_SIZE)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    return
                # ICMP errors (ECONNREFUSED after sending to a closed port)
                # concern one peer; the endpoint goes on.
                counters.socket_errors += 1
                continue
            except trio.ClosedResourceError:
                return
            key = normalize_address(address)
            replies = self._route(data, key, trio.current_time())
            if replies:
                await self._send_datagrams(replies, key)

    async def _receive_loop_batched(self, raw: _stdlib_socket.socket) -> None:
        """Everything the kernel has queued, read per wake-up of the task.

        One wait for readability per batch, not a scheduler round trip per
        datagram; the batch is capped so the loop stays fair to the other
        tasks, and one clock reading serves the whole batch.
        """
        counters = self._counters
        recvfrom = raw.recvfrom
        while True:
            try:
                await trio.lowlevel.wait_readable(raw)
            except (trio.ClosedResourceError, OSError):
                return
            now = trio.current_time()
            for _ in range(_RECV_BATCH):
                try:
                    data, address = recvfrom(_RECV_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    # ICMP errors (ECONNREFUSED after sending to a closed
                    # port) concern one peer; the endpoint goes on.
                    counters.socket_errors += 1
                    continue
                # recvfrom reports IPv4 peers as (host, port) already.
                key = address if len(address) == 2 else normalize_address(address)
                replies = self._route(data, key, now)
                if replies:
                    await self._send_datagrams(replies, key)

    def _route(self, data: bytes, key: tuple[Any, ...], now: float) -> list[bytes]:
        """Count one datagram and hand it to its peer; returns the replies."""
        counters = self._counters
        counters.datagrams_in += 1
        counters.bytes_in += len(data)
        try:
            return self._handle_datagram(data, key, now)
        except SSL.Error:
            # OpenSSL refused bytes we fed it in a way the association did
            # not expect; the datagram is junk, the endpoint lives.
            counters.junk_dropped += 1
            return []

    def _handle_datagram(
        self, data: bytes, key: tuple[Any, ...], now: float
    ) -> list[bytes]:
        peer = self._peers.get(key)
        if peer is None:
            return self._handle_stranger(data, key)
        association = peer.association
        if (
            data[:1] == b"\x16"
            and data[3:5] == b"\x00\x00"
            and association.role is Role.SERVER
            and len(data) > rec.RECORD_HEADER_SIZE
            and data[rec.RECORD_HEADER_SIZE] == rec.HS_CLIENT_HELLO
        ):
            restart = self._maybe_restart(peer, data, key)
            if restart is not None:
                return restart
        was_live = association.live
        handshaking = association.state is State.HANDSHAKING
        replies, messages = association.receive_datagram(data, now)
        if messages:
            self._deliver(peer, messages)
        if handshaking or (was_live and not association.live):
            peer.wake.set()
            if not association.live:
                self._ended(peer)
        return replies

    def _deliver(self, peer: _Peer, messages: list[bytes]) -> None:
        send_nowait = peer.inbox_send.send_nowait
        counters = peer.association.counters
        for message in messages:
            try:
                send_nowait(message)
            except trio.WouldBlock:
                counters.messages_dropped += 1
                counters.messages_in -= 1
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                counters.messages_dropped += 1
                counters.messages_in -= 1

    def _maybe_restart(
        self, peer: _Peer, data: bytes, key: tuple[Any, ...]
    ) -> list[bytes] | None:
        """A ClientHello from an address we already serve (RFC 6347 4.2.8).

        Returns the reply if the hello was handled here, or None to let the
        association see it (a retransmission of the hello that created it).
        """
        try:
            hello = rec.parse_client_hello_untrusted(data)
        except rec.BadPacket:
            return None
        if hello.random == peer.association.client_random:
            return None
        reply = self._check_cookie(hello, data, key)
        if reply is not None:
            return reply
        # A verified hello with a new random: the peer really restarted.
        # Only someone who receives at this address could echo the cookie.
        if not self._within_limits(replacing=peer):
            return []
        peer.association.replace()
        self._counters.peers_restarted += 1
        self._ended(peer)
        return self._new_server_peer(hello, data, key)

    def _check_cookie(
        self, hello: rec.ClientHello, data: bytes, key: tuple[Any, ...]
    ) -> list[bytes] | None:
        """None if the hello carries a valid cookie; else the reply to send."""
        now = trio.current_time()
        if hello.cookie and self._cookies.verify(key, hello, now):
            if self._spent_hellos.get((key, hello.random), -math.inf) > now:
                # A hello whose association has come and gone: a replay or a
                # very late retransmission. Nothing to answer.
                self._counters.cookie_failures += 1
                return []
            return None
        if hello.cookie:
            self._counters.cookie_failures += 1
        if len(data) < self._hvr_size:
            # Answering would send more than we received.
            self._counters.junk_dropped += 1
            return []
        self._counters.cookies_sent += 1
        cookie = self._cookies.make(key, hello, now)
        return [rec.encode_hello_verify_request(hello.record_seq, cookie)]

    def _within_limits(self, replacing: _Peer | None = None) -> bool:
        peers = len(self._peers) - (1 if replacing is not None else 0)
        handshaking = self._handshaking - (
            1
            if replacing is not None and replacing.association.state is State.HANDSHAKING
            else 0
        )
        if peers >= self.config.max_connections or handshaking >= self.config.max_handshakes:
            self._counters.hellos_dropped_limits += 1
            return False
        return True

    def _handle_stranger(self, data: bytes, key: tuple[Any, ...]) -> list[bytes]:
        counters = self._counters
        if data[:1] != b"\x16":
            counters.junk_dropped += 1
            return []
        try:
            hello = rec.parse_client_hello_untrusted(data)
        except rec.BadPacket:
            counters.junk_dropped += 1
            return []
        if self._server_context is None or self._state != "open":
            counters.hellos_dropped_no_server += 1
            return []
        reply = self._check_cookie(hello, data, key)
        if reply is not None:
            return reply
        if not self._within_limits():
            return []
        return self._new_server_peer(hello, data, key)

    def _new_server_peer(
        self, hello: rec.ClientHello, data: bytes, key: tuple[Any, ...]
    ) -> list[bytes]:
        assert self._server_context is not None and self._nursery is not None
        now = trio.current_time()
        association = Association(
            self._server_context,
            role=Role.SERVER,
            address=key,
            config=self.config,
            now=now,
            first_record_seq=hello.record_seq,
            client_random=hello.random,
            keylog=self._write_keylog if self._keylog_file is not None else None,
        )
        peer = self._add_peer(association)
        replies = association.start_server(data, now)
        association.counters.datagrams_in += 1
        association.counters.bytes_in += len(data)
        association.counters.last_datagram_at = now
        self._nursery.start_soon(self._peer_task, peer)
        return replies
