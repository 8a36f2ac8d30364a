"""Load-generator primitives. All of them run in the orchestrator's process.

Every phase is bounded in time: when its time is up, whatever was measured so
far is returned, with counters (timeouts, failures) that say how complete it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator

import trio
from OpenSSL import SSL

from benchmarks import certs
from benchmarks.engine import MTU
from benchmarks.targets import JsonDict, Target, udp_socket

Address = tuple[str, int]

# --------------------------------------------------------------- client peers


@dataclasses.dataclass
class PeerSet:
    """Client peers held open by :func:`open_peers`."""

    channels: list[trio.abc.Channel[bytes]]
    failures: list[str]
    connect_seconds: float


@contextlib.asynccontextmanager
async def open_peers(
    target: Target,
    address: Address,
    client_info: JsonDict,
    count: int,
    *,
    concurrency: int = 20,
    connect_within: float = 20.0,
) -> AsyncIterator[PeerSet]:
    """Connect ``count`` peers with the target's own client, keep them open.

    Each peer lives in its own task, because a client's context manager may
    hold a nursery and must be entered and left by the same task. Peers that
    have not connected within ``connect_within`` seconds are given up on; the
    others are used.
    """
    peers = PeerSet(channels=[], failures=[], connect_seconds=0.0)
    limiter = trio.Semaphore(concurrency)
    settled = trio.Event()
    release = trio.Event()
    pending = count
    deadline = trio.current_time() + connect_within

    async def hold() -> None:
        counted = False

        def settle(failure: str | None = None) -> None:
            nonlocal pending, counted
            if failure is not None:
                peers.failures.append(failure)
            if not counted:
                counted = True
                pending -= 1
                if pending == 0:
                    settled.set()

        await limiter.acquire()
        holding_slot = True
        try:
            with trio.CancelScope(deadline=deadline) as scope:
                async with target.connect(address, client_info) as channel:
                    limiter.release()
                    holding_slot = False
                    scope.deadline = math.inf
                    peers.channels.append(channel)
                    settle()
                    await release.wait()
            if scope.cancelled_caught:
                settle("connect timed out")
        except Exception as exc:
            settle(f"{type(exc).__name__}: {exc}")
        finally:
            if holding_slot:
                limiter.release()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(hold)
        with trio.move_on_at(deadline + 1.0):
            await settled.wait()
        peers.connect_seconds = time.perf_counter() - start
        try:
            yield peers
        finally:
            release.set()
            nursery.cancel_scope.deadline = trio.current_time() + 5.0


# ----------------------------------------------------------------------- echo


@dataclasses.dataclass
class EchoResult:
    """Round trips per second in consecutive sampling windows of one run."""

    rates: list[float]
    round_trips: int = 0
    sent: int = 0
    timeouts: int = 0
    warmup_seconds: float = 0.0
    sample_seconds: float = 0.0


async def echo_run(
    channels: list[trio.abc.Channel[bytes]],
    size: int,
    window: int,
    *,
    samples: int,
    sample_seconds: float,
    max_warmup: float = 5.0,
    reply_timeout: float | None = None,
) -> EchoResult:
    """Every channel keeps ``window`` messages of ``size`` bytes in flight.

    The run warms up until every peer has had a reply, which means the first
    windows have all been sent and from then on every reply is followed by one
    new message (steady state), then takes ``samples`` consecutive rate
    samples of ``sample_seconds`` each. A reply that does not come within
    ``reply_timeout`` (by default scaled with the number of messages in
    flight, whose queueing it must outlast) counts the window as lost and a
    fresh one is sent. Afterwards the outstanding replies are drained so that
    they cannot leak into the next run.
    """
    if reply_timeout is None:
        reply_timeout = 0.5 + 0.001 * len(channels) * window
    payload = b"\xa5" * size
    result = EchoResult(rates=[])
    warm = trio.Event()
    stopping = False
    waiting_for_first_reply = len(channels)

    async def drive(channel: trio.abc.Channel[bytes]) -> None:
        nonlocal waiting_for_first_reply
        outstanding = 0
        first = True
        while not stopping:
            while outstanding < window:
                await channel.send(payload)
                outstanding += 1
                result.sent += 1
            with trio.move_on_after(reply_timeout) as scope:
                reply = await channel.receive()
            if scope.cancelled_caught:
                result.timeouts += 1
                outstanding = 0
                continue
            outstanding = max(outstanding - 1, 0)
            if len(reply) == size:
                result.round_trips += 1
                if first:
                    first = False
                    waiting_for_first_reply -= 1
                    if waiting_for_first_reply == 0:
                        warm.set()
        while outstanding > 0:  # drain
            with trio.move_on_after(reply_timeout) as scope:
                await channel.receive()
            if scope.cancelled_caught:
                break
            outstanding -= 1

    bound = (
        max_warmup + samples * max(sample_seconds, max_warmup / 2) + reply_timeout + 2.0
    )
    with trio.move_on_after(bound):
        async with trio.open_nursery() as nursery:
            for channel in channels:
                nursery.start_soon(drive, channel)
            start = time.perf_counter()
            with trio.move_on_after(max_warmup):
                await warm.wait()
            result.warmup_seconds = time.perf_counter() - start
            # With thousands of messages in flight the traffic moves in waves
            # about as long as the warm-up; a sample must span a good part of
            # one, or it catches a crest or a trough.
            result.sample_seconds = max(sample_seconds, result.warmup_seconds / 2)
            for _ in range(samples):
                before, start = result.round_trips, time.perf_counter()
                await trio.sleep(result.sample_seconds)
                elapsed = time.perf_counter() - start
                result.rates.append((result.round_trips - before) / elapsed)
            stopping = True
    return result


# ----------------------------------------------------------------- handshakes


@dataclasses.dataclass
class HandshakeResult:
    """Handshakes per second in consecutive sampling windows of one run."""

    rates: list[float]
    completed: int = 0
    failed: int = 0
    warmup_seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)


async def handshake_run(
    target: Target,
    address: Address,
    client_info: JsonDict,
    concurrency: int,
    *,
    samples: int,
    sample_seconds: float,
    max_warmup: float = 5.0,
    attempt_timeout: float = 5.0,
) -> HandshakeResult:
    """``concurrency`` workers, each connecting fresh peers one after another.

    Every peer gets its own socket and client, and is closed right after its
    handshake. The run warms up until every worker has finished one handshake
    (with 50 workers the first round alone takes a while), then takes
    ``samples`` consecutive rate samples; the attempts still running at the
    end are cancelled.
    """
    result = HandshakeResult(rates=[])
    warm = trio.Event()
    waiting_for_first = concurrency

    async def worker() -> None:
        nonlocal waiting_for_first
        first = True
        while True:
            with trio.move_on_after(attempt_timeout) as scope:
                try:
                    async with target.connect(address, client_info):
                        result.completed += 1
                except Exception as exc:
                    result.failed += 1
                    if len(result.errors) < 5:
                        result.errors.append(f"{type(exc).__name__}: {exc}")
            if scope.cancelled_caught:
                result.failed += 1
            if first:
                first = False
                waiting_for_first -= 1
                if waiting_for_first == 0:
                    warm.set()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
        start = time.perf_counter()
        with trio.move_on_after(max_warmup):
            await warm.wait()
        result.warmup_seconds = time.perf_counter() - start
        for _ in range(samples):
            before, start = result.completed, time.perf_counter()
            await trio.sleep(sample_seconds)
            result.rates.append(
                (result.completed - before) / (time.perf_counter() - start)
            )
        nursery.cancel_scope.cancel()
    return result


# ------------------------------------------------ idle peers over memory BIOs


@dataclasses.dataclass
class IdlePeers:
    """Peers established by :func:`idle_peers`, one socket each, kept silent."""

    sockets: list[trio.socket.SocketType]
    # time.monotonic() when each established peer last sent anything
    last_sent_at: list[float]
    failures: int
    seconds: float


def _handshake_step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


async def _flush(conn: SSL.Connection, sock: trio.socket.SocketType) -> bool:
    sent = False
    while True:
        try:
            data = conn.bio_read(65536)
        except SSL.WantReadError:
            return sent
        await sock.send(data)
        sent = True


async def bio_handshake(sock: trio.socket.SocketType, ctx: SSL.Context) -> float:
    """A minimal DTLS 1.2 client handshake on a connected socket.

    OpenSSL itself answers the HelloVerifyRequest and runs the retransmission
    timer; the connection is thrown away afterwards, so the peer stays
    established on the server but never sends another byte.

    Returns:
        ``time.monotonic()`` when the client last sent a datagram: the
        server cannot have heard from this peer any later.
    """
    conn = SSL.Connection(ctx, None)
    conn.set_connect_state()
    conn.set_ciphertext_mtu(MTU)
    last_sent = time.monotonic()
    while True:
        done = _handshake_step(conn)
        if await _flush(conn, sock):
            last_sent = time.monotonic()
        if done:
            return last_sent
        wait = conn.DTLSv1_get_timeout()
        with trio.move_on_after(1.0 if wait is None else wait):
            conn.bio_write(await sock.recv(65536))
            continue
        conn.DTLSv1_handle_timeout()


@contextlib.asynccontextmanager
async def idle_peers(
    address: Address,
    count: int,
    *,
    concurrency: int = 32,
    start_within: float = 60.0,
    handshake_timeout: float = 10.0,
) -> AsyncIterator[IdlePeers]:
    """Establish ``count`` DTLS peers with a lightweight client, keep them idle.

    The same client is used for every target, so the servers see the same
    traffic. Holding thousands of peers with each library's own client would
    cost the load generator more than the server. No new handshake starts
    after ``start_within`` seconds, but the ones under way may finish (so that no
    half-open peer is left behind on the server); the peers established by
    then are the result. Sockets stay open until the context exits.
    """
    ctx = certs.client_context()
    peers = IdlePeers(sockets=[], last_sent_at=[], failures=0, seconds=0.0)
    limiter = trio.Semaphore(concurrency)
    stop_starting_at = trio.current_time() + start_within

    async def one() -> None:
        async with limiter:
            if trio.current_time() >= stop_starting_at:
                return
            sock = await udp_socket()
            try:
                await sock.connect(address)
                with trio.fail_after(handshake_timeout):
                    last_sent = await bio_handshake(sock, ctx)
            except Exception:
                sock.close()
                peers.failures += 1
                return
            except BaseException:
                sock.close()
                raise
            peers.sockets.append(sock)
            peers.last_sent_at.append(last_sent)

    start = time.perf_counter()
    try:
        with trio.move_on_after(start_within + handshake_timeout + 1.0):
            async with trio.open_nursery() as nursery:
                for _ in range(count):
                    nursery.start_soon(one)
        peers.seconds = time.perf_counter() - start
        yield peers
    finally:
        for sock in peers.sockets:
            sock.close()


# ---------------------------------------------------------------------- flood


def client_hello() -> bytes:
    """A valid DTLS 1.2 ClientHello without a cookie, as one datagram."""
    conn = SSL.Connection(certs.client_context(), None)
    conn.set_connect_state()
    conn.set_ciphertext_mtu(MTU)
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    return conn.bio_read(65536)


def is_hello_verify_request(datagram: bytes) -> bool:
    """Handshake record (22) whose first message is HelloVerifyRequest (3)."""
    return len(datagram) > 13 and datagram[0] == 22 and datagram[13] == 3


@dataclasses.dataclass
class FloodResult:
    sent: int = 0
    responses: int = 0
    hello_verify_requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    timeouts: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.responses / self.seconds if self.seconds > 0 else 0.0

    @property
    def amplification(self) -> float:
        """Bytes out of the server per byte in, per answered datagram."""
        if not self.responses or not self.sent:
            return 0.0
        return (self.bytes_received / self.responses) / (self.bytes_sent / self.sent)


async def flood(
    address: Address,
    datagram: bytes,
    *,
    sources: int,
    window: int,
    duration: float,
    reply_timeout: float = 0.1,
) -> FloodResult:
    """Send ``datagram`` from ``sources`` sockets on 127.0.0.2, 127.0.0.3, ...

    Each source keeps ``window`` datagrams in flight and sends a new one per
    answer, so the figure is the server's answering rate, not how fast the
    kernel drops packets.
    """
    result = FloodResult()
    stop_at = trio.current_time() + duration

    async def source(index: int) -> None:
        sock = await udp_socket(f"127.0.0.{2 + index % 250}")
        with sock:
            await sock.connect(address)
            outstanding = 0
            while True:
                while outstanding < window:
                    await sock.send(datagram)
                    outstanding += 1
                    result.sent += 1
                    result.bytes_sent += len(datagram)
                with trio.move_on_after(reply_timeout) as scope:
                    reply = await sock.recv(65536)
                if scope.cancelled_caught:
                    result.timeouts += 1
                    outstanding = 0
                    continue
                outstanding = max(outstanding - 1, 0)
                result.responses += 1
                result.bytes_received += len(reply)
                if is_hello_verify_request(reply):
                    result.hello_verify_requests += 1

    start = time.perf_counter()
    with trio.move_on_at(stop_at):
        async with trio.open_nursery() as nursery:
            for index in range(sources):
                nursery.start_soon(source, index)
    result.seconds = time.perf_counter() - start
    return result
