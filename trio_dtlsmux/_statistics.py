"""Counters, and the frozen snapshots that ``statistics()`` returns.

The hot path increments plain integer attributes on a slotted object; a
snapshot is built only when someone asks. Each field says what it counts so
that a dropped datagram is never silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import attrs


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    """A snapshot of one connection's counters (``conn.statistics()``).

    Attributes:
      datagrams_in: datagrams received from the peer and routed here.
      bytes_in: their total size in bytes.
      datagrams_out: datagrams sent to the peer (handshake, data, alerts).
      bytes_out: their total size in bytes.
      messages_in: application messages delivered to the inbox.
      messages_out: application messages sent.
      messages_dropped: messages dropped because the inbox was full.
      records_rejected: records OpenSSL discarded (bad MAC, replay, wrong
        epoch), records that could not be parsed, and the rare warning
        alert that carries nothing for the application.
      handshake_retransmissions: handshake flights sent again, by the timer
        or because the peer repeated its last flight.
      established_at: ``trio.current_time()`` when the handshake finished, or
        ``None`` while it has not.
      last_datagram_at: ``trio.current_time()`` of the last valid datagram
        from the peer.
    """

    datagrams_in: int
    bytes_in: int
    datagrams_out: int
    bytes_out: int
    messages_in: int
    messages_out: int
    messages_dropped: int
    records_rejected: int
    handshake_retransmissions: int
    established_at: float | None
    last_datagram_at: float | None


@attrs.frozen(kw_only=True)
class EndpointStatistics:
    """A snapshot of an endpoint's counters (``endpoint.statistics()``).

    Attributes:
      peers: associations now held (established and handshaking).
      handshakes_in_progress: associations still handshaking.
      handshakes_completed: handshakes that finished, both roles.
      handshakes_failed: failed handshakes by reason: ``"timeout"``
        (``handshake_timeout`` passed), ``"alert"`` (the peer sent a fatal
        alert), ``"verification"`` (the peer's certificate failed our
        checks), ``"protocol"`` (anything else OpenSSL refused),
        ``"aborted"`` (``connect`` was cancelled or the endpoint closed
        mid-handshake).
      cookies_sent: HelloVerifyRequests sent.
      cookie_failures: ClientHellos whose cookie was present but wrong,
        expired, or already used by an association that has ended.
      junk_dropped: datagrams dropped because they could not be parsed or
        belong to no peer.
      peers_reaped: associations removed after ``idle_timeout``.
      peers_restarted: associations replaced by a new handshake from the same
        address.
      hellos_dropped_limits: verified ClientHellos dropped because
        ``max_connections`` or ``max_handshakes`` was reached.
      hellos_dropped_no_server: ClientHellos dropped because the endpoint has
        no ``server_context``.
      datagrams_in: datagrams read from the socket, from anyone.
      bytes_in: their total size in bytes.
      datagrams_out: datagrams written to the socket.
      bytes_out: their total size in bytes.
      socket_errors: errors from the socket that the endpoint survived (ICMP
        unreachable, ENOBUFS, ...).
    """

    peers: int
    handshakes_in_progress: int
    handshakes_completed: int
    handshakes_failed: Mapping[str, int]
    cookies_sent: int
    cookie_failures: int
    junk_dropped: int
    peers_reaped: int
    peers_restarted: int
    hellos_dropped_limits: int
    hellos_dropped_no_server: int
    datagrams_in: int
    bytes_in: int
    datagrams_out: int
    bytes_out: int
    socket_errors: int


class ConnectionCounters:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "datagrams_in",
        "datagrams_out",
        "established_at",
        "handshake_retransmissions",
        "last_datagram_at",
        "messages_dropped",
        "messages_in",
        "messages_out",
        "records_rejected",
    )

    def __init__(self) -> None:
        self.datagrams_in = 0
        self.bytes_in = 0
        self.datagrams_out = 0
        self.bytes_out = 0
        self.messages_in = 0
        self.messages_out = 0
        self.messages_dropped = 0
        self.records_rejected = 0
        self.handshake_retransmissions = 0
        self.established_at: float | None = None
        self.last_datagram_at: float | None = None

    def snapshot(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            **{name: getattr(self, name) for name in self.__slots__}
        )


class EndpointCounters:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "cookie_failures",
        "cookies_sent",
        "datagrams_in",
        "datagrams_out",
        "handshakes_completed",
        "handshakes_failed",
        "hellos_dropped_limits",
        "hellos_dropped_no_server",
        "junk_dropped",
        "peers_reaped",
        "peers_restarted",
        "socket_errors",
    )

    def __init__(self) -> None:
        self.handshakes_completed = 0
        self.handshakes_failed: dict[str, int] = {}
        self.cookies_sent = 0
        self.cookie_failures = 0
        self.junk_dropped = 0
        self.peers_reaped = 0
        self.peers_restarted = 0
        self.hellos_dropped_limits = 0
        self.hellos_dropped_no_server = 0
        self.datagrams_in = 0
        self.bytes_in = 0
        self.datagrams_out = 0
        self.bytes_out = 0
        self.socket_errors = 0

    def handshake_failed(self, reason: str) -> None:
        self.handshakes_failed[reason] = self.handshakes_failed.get(reason, 0) + 1

    def snapshot(self, *, peers: int, handshaking: int) -> EndpointStatistics:
        values = {name: getattr(self, name) for name in self.__slots__}
        values["handshakes_failed"] = MappingProxyType(dict(self.handshakes_failed))
        return EndpointStatistics(
            peers=peers, handshakes_in_progress=handshaking, **values
        )
