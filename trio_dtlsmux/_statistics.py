"""Counters, and the frozen snapshots that ``statistics()`` returns.

The hot path increments plain integer attributes on a slotted object; a
snapshot is built only when someone asks. Each field says what it counts so
that a dropped datagram is never silent.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


class _Snapshot:
    """What every snapshot offers besides its fields."""

    __slots__ = ()

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain ``dict``/``int``/``float``/``None`` values,
        ready for ``json.dumps`` or a metrics system."""
        return {
            name: _plain(value)
            for name, value in attrs.asdict(self, recurse=False).items()  # type: ignore[arg-type]
        }


@attrs.frozen(kw_only=True)
class ConnectionStatistics(_Snapshot):
    """A snapshot of one connection's counters (``conn.statistics()``);
    ``as_dict()`` gives it as plain values for ``json.dumps`` or metrics.

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
class EndpointStatistics(_Snapshot):
    """A snapshot of an endpoint's counters (``endpoint.statistics()``);
    ``as_dict()`` gives it as plain values for ``json.dumps`` or metrics.

    Attributes:
      peers: associations now held (established and handshaking).
      handshakes_in_progress: associations still handshaking.
      hellos_waiting: ClientHellos that passed the cookie check and wait
        for a handshake slot (``max_handshakes`` were in progress when they
        came); they are served in the order they came.
      handshakes_completed: handshakes that finished, both roles.
      handshakes_failed: failed handshakes by reason: ``"timeout"``
        (``handshake_timeout`` passed), ``"alert"`` (the peer sent a fatal
        alert), ``"verification"`` (the peer's certificate failed our
        checks), ``"protocol"`` (anything else OpenSSL refused),
        ``"aborted"`` (``connect`` was cancelled or the endpoint closed
        mid-handshake), ``"refused"`` (an ICMP port unreachable: nothing
        listens at the peer's address). See
        :class:`~trio_dtlsmux.HandshakeFailure`.
      cookies_sent: HelloVerifyRequests sent.
      cookie_failures: ClientHellos whose cookie was present but wrong,
        expired, or already used by an association that has ended.
      junk_dropped: datagrams dropped because they could not be parsed or
        belong to no peer.
      peers_reaped: associations removed after ``idle_timeout``.
      peers_restarted: associations replaced by a new handshake from the same
        address.
      hellos_dropped_limits: verified ClientHellos shed: the peers and the
        waiting hellos already made ``max_connections``, or the hello
        waited longer than ``handshake_timeout`` for a slot, or (a peer
        restarting at an address we serve) every slot was taken.
      hellos_dropped_no_server: ClientHellos dropped because the endpoint has
        no ``server_context``.
      other_received: datagrams that are not DTLS (RFC 7983: STUN, RTP, ...)
        received with ``other_datagrams`` set, whether delivered or not.
      other_dropped: of those, the ones dropped because the
        ``receive_other`` inbox was full.
      datagrams_in: datagrams read from the socket, from anyone.
      bytes_in: their total size in bytes.
      datagrams_out: datagrams written to the socket.
      bytes_out: their total size in bytes.
      socket_errors: errors from the socket that the endpoint survived (ICMP
        unreachable, ENOBUFS, ...).
      handshake_datagrams_dropped: datagrams of handshakes (new peers'
        hellos, and whatever peers still handshaking send) dropped on
        arrival because 4,096 such datagrams were already held back while
        established peers were served first. Their senders retransmit.
      receive_buffer: the socket's receive buffer in bytes, as the kernel
        reports it (Linux reports twice the size set: the budget it counts
        queued datagrams against), or ``None`` if unknown. See the endpoint
        option of the same name.
      send_buffer: the same for the send buffer.
      kernel_drops: datagrams the kernel dropped for this socket (mostly
        because the receive buffer was full) since it was made, or ``None``
        where the platform does not say (Linux does). A 32-bit counter.
      hello_fragments_in: datagrams from strangers that held a piece of a
        ClientHello, not yet the whole of one: each was taken into the
        bounded reassembly table or refused by it.
      fragmented_hellos_completed: ClientHellos that came in fragments and
        were put back together (then checked like any other hello).
      hello_fragments_dropped: datagrams of ClientHello fragments, and
        partial hellos, given up on: malformed, too large, too scattered,
        contradicting what was held, replaced, pushed out by newer ones
        (the table holds at most 256), or incomplete after 5 seconds.
    """

    peers: int
    handshakes_in_progress: int
    hellos_waiting: int
    handshakes_completed: int
    handshakes_failed: Mapping[str, int]
    cookies_sent: int
    cookie_failures: int
    junk_dropped: int
    peers_reaped: int
    peers_restarted: int
    hellos_dropped_limits: int
    hellos_dropped_no_server: int
    other_received: int
    other_dropped: int
    hello_fragments_in: int
    datagrams_in: int
    bytes_in: int
    datagrams_out: int
    bytes_out: int
    socket_errors: int
    handshake_datagrams_dropped: int
    receive_buffer: int | None
    send_buffer: int | None
    kernel_drops: int | None
    fragmented_hellos_completed: int
    hello_fragments_dropped: int


@attrs.define(slots=True)
class ConnectionCounters:
    """The live counters behind :class:`ConnectionStatistics` (same fields)."""

    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    messages_dropped: int = 0
    records_rejected: int = 0
    handshake_retransmissions: int = 0
    established_at: float | None = None
    last_datagram_at: float | None = None

    def snapshot(self) -> ConnectionStatistics:
        """The counters now, frozen."""
        return ConnectionStatistics(**attrs.asdict(self, recurse=False))


@attrs.define(slots=True)
class TrafficCounters:
    """What crossed the socket, kept by the transport."""

    datagrams_in: int = 0
    bytes_in: int = 0
    datagrams_out: int = 0
    bytes_out: int = 0
    socket_errors: int = 0
    handshake_datagrams_dropped: int = 0


@attrs.define(slots=True)
class EndpointCounters:
    """The protocol counters behind :class:`EndpointStatistics`, kept by the
    demux; the snapshot adds the traffic counters and the live figures."""

    handshakes_completed: int = 0
    handshakes_failed: dict[str, int] = attrs.field(factory=dict)
    cookies_sent: int = 0
    cookie_failures: int = 0
    junk_dropped: int = 0
    peers_reaped: int = 0
    peers_restarted: int = 0
    hellos_dropped_limits: int = 0
    hellos_dropped_no_server: int = 0
    other_received: int = 0
    other_dropped: int = 0
    hello_fragments_in: int = 0

    def handshake_failed(self, kind: str) -> None:
        self.handshakes_failed[kind] = self.handshakes_failed.get(kind, 0) + 1

    def snapshot(self, traffic: TrafficCounters, **live: Any) -> EndpointStatistics:
        values = attrs.asdict(self, recurse=False)
        values["handshakes_failed"] = MappingProxyType(dict(self.handshakes_failed))
        return EndpointStatistics(
            **values, **attrs.asdict(traffic, recurse=False), **live
        )
