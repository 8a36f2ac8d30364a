"""``python -m trio_dtlsmux demo``: one server, many clients, one process.

The server is one :class:`~trio_dtlsmux.DtlsEndpoint`; every client peer has
an endpoint and a socket of its own, as separate programs would. The run has
two phases, so each rate measures one thing:

1. every peer handshakes (at most :data:`HANDSHAKES_AT_ONCE` at a time);
2. once all are done, the peers play ping-pong: send a message, wait for the
   echo, check it byte for byte, repeat.

With ``--loss 0`` the datagrams cross the real loopback interface and none
may go missing. With ``--loss > 0`` they cross the library's
:class:`~trio_dtlsmux.testing.FakeNetwork`, which drops that share of them.
Handshakes survive loss (DTLS retransmits its flights), application messages
do not (DTLS never retransmits data), so a lost round trip is then counted,
expected and not an error. A message that comes back *different* is always
an error.
"""

from __future__ import annotations

import math
import socket as _stdlib_socket
import struct
import sys
from collections.abc import Sequence
from typing import IO, Any

import attrs
import trio
from OpenSSL import SSL

from ._connection import DtlsConnection
from ._endpoint import DtlsEndpoint
from ._errors import HandshakeError
from ._records import MAX_PLAINTEXT, MAX_RECORD_OVERHEAD
from .contexts import client_context, self_signed, server_context
from .testing import FakeNetwork, NetworkConditions

__all__ = ["DemoOptions", "run_demo"]

#: Handshakes in flight at once. Each costs a few milliseconds of CPU (ECDSA
#: signatures, ECDH); more at once only stretches every one of them.
HANDSHAKES_AT_ONCE = 32
#: Peers playing ping-pong at once. Each has one message in flight, so this
#: bounds what can pile up in the server socket's receive buffer. The server
#: handles one datagram at a time, so more only adds queueing to the latency.
EXCHANGES_AT_ONCE = 16
#: The same on the simulated lossy network, where a peer spends most of its
#: time waiting out lost round trips rather than using the CPU.
LOSSY_EXCHANGES_AT_ONCE = 128

# Every message starts with its peer and message number; the smallest
# message the command line allows is this header alone.
_HEADER = struct.Struct("!II")
_SERVER_PORT_ON_FAKE_NET = 4433
_RCVBUF_WANTED = 4 * 1024 * 1024


@attrs.frozen(kw_only=True)
class DemoOptions:
    """What ``demo`` was asked to do."""

    peers: int = 100
    messages: int = 100
    size: int = 100
    loss: float = 0.0
    seed: int = 1


@attrs.define
class _Tally:
    """What happened, updated by every peer as it goes."""

    options: DemoOptions
    handshakes_ok: int = 0
    handshakes_failed: int = 0
    failure_reasons: dict[str, int] = attrs.Factory(dict)
    handshake_times: list[float] = attrs.Factory(list)
    round_trip_times: list[float] = attrs.Factory(list)
    lost: int = 0
    altered: int = 0
    late: int = 0
    broken_peers: int = 0
    broken_reasons: dict[str, int] = attrs.Factory(dict)
    handshakes_started_at: float = 0.0
    handshakes_ended_at: float = 0.0
    exchanges_started_at: float = 0.0
    exchanges_ended_at: float = 0.0

    @property
    def round_trips(self) -> int:
        return len(self.round_trip_times)

    @property
    def handshakes_done(self) -> int:
        return self.handshakes_ok + self.handshakes_failed

    @property
    def expected_round_trips(self) -> int:
        return self.handshakes_ok * self.options.messages


class _Countdown:
    """Sets an event when ``count`` parties have arrived."""

    def __init__(self, count: int) -> None:
        self._left = count
        self.done = trio.Event()
        if count <= 0:
            self.done.set()

    def arrive(self) -> bool:
        """Count one arrival; True for the last one."""
        self._left -= 1
        if self._left == 0:
            self.done.set()
            return True
        return False


# Long enough for the largest message, one record's plaintext.
_PATTERN = bytes(range(256)) * (MAX_PLAINTEXT // 256 + 2)


def payload(peer: int, number: int, size: int) -> bytes:
    """The ``number``-th message of peer ``peer``: a header, then a pattern
    that starts somewhere else for every message, so that a reply meant for
    another message or peer cannot look right."""
    start = (peer * 7919 + number * 104729) & 0xFF
    return _HEADER.pack(peer, number) + _PATTERN[start : start + size - _HEADER.size]


class _ReplyTimer:
    """How long to wait for an echo before calling the round trip lost.

    On the real loopback nothing may be lost, so the wait is long and only
    stops a hang. On the lossy network it follows the measured round trips
    the way TCP's retransmission timer does (RFC 6298: smoothed RTT plus four
    deviations), so a lost message costs a few round trips, not seconds.
    """

    def __init__(self, *, lossy: bool) -> None:
        self._lossy = lossy
        self._smoothed: float | None = None
        self._deviation = 0.0

    def observe(self, rtt: float) -> None:
        if self._smoothed is None:
            self._smoothed, self._deviation = rtt, rtt / 2
        else:
            self._deviation += (abs(self._smoothed - rtt) - self._deviation) / 4
            self._smoothed += (rtt - self._smoothed) / 8

    @property
    def timeout(self) -> float:
        if not self._lossy:
            return 10.0
        if self._smoothed is None:
            return 0.5
        return min(1.0, max(0.02, self._smoothed + 4 * self._deviation))


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (``fraction`` in 0..1); NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _milliseconds(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def _rate(count: int, start: float, end: float) -> str:
    elapsed = end - start
    if count == 0 or elapsed <= 0:
        return "n/a"
    return f"{count / elapsed:,.0f}/s"


class _Demo:
    def __init__(self, options: DemoOptions, out: IO[str]) -> None:
        self.options = options
        self.out = out
        self.tally = _Tally(options)
        self.lossy = options.loss > 0
        self.network: FakeNetwork | None = None
        if self.lossy:
            self.network = FakeNetwork(
                seed=options.seed,
                conditions=NetworkConditions(loss=options.loss),
                recv_buffer=max(256, 4 * LOSSY_EXCHANGES_AT_ONCE),
            )
        identity = self_signed()
        self.server_context: SSL.Context = server_context(identity)
        self.client_context: SSL.Context = client_context(
            fingerprint=identity.fingerprint
        )
        mtu = min(65507, max(1400, options.size + MAX_RECORD_OVERHEAD))
        self.endpoint_options: dict[str, Any] = {"mtu": mtu}
        if self.lossy:
            # Loopback round trips take microseconds, not the internet's
            # hundreds of milliseconds that RFC 6347's 1 s timer is made for;
            # shorter timers keep lossy handshakes from taking minutes.
            self.endpoint_options.update(
                initial_retransmit_timeout=0.1,
                max_retransmit_timeout=0.4,
                handshake_timeout=60.0,
            )
        self.reply_timer = _ReplyTimer(lossy=self.lossy)
        self.server_connections: list[DtlsConnection] = []
        self.client_endpoints: list[DtlsEndpoint] = []
        self.client_connections: list[DtlsConnection] = []
        self.exchange_limit = (
            min(options.peers, LOSSY_EXCHANGES_AT_ONCE)
            if self.lossy
            else EXCHANGES_AT_ONCE
        )

    async def socket(self, port: int = 0) -> Any:
        if self.network is not None:
            sock: Any = self.network.socket()
        else:
            sock = trio.socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", port))
        return sock

    def _fit_exchanges_to_buffer(self, sock: Any) -> None:
        """Bound the messages in flight by what the kernel will buffer."""
        if self.network is not None:
            return
        try:
            sock.setsockopt(
                _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF, _RCVBUF_WANTED
            )
            buffer = int(
                sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_RCVBUF)
            )
        except OSError:
            buffer = 200_000
        # Each queued datagram costs its size plus roughly a kilobyte of
        # kernel bookkeeping; keep to half the buffer.
        per_datagram = self.options.size + MAX_RECORD_OVERHEAD + 1024
        self.exchange_limit = max(
            1, min(EXCHANGES_AT_ONCE, buffer // (2 * per_datagram))
        )

    async def echo(self, conn: DtlsConnection) -> None:
        self.server_connections.append(conn)
        async for message in conn:
            await conn.send(message)

    async def run(self) -> int:
        options = self.options
        self._print_header()
        server_sock = await self.socket(_SERVER_PORT_ON_FAKE_NET if self.lossy else 0)
        self._fit_exchanges_to_buffer(server_sock)
        server_address = server_sock.getsockname()
        handshakes = _Countdown(options.peers)
        exchanges = _Countdown(options.peers)
        snapshot_taken = trio.Event()
        handshake_slots = trio.CapacityLimiter(HANDSHAKES_AT_ONCE)
        exchange_slots = trio.CapacityLimiter(self.exchange_limit)
        async with (
            DtlsEndpoint(
                server_sock, server_context=self.server_context, **self.endpoint_options
            ) as server,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, self.echo)
            progress = trio.CancelScope()
            nursery.start_soon(self._show_progress, progress)
            self.tally.handshakes_started_at = trio.current_time()
            async with trio.open_nursery() as peers:
                for number in range(options.peers):
                    peers.start_soon(
                        self.peer,
                        number,
                        server_address,
                        handshake_slots,
                        exchange_slots,
                        handshakes,
                        exchanges,
                        snapshot_taken,
                    )
                await exchanges.done.wait()
                progress.cancel()
                traffic = self._traffic(server)
                snapshot_taken.set()
            nursery.cancel_scope.cancel()
        self._print_summary(traffic)
        return self._exit_code()

    async def peer(
        self,
        number: int,
        server_address: Any,
        handshake_slots: trio.CapacityLimiter,
        exchange_slots: trio.CapacityLimiter,
        handshakes: _Countdown,
        exchanges: _Countdown,
        snapshot_taken: trio.Event,
    ) -> None:
        tally = self.tally
        sock = await self.socket()
        async with DtlsEndpoint(sock, **self.endpoint_options) as endpoint:
            self.client_endpoints.append(endpoint)
            conn: DtlsConnection | None = None
            async with handshake_slots:
                started = trio.current_time()
                try:
                    conn = await endpoint.connect(
                        server_address, self.client_context, server_hostname=False
                    )
                except HandshakeError as exc:
                    tally.handshakes_failed += 1
                    reason = exc.reason.split(":")[0]
                    tally.failure_reasons[reason] = (
                        tally.failure_reasons.get(reason, 0) + 1
                    )
                else:
                    tally.handshakes_ok += 1
                    tally.handshake_times.append(trio.current_time() - started)
                    self.client_connections.append(conn)
            if handshakes.arrive():
                tally.handshakes_ended_at = trio.current_time()
                tally.exchanges_started_at = tally.handshakes_ended_at
            await handshakes.done.wait()
            if conn is not None:
                async with exchange_slots:
                    await self.exchange(number, conn)
            if exchanges.arrive():
                tally.exchanges_ended_at = trio.current_time()
            # Stay open until the counters are read, so that no goodbye is
            # counted as a datagram in flight.
            await snapshot_taken.wait()
            if conn is not None:
                await conn.aclose()

    async def exchange(self, number: int, conn: DtlsConnection) -> None:
        tally = self.tally
        size = self.options.size
        total = self.options.messages
        # When each message given up on was sent, to time a late echo.
        overdue: dict[int, float] = {}
        for index in range(total):
            message = payload(number, index, size)
            sent_at = trio.current_time()
            try:
                await conn.send(message)
                with trio.move_on_after(self.reply_timer.timeout) as waiting:
                    while True:
                        reply = await conn.receive()
                        if reply == message:
                            self._completed(trio.current_time() - sent_at)
                            break
                        earlier = self._earlier_message(reply, number, index)
                        if earlier is None or earlier not in overdue:
                            tally.altered += 1
                            break
                        # Not lost after all, only slower than the timer.
                        self._completed(trio.current_time() - overdue.pop(earlier))
                        tally.late += 1
                        tally.lost -= 1
            except (
                trio.BrokenResourceError,
                trio.EndOfChannel,
                trio.ClosedResourceError,
            ) as exc:
                tally.broken_peers += 1
                reason = (
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                )
                tally.broken_reasons.setdefault(reason, 0)
                tally.broken_reasons[reason] += 1
                tally.lost += total - index
                return
            if waiting.cancelled_caught:
                tally.lost += 1
                overdue[index] = sent_at

    def _completed(self, rtt: float) -> None:
        self.tally.round_trip_times.append(rtt)
        self.reply_timer.observe(rtt)

    def _earlier_message(self, reply: bytes, number: int, index: int) -> int | None:
        """Which earlier message of this peer ``reply`` is an exact echo of."""
        if len(reply) < _HEADER.size:
            return None
        peer, earlier = _HEADER.unpack_from(reply)
        if (
            peer == number
            and earlier < index
            and reply == payload(number, earlier, self.options.size)
        ):
            return int(earlier)
        return None

    # -- reporting ----------------------------------------------------------

    def _traffic(self, server: DtlsEndpoint) -> dict[str, int]:
        server_stats = server.statistics()
        client_stats = [endpoint.statistics() for endpoint in self.client_endpoints]
        sent = server_stats.datagrams_out + sum(s.datagrams_out for s in client_stats)
        retransmissions = sum(
            conn.statistics().handshake_retransmissions
            for conn in (*self.client_connections, *self.server_connections)
        )
        inbox_drops = sum(
            conn.statistics().messages_dropped
            for conn in (*self.client_connections, *self.server_connections)
        )
        if self.network is not None:
            net = self.network.statistics()
            dropped = (
                net.dropped_loss
                + net.dropped_mtu
                + net.dropped_no_listener
                + net.dropped_buffer_full
            )
        else:
            # Everything has been answered by now, so whatever one side sent
            # and the other never read was dropped on the way.
            to_server = (
                sum(s.datagrams_out for s in client_stats) - server_stats.datagrams_in
            )
            to_clients = server_stats.datagrams_out - sum(
                s.datagrams_in for s in client_stats
            )
            dropped = max(0, to_server) + max(0, to_clients)
        return {
            "sent": sent,
            "dropped": dropped,
            "retransmissions": retransmissions,
            "inbox_drops": inbox_drops,
            "junk": server_stats.junk_dropped,
        }

    def _print_header(self) -> None:
        options = self.options
        where = (
            f"a simulated network dropping {options.loss:.0%} of datagrams"
            if self.lossy
            else "real UDP on the loopback interface"
        )
        self.out.write(
            f"demo: {options.peers} peers x {options.messages} messages of "
            f"{options.size} bytes, over {where}\n"
        )
        self.out.flush()

    def _progress_line(self) -> str:
        tally = self.tally
        options = self.options
        text = f"handshakes {tally.handshakes_done}/{options.peers}"
        if tally.handshakes_done == options.peers:
            done = tally.round_trips + tally.lost + tally.altered
            text += f"  round trips {done}/{tally.expected_round_trips}"
            rate = _rate(
                tally.round_trips, tally.exchanges_started_at, trio.current_time()
            )
            if rate != "n/a":
                text += f" ({rate})"
            if tally.lost:
                text += f"  lost {tally.lost}"
        return text

    async def _show_progress(self, scope: trio.CancelScope) -> None:
        live = self.out.isatty()
        interval = 0.1 if live else 1.0
        with scope:
            while True:
                await trio.sleep(interval)
                if live:
                    self.out.write("\r" + self._progress_line().ljust(70))
                else:
                    self.out.write("progress: " + self._progress_line() + "\n")
                self.out.flush()
        if live:
            self.out.write("\r" + " " * 70 + "\r")
            self.out.flush()

    def _print_summary(self, traffic: dict[str, int]) -> None:
        tally = self.tally
        options = self.options
        write = self.out.write
        handshake_time = tally.handshakes_ended_at - tally.handshakes_started_at
        exchange_time = tally.exchanges_ended_at - tally.exchanges_started_at
        write(
            f"handshakes:   {tally.handshakes_ok}/{options.peers} in "
            f"{handshake_time:.2f} s = "
            f"{_rate(tally.handshakes_ok, tally.handshakes_started_at, tally.handshakes_ended_at)}"
            f" (p50 {_milliseconds(percentile(tally.handshake_times, 0.5))}, "
            f"p99 {_milliseconds(percentile(tally.handshake_times, 0.99))}; "
            f"{HANDSHAKES_AT_ONCE} at a time)\n"
        )
        if tally.handshakes_failed:
            reasons = ", ".join(
                f"{reason} x{count}"
                for reason, count in sorted(tally.failure_reasons.items())
            )
            write(f"              {tally.handshakes_failed} failed: {reasons}\n")
        write(
            f"round trips:  {tally.round_trips}/{tally.expected_round_trips} in "
            f"{exchange_time:.2f} s = "
            f"{_rate(tally.round_trips, tally.exchanges_started_at, tally.exchanges_ended_at)}"
            f" ({self.exchange_limit} peers at a time)\n"
        )
        write(
            f"latency:      p50 {_milliseconds(percentile(tally.round_trip_times, 0.5))}, "
            f"p99 {_milliseconds(percentile(tally.round_trip_times, 0.99))} per round trip\n"
        )
        if tally.late:
            write(
                f"              ({tally.late} echoes came after their wait ran "
                "out; counted as round trips, not as lost)\n"
            )
        where = "by the simulated network" if self.lossy else "on the way"
        write(
            f"datagrams:    {traffic['sent']} sent, {traffic['dropped']} dropped {where}\n"
        )
        write(f"retransmissions: {traffic['retransmissions']} handshake flights\n")
        if traffic["inbox_drops"] or traffic["junk"]:
            write(
                f"endpoint drops: {traffic['inbox_drops']} messages (inbox full), "
                f"{traffic['junk']} junk datagrams\n"
            )
        for reason, count in sorted(tally.broken_reasons.items())[:5]:
            write(f"broken:       {count} x {reason}\n")
        write(f"result:       {self._verdict()}\n")
        self.out.flush()

    def _verdict(self) -> str:
        tally = self.tally
        problems: list[str] = []
        if tally.altered:
            problems.append(f"{tally.altered} messages came back ALTERED")
        if tally.handshakes_failed:
            problems.append(f"{tally.handshakes_failed} handshakes FAILED")
        if tally.broken_peers:
            problems.append(f"{tally.broken_peers} connections broke")
        if tally.lost and not self.lossy:
            problems.append(f"{tally.lost} messages LOST")
        if problems:
            return "FAILED: " + "; ".join(problems)
        if tally.lost:
            expected = 1 - (1 - self.options.loss) ** 2
            return (
                f"OK: every echo that arrived was intact; {tally.lost} of "
                f"{tally.expected_round_trips} round trips "
                f"({tally.lost / max(1, tally.expected_round_trips):.1%}) were lost to "
                f"the simulated loss, as expected (about {expected:.0%}; DTLS does "
                "not retransmit application data)"
            )
        return "OK: every message came back intact"

    def _exit_code(self) -> int:
        return 1 if self._verdict().startswith("FAILED") else 0


async def run_demo(options: DemoOptions, out: IO[str] | None = None) -> int:
    """Run the demo inside Trio; returns the exit code (1 if a message that
    should have come back did not, or came back altered)."""
    return await _Demo(options, out if out is not None else sys.stdout).run()
