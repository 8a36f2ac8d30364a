"""Hardening: the endpoint under loss, duplication, reordering, hostile bytes,
floods, replays, socket faults and half-open abuse.

Everything runs on the :class:`~trio_dtlsmux.testing.FakeNetwork` with the
virtual clock (``autojump_clock``) unless its name says loopback; loopback
tests use 127.0.0.1 only and are bounded with ``trio.fail_after``. The big
variants are marked ``slow`` (``nox -s slow``). ``docs/security-testing.rst``
lists every test here with the figure it checks.

Tests print a ``FIGURES`` line (shown with ``pytest -s``) with the numbers
that the security-testing page quotes.
"""

from __future__ import annotations

import errno
import gc
import importlib.util
import os
import pathlib
import random
import struct
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cache
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsConnection, DtlsEndpoint, HandshakeError, SelfSigned
from trio_dtlsmux import _records as rec
from trio_dtlsmux._cookies import COOKIE_LENGTH
from trio_dtlsmux._reassembly import HelloReassembler
from trio_dtlsmux.testing import FakeNetwork, NetworkConditions, Packet

from .conftest import echo, fake_socket, udp_socket
from .test_records import client_hello_datagram

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)
SPOOFER = ("10.66.66.66", 6666)  # where forged datagrams really come from
HVR_SIZE = rec.hello_verify_request_size(COOKIE_LENGTH)  # 60 bytes

LOSSLESS = NetworkConditions()
DROP = NetworkConditions(loss=1.0)
DUPLICATE = NetworkConditions(duplicate=1.0)


def report(name: str, **figures: object) -> None:
    """One line of figures for docs/security-testing.rst (visible with -s)."""
    print(f"\nFIGURES {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- reading datagrams -------------------------------------------------------

_HANDSHAKE_NAMES = {
    1: "ClientHello",
    2: "ServerHello",
    3: "HelloVerifyRequest",
    4: "NewSessionTicket",
    11: "Certificate",
    12: "ServerKeyExchange",
    13: "CertificateRequest",
    14: "ServerHelloDone",
    15: "CertificateVerify",
    16: "ClientKeyExchange",
}


def signature(payload: bytes) -> tuple[str, ...]:
    """What a datagram carries, record by record (for logs and assertions)."""
    try:
        records = rec.parse_records_untrusted(payload)
    except rec.BadPacket:
        return ("junk",)
    names: list[str] = []
    for record in records:
        if record.content_type == rec.HANDSHAKE and record.epoch == 0:
            try:
                fragments = rec.parse_handshake_fragments_untrusted(record.payload)
            except rec.BadPacket:
                names.append("bad handshake")
                continue
            names.extend(
                _HANDSHAKE_NAMES.get(f.msg_type, f"hs{f.msg_type}") for f in fragments
            )
        elif record.content_type == rec.HANDSHAKE:
            names.append("Finished")  # the only encrypted handshake message
        elif record.content_type == rec.CHANGE_CIPHER_SPEC:
            names.append("ChangeCipherSpec")
        elif record.content_type == rec.APPLICATION_DATA:
            names.append("application data")
        elif record.content_type == rec.ALERT:
            names.append("alert")
        else:
            names.append(f"type {record.content_type}")
    return tuple(names)


def is_hello_verify_request(payload: bytes) -> bool:
    return signature(payload) == ("HelloVerifyRequest",)


def hvr_cookie(payload: bytes) -> bytes:
    [record] = rec.parse_records_untrusted(payload)
    [fragment] = rec.parse_handshake_fragments_untrusted(record.payload)
    return fragment.body[3 : 3 + fragment.body[2]]


def set_cookie(hello: bytes, cookie: bytes) -> bytes:
    """``hello`` (a one-record ClientHello datagram) carrying ``cookie`` instead.

    Only the cookie changes, so a cookie that the endpoint issued for this
    exact hello makes it valid again, and anything else is a forgery.
    """
    header = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE
    body = hello[header:]
    cookie_at = 2 + 32 + 1 + body[34]  # version, random, session id
    old = body[cookie_at]
    body = (
        body[:cookie_at] + bytes([len(cookie)]) + cookie + body[cookie_at + 1 + old :]
    )
    fragment = rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, len(body), 0, 0, body)
    [record] = rec.parse_records_untrusted(hello)
    # The message_seq of a second hello is 1; keep whatever the original had.
    fragment = fragment[:4] + record.payload[4:6] + fragment[6:]
    return rec.encode_record(rec.HANDSHAKE, record.version, 0, record.seq, fragment)


def with_random(hello: bytes, value: int) -> bytes:
    """A copy of a ClientHello datagram with another client random."""
    at = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE + 2
    return hello[:at] + value.to_bytes(32, "big") + hello[at + 32 :]


# -- the wire ------------------------------------------------------------------


class Wire:
    """A FakeNetwork route hook for tests that pick on single datagrams.

    * It numbers every datagram the endpoints send and keeps ``log`` (send
      time and packet).
    * ``faults[i]`` are the :class:`NetworkConditions` that the i-th datagram
      alone meets (drop, duplicate, delay). The network reads
      ``net.conditions`` just after the hook returns, so the hook swaps them
      in for that one datagram and back for the next.
    * ``block(packet)``, if set, drops the packets it returns true for.
    * :meth:`inject` sends a datagram that the receiver sees coming from any
      address we like: it leaves a socket of the wire's own and the hook
      rewrites its source (an off-path attacker, or a late copy of a real
      datagram). Injected datagrams are not numbered or logged.
    """

    def __init__(
        self,
        net: FakeNetwork,
        faults: dict[int, NetworkConditions] | None = None,
        base: NetworkConditions = LOSSLESS,
        *,
        keep_log: bool = True,
    ) -> None:
        self.net = net
        self.keep_log = keep_log
        self.faults = faults or {}
        self.base = base
        self.log: list[tuple[float, Packet]] = []
        self.block: Callable[[Packet], bool] | None = None
        self.captured: list[Packet] = []
        self.capture: Callable[[Packet], bool] | None = None
        self.injected = 0
        self._claim: Any = None
        self._spoofer: Any = None
        net.conditions = base
        net.route_hook = self

    def __call__(self, packet: Packet) -> Packet | None:
        if packet.source == SPOOFER:
            claimed, self._claim = self._claim, None
            assert claimed is not None, "only Wire.inject sends from SPOOFER"
            self.injected += 1
            self.net.conditions = self.base
            return Packet(claimed, packet.destination, packet.payload)
        if self.capture is not None and self.capture(packet):
            self.captured.append(packet)
            return None
        if self.keep_log:
            index = len(self.log)
            self.log.append((trio.current_time(), packet))
            self.net.conditions = self.faults.get(index, self.base)
        if self.block is not None and self.block(packet):
            return None
        return packet

    async def inject(
        self, payload: bytes, source: Any, destination: Any = SERVER
    ) -> None:
        if self._spoofer is None:
            self._spoofer = await fake_socket(self.net, *SPOOFER)
        self._claim = source
        await self._spoofer.sendto(payload, destination)

    def packets(self, source: Any = None, destination: Any = None) -> list[Packet]:
        return [
            p
            for _, p in self.log
            if (source is None or p.source == source)
            and (destination is None or p.destination == destination)
        ]


async def round_trip(
    conn: DtlsConnection, message: bytes, *, attempts: int = 30, wait: float = 2.0
) -> int:
    """Send until the echo comes back (data is not retransmitted); the tries."""
    for attempt in range(1, attempts + 1):
        await conn.send(message)
        with trio.move_on_after(wait):
            while (await conn.receive()) != message:
                pass  # a late echo of an earlier message
            return attempt
    raise AssertionError(f"no echo of {message!r} after {attempts} tries")


async def connect_and_echo(
    ep: DtlsEndpoint,
    address: tuple[str, int],
    client_ctx: SSL.Context,
    message: bytes,
    attempts: Counter[str],
    *,
    connects: int,
    wait: float = 2.0,
) -> str:
    """Connect (retrying failed handshakes) and get one echo; the outcome."""
    for _ in range(connects):
        attempts["connect"] += 1
        try:
            conn = await ep.connect(address, client_ctx, server_hostname=False)
            break
        except HandshakeError:
            attempts["handshake failed"] += 1
    else:
        return "gave up"
    tries = await round_trip(conn, message, wait=wait)
    attempts["echo"] += tries  # not `+= await`: tasks interleave
    return "ok"


# -- 1. every single datagram of a handshake: dropped, doubled, late, replayed ---

INITIAL_RTO = 1.0
LATE = 1.5 * INITIAL_RTO  # past the retransmission that answers it: the next flight


async def faulty_handshake(
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    *,
    mtu: int,
    faults: dict[int, NetworkConditions] | None = None,
    replay: int | None = None,
) -> dict[str, Any]:
    """One handshake and two echoes, with at most one datagram picked on."""
    net = FakeNetwork(seed=7)
    wire = Wire(net, faults)
    out: dict[str, Any] = {}
    options = {"mtu": mtu, "initial_retransmit_timeout": INITIAL_RTO}
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER), server_context=server_ctx, **options
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo)
        async with DtlsEndpoint(await fake_socket(net, *CLIENT), **options) as client:
            start = trio.current_time()
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            out["handshake_time"] = trio.current_time() - start
            out["first_echo_tries"] = await round_trip(conn, b"first")
            if replay is not None:
                _, packet = wire.log[replay]
                await wire.inject(packet.payload, packet.source, packet.destination)
            await trio.sleep(2 * LATE)  # every late copy has arrived by now
            out["second_echo_tries"] = await round_trip(conn, b"second")
            out["server"] = server.statistics()
            out["client"] = client.statistics()
            out["established"] = conn.established
        nursery.cancel_scope.cancel()
    out["net"] = net.statistics()
    out["log"] = wire.log
    return out


def handshake_part(log: list[tuple[float, Packet]]) -> list[tuple[float, Packet]]:
    """The datagrams before the first one that carries application data."""
    for i, (_, packet) in enumerate(log):
        if "application data" in signature(packet.payload):
            return log[:i]
    return log


@pytest.mark.parametrize("mtu", [1400, 300])
@pytest.mark.parametrize("fault", ["drop", "duplicate", "late", "replay"])
async def test_every_handshake_datagram_dropped_duplicated_late_or_replayed(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    fault: str,
    mtu: int,
) -> None:
    """Pick on each datagram of a handshake in turn, both directions.

    The lossless run numbers the datagrams (the ClientHello/HelloVerifyRequest
    exchange included). Then, for each index alone: ``drop`` loses it,
    ``duplicate`` delivers it twice, ``late`` delivers it 1.5 s late (after
    the retransmission that replaces it, so it arrives after the next flight;
    with mtu=300 a flight spans several datagrams and the others overtake
    it), ``replay`` sends a copy again after the handshake. Each time the
    handshake completes within two retransmission timeouts, both echoes work
    at the first try, and nothing is counted as a failure, a restart or junk.
    """
    clean = await faulty_handshake(server_ctx, client_ctx, mtu=mtu)
    handshake = handshake_part(clean["log"])
    kinds = [signature(p.payload) for _, p in handshake]
    assert kinds[:3] == [("ClientHello",), ("HelloVerifyRequest",), ("ClientHello",)]
    assert {p.source for _, p in handshake} == {SERVER, CLIENT}
    assert clean["handshake_time"] == 0 and clean["server"].handshakes_completed == 1
    if mtu == 300:
        assert len(handshake) > 6  # the certificate flight had to be split
    else:
        assert len(handshake) >= 6

    conditions = {
        "drop": DROP,
        "duplicate": DUPLICATE,
        "late": NetworkConditions(delay=(LATE, LATE)),
    }
    problems = []
    for index in range(len(handshake)):
        if fault == "replay":
            run = await faulty_handshake(server_ctx, client_ctx, mtu=mtu, replay=index)
        else:
            run = await faulty_handshake(
                server_ctx, client_ctx, mtu=mtu, faults={index: conditions[fault]}
            )
        sent_at, packet = run["log"][index]
        server, client, net = run["server"], run["client"], run["net"]
        checks = {
            "picked the same datagram": signature(packet.payload) == kinds[index],
            "handshake within two timeouts": run["handshake_time"] < 3 * INITIAL_RTO,
            "echo at the first try": run["first_echo_tries"]
            == run["second_echo_tries"]
            == 1,
            "still established": run["established"],
            "one handshake, nothing failed": (
                server.handshakes_completed == client.handshakes_completed == 1
                and not server.handshakes_failed
                and not client.handshakes_failed
            ),
            "no restart, no junk, no cookie failure": (
                server.peers_restarted
                == server.junk_dropped
                == server.cookie_failures
                == 0
                and client.junk_dropped == 0
            ),
            "nothing left in flight": net.in_flight == 0,
        }
        if fault == "drop":
            checks["dropped once"] = net.dropped_loss == 1
            checks["recovered by retransmission"] = run["handshake_time"] >= INITIAL_RTO
        elif fault == "duplicate":
            checks["duplicated once"] = net.duplicated == 1
        elif fault == "late":
            later = [t for t, _ in run["log"] if sent_at < t < sent_at + LATE]
            checks["overtaken by later datagrams"] = len(later) > 0
        failed = [name for name, ok in checks.items() if not ok]
        if failed:
            problems.append((index, kinds[index], failed))
    assert problems == []
    report(
        f"single-datagram faults ({fault}, mtu={mtu})",
        handshake_datagrams=len(handshake),
        runs=len(handshake),
        failed=len(problems),
    )


async def test_handshake_survives_openssl_retransmitting_on_its_own(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """OpenSSL keeps a wall-clock retransmission timer of its own (1 s). If
    more than that passes between a client's first ClientHello and its
    reading of the HelloVerifyRequest (a loaded process, a slow path),
    OpenSSL writes the first hello again and then the second into the same
    output. On a lossless network the handshake must still complete.

    The one real-clock sleep here is the stimulus, not a wait: OpenSSL reads
    the wall clock and there is no other way to age its timer.
    """
    net = FakeNetwork()
    wire = Wire(net)
    stalled: list[float] = []

    def stall_once(packet: Packet) -> bool:
        if not stalled and is_hello_verify_request(packet.payload):
            stalled.append(trio.current_time())
            time.sleep(1.1)  # ages OpenSSL's wall-clock timer (sync hook)
        return False

    wire.block = stall_once
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER), server_context=server_ctx
        ) as server,
        DtlsEndpoint(await fake_socket(net, *CLIENT)) as client,
    ):
        start = trio.current_time()
        with trio.move_on_after(10):
            await client.connect(SERVER, client_ctx, server_hostname=False)
        elapsed = trio.current_time() - start
        assert stalled  # the stimulus happened
        kinds = [signature(p.payload) for p in wire.packets(CLIENT, SERVER)]
        # OpenSSL wrote the first hello again before the second; the stale
        # copy is neither sent nor kept as part of the new flight.
        assert ("ClientHello", "ClientHello") not in kinds
        assert kinds[:2] == [("ClientHello",), ("ClientHello",)]
        assert server.statistics().handshakes_completed == 1
        assert elapsed < 5


# -- 2. a hostile network ------------------------------------------------------

HOSTILE = NetworkConditions(loss=0.3, duplicate=0.1, reorder=0.1, delay=(0.0, 0.05))


async def hostile_handshakes(
    count: int, server_ctx: SSL.Context, client_ctx: SSL.Context, seed: int
) -> dict[str, Any]:
    """``count`` clients each connect (retrying after a failed handshake) and
    get one echo (retrying sends), over 30 % loss, 10 % duplication and 10 %
    reordering. A client still running at the deadline is *wedged*."""
    net = FakeNetwork(seed=seed, conditions=HOSTILE, recv_buffer=1024)
    outcome: dict[int, str] = {}
    attempts: Counter[str] = Counter()
    idle_timeout, handshake_timeout = 60.0, 30.0
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER),
            server_context=server_ctx,
            idle_timeout=idle_timeout,
            handshake_timeout=handshake_timeout,
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo)
        deadline = trio.current_time() + 900

        async def client(i: int) -> None:
            outcome[i] = "wedged"
            with trio.move_on_at(deadline):
                sock = await fake_socket(net, f"10.1.{i // 250}.{i % 250 + 1}", 5000)
                async with DtlsEndpoint(
                    sock, handshake_timeout=handshake_timeout
                ) as ep:
                    outcome[i] = await connect_and_echo(
                        ep, SERVER, client_ctx, b"%d" % i, attempts, connects=10
                    )

        start = trio.current_time()
        async with trio.open_nursery() as clients:
            for i in range(count):
                clients.start_soon(client, i)
        elapsed = trio.current_time() - start
        during = server.statistics()
        # Whatever a lost close_notify or a stale retransmission left on the
        # server ends within the idle or handshake timeout: nothing is wedged
        # there either.
        await trio.sleep(max(idle_timeout, handshake_timeout) + 1)
        after = server.statistics()
        leftover = len(server.connections())
        nursery.cancel_scope.cancel()
    return {
        "outcome": Counter(outcome.values()),
        "attempts": attempts,
        "elapsed": elapsed,
        "during": during,
        "after": after,
        "leftover": leftover,
        "net": net.statistics(),
    }


def check_hostile(result: dict[str, Any], count: int) -> None:
    assert result["outcome"] == {"ok": count}, result["outcome"]  # 0 wedged, 0 gave up
    net = result["net"]
    assert net.dropped_loss > 0.25 * net.sent
    assert net.duplicated > 0 and net.reordered > 0
    after = result["after"]
    assert after.handshakes_completed >= count
    assert after.peers == after.handshakes_in_progress == result["leftover"] == 0
    report(
        f"hostile network, {count} handshakes",
        ok=result["outcome"]["ok"],
        wedged=result["outcome"]["wedged"],
        connect_attempts=result["attempts"]["connect"],
        client_handshake_failures=result["attempts"]["handshake failed"],
        echo_sends=result["attempts"]["echo"],
        virtual_seconds=round(result["elapsed"], 1),
        server_completed=after.handshakes_completed,
        server_failed=dict(after.handshakes_failed),
        sent=net.sent,
        lost=net.dropped_loss,
        duplicated=net.duplicated,
        reordered=net.reordered,
    )


async def test_100_handshakes_on_a_hostile_network(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    result = await hostile_handshakes(100, server_ctx, client_ctx, seed=11)
    check_hostile(result, 100)


@pytest.mark.slow
async def test_1000_handshakes_on_a_hostile_network(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    result = await hostile_handshakes(1000, server_ctx, client_ctx, seed=12)
    check_hostile(result, 1000)


# -- 2b. the same on real loopback, through a lossy relay ---------------------


class LossyRelay:
    """A UDP relay on 127.0.0.1 that loses and reorders datagrams.

    Clients send to :attr:`address`. Each client gets a socket of its own
    towards the server, so the server sees one source address per client, as
    behind a NAT. Every datagram, either way, is lost with probability
    ``loss``; of the rest, a fraction ``reorder`` is held back 5 to 50 ms (the
    relay's simulated latency), so that datagrams sent after it overtake it.
    """

    def __init__(
        self, server: Any, *, loss: float = 0.2, reorder: float = 0.1, seed: int = 0
    ) -> None:
        self.server = server
        self.loss = loss
        self.reorder = reorder
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.address: Any = None
        self._locks: dict[Any, trio.Lock] = {}

    async def run(
        self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        front = await udp_socket()
        backs: dict[Any, Any] = {}
        try:
            async with trio.open_nursery() as nursery:
                self.address = front.getsockname()
                task_status.started(self.address)
                while True:
                    try:
                        data, source = await front.recvfrom(65536)
                    except OSError as exc:
                        if exc.errno == errno.EBADF:
                            return
                        await trio.lowlevel.checkpoint()
                        continue
                    back = backs.get(source)
                    if back is None:
                        back = backs[source] = await udp_socket()
                        nursery.start_soon(self._pump_back, back, front, source)
                    self._forward(nursery, back, data, self.server)
        finally:
            front.close()
            for sock in backs.values():
                sock.close()

    async def _pump_back(self, back: Any, front: Any, client: Any) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    data, _ = await back.recvfrom(65536)
                except OSError as exc:
                    if exc.errno == errno.EBADF:
                        return
                    await trio.lowlevel.checkpoint()
                    continue
                self._forward(nursery, front, data, client)

    def _forward(self, nursery: trio.Nursery, sock: Any, data: bytes, to: Any) -> None:
        self.counts["datagrams"] += 1
        if self.rng.random() < self.loss:
            self.counts["lost"] += 1
            return
        delay = 0.0
        if self.rng.random() < self.reorder:
            self.counts["held back"] += 1
            delay = self.rng.uniform(0.005, 0.05)
        nursery.start_soon(self._send, sock, data, to, delay)

    async def _send(self, sock: Any, data: bytes, to: Any, delay: float) -> None:
        if delay:
            await trio.sleep(delay)  # the simulated latency, not a wait for an event
        lock = self._locks.setdefault(sock, trio.Lock())
        async with lock:  # a trio socket takes one writer at a time
            try:
                await sock.sendto(data, to)
            except OSError:
                self.counts["send errors"] += 1


# Real clock: short retransmission timers so that 20 % loss costs little time.
FAST_TIMERS = {
    "initial_retransmit_timeout": 0.2,
    "max_retransmit_timeout": 1.0,
    "handshake_timeout": 10.0,
}


async def relay_handshakes(
    count: int, server_ctx: SSL.Context, client_ctx: SSL.Context, budget: float
) -> dict[str, Any]:
    server_sock = await udp_socket()
    outcome: dict[int, str] = {}
    attempts: Counter[str] = Counter()
    wall = trio.current_time()
    with trio.fail_after(budget + 10):
        async with (
            DtlsEndpoint(
                server_sock, server_context=server_ctx, **FAST_TIMERS
            ) as server,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, echo)
            relay = LossyRelay(server_sock.getsockname(), seed=count)
            address = await nursery.start(relay.run)
            deadline = trio.current_time() + budget

            async def client(i: int) -> None:
                outcome[i] = "wedged"
                with trio.move_on_at(deadline):
                    async with DtlsEndpoint(await udp_socket(), **FAST_TIMERS) as ep:
                        outcome[i] = await connect_and_echo(
                            ep,
                            address,
                            client_ctx,
                            b"%d" % i,
                            attempts,
                            connects=5,
                            wait=0.5,
                        )

            async with trio.open_nursery() as clients:
                for i in range(count):
                    clients.start_soon(client, i)
            stats = server.statistics()
            nursery.cancel_scope.cancel()
    return {
        "outcome": Counter(outcome.values()),
        "attempts": attempts,
        "relay": relay.counts,
        "server": stats,
        "seconds": trio.current_time() - wall,
    }


def check_relay(result: dict[str, Any], count: int) -> None:
    assert result["outcome"] == {"ok": count}, result["outcome"]
    relay = result["relay"]
    assert relay["lost"] > 0.1 * relay["datagrams"]
    assert relay["held back"] > 0
    assert result["server"].handshakes_completed >= count
    report(
        f"loopback relay, {count} handshakes",
        ok=result["outcome"]["ok"],
        wedged=result["outcome"]["wedged"],
        connect_attempts=result["attempts"]["connect"],
        echo_sends=result["attempts"]["echo"],
        relayed=relay["datagrams"],
        lost=relay["lost"],
        held_back=relay["held back"],
        wall_seconds=round(result["seconds"], 1),
    )


async def test_100_handshakes_through_a_lossy_loopback_relay(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    result = await relay_handshakes(100, server_ctx, client_ctx, budget=60)
    check_relay(result, 100)


# -- 3. hostile datagrams at a live endpoint (Hypothesis) ----------------------


def run_virtual(main: Callable[[], Any]) -> Any:
    """``trio.run`` on a virtual clock that jumps whenever every task waits."""
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@cache
def reference_trace() -> tuple[bytes, ...]:
    """Every datagram of a real session: handshake, data both ways, close.

    Recorded once, from endpoints (and so keys and cookie secrets) that the
    fuzzed endpoint does not share: replayed or mutated, none of these can
    be valid there.
    """
    identity = trio_dtlsmux.self_signed()
    server_ctx = trio_dtlsmux.server_context(identity)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)

    async def main() -> tuple[bytes, ...]:
        net = FakeNetwork(trace=True)
        async with (
            DtlsEndpoint(
                await fake_socket(net, *SERVER), server_context=server_ctx
            ) as server,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, echo)
            async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
                conn = await client.connect(SERVER, client_ctx, server_hostname=False)
                for message in (b"x", b"hello" * 20):
                    await round_trip(conn, message)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        return tuple(p.payload for p in net.trace)

    trace = run_virtual(main)
    assert len(trace) >= 10
    return trace


def _trace() -> st.SearchStrategy[bytes]:
    return st.deferred(lambda: st.sampled_from(reference_trace()))


def _mutate(
    data: bytes, changes: list[tuple[int, int]], cut: int, extra: bytes
) -> bytes:
    out = bytearray(data)
    for position, value in changes:
        if out:
            out[position % len(out)] = value
    if 0 < cut < len(out):
        del out[cut:]
    return bytes(out) + extra


def _raw_record(
    content_type: int,
    version: int,
    epoch: int,
    seq: int,
    payload: bytes,
    length_error: int,
) -> bytes:
    length = min(max(len(payload) + length_error, 0), 0xFFFF)  # may lie
    return (
        struct.pack(
            "!BHHHIH", content_type, version, epoch, seq >> 32, seq & 0xFFFFFFFF, length
        )
        + payload
    )


def _handshake_record(
    msg_type: int, length: int, message_seq: int, offset: int, body: bytes, epoch: int
) -> bytes:
    fragment = rec.encode_handshake_fragment(
        msg_type, length, message_seq, offset, body
    )
    return rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, epoch, 1, fragment)


def _reepoch(data: bytes, epoch: int) -> bytes:
    if len(data) < rec.RECORD_HEADER_SIZE:
        return data
    return data[:3] + epoch.to_bytes(2, "big") + data[5:]


_content_types = st.sampled_from([20, 21, 22, 23]) | st.integers(0, 255)
_epochs = st.sampled_from([0, 1, 2, 0xFFFF]) | st.integers(0, 0xFFFF)

hostile_datagram = st.one_of(
    # Random bytes, including empty and near-empty datagrams.
    st.binary(max_size=1500),
    # Real datagrams with bytes changed, cut short or extended.
    st.builds(
        _mutate,
        _trace(),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
        st.integers(0, 1500),
        st.binary(max_size=20),
    ),
    # Real datagrams replayed as they were, or under another epoch.
    _trace(),
    st.builds(_reepoch, _trace(), _epochs),
    # Truncated record headers.
    st.builds(lambda d, n: d[:n], _trace(), st.integers(0, rec.RECORD_HEADER_SIZE - 1)),
    # Records whose length field lies, of any type, version and epoch, and
    # several of them in one datagram.
    st.lists(
        st.builds(
            _raw_record,
            _content_types,
            st.sampled_from([rec.DTLS1_2_VERSION, rec.DTLS1_0_VERSION])
            | st.integers(0, 0xFFFF),
            _epochs,
            st.integers(0, (1 << 48) - 1),
            st.binary(max_size=300),
            st.sampled_from([0, 0, 0, -1, 1, -13, 500]) | st.integers(-40, 40),
        ),
        min_size=1,
        max_size=4,
    ).map(b"".join),
    # Handshake fragments with huge offsets and lengths that do not add up.
    st.builds(
        _handshake_record,
        st.sampled_from([1, 2, 3, 11, 12, 14, 16, 20]) | st.integers(0, 255),
        st.sampled_from([0, 1, 0xFFFFFF]) | st.integers(0, 0xFFFFFF),
        st.integers(0, 0xFFFF),
        st.sampled_from([0, 0xFFFFFF, 0xFFFF00]) | st.integers(0, 0xFFFFFF),
        st.binary(max_size=64),
        st.sampled_from([0, 1]),
    ),
    # Well-formed ClientHellos with forged cookies of any length.
    st.builds(
        lambda c: set_cookie(client_hello_datagram(), c), st.binary(max_size=255)
    ),
)

STRANGERS = [(f"10.66.0.{i}", 7000 + i) for i in range(1, 5)]
WELL_BEHAVED = ("10.0.0.3", 5000)  # connects while the hostile datagrams arrive


def stranger_model(
    data: bytes, table: HelloReassembler, source: tuple[str, int]
) -> Counter[str]:
    """What a datagram from an address with no association costs, and where
    it is counted (the demux's ``_receive_stranger``). Exactly one of
    ``junk_dropped``, ``cookies_sent`` and ``hello_fragments_in`` grows per
    datagram; ``cookie_failures`` is a second tag on hellos that carried a
    (necessarily forged) cookie. Pieces of a ClientHello go through the
    reassembly table (``table``, a model of the server's: that unit has
    tests of its own) before anything else."""
    counts: Counter[str] = Counter()
    try:
        if data[:1] != b"\x16":
            raise rec.BadPacket("not a handshake record")
        whole = table.feed_untrusted(source, data, 0.0)
        if whole is None:
            counts["hello_fragments_in"] += 1
            return counts
        hello = rec.parse_client_hello_untrusted(whole)
        data = whole
    except rec.BadPacket:
        counts["junk_dropped"] += 1
        return counts
    if hello.cookie:
        counts["cookie_failures"] += 1
    counts["junk_dropped" if len(data) < HVR_SIZE else "cookies_sent"] += 1
    return counts


def spoofed_peer_model(
    data: bytes, client_random: bytes, table: HelloReassembler
) -> Counter[str]:
    """The same for a datagram forged with an established client's address,
    at the server (``_handle_datagram`` and ``Association.receive_datagram``).

    A ClientHello with another random is treated like a stranger's hello.
    Anything else reaches the association: ``datagrams_in`` of the connection
    grows by one, and ``records_rejected`` by one if the datagram does not
    split into records, else by one per record: none can be used. Data and
    alerts do not decrypt; handshake and ChangeCipherSpec records find no
    final flight to resend (A's data acknowledged it); other types are
    unknown.
    """
    if (
        data[:1] == b"\x16"
        and data[3:5] == b"\x00\x00"
        and len(data) > rec.RECORD_HEADER_SIZE
        and data[rec.RECORD_HEADER_SIZE] == rec.HS_CLIENT_HELLO
    ):
        try:
            hello = rec.parse_client_hello_untrusted(data)
        except rec.BadPacket:
            pass
        else:
            if hello.random != client_random:
                return stranger_model(data, table, CLIENT)
    counts: Counter[str] = Counter(connection_datagrams_in=1)
    try:
        records = rec.split_datagram_untrusted(data)
    except rec.BadPacket:
        counts["records_rejected"] += 1
        return counts
    counts["records_rejected"] += len(records)
    return counts


ENDPOINT_COUNTERS = (
    "junk_dropped",
    "cookies_sent",
    "cookie_failures",
    "hellos_dropped_limits",
)


async def hostile_scenario(
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    hostile: list[tuple[bytes, int]],
) -> dict[str, Any]:
    """A server with one established peer (A) and one that connects meanwhile
    (B) receives ``hostile``: (datagram, sender) pairs, sender 0 meaning
    "forged with A's address", 1-4 strangers. Returns what is checked."""
    net = FakeNetwork(seed=3)
    wire = Wire(net)
    out: dict[str, Any] = {}
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER), server_context=server_ctx
        ) as server,
        trio.open_nursery() as nursery,
    ):
        accepted: dict[Any, DtlsConnection] = {}

        async def handler(conn: DtlsConnection) -> None:
            accepted[conn.peer_address] = conn
            await echo(conn)

        await nursery.start(server.serve, handler)
        async with (
            DtlsEndpoint(await fake_socket(net, *CLIENT)) as a_ep,
            DtlsEndpoint(await fake_socket(net, *WELL_BEHAVED)) as b_ep,
        ):
            a = await a_ep.connect(SERVER, client_ctx, server_hostname=False)
            assert await round_trip(a, b"a0") == 1
            await trio.sleep(1)
            a_at_server = accepted[CLIENT]
            # The random of A's verified hello (the one with a cookie), as the
            # server keeps it: read off the wire.
            [client_random] = {
                hello.random
                for hello in (
                    rec.parse_client_hello_untrusted(p.payload)
                    for _, p in wire.log
                    if p.source == CLIENT and rec.may_be_client_hello(p.payload)
                )
                if hello.cookie
            }
            before = server.statistics()
            a_before = a_at_server.statistics()
            log_start = len(wire.log)

            b_result: dict[str, Any] = {}

            async def connect_b() -> None:
                start = trio.current_time()
                b_result["conn"] = await b_ep.connect(
                    SERVER, client_ctx, server_hostname=False
                )
                b_result["time"] = trio.current_time() - start

            async with trio.open_nursery() as during:
                during.start_soon(connect_b)
                for data, sender in hostile:
                    source = CLIENT if sender == 0 else STRANGERS[sender - 1]
                    await wire.inject(data, source)
            await trio.testing.wait_all_tasks_blocked()

            after = server.statistics()
            a_after = a_at_server.statistics()
            legit = wire.log[log_start:]
            out["legit_to_server"] = sum(1 for _, p in legit if p.destination == SERVER)
            out["hvr_to_b"] = sum(
                1
                for _, p in legit
                if p.destination == WELL_BEHAVED and is_hello_verify_request(p.payload)
            )
            out["delta"] = {
                name: getattr(after, name) - getattr(before, name)
                for name in (
                    *ENDPOINT_COUNTERS,
                    "datagrams_in",
                    "peers_restarted",
                    "hello_fragments_in",
                )
            }
            out["a_delta"] = {
                name: getattr(a_after, name) - getattr(a_before, name)
                for name in ("datagrams_in", "records_rejected", "messages_in")
            }
            out["a_last_datagram_unchanged"] = (
                a_after.last_datagram_at == a_before.last_datagram_at
            )
            out["client_random"] = client_random
            # The well-behaved peers noticed nothing.
            out["a_echo_tries"] = await round_trip(a, b"a1")
            out["b_echo_tries"] = await round_trip(b_result["conn"], b"b0")
            out["b_handshake_time"] = b_result["time"]
            out["b_retransmissions"] = (
                b_result["conn"].statistics().handshake_retransmissions
            )
            out["final"] = server.statistics()
            out["a_same_connection"] = accepted[CLIENT] is a_at_server and a.established
        nursery.cancel_scope.cancel()
    return out


def check_hostile_accounting(
    result: dict[str, Any], hostile: list[tuple[bytes, int]]
) -> Counter[str]:
    expected: Counter[str] = Counter()
    table = HelloReassembler()
    for data, sender in hostile:
        if sender == 0:
            expected += spoofed_peer_model(data, result["client_random"], table)
        else:
            expected += stranger_model(data, table, STRANGERS[sender - 1])
    delta, a_delta = result["delta"], result["a_delta"]
    # Every datagram was read, hostile and legitimate alike.
    assert delta["datagrams_in"] == len(hostile) + result["legit_to_server"]
    # Each hostile one is counted where the model says; B's first hello is
    # the only legitimate datagram these counters see (one HVR per copy).
    assert delta["junk_dropped"] == expected["junk_dropped"]
    assert delta["cookies_sent"] == expected["cookies_sent"] + result["hvr_to_b"]
    assert delta["cookie_failures"] == expected["cookie_failures"]
    assert delta["hello_fragments_in"] == expected["hello_fragments_in"]
    assert delta["hellos_dropped_limits"] == delta["peers_restarted"] == 0
    assert a_delta["datagrams_in"] == expected["connection_datagrams_in"]
    assert a_delta["records_rejected"] == expected["records_rejected"]
    # The disjoint sum: every hostile datagram in exactly one place.
    assert delta["junk_dropped"] + delta["cookies_sent"] - result["hvr_to_b"] + delta[
        "hello_fragments_in"
    ] + a_delta["datagrams_in"] == len(hostile)
    # Nothing forged was delivered or refreshed A's idle timer.
    assert a_delta["messages_in"] == 0
    assert result["a_last_datagram_unchanged"]
    # The well-behaved peers are unaffected.
    assert result["a_echo_tries"] == result["b_echo_tries"] == 1
    assert result["a_same_connection"]
    assert result["b_handshake_time"] < INITIAL_RTO and result["b_retransmissions"] == 0
    final = result["final"]
    assert final.peers == 2 and final.handshakes_completed == 2
    assert not final.handshakes_failed
    return expected


hostile_batches = st.lists(
    st.tuples(hostile_datagram, st.integers(0, len(STRANGERS))), min_size=1, max_size=30
)


def fuzz_hostile(
    identity: SelfSigned, hostile: list[tuple[bytes, int]]
) -> Counter[str]:
    server_ctx = _contexts(identity)[0]
    client_ctx = _contexts(identity)[1]
    result = run_virtual(lambda: hostile_scenario(server_ctx, client_ctx, hostile))
    return check_hostile_accounting(result, hostile)


_context_cache: dict[int, tuple[SSL.Context, SSL.Context]] = {}


def _contexts(identity: SelfSigned) -> tuple[SSL.Context, SSL.Context]:
    key = id(identity)
    if key not in _context_cache:
        _context_cache[key] = (
            trio_dtlsmux.server_context(identity),
            trio_dtlsmux.client_context(fingerprint=identity.fingerprint),
        )
    return _context_cache[key]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile=hostile_batches)
def test_hostile_datagrams_are_counted_and_harmless(
    identity: SelfSigned, hostile: list[tuple[bytes, int]]
) -> None:
    """Hypothesis-made datagrams at a live endpoint (see the strategies above).

    Accounting: every hostile datagram is read (``datagrams_in``) and ends in
    exactly one place. From a stranger: ``junk_dropped`` (unparseable, or a
    hello too short to answer) or ``cookies_sent`` (a parseable hello gets a
    60-byte HelloVerifyRequest; a forged cookie also adds ``cookie_failures``,
    a tag, not a third place). Forged with an established peer's address:
    that connection's ``datagrams_in``, with ``records_rejected`` for the
    records it could not use, or the stranger counters for a hello with
    another random. So ``junk_dropped + cookies_sent + connection datagrams_in``
    grows by exactly the number of hostile datagrams (B's own hello, which
    also gets a cookie, is subtracted).
    """
    fuzz_hostile(identity, hostile)


@pytest.mark.slow
@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(hostile=hostile_batches)
def test_hostile_datagrams_are_counted_and_harmless_long(
    identity: SelfSigned, hostile: list[tuple[bytes, int]]
) -> None:
    fuzz_hostile(identity, hostile)


def test_hostile_datagram_accounting_example(identity: SelfSigned) -> None:
    """One fixed batch of each kind, so the accounting is visible in numbers."""
    trace = reference_trace()
    app_data = next(d for d in trace if signature(d) == ("application data",))
    hostile = [
        (b"", 1),
        (b"\x17garbage", 1),
        (trace[0][:12], 2),  # truncated header
        (client_hello_datagram(), 3),  # a fine hello: answered with a cookie
        (set_cookie(client_hello_datagram(), os.urandom(32)), 3),  # forged cookie
        (app_data, 0),  # replayed from another session, as peer A
        (_reepoch(app_data, 7), 0),  # wrong epoch
        (_raw_record(23, rec.DTLS1_2_VERSION, 1, 9, b"x" * 40, 9), 0),  # lying length
        (_handshake_record(11, 100, 2, 0xFFFFFF, b"y" * 10, 0), 4),  # huge offset
        (
            rec.encode_record(rec.ALERT, rec.DTLS1_2_VERSION, 1, 5, bytes(26)),
            0,
        ),  # forged alert
        (_handshake_record(16, 33, 1, 0, bytes(33), 0), 0),  # stale handshake record
    ]
    expected = fuzz_hostile(identity, hostile)
    assert expected == {
        "junk_dropped": 4,
        "cookies_sent": 2,
        "cookie_failures": 1,
        "connection_datagrams_in": 5,
        "records_rejected": 5,
    }
    report("hostile datagram accounting", datagrams=len(hostile), **expected)


async def established_pair(
    server: DtlsEndpoint,
    client: DtlsEndpoint,
    client_ctx: SSL.Context,
) -> tuple[DtlsConnection, DtlsConnection]:
    """Connect ``client`` to ``server`` and exchange one message each way."""
    conn = await client.connect(SERVER, client_ctx, server_hostname=False)
    theirs = await server.accept()
    await conn.send(b"ping")
    assert await theirs.receive() == b"ping"
    await theirs.send(b"pong")
    assert await conn.receive() == b"pong"
    return conn, theirs


async def test_forged_alert_from_a_peer_address_is_counted(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """A forged alert (bad MAC) is dropped by OpenSSL and counted as rejected.

    Found by this suite: records_rejected used to count undecryptable
    application data only, so forged alerts were counted nowhere.
    """
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn, theirs = await established_pair(server, client, client_ctx)
            before = theirs.statistics()
            # An encrypted-looking alert (epoch 1, a nonce and a tag's worth of
            # bytes) that nobody with the keys wrote.
            forged = rec.encode_record(
                rec.ALERT, rec.DTLS1_2_VERSION, 1, 1000, bytes(26)
            )
            await wire.inject(forged, CLIENT)
            await trio.sleep(1)
            after = theirs.statistics()
            assert after.datagrams_in == before.datagrams_in + 1  # it arrived
            assert theirs.established  # and did no harm
            await conn.send(b"still fine")
            assert await theirs.receive() == b"still fine"
            assert after.records_rejected == before.records_rejected + 1


async def test_stale_handshake_record_from_a_peer_address_is_counted(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """A handshake record after the handshake, with no flight left to
    resend, is rejected and counted.

    Found by this suite: such records used to be dropped uncounted.
    """
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            # The client's "ping" proves the server's final flight arrived, so
            # the server no longer keeps it: no handshake record can be used.
            conn, theirs = await established_pair(server, client, client_ctx)
            before = theirs.statistics()
            forged = rec.encode_record(
                rec.HANDSHAKE,
                rec.DTLS1_2_VERSION,
                0,
                77,
                rec.encode_handshake_fragment(
                    16, 33, 1, 0, bytes(33)
                ),  # ClientKeyExchange
            )
            await wire.inject(forged, CLIENT)
            await trio.sleep(1)
            after = theirs.statistics()
            assert after.datagrams_in == before.datagrams_in + 1  # it arrived
            assert after.handshake_retransmissions == before.handshake_retransmissions
            assert theirs.established  # and did no harm
            await conn.send(b"still fine")
            assert await theirs.receive() == b"still fine"
            assert after.records_rejected == before.records_rejected + 1


# -- 4. floods -------------------------------------------------------------------


@pytest.fixture
def ssl_objects(
    monkeypatch: pytest.MonkeyPatch, server_ctx: SSL.Context
) -> Counter[str]:
    """Counts the ``SSL.Connection`` objects made for ``server_ctx``."""
    from trio_dtlsmux import _association

    created: Counter[str] = Counter()
    original = _association.SSL.Connection

    class CountingConnection(original):  # type: ignore[misc, valid-type]
        def __init__(self, context: SSL.Context, socket: Any = None) -> None:
            super().__init__(context, socket)
            created["server" if context is server_ctx else "other"] += 1

    monkeypatch.setattr(_association.SSL, "Connection", CountingConnection)
    return created


def live_ssl_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, SSL.Connection))


def flood_source(i: int) -> tuple[str, int]:
    return (f"172.16.{i // 250}.{i % 250 + 1}", 40000 + i % 1000)


async def flood(
    wire: Wire,
    datagrams: Iterator[tuple[bytes, Any]],
    batch: int = 128,
) -> int:
    """Send every datagram from its (spoofed) source, letting the endpoint
    drain its receive queue after each batch so none is lost to a full
    buffer. Returns how many were sent."""
    sent = 0
    for data, source in datagrams:
        await wire.inject(data, source)
        sent += 1
        if sent % batch == 0:
            await trio.testing.wait_all_tasks_blocked()
    await trio.testing.wait_all_tasks_blocked()
    return sent


async def hello_flood(
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
    hellos: int,
    sources: int,
    traced: int,
) -> None:
    """``hellos`` ClientHellos without a cookie from ``sources`` addresses.

    Memory: ``sys.getallocatedblocks()`` (Python's live memory blocks) over
    the whole flood, and tracemalloc over its last ``traced`` hellos (tracing
    makes every allocation several times slower).
    """
    net = FakeNetwork(seed=5)
    wire = Wire(net, keep_log=False)
    template = client_hello_datagram()

    def hellos_from(first: int, count: int) -> Iterator[tuple[bytes, Any]]:
        for k in range(first, first + count):
            yield with_random(template, k), flood_source(k % sources)

    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        warm_up = min(1000, hellos // 10)
        untraced = hellos - warm_up - traced
        await flood(wire, hellos_from(0, warm_up))
        gc.collect()
        blocks_before = sys.getallocatedblocks()
        await flood(wire, hellos_from(warm_up, untraced))
        started_tracing = not tracemalloc.is_tracing()
        if started_tracing:
            tracemalloc.start()
        try:
            gc.collect()
            tracemalloc.reset_peak()
            base, _ = tracemalloc.get_traced_memory()
            await flood(wire, hellos_from(warm_up + untraced, traced))
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            if started_tracing:
                tracemalloc.stop()
        gc.collect()
        blocks_grown = sys.getallocatedblocks() - blocks_before
        after = server.statistics()
        assert (
            after.datagrams_in == hellos and net.statistics().dropped_buffer_full == 0
        )
        # Every hello got exactly one 60-byte HelloVerifyRequest, and nothing else.
        assert after.cookies_sent == hellos
        assert (
            after.junk_dropped
            == after.cookie_failures
            == after.hellos_dropped_limits
            == 0
        )
        assert after.datagrams_out == hellos and after.bytes_out == HVR_SIZE * hellos
        assert after.bytes_out <= after.bytes_in  # amplification <= 1
        # The HVRs went to the forged addresses, where nobody listens.
        assert net.statistics().dropped_no_listener == hellos
        # No per-peer state at all.
        assert after.peers == after.handshakes_in_progress == len(server.connections()) == 0
        assert ssl_objects["server"] == 0
        assert live_ssl_objects() == 0
        # Memory is flat. One object kept per source would be `sources`
        # blocks, per hello `hellos`; the flood leaves a few hundred at most
        # (interpreter and trio caches). What tracing sees left behind, and
        # its high-water mark, are a few KiB: nothing is queued or kept per
        # hello (one SSL object is tens of KiB).
        grown, high = current - base, peak - base
        assert blocks_grown < min(sources, 1000) // 2, blocks_grown
        assert grown < 32 * 1024, grown
        assert high < 64 * 1024, high
        report(
            f"ClientHello flood, {hellos} hellos from {sources} addresses",
            bytes_in=after.bytes_in,
            bytes_out=after.bytes_out,
            hello_bytes=len(template),
            amplification=round(after.bytes_out / after.bytes_in, 3),
            peers=after.peers,
            ssl_objects=ssl_objects["server"],
            python_blocks_grown=blocks_grown,
            traced_hellos=traced,
            traced_growth_bytes=grown,
            traced_peak_bytes=high,
        )


async def test_10000_hellos_from_1000_addresses_create_nothing(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    await hello_flood(
        server_ctx, ssl_objects, hellos=10_000, sources=1_000, traced=2_500
    )


@pytest.mark.slow
async def test_100000_hellos_from_10000_addresses_create_nothing(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    await hello_flood(
        server_ctx, ssl_objects, hellos=100_000, sources=10_000, traced=99_000
    )


def smallest_client_hello() -> bytes:
    """The shortest datagram the endpoint parses as a ClientHello: no
    session id, no cookie, one cipher suite, one compression method, no
    extensions (67 bytes)."""
    body = (
        rec.DTLS1_2_VERSION.to_bytes(2, "big")
        + bytes(32)  # random
        + b"\x00"  # session id
        + b"\x00"  # cookie
        + b"\x00\x02\xc0\x2b"  # one cipher suite
        + b"\x01\x00"  # one compression method (null)
    )
    fragment = rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, len(body), 0, 0, body)
    return rec.encode_record(rec.HANDSHAKE, rec.DTLS1_0_VERSION, 0, 0, fragment)


async def test_smallest_hello_gets_a_smaller_reply(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context
) -> None:
    """Worst case amplification: a 67-byte hello, a 60-byte reply."""
    hello = smallest_client_hello()
    assert rec.parse_client_hello_untrusted(hello).cookie == b""
    for cut in range(1, len(hello)):  # nothing shorter parses
        with pytest.raises(rec.BadPacket):
            rec.parse_client_hello_untrusted(hello[:cut])
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        await wire.inject(hello, flood_source(1))
        await trio.testing.wait_all_tasks_blocked()
        [(_, reply)] = wire.log
        assert is_hello_verify_request(reply.payload)
        assert len(reply.payload) == HVR_SIZE == 60 < len(hello) == 67
        stats = server.statistics()
        assert stats.bytes_out == 60 and stats.bytes_in == 67
    report(
        "smallest hello",
        hello_bytes=len(hello),
        reply_bytes=HVR_SIZE,
        amplification=round(HVR_SIZE / len(hello), 3),
    )


async def forged_cookie_flood(
    server_ctx: SSL.Context, ssl_objects: Counter[str], hellos: int, sources: int
) -> None:
    net = FakeNetwork(seed=6)
    wire = Wire(net, keep_log=False)
    template = client_hello_datagram()
    rng = random.Random(6)

    def forged() -> Iterator[tuple[bytes, Any]]:
        for k in range(hellos):
            # Mostly the right length (the HMAC is what fails), some not.
            length = COOKIE_LENGTH if k % 4 else rng.randint(1, 255)
            cookie = rng.randbytes(length)
            yield (
                set_cookie(with_random(template, k), cookie),
                flood_source(k % sources),
            )

    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        await flood(wire, forged())
        stats = server.statistics()
    assert stats.datagrams_in == hellos
    assert stats.cookie_failures == hellos
    assert stats.cookies_sent == hellos  # each one only gets a fresh cookie
    assert stats.bytes_out == HVR_SIZE * hellos <= stats.bytes_in
    assert (
        stats.peers == stats.handshakes_completed == 0 and not stats.handshakes_failed
    )
    assert ssl_objects["server"] == 0
    report(
        f"forged-cookie flood, {hellos} hellos",
        cookie_failures=stats.cookie_failures,
        peers=stats.peers,
        ssl_objects=ssl_objects["server"],
        amplification=round(stats.bytes_out / stats.bytes_in, 3),
    )


async def test_forged_cookies_are_all_rejected(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    await forged_cookie_flood(server_ctx, ssl_objects, hellos=2_000, sources=500)


@pytest.mark.slow
async def test_forged_cookies_are_all_rejected_big(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    await forged_cookie_flood(server_ctx, ssl_objects, hellos=50_000, sources=10_000)


async def test_expired_cookies_are_all_rejected(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    """Valid cookies, captured and replayed after 2 x cookie_lifetime."""
    addresses = 50
    lifetime = 30.0
    net = FakeNetwork(seed=8)
    wire = Wire(net, keep_log=False)
    # The attacker reads the HelloVerifyRequests (it owns these addresses).
    wire.capture = lambda p: p.source == SERVER and is_hello_verify_request(p.payload)
    template = client_hello_datagram()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER),
        server_context=server_ctx,
        cookie_lifetime=lifetime,
        handshake_timeout=10,
    ) as server:
        second_hellos = []
        for i in range(addresses + 1):
            hello = with_random(template, i)
            await wire.inject(hello, flood_source(i))
            await trio.testing.wait_all_tasks_blocked()
            reply = wire.captured[-1]
            assert reply.destination == flood_source(i)
            second_hellos.append(set_cookie(hello, hvr_cookie(reply.payload)))
        # The control: the same kind of hello, sent at once, is accepted.
        await wire.inject(second_hellos.pop(), flood_source(addresses))
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().handshakes_in_progress == 1
        assert ssl_objects["server"] == 1
        await trio.sleep(2 * lifetime + 1)
        before = server.statistics()
        assert before.peers == 0  # the control's handshake timed out meanwhile
        await flood(wire, ((h, flood_source(i)) for i, h in enumerate(second_hellos)))
        after = server.statistics()
    assert after.cookie_failures - before.cookie_failures == addresses
    assert after.cookies_sent - before.cookies_sent == addresses
    assert after.peers == after.handshakes_in_progress == 0
    assert after.handshakes_completed == 0
    assert ssl_objects["server"] == 1  # the control's, and no other
    report(
        "expired cookies",
        replayed=addresses,
        rejected=after.cookie_failures - before.cookie_failures,
        ssl_objects=ssl_objects["server"],
    )


def hellos_sent(wire: Wire, source: Any = CLIENT) -> list[Packet]:
    return [
        p
        for p in wire.packets(source, SERVER)
        if signature(p.payload) == ("ClientHello",)
    ]


async def test_hello_replayed_after_its_connection_ended_starts_nothing(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    """A late copy or a replay of a second ClientHello (plaintext, with a
    cookie still valid), after its connection ended, gets no answer.

    Found by this suite: it used to start a new server handshake that sent
    its 720-byte flight 5 times (3,600 bytes for 196) until
    handshake_timeout, then counted a failed handshake nobody had started.
    """
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn, _ = await established_pair(server, client, client_ctx)
            await conn.aclose()  # close_notify: the server forgets the peer
            await trio.sleep(1)
            before = server.statistics()
            assert before.peers == 0 and ssl_objects["server"] == 1
            second = hellos_sent(wire)[1]  # the one with the cookie
            assert rec.parse_client_hello_untrusted(second.payload).cookie
            sent_before = len(wire.packets(SERVER, CLIENT))
            await wire.inject(second.payload, CLIENT)  # a late copy, or a replay
            await trio.sleep(40)  # past handshake_timeout
            replies = wire.packets(SERVER, CLIENT)[sent_before:]
            after = server.statistics()
            assert replies == []
            assert ssl_objects["server"] == 1
            assert after.peers == 0 and not after.handshakes_failed
            assert after.cookie_failures == before.cookie_failures + 1  # counted
            # A fresh connection from the same address is welcome.
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            await conn.send(b"new")
            assert ssl_objects["server"] == 2


async def test_old_hello_replayed_cannot_replace_a_live_connection(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """A peer reconnects; a replay of its previous second ClientHello (cookie
    still valid, other random) must not pass for a restart and tear the new
    connection down."""
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            first, _ = await established_pair(server, client, client_ctx)
            old_second = hellos_sent(wire)[1]
            await first.aclose()
            await trio.sleep(1)
            conn, theirs = await established_pair(server, client, client_ctx)
            await wire.inject(old_second.payload, CLIENT)
            await trio.sleep(1)
            stats = server.statistics()
            assert stats.peers_restarted == 0 and stats.peers == 1
            assert theirs.established and conn.established
            await conn.send(b"still the same connection")
            assert await theirs.receive() == b"still the same connection"


# -- 5. replay -------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["client to server", "server to client"])
async def test_replayed_application_data_is_rejected(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    direction: str,
) -> None:
    """A captured data datagram sent again from its sender's address, at once
    (inside the replay window) and after 100 newer records (outside it)."""
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn, theirs = await established_pair(server, client, client_ctx)
            if direction == "client to server":
                sender, receiver, source, destination = conn, theirs, CLIENT, SERVER
            else:
                sender, receiver, source, destination = theirs, conn, SERVER, CLIENT
            await sender.send(b"pay me once")
            assert await receiver.receive() == b"pay me once"
            [captured] = [
                p
                for p in wire.packets(source, destination)
                if signature(p.payload) == ("application data",)
            ][-1:]
            before = receiver.statistics()
            await trio.sleep(5)
            await wire.inject(captured.payload, source, destination)
            for i in range(100):
                await sender.send(b"%d" % i)
                assert await receiver.receive() == b"%d" % i
            last_genuine = receiver.statistics().last_datagram_at
            await trio.sleep(5)
            await wire.inject(captured.payload, source, destination)
            await trio.sleep(1)
            after = receiver.statistics()
            assert after.records_rejected - before.records_rejected == 2
            assert after.messages_in - before.messages_in == 100  # the new ones only
            with pytest.raises(trio.WouldBlock):
                receiver.receive_nowait()
            assert after.last_datagram_at == last_genuine  # no idle-timer refresh
            assert receiver.established and sender.established
            await sender.send(b"after the replays")
            assert await receiver.receive() == b"after the replays"
    report(
        f"replay ({direction})",
        replays=2,
        rejected=after.records_rejected - before.records_rejected,
        delivered_twice=0,
    )


# -- 6. socket faults ------------------------------------------------------------


class FaultySocket:
    """A socket (real or fake) that fails on command.

    ``refuse_receives``: that many coming ``recvfrom`` calls raise
    ConnectionRefusedError (an ICMP port unreachable, as Windows reports it
    on unconnected sockets). ``send_errors``: sendto number i (from 0) raises
    ``OSError(send_errors[i])``.
    """

    def __init__(self, sock: Any, send_errors: dict[int, int] | None = None) -> None:
        self._sock = sock
        self.family = sock.family
        self.type = sock.type
        self.proto = getattr(sock, "proto", 0)
        self.refuse_receives = 0
        self.send_errors = send_errors or {}
        self.sends = 0
        self.raised: Counter[str] = Counter()

    async def recvfrom(self, size: int) -> tuple[bytes, Any]:
        if self.refuse_receives:
            self.refuse_receives -= 1
            self.raised["ECONNREFUSED"] += 1
            await trio.lowlevel.checkpoint()
            raise ConnectionRefusedError(
                errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED)
            )
        return await self._sock.recvfrom(size)

    async def sendto(self, data: bytes, address: Any) -> int:
        index = self.sends
        self.sends += 1
        code = self.send_errors.get(index)
        if code is not None:
            self.raised[errno.errorcode[code]] += 1
            await trio.lowlevel.checkpoint()
            raise OSError(code, os.strerror(code))
        return await self._sock.sendto(data, address)

    def getsockname(self) -> Any:
        return self._sock.getsockname()

    def close(self) -> None:
        self._sock.close()


async def test_icmp_unreachable_on_the_fake_network(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """ICMP errors, as Windows reports them on unconnected sockets: a client
    connecting to a closed address, and a server answering a peer that
    vanished. Each is counted in socket_errors; everyone else is served."""
    net = FakeNetwork(icmp_unreachable=True)
    closed = ("10.0.0.99", 4433)
    vanishing = ("10.0.0.5", 5000)
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER), server_context=server_ctx
        ) as server,
        DtlsEndpoint(await fake_socket(net, *CLIENT), handshake_timeout=5) as client,
    ):
        conn, theirs = await established_pair(server, client, client_ctx)
        failed = trio.Event()

        async def doomed() -> None:
            with pytest.raises(trio_dtlsmux.HandshakeTimeout):
                await client.connect(closed, client_ctx, server_hostname=False)
            failed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(doomed)
            echoes = 0
            while not failed.is_set():
                await conn.send(b"meanwhile")
                assert await theirs.receive() == b"meanwhile"
                await theirs.send(b"back")
                assert await conn.receive() == b"back"
                echoes += 1
                await trio.sleep(0.5)
        stats = client.statistics()
        assert echoes >= 9  # 5 s of traffic while the doomed handshake retried
        assert stats.socket_errors == net.statistics().dropped_no_listener == 3
        assert stats.handshakes_failed == {"timeout": 1}
        # The server side: a peer vanishes (its socket closes, no close_notify).
        vanish_sock = await fake_socket(net, *vanishing)
        async with DtlsEndpoint(vanish_sock) as gone:
            await gone.connect(SERVER, client_ctx, server_hostname=False)
            lost = await server.accept()
            vanish_sock.close()
            await lost.send(b"anyone there?")
            await trio.testing.wait_all_tasks_blocked()
        server_errors = server.statistics().socket_errors
        assert server_errors == 1
        await conn.send(b"still served")
        assert await theirs.receive() == b"still served"
    report(
        "ICMP unreachable (fake network)",
        client_socket_errors=stats.socket_errors,
        server_socket_errors=server_errors,
    )


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_closed_port_on_loopback(
    server_ctx: SSL.Context, client_ctx: SSL.Context, host: str
) -> None:
    """A real closed port: the handshake fails, and the endpoint serves on.

    On Linux the endpoint reads its socket's error queue (IP_RECVERR), so
    the ICMP port unreachable ends the handshake at once as "refused"
    (before: it waited out the whole handshake_timeout, and socket_errors
    stayed 0). Elsewhere the handshake times out.
    """
    linux = sys.platform.startswith("linux")
    closed_sock = await udp_socket(host)
    closed = closed_sock.getsockname()[:2]
    closed_sock.close()
    server_sock = await udp_socket(host)
    timers = {
        "initial_retransmit_timeout": 0.2,
        # On Linux only the ICMP error can end it within fail_after.
        "handshake_timeout": 60.0 if linux else 1.0,
    }
    with trio.fail_after(10):
        async with (
            DtlsEndpoint(server_sock, server_context=server_ctx) as server,
            DtlsEndpoint(await udp_socket(host), **timers) as client,
        ):
            conn = await client.connect(
                server_sock.getsockname(), client_ctx, server_hostname=False
            )
            theirs = await server.accept()
            failed = trio.Event()
            errors: list[trio_dtlsmux.HandshakeError] = []

            async def doomed() -> None:
                with pytest.raises(trio_dtlsmux.HandshakeError) as info:
                    await client.connect(closed, client_ctx, server_hostname=False)
                errors.append(info.value)
                failed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(doomed)
                for i in range(20):  # served while the doomed handshake waits
                    await conn.send(b"%d" % i)
                    assert await theirs.receive() == b"%d" % i
            [error] = errors
            stats = client.statistics()
            if linux:
                assert error.kind is trio_dtlsmux.HandshakeFailure.REFUSED
                assert "connection refused" in str(error)
                assert stats.handshakes_failed == {"refused": 1}
                assert stats.socket_errors >= 1
            else:  # pragma: no cover - not Linux
                assert error.kind is trio_dtlsmux.HandshakeFailure.TIMEOUT
            await conn.send(b"after")
            assert await theirs.receive() == b"after"


async def test_connection_refused_from_recvfrom_once(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    """Real sockets; the server's recvfrom raises ConnectionRefusedError once."""
    server_sock = FaultySocket(await udp_socket())
    with trio.fail_after(10):
        async with (
            DtlsEndpoint(server_sock, server_context=server_ctx) as server,
            DtlsEndpoint(await udp_socket()) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, echo)
            conn = await client.connect(
                server_sock.getsockname(), client_ctx, server_hostname=False
            )
            server_sock.refuse_receives = 1  # the call after the next datagram
            assert await round_trip(conn, b"one") == 1
            assert await round_trip(conn, b"two") == 1
            assert server_sock.raised == {"ECONNREFUSED": 1}
            assert server.statistics().socket_errors == 1
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "code",
    [errno.ENOBUFS, errno.EAGAIN, errno.EMSGSIZE, errno.EHOSTUNREACH, errno.EPERM],
    ids=lambda code: errno.errorcode[code],
)
async def test_failing_sends_are_counted_and_recovered(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    code: int,
) -> None:
    """The server's sends number 0 (HelloVerifyRequest), 2 (its flight),
    4 (its final flight) and 6 (the first echo) fail: retransmission and the
    client's resend recover every one, and each failure is counted."""
    net = FakeNetwork()
    failing = {0, 2, 4, 6}
    server_sock = FaultySocket(
        await fake_socket(net, *SERVER), {i: code for i in failing}
    )
    async with (
        DtlsEndpoint(server_sock, server_context=server_ctx) as server,
        DtlsEndpoint(await fake_socket(net, *CLIENT)) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo)
        start = trio.current_time()
        conn = await client.connect(SERVER, client_ctx, server_hostname=False)
        handshake_time = trio.current_time() - start
        assert await round_trip(conn, b"echo me") == 2  # the first echo was lost
        stats = server.statistics()
        assert server_sock.raised == {errno.errorcode[code]: len(failing)}
        assert stats.socket_errors == len(failing)
        assert stats.datagrams_out == server_sock.sends - len(failing)
        assert stats.handshakes_completed == 1 and not stats.handshakes_failed
        assert handshake_time < 10
        nursery.cancel_scope.cancel()


def pad_hello(hello: bytes, total: int) -> bytes:
    """``hello`` grown to ``total`` bytes with a padding extension (RFC 7685)."""
    header = rec.RECORD_HEADER_SIZE + rec.HANDSHAKE_HEADER_SIZE
    body = hello[header:]
    at = 2 + 32
    at += 1 + body[at]  # session id
    at += 1 + body[at]  # cookie
    at += 2 + int.from_bytes(body[at : at + 2], "big")  # cipher suites
    at += 1 + body[at]  # compression
    extensions = body[at + 2 :]
    room = total - header - at - 2 - len(extensions) - 4
    extensions += b"\x00\x15" + room.to_bytes(2, "big") + bytes(room)
    body = body[:at] + len(extensions).to_bytes(2, "big") + extensions
    fragment = rec.encode_handshake_fragment(rec.HS_CLIENT_HELLO, len(body), 0, 0, body)
    return rec.encode_record(rec.HANDSHAKE, rec.DTLS1_2_VERSION, 0, 0, fragment)


async def test_oversized_datagrams_on_loopback(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    """The largest UDP datagrams (65,507 bytes) at a serving endpoint: junk is
    counted, a giant hello gets the usual 60-byte cookie, the peer is served."""
    biggest = 65507
    server_sock = await udp_socket()
    address = server_sock.getsockname()
    giant_hello = pad_hello(client_hello_datagram(), biggest)
    assert len(giant_hello) == biggest
    assert rec.parse_client_hello_untrusted(giant_hello).cookie == b""
    with trio.fail_after(10):
        async with (
            DtlsEndpoint(server_sock, server_context=server_ctx) as server,
            DtlsEndpoint(await udp_socket()) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, echo)
            conn = await client.connect(address, client_ctx, server_hostname=False)
            stranger = await udp_socket()
            await stranger.sendto(b"\x17" * biggest, address)
            await stranger.sendto(giant_hello, address)
            reply, _ = await stranger.recvfrom(65536)
            assert is_hello_verify_request(reply) and len(reply) == HVR_SIZE
            assert await round_trip(conn, b"unbothered") == 1
            stats = server.statistics()
            assert (
                stats.junk_dropped == 1 and stats.cookies_sent == 2
            )  # the client's, the giant's
            assert stats.socket_errors == 0
            stranger.close()
            nursery.cancel_scope.cancel()


async def test_oversized_datagram_from_a_peer_address(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """Larger than the mtu, and than any record may be: rejected, counted."""
    net = FakeNetwork()
    wire = Wire(net)
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            conn, theirs = await established_pair(server, client, client_ctx)
            before = theirs.statistics()
            huge = _raw_record(
                23, rec.DTLS1_2_VERSION, 1, 99, os.urandom(65507 - 13), 0
            )
            await wire.inject(huge, CLIENT)
            await wire.inject(huge[:3000], CLIENT)  # > mtu, length runs past the end
            await trio.testing.wait_all_tasks_blocked()
            after = theirs.statistics()
            assert after.records_rejected - before.records_rejected == 2
            assert after.messages_in == before.messages_in
            await conn.send(b"fine")
            assert await theirs.receive() == b"fine"
            assert server.statistics().socket_errors == 0


# -- 8. half-open handshakes -----------------------------------------------------


async def half_open_abuse(
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    ssl_objects: Counter[str],
    *,
    abusers: int,
    max_handshakes: int,
) -> dict[str, Any]:
    """``abusers`` real clients complete the cookie exchange, then nothing
    they send after it leaves their host but ClientHellos (they retransmit
    their second hello while the server refuses it for lack of room). A good
    client connects half a second in."""
    net = FakeNetwork(seed=9, conditions=NetworkConditions(delay=(0.0, 0.01)))
    wire = Wire(net)
    hosts = {f"10.7.{i // 250}.{i % 250 + 1}" for i in range(abusers)}
    server_timeout = 5.0
    out: dict[str, Any] = {"peak": 0}
    async with (
        DtlsEndpoint(
            await fake_socket(net, *SERVER),
            server_context=server_ctx,
            handshake_timeout=server_timeout,
            max_handshakes=max_handshakes,
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, echo)

        def sample(packet: Packet) -> bool:
            # Runs for every datagram sent: the number of handshakes in
            # progress can only grow when the server answers a hello.
            out["peak"] = max(out["peak"], server.statistics().handshakes_in_progress)
            return packet.source[0] in hosts and signature(packet.payload) != (
                "ClientHello",
            )

        wire.block = sample
        abuser_errors: Counter[str] = Counter()

        async def abuser(host: str) -> None:
            async with DtlsEndpoint(
                await fake_socket(net, host, 5000), handshake_timeout=12
            ) as ep:
                try:
                    await ep.connect(SERVER, client_ctx, server_hostname=False)
                except HandshakeError as exc:
                    abuser_errors[type(exc).__name__] += 1

        async def good() -> None:
            await trio.sleep(0.5)
            async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as ep:
                start = trio.current_time()
                conn = await ep.connect(SERVER, client_ctx, server_hostname=False)
                out["good_connect_time"] = trio.current_time() - start
                out["in_progress_when_good_connected"] = (
                    server.statistics().handshakes_in_progress
                )
                out["good_echo_tries"] = await round_trip(conn, b"good")

        async with trio.open_nursery() as crowd:
            for host in sorted(hosts):
                crowd.start_soon(abuser, host)
            crowd.start_soon(good)
        # Long enough for every admitted handshake to time out, and for the
        # hellos still waiting to be judged given up and shed.
        await trio.sleep(4 * server_timeout + 1)
        out["stats"] = server.statistics()
        out["abuser_errors"] = abuser_errors
        out["ssl_objects"] = ssl_objects["server"]
        nursery.cancel_scope.cancel()
    return out


async def test_half_open_handshakes_below_the_limit(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    """50 half-open handshakes with room for 100: the good client connects
    at once, beside them; each abuser is ended by handshake_timeout."""
    out = await half_open_abuse(
        server_ctx, client_ctx, ssl_objects, abusers=50, max_handshakes=100
    )
    stats = out["stats"]
    assert out["in_progress_when_good_connected"] == 50  # all of them were open
    assert out["good_connect_time"] < INITIAL_RTO  # no retransmission needed
    assert out["good_echo_tries"] == 1
    assert out["abuser_errors"] == {"HandshakeTimeout": 50}
    assert stats.handshakes_failed == {"timeout": 50}
    assert stats.handshakes_completed == 1
    assert stats.hellos_dropped_limits == 0
    assert 50 <= out["peak"] <= 51
    assert stats.handshakes_in_progress == 0 and stats.peers <= 1
    report(
        "half-open abuse below the limit",
        abusers=50,
        max_handshakes=100,
        peak=out["peak"],
        timed_out=stats.handshakes_failed["timeout"],
        good_connect_seconds=round(out["good_connect_time"], 3),
    )


async def test_half_open_handshakes_above_the_limit(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
    ssl_objects: Counter[str],
) -> None:
    """100 abusers, room for 10: never more than 10 at once, each admitted
    one ends at handshake_timeout and is counted; the rest wait for a slot,
    and are shed and counted once their clients give up; the good client,
    drawn at random among the waiting, connects within its own
    handshake_timeout."""
    out = await half_open_abuse(
        server_ctx, client_ctx, ssl_objects, abusers=100, max_handshakes=10
    )
    stats = out["stats"]
    admitted = out["ssl_objects"] - 1  # every SSL object but the good client's
    assert out["peak"] <= 10
    assert stats.hellos_dropped_limits > 0
    # Every abuser's verified hello was either given a slot or shed.
    assert admitted + stats.hellos_dropped_limits == 100
    assert stats.handshakes_failed == {"timeout": admitted}
    assert 10 <= admitted < 100
    assert out["abuser_errors"] == {"HandshakeTimeout": 100}
    assert stats.handshakes_completed == 1 and out["good_echo_tries"] == 1
    assert out["good_connect_time"] < 30  # the default handshake_timeout
    assert stats.handshakes_in_progress == stats.hellos_waiting == 0
    report(
        "half-open abuse above the limit",
        abusers=100,
        max_handshakes=10,
        peak=out["peak"],
        admitted=admitted,
        dropped_by_limits=stats.hellos_dropped_limits,
        good_connect_seconds=round(out["good_connect_time"], 2),
    )


# -- 3b. the atheris harness, run without atheris ---------------------------------


def _load_harness() -> Any:
    path = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_records.py"
    spec = importlib.util.spec_from_file_location("fuzz_records", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HARNESS = _load_harness()


def test_fuzz_harness_accepts_a_real_session(tmp_path: pathlib.Path) -> None:
    for datagram in reference_trace():
        HARNESS.TestOneInput(datagram)
    written = HARNESS.write_seeds(str(tmp_path))
    assert written == len(list(tmp_path.iterdir())) >= 10
    for seed in tmp_path.iterdir():
        HARNESS.TestOneInput(seed.read_bytes())


def test_fuzz_harness_catches_a_broken_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness's checks can fail: a splitter that loses a record."""
    datagram = next(d for d in reference_trace() if len(signature(d)) > 1)
    HARNESS.check(datagram)
    real = rec.split_datagram_untrusted
    monkeypatch.setattr(rec, "split_datagram_untrusted", lambda data: real(data)[:1])
    with pytest.raises(AssertionError):
        HARNESS.check(datagram)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile_datagram)
def test_fuzz_harness_contract_holds(data: bytes) -> None:
    HARNESS.check(data)
