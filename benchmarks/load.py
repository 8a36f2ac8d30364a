"""The load generator: one process, plain sockets, one selector, no Trio.

Every target is driven by the same minimal client, written directly on
pyOpenSSL ``SSL.Connection`` objects with memory BIOs over non-blocking
stdlib UDP sockets (plain datagrams for ``raw_udp``). There is no DTLS
library and no event loop on this side: the load generator is made as cheap
as it can be, so that the figures measure the servers, not the client. Each
measurement also reports how busy the server process was meanwhile
(:class:`CpuUse`): a server that always had work set the pace.

Every phase is bounded in time: when its time is up, whatever was measured so
far is returned, with counters (timeouts, failures) that say how complete it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import itertools
import math
import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator

from OpenSSL import SSL
from OpenSSL._util import lib as _ssl_lib

from benchmarks import certs
from benchmarks.engine import MTU
from benchmarks.targets import CLIENT_SOCKET_BUFFER, set_buffers

Address = tuple[str, int]

# How often the loops look at their timers (reply and handshake timeouts,
# retransmissions), and the longest they block waiting for a datagram.
_TICK = 0.05
# Largest echo a server sends back: a 1,200-byte message plus its DTLS
# record overhead. Handshake datagrams are read with room for anything.
_ECHO_DATAGRAM = 4096
_ANY_DATAGRAM = 65536


def client_socket(address: Address, host: str = "127.0.0.1") -> socket.socket:
    """A non-blocking UDP socket bound to ``host`` and connected to ``address``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        set_buffers(sock, CLIENT_SOCKET_BUFFER)
        sock.bind((host, 0))
        sock.connect(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _receive(sock: socket.socket, limit: int, size: int) -> list[bytes]:
    """Up to ``limit`` datagrams that are waiting on ``sock``, without blocking."""
    datagrams = []
    for _ in range(limit):
        try:
            datagrams.append(sock.recv(size))
        except BlockingIOError:
            break
    return datagrams


# ------------------------------------------------------------------ CPU use


def cpu_times(pid: int | None) -> tuple[float, float] | None:
    """Seconds that the main thread of process ``pid`` has spent on a CPU, and
    runnable but waiting for one; None where the kernel does not tell
    (``/proc/<pid>/schedstat`` is Linux's, with nanosecond resolution)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            on_cpu, waiting = schedstat.read().split()[:2]
    except (OSError, ValueError):
        return None
    return int(on_cpu) / 1e9, int(waiting) / 1e9


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int | None) -> float | None:
    """CPU seconds that process ``pid`` has used so far, all its threads, in
    user and kernel mode (utime + stime of ``/proc/<pid>/stat``, in clock
    ticks of 10 ms); None where the kernel does not tell."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name, in parentheses, may hold spaces: count from its end.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


@dataclasses.dataclass
class CpuUse:
    """Where the time of a measurement went, as fractions of its wall time.

    A server that was on a CPU (``server``) or ready to run but kept off one
    by other processes (``server_wait``, the noise of a shared machine) for
    nearly all the time always had work: it, not the load generator, was
    the bottleneck. Both servers and the load generator are single-threaded.
    """

    server: float | None = None
    server_wait: float | None = None
    load: float | None = None
    load_wait: float | None = None
    # The same span in seconds: wall time, and the server's CPU time by
    # /proc/<pid>/stat (utime + stime, whole process, 10 ms resolution),
    # which the per-handshake CPU figures divide.
    wall_seconds: float | None = None
    server_seconds: float | None = None


class CpuMeter:
    """Measures :class:`CpuUse` of a server process and of this load generator
    between :meth:`start` and :meth:`stop`."""

    def __init__(self, server_pid: int | None) -> None:
        self._pids = (server_pid, os.getpid())
        self.use = CpuUse()
        self.start()

    def start(self) -> None:
        self._wall = time.perf_counter()
        self._before = [cpu_times(pid) for pid in self._pids]
        self._server_before = process_cpu_seconds(self._pids[0])

    def stop(self) -> None:
        wall = time.perf_counter() - self._wall
        after = [cpu_times(pid) for pid in self._pids]
        server_after = process_cpu_seconds(self._pids[0])
        fractions: list[float | None] = []
        for first, last in zip(self._before, after, strict=True):
            if first is None or last is None or wall <= 0:
                fractions += [None, None]
            else:
                fractions += [(last[0] - first[0]) / wall, (last[1] - first[1]) / wall]
        self.use = CpuUse(*fractions)
        self.use.wall_seconds = wall
        if self._server_before is not None and server_after is not None:
            self.use.server_seconds = server_after - self._server_before


# ----------------------------------------------------------------- sampling


class Sampler:
    """A warm-up, then ``samples`` consecutive rates of a growing count.

    Call :meth:`update` as often as possible with the count so far and whether
    the run is warm; it returns True once every sample is taken. The warm-up
    ends when the run says it is warm, or after ``max_warmup`` seconds. A
    sample spans at least half the warm-up: with thousands of messages in
    flight the traffic moves in waves about as long as the warm-up, and a
    shorter sample would catch a crest or a trough. ``cpu`` measures the
    sampling time, warm-up excluded.
    """

    def __init__(
        self,
        samples: int,
        sample_seconds: float,
        max_warmup: float,
        cpu: CpuMeter,
    ) -> None:
        self.samples = samples
        self.sample_seconds = sample_seconds
        self.max_warmup = max_warmup
        self.cpu = cpu
        self.rates: list[float] = []
        # the count that the samples span, warm-up excluded
        self.sampled = 0
        self.warmup_seconds = 0.0
        self.now = self._started = time.perf_counter()
        self._sample_start: float | None = None
        self._sample_count = 0

    def update(self, count: int, warm: bool) -> bool:
        now = self.now = time.perf_counter()
        if self._sample_start is None:
            if warm or now - self._started >= self.max_warmup:
                self.warmup_seconds = now - self._started
                self.sample_seconds = max(self.sample_seconds, self.warmup_seconds / 2)
                self._sample_start, self._sample_count = now, count
                self.cpu.start()
            return False
        elapsed = now - self._sample_start
        if elapsed < self.sample_seconds:
            return False
        self.rates.append((count - self._sample_count) / elapsed)
        self.sampled += count - self._sample_count
        self._sample_start, self._sample_count = now, count
        if len(self.rates) < self.samples:
            return False
        self.cpu.stop()
        return True


# -------------------------------------------------------------------- peers


class UdpPeer:
    """One client peer on its own connected socket, sending plain datagrams."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.outstanding = 0  # messages sent and not answered yet
        self.answered = False  # has had a reply in this run
        self.heard_at = 0.0  # time.perf_counter() of the last reply or (re)start

    def send(self, message: bytes) -> None:
        self.sock.send(message)

    def receive(self, limit: int) -> list[bytes]:
        """The messages in up to ``limit`` datagrams waiting on the socket."""
        return _receive(self.sock, limit, _ECHO_DATAGRAM)

    def discard_waiting(self) -> None:
        while self.receive(64):
            pass

    def close(self) -> None:
        self.sock.close()


class DtlsPeer(UdpPeer):
    """A :class:`UdpPeer` whose messages go through an established DTLS client.

    One message is one record is one datagram, both ways (both DTLS servers
    answer that way), so a datagram is decrypted with a single ``recv``.
    """

    def __init__(self, sock: socket.socket, conn: SSL.Connection) -> None:
        super().__init__(sock)
        self.conn = conn

    def send(self, message: bytes) -> None:
        conn = self.conn
        conn.send(message)
        self.sock.send(conn.bio_read(_ECHO_DATAGRAM))

    def receive(self, limit: int) -> list[bytes]:
        conn = self.conn
        messages = []
        for datagram in _receive(self.sock, limit, _ECHO_DATAGRAM):
            conn.bio_write(datagram)
            try:
                messages.append(conn.recv(_ECHO_DATAGRAM))
            except SSL.WantReadError:  # not application data: a stray handshake record
                pass
        return messages


# --------------------------------------------------------------- handshakes


@functools.cache
def client_context() -> SSL.Context:
    """The one client context of the load generator.

    One for all, because OpenSSL offers a session only on a connection made
    from the context that made it.
    """
    return certs.client_context()


class ClientHandshake:
    """One DTLS 1.2 client handshake on its own socket, driven by hand.

    OpenSSL answers the HelloVerifyRequest itself and keeps the retransmission
    timer (1 s, doubling), which :meth:`retransmit` applies: a lost datagram
    costs time, not the run.

    With a ``session`` (from an earlier handshake's ``get_session()``) the
    client offers it, so that the server can resume it in an abbreviated
    handshake; :meth:`resumed` says whether it did. Unless ``start`` is False
    the first flight goes out at once; otherwise :meth:`start` sends it.
    """

    def __init__(
        self,
        sock: socket.socket,
        ctx: SSL.Context,
        session: SSL.Session | None = None,
        *,
        start: bool = True,
    ) -> None:
        self.sock = sock
        self.conn = SSL.Connection(ctx, None)
        self.conn.set_connect_state()
        self.conn.set_ciphertext_mtu(MTU)
        if session is not None:
            self.conn.set_session(session)
        self.started = time.perf_counter()
        # time.monotonic() when this client last sent a datagram: the server
        # cannot have heard from it any later.
        self.last_sent_at = 0.0
        self.done = False
        if start:
            self.start()

    def start(self) -> None:
        """Send the first ClientHello."""
        self.started = time.perf_counter()
        self.done = self._advance()

    def _advance(self) -> bool:
        try:
            self.conn.do_handshake()
            done = True
        except SSL.WantReadError:
            done = False
        self._flush()
        return done

    def _flush(self) -> None:
        while True:
            try:
                datagram = self.conn.bio_read(_ANY_DATAGRAM)
            except SSL.WantReadError:
                return
            self.sock.send(datagram)
            self.last_sent_at = time.monotonic()

    def receive(self) -> bool:
        """Feed what the server sent and carry on; True once established."""
        for datagram in _receive(self.sock, 16, _ANY_DATAGRAM):
            self.conn.bio_write(datagram)
            self.done = self._advance()
            if self.done:
                break
        return self.done

    def retransmit(self) -> None:
        """Resend the last flight if OpenSSL's timer has run out."""
        if self.conn.DTLSv1_handle_timeout():
            self._flush()

    def peer(self) -> DtlsPeer:
        return DtlsPeer(self.sock, self.conn)

    def resumed(self) -> bool:
        """Whether the handshake was abbreviated: the server resumed the
        session this client offered (``SSL_session_reused``)."""
        return bool(_ssl_lib.SSL_session_reused(self.conn._ssl))

    def session(self) -> SSL.Session:
        """The session to offer next time; call :meth:`abandon` or
        :meth:`close` afterwards, so that freeing this connection cannot
        spoil it."""
        session = self.conn.get_session()
        if session is None:
            raise RuntimeError("the handshake left no session")
        return session

    def abandon(self) -> None:
        """Drop the peer without a word: close the socket, send nothing.

        OpenSSL marks a session that is freed with its connection before a
        shutdown as not resumable, and the client's session object is the
        one :meth:`session` handed out; flagging the shutdown as sent
        (without sending it) keeps that session good for the next
        handshake.
        """
        self.conn.set_shutdown(SSL.SENT_SHUTDOWN)
        self.sock.close()

    def close(self) -> None:
        """End the connection cleanly: send close_notify, close the socket."""
        try:
            self.conn.shutdown()
            self._flush()
        except (SSL.Error, OSError):
            pass
        self.sock.close()


class HandshakePool:
    """Up to ``concurrency`` client handshakes at once, one socket each, all
    waited on by one selector.

    An attempt that has not finished within ``attempt_timeout`` seconds, or
    that fails, is closed and counted in ``failed``.
    """

    def __init__(
        self,
        address: Address,
        concurrency: int,
        *,
        attempt_timeout: float = 5.0,
        session: SSL.Session | None = None,
    ) -> None:
        self.address = address
        self.concurrency = concurrency
        self.attempt_timeout = attempt_timeout
        self.ctx = client_context()
        # offered by every handshake this pool starts
        self.session = session
        self.selector = selectors.DefaultSelector()
        self.running: set[ClientHandshake] = set()
        self.started = self.completed = self.failed = 0
        # completed handshakes that resumed the offered session
        self.resumed = 0
        self.errors: list[str] = []
        self._next_check = time.perf_counter() + _TICK

    def __enter__(self) -> HandshakePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handshake in self.running:
            handshake.sock.close()
        self.running.clear()
        self.selector.close()

    def fill(self, limit: float = float("inf")) -> None:
        """Start handshakes until ``concurrency`` run or ``limit`` have started."""
        while len(self.running) < self.concurrency and self.started < limit:
            self.started += 1
            handshake = ClientHandshake(
                client_socket(self.address), self.ctx, self.session
            )
            self.running.add(handshake)
            self.selector.register(handshake.sock, selectors.EVENT_READ, handshake)

    def poll(self, timeout: float) -> list[ClientHandshake]:
        """Wait up to ``timeout`` s for datagrams and move the handshakes on.

        Returns the handshakes that completed; the caller owns them (and
        their sockets) from then on.
        """
        completed = []
        for key, _ in self.selector.select(timeout):
            handshake: ClientHandshake = key.data
            try:
                if handshake.receive():
                    self._remove(handshake)
                    self.completed += 1
                    if self.session is not None and handshake.resumed():
                        self.resumed += 1
                    completed.append(handshake)
            except (SSL.Error, OSError) as exc:
                self._fail(handshake, exc)
        now = time.perf_counter()
        if now >= self._next_check:
            self._next_check = now + _TICK
            for handshake in list(self.running):
                try:
                    if now - handshake.started > self.attempt_timeout:
                        raise TimeoutError("handshake timed out")
                    handshake.retransmit()
                except (SSL.Error, OSError) as exc:
                    self._fail(handshake, exc)
        return completed

    def _remove(self, handshake: ClientHandshake) -> None:
        self.running.discard(handshake)
        self.selector.unregister(handshake.sock)

    def _fail(self, handshake: ClientHandshake, exc: Exception) -> None:
        self._remove(handshake)
        handshake.sock.close()
        self.failed += 1
        if len(self.errors) < 5:
            self.errors.append(f"{type(exc).__name__}: {exc}")


@dataclasses.dataclass
class Established:
    """Peers whose handshake :func:`establish` completed, still open."""

    handshakes: list[ClientHandshake]
    failures: int
    errors: list[str]
    seconds: float


def establish(
    address: Address,
    count: int,
    *,
    concurrency: int,
    start_within: float,
    attempt_timeout: float,
) -> Established:
    """Handshake ``count`` peers, ``concurrency`` at a time.

    No handshake starts after ``start_within`` seconds, but those under way
    may finish (so that no half-open peer is left behind on the server).
    """
    start = time.perf_counter()
    established: list[ClientHandshake] = []
    with HandshakePool(address, concurrency, attempt_timeout=attempt_timeout) as pool:
        try:
            while True:
                if time.perf_counter() - start < start_within:
                    pool.fill(limit=count)
                if not pool.running:
                    break
                established += pool.poll(_TICK)
        except BaseException:
            for handshake in established:
                handshake.sock.close()
            raise
    return Established(
        handshakes=established,
        failures=pool.failed,
        errors=pool.errors,
        seconds=time.perf_counter() - start,
    )


@dataclasses.dataclass
class HandshakeResult:
    """Handshakes per second in consecutive sampling windows of one run."""

    rates: list[float]
    completed: int = 0
    failed: int = 0
    # handshakes completed within the sampling windows, which ``cpu`` spans
    sampled: int = 0
    # with ``resume``: how many of ``completed`` the server really resumed
    resumed: int = 0
    warmup_seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)
    cpu: CpuUse = dataclasses.field(default_factory=CpuUse)

    @property
    def server_cpu_per_handshake(self) -> float | None:
        """Server CPU seconds per handshake completed in the sampling windows."""
        spent = self.cpu.server_seconds
        if spent is None or not self.sampled:
            return None
        return spent / self.sampled


def first_session(address: Address, *, timeout: float = 10.0) -> SSL.Session:
    """One full handshake with the server at ``address``; its session."""
    deadline = time.perf_counter() + timeout
    with HandshakePool(address, 1, attempt_timeout=timeout) as pool:
        pool.fill()
        while time.perf_counter() < deadline and pool.running:
            for handshake in pool.poll(_TICK):
                session = handshake.session()
                handshake.abandon()
                return session
    raise RuntimeError(
        f"no session: {pool.errors[0] if pool.errors else 'handshake timed out'}"
    )


def handshake_run(
    address: Address,
    concurrency: int,
    *,
    samples: int,
    sample_seconds: float,
    server_pid: int | None,
    max_warmup: float = 5.0,
    attempt_timeout: float = 5.0,
    resume: bool = False,
) -> HandshakeResult:
    """``concurrency`` handshakes at all times, each a fresh peer.

    Every peer gets its own socket and is abandoned (socket closed, nothing
    sent) as soon as its handshake completes. The run warms up until as many
    handshakes as the concurrency have ended (with 50 at once the first round
    alone takes a while), then takes ``samples`` consecutive rate samples.

    With ``resume``, one full handshake first gets a session, and every
    handshake of the run offers it: the server may resume it (session ID or
    ticket) in an abbreviated handshake; ``resumed`` counts those it did.
    """
    session = first_session(address, timeout=attempt_timeout) if resume else None
    sampler = Sampler(samples, sample_seconds, max_warmup, CpuMeter(server_pid))
    with HandshakePool(
        address, concurrency, attempt_timeout=attempt_timeout, session=session
    ) as pool:
        pool.fill()
        while not sampler.update(
            pool.completed, pool.completed + pool.failed >= concurrency
        ):
            for handshake in pool.poll(_TICK):
                handshake.abandon()
            pool.fill()
    return HandshakeResult(
        rates=sampler.rates,
        completed=pool.completed,
        failed=pool.failed,
        sampled=sampler.sampled,
        resumed=pool.resumed,
        warmup_seconds=sampler.warmup_seconds,
        errors=pool.errors,
        cpu=sampler.cpu.use,
    )


# ------------------------------------------------- message windows (echo, flood)


@dataclasses.dataclass
class _Traffic:
    sent: int = 0
    counted: int = 0  # replies that ``on_reply`` counted
    timeouts: int = 0


def _keep_in_flight(
    peers: list[UdpPeer],
    message: bytes,
    window: int,
    *,
    sampler: Sampler,
    reply_timeout: float,
    on_reply: Callable[[bytes], bool],
) -> _Traffic:
    """Every peer keeps ``window`` copies of ``message`` in flight until the
    sampler has its samples, sending a new one for each reply.

    The sampler counts the replies ``on_reply`` returns True for, and is warm
    once every peer has had a reply: the first windows have all been sent,
    and from then on every reply is followed by one new message. A peer that
    has heard nothing for ``reply_timeout`` seconds counts its window as lost
    and sends a fresh one. Afterwards the outstanding replies are drained so
    that they cannot leak into the next run.
    """
    traffic = _Traffic()
    unanswered = len(peers)

    def top_up(peer: UdpPeer) -> None:
        while peer.outstanding < window:
            peer.send(message)
            peer.outstanding += 1
            traffic.sent += 1

    with selectors.DefaultSelector() as selector:
        now = time.perf_counter()
        for peer in peers:
            peer.discard_waiting()  # anything left over from an earlier run
            peer.outstanding, peer.answered, peer.heard_at = 0, False, now
            selector.register(peer.sock, selectors.EVENT_READ, peer)
        for peer in peers:
            top_up(peer)
        next_check = now + _TICK
        while not sampler.update(traffic.counted, unanswered == 0):
            now = sampler.now
            for key, _ in selector.select(_TICK):
                peer = key.data
                # Never more than are due, so that a ping-pong needs no
                # second recv() to find the socket empty; at least one, so
                # that a late reply cannot leave the socket readable forever.
                replies = peer.receive(max(peer.outstanding, 1))
                if not replies:
                    continue
                peer.heard_at = now
                peer.outstanding = max(peer.outstanding - len(replies), 0)
                for reply in replies:
                    if on_reply(reply):
                        traffic.counted += 1
                if not peer.answered:
                    peer.answered = True
                    unanswered -= 1
                top_up(peer)
            if now >= next_check:
                next_check = now + _TICK
                for peer in peers:
                    if peer.outstanding and now - peer.heard_at > reply_timeout:
                        traffic.timeouts += 1
                        peer.outstanding, peer.heard_at = 0, now
                        top_up(peer)
        drain_until = time.perf_counter() + reply_timeout
        while time.perf_counter() < drain_until and any(p.outstanding for p in peers):
            for key, _ in selector.select(_TICK):
                peer = key.data
                replies = peer.receive(max(peer.outstanding, 1))
                peer.outstanding = max(peer.outstanding - len(replies), 0)
    return traffic


# ----------------------------------------------------------------------- echo


@dataclasses.dataclass
class PeerSet:
    """Client peers held open by :func:`open_peers`."""

    peers: list[UdpPeer]
    failures: int
    errors: list[str]  # the first few failures' reasons
    connect_seconds: float


@contextlib.contextmanager
def open_peers(
    address: Address,
    count: int,
    *,
    secure: bool,
    concurrency: int = 20,
    connect_within: float = 20.0,
) -> Iterator[PeerSet]:
    """``count`` echo peers, DTLS ones if ``secure``, kept open until the exit.

    Peers whose handshake has not started within ``connect_within`` seconds
    are given up on; the others are used.
    """
    start = time.perf_counter()
    failures, errors = 0, []
    peers: list[UdpPeer] = []
    try:
        if secure:
            got = establish(
                address,
                count,
                concurrency=concurrency,
                start_within=connect_within,
                attempt_timeout=connect_within,
            )
            peers = [handshake.peer() for handshake in got.handshakes]
            failures, errors = got.failures, got.errors
        else:
            for _ in range(count):
                peers.append(UdpPeer(client_socket(address)))
        yield PeerSet(peers, failures, errors, time.perf_counter() - start)
    finally:
        for peer in peers:
            peer.close()


@dataclasses.dataclass
class EchoResult:
    """Round trips per second in consecutive sampling windows of one run."""

    rates: list[float]
    round_trips: int = 0
    sent: int = 0
    timeouts: int = 0
    warmup_seconds: float = 0.0
    sample_seconds: float = 0.0
    cpu: CpuUse = dataclasses.field(default_factory=CpuUse)


def echo_run(
    peers: list[UdpPeer],
    size: int,
    window: int,
    *,
    samples: int,
    sample_seconds: float,
    server_pid: int | None,
    max_warmup: float = 5.0,
    reply_timeout: float | None = None,
) -> EchoResult:
    """Every peer keeps ``window`` messages of ``size`` bytes in flight.

    The run warms up until every peer has had a reply, then takes ``samples``
    consecutive rate samples of at least ``sample_seconds`` each. A reply
    that does not come within ``reply_timeout`` (by default scaled with the
    number of messages in flight, whose queueing it must outlast) counts the
    window as lost and a fresh one is sent.
    """
    if reply_timeout is None:
        reply_timeout = 0.5 + 0.001 * len(peers) * window
    sampler = Sampler(samples, sample_seconds, max_warmup, CpuMeter(server_pid))
    traffic = _keep_in_flight(
        peers,
        b"\xa5" * size,
        window,
        sampler=sampler,
        reply_timeout=reply_timeout,
        on_reply=lambda reply: len(reply) == size,
    )
    return EchoResult(
        rates=sampler.rates,
        round_trips=traffic.counted,
        sent=traffic.sent,
        timeouts=traffic.timeouts,
        warmup_seconds=sampler.warmup_seconds,
        sample_seconds=sampler.sample_seconds,
        cpu=sampler.cpu.use,
    )


# ------------------------------------------------------------ idle peers


@dataclasses.dataclass
class IdlePeers:
    """Peers established by :func:`idle_peers`, one socket each, kept silent."""

    sockets: list[socket.socket]
    # time.monotonic() when each established peer last sent anything
    last_sent_at: list[float]
    failures: int
    seconds: float


@contextlib.contextmanager
def idle_peers(
    address: Address,
    count: int,
    *,
    concurrency: int = 32,
    start_within: float = 60.0,
    handshake_timeout: float = 10.0,
) -> Iterator[IdlePeers]:
    """Establish ``count`` DTLS peers and keep them idle.

    Each peer's client is thrown away after its handshake, so the peer stays
    established on the server but never sends another byte. No new handshake
    starts after ``start_within`` seconds; the peers established by then are
    the result. Sockets stay open until the context exits.
    """
    got = establish(
        address,
        count,
        concurrency=concurrency,
        start_within=start_within,
        attempt_timeout=handshake_timeout,
    )
    peers = IdlePeers(
        sockets=[handshake.sock for handshake in got.handshakes],
        last_sent_at=[handshake.last_sent_at for handshake in got.handshakes],
        failures=got.failures,
        seconds=got.seconds,
    )
    try:
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
    return conn.bio_read(_ANY_DATAGRAM)


def is_hello_verify_request(datagram: bytes) -> bool:
    """Handshake record (22) whose first message is HelloVerifyRequest (3)."""
    return len(datagram) > 13 and datagram[0] == 22 and datagram[13] == 3


@dataclasses.dataclass
class FloodResult:
    rate: float = 0.0  # answers per second, once every source has had one
    sent: int = 0
    responses: int = 0
    hello_verify_requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    timeouts: int = 0
    warmup_seconds: float = 0.0
    seconds: float = 0.0
    cpu: CpuUse = dataclasses.field(default_factory=CpuUse)

    @property
    def amplification(self) -> float:
        """Bytes out of the server per byte in, per answered datagram."""
        if not self.responses or not self.sent:
            return 0.0
        return (self.bytes_received / self.responses) / (self.bytes_sent / self.sent)


def flood(
    address: Address,
    datagram: bytes,
    *,
    sources: int,
    window: int,
    duration: float,
    server_pid: int | None,
    reply_timeout: float = 0.1,
    max_warmup: float = 2.0,
) -> FloodResult:
    """Send ``datagram`` from ``sources`` sockets on 127.0.0.2, 127.0.0.3, ...

    Each source keeps ``window`` datagrams in flight and sends a new one per
    answer, so the figure is the server's answering rate, not how fast the
    kernel drops packets. The rate is taken over ``duration`` seconds once
    every source has had an answer.
    """
    result = FloodResult()

    def on_reply(reply: bytes) -> bool:
        result.bytes_received += len(reply)
        if is_hello_verify_request(reply):
            result.hello_verify_requests += 1
        return True

    sampler = Sampler(1, duration, max_warmup, CpuMeter(server_pid))
    peers: list[UdpPeer] = []
    try:
        for index in range(sources):
            peers.append(UdpPeer(client_socket(address, f"127.0.0.{2 + index % 250}")))
        traffic = _keep_in_flight(
            peers,
            datagram,
            window,
            sampler=sampler,
            reply_timeout=reply_timeout,
            on_reply=on_reply,
        )
    finally:
        for peer in peers:
            peer.close()
    result.rate = sampler.rates[0] if sampler.rates else 0.0
    result.sent = traffic.sent
    result.responses = traffic.counted
    result.bytes_sent = traffic.sent * len(datagram)
    result.timeouts = traffic.timeouts
    result.warmup_seconds = sampler.warmup_seconds
    result.seconds = sampler.sample_seconds
    result.cpu = sampler.cpu.use
    return result


# ---------------------------------------------------------------------- storm


class EchoProbe:
    """Established peers that keep echoing while something else goes on.

    Each peer keeps one numbered message in flight: it sends the next one
    ``interval`` seconds after the reply to the last, or ``give_up`` seconds
    after the last was sent if no reply came (a reply that comes later
    still counts, with its whole round trip). :meth:`poll` never blocks;
    call it often, between other work, so that the time a reply waits in
    its socket for this process stays small next to its round trip.
    """

    def __init__(
        self,
        peers: list[UdpPeer],
        *,
        size: int = 100,
        interval: float = 0.5,
        give_up: float = 1.0,
    ) -> None:
        self.peers = peers
        self.interval = interval
        self.give_up = give_up
        self._padding = b"\xa5" * max(size - 8, 0)
        self._selector = selectors.DefaultSelector()
        for index, peer in enumerate(peers):
            self._selector.register(peer.sock, selectors.EVENT_READ, index)
        self._seq = 0
        # sequence number -> (peer, time sent), until the reply comes
        self._pending: dict[int, tuple[int, float]] = {}
        self._newest = [0] * len(peers)  # each peer's last message
        # when each peer sends next; the heap holds (time, peer) entries,
        # and an entry that no longer matches is stale
        self._send_at = [math.inf] * len(peers)
        self._heap: list[tuple[float, int]] = []
        self.sending = False
        # (time sent, round trip) of each reply, seconds, in arrival order
        self.round_trips: list[tuple[float, float]] = []
        self.sent = 0

    def start(self) -> None:
        """Start afresh: every peer sends a message now."""
        for peer in self.peers:
            peer.discard_waiting()
        self._pending.clear()
        self.round_trips = []
        self.sent = 0
        self.sending = True
        now = time.perf_counter()
        for index in range(len(self.peers)):
            self._schedule(index, now)

    def stop(self) -> None:
        """Send nothing new; replies to what was sent are still recorded."""
        self.sending = False
        self._heap.clear()

    @property
    def outstanding(self) -> int:
        """Messages sent and not answered."""
        return len(self._pending)

    def unanswered(self, sent_by: float) -> int:
        """Messages sent up to ``sent_by`` and not answered."""
        return sum(1 for _, sent in self._pending.values() if sent <= sent_by)

    def _schedule(self, index: int, when: float) -> None:
        if self.sending:
            self._send_at[index] = when
            heapq.heappush(self._heap, (when, index))

    def poll(self) -> None:
        """Take the replies that are waiting, send what is due."""
        now = time.perf_counter()
        for key, _ in self._selector.select(0):
            index = key.data
            for message in self.peers[index].receive(4):
                seq = int.from_bytes(message[:8], "big")
                sent = self._pending.pop(seq, None)
                if sent is None:
                    continue
                self.round_trips.append((sent[1], now - sent[1]))
                if seq == self._newest[index]:
                    self._schedule(index, now + self.interval)
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, index = heapq.heappop(heap)
            if when == self._send_at[index]:
                self._send(index, now)

    def _send(self, index: int, now: float) -> None:
        self._seq += 1
        seq = self._newest[index] = self._seq
        self._pending[seq] = (index, now)
        self.sent += 1
        try:
            self.peers[index].send(seq.to_bytes(8, "big") + self._padding)
        except OSError:
            pass
        self._schedule(index, now + self.give_up)

    def cost(self, seconds: float, server_pid: int | None) -> float | None:
        """Echo for ``seconds`` and nothing else; the server's CPU seconds
        per round trip meanwhile (by ``/proc/<pid>/schedstat``, which has
        the resolution for so short a time), or None."""
        meter = CpuMeter(server_pid)
        self.start()
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            self.poll()
            time.sleep(0.001)
        meter.stop()
        stopped = time.perf_counter()
        self.stop()
        until = stopped + self.give_up
        while self.outstanding and time.perf_counter() < until:
            self.poll()
            time.sleep(0.001)
        done = sum(1 for sent, rtt in self.round_trips if sent + rtt <= stopped)
        use = meter.use
        if not done or use.server is None or use.wall_seconds is None:
            return None
        return use.server * use.wall_seconds / done

    def close(self) -> None:
        self._selector.close()


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); NaN if there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclasses.dataclass
class StormResult:
    """What became of ``clients`` handshakes started at once."""

    clients: int
    completed: int = 0
    failed: int = 0  # OpenSSL or the socket gave up (an alert, a refusal)
    wedged: int = 0  # still handshaking when the storm's time was up
    offered: int = 0  # handshakes that offered a session
    resumed: int = 0  # completed handshakes that the server resumed
    launch_seconds: float = 0.0  # first to last first ClientHello
    last_seconds: float = math.nan  # first ClientHello to the last completion
    median_seconds: float = math.nan  # time to complete, median over clients
    retransmissions: int = 0  # flights the clients resent on OpenSSL's timer
    errors: list[str] = dataclasses.field(default_factory=list)
    # Echo messages sent from the launch to the last completion: their
    # round trips, and how many never had a reply (by the end of the storm
    # plus a grace time).
    echo_peers: int = 0
    echo_sent: int = 0
    echo_round_trips: int = 0
    echo_lost: int = 0
    echo_p50_ms: float = math.nan
    echo_p99_ms: float = math.nan
    echo_max_ms: float = math.nan
    # From the launch to the last completion (to the time limit if none):
    # clients still wedged after that are left out, with the echo's tail.
    cpu: CpuUse = dataclasses.field(default_factory=CpuUse)

    @property
    def server_cpu_per_handshake(self) -> float | None:
        spent = self.cpu.server_seconds
        if spent is None or not self.completed:
            return None
        return spent / self.completed


def storm(
    address: Address,
    clients: int,
    *,
    server_pid: int | None,
    probe: EchoProbe | None = None,
    sessions: list[SSL.Session] | None = None,
    time_limit: float = 60.0,
) -> tuple[StormResult, list[SSL.Session]]:
    """``clients`` handshakes started at once, each from its own socket.

    Sockets and client connections are made first; then every client sends
    its first ClientHello, as fast as this process can (``launch_seconds``),
    and from then on one selector serves them all. OpenSSL's own timer makes
    each client resend a flight that got no answer (1 s, doubling). Nothing
    is retried from scratch: a client that fails counts as ``failed``, one
    still handshaking after ``time_limit`` seconds as ``wedged``.

    A client that completes keeps its session and ends its connection at
    once with a close_notify, as a short-lived client would, so that the
    server's table (``max_connections``) is not what limits the storm. Its
    socket stays open until the storm is over: the server may still resend
    its last flight there (it may not have read the client's last one yet),
    and a closed port would answer that with an ICMP error.

    With ``sessions``, client ``i`` offers ``sessions[i % len(sessions)]``.
    ``probe``, if given, echoes from the launch on; its round trips count
    for the messages sent until the last completion. The server's CPU is
    measured from the launch to the last completion. Returns the result and
    the sessions of the clients that completed.
    """
    result = StormResult(clients=clients)
    ctx = client_context()
    selector = selectors.DefaultSelector()
    waiting: list[ClientHandshake] = []
    running: set[ClientHandshake] = set()
    ended: list[socket.socket] = []
    new_sessions: list[SSL.Session] = []
    times: list[float] = []
    # (OpenSSL's retransmission deadline, tie-breaker, client); an entry
    # that no longer matches ``due`` is stale.
    timers: list[tuple[float, int, ClientHandshake]] = []
    due: dict[ClientHandshake, float] = {}
    order = itertools.count()
    meter = CpuMeter(server_pid)
    metered_at = 0.0

    def arm(handshake: ClientHandshake, now: float) -> None:
        timeout = handshake.conn.DTLSv1_get_timeout()
        if timeout is not None:
            due[handshake] = when = now + timeout
            heapq.heappush(timers, (when, next(order), handshake))

    def finish(handshake: ClientHandshake, error: Exception | None) -> None:
        nonlocal metered_at
        running.discard(handshake)
        due.pop(handshake, None)
        selector.unregister(handshake.sock)
        ended.append(handshake.sock)
        if error is not None:
            result.failed += 1
            if len(result.errors) < 5:
                result.errors.append(f"{type(error).__name__}: {error}")
            return
        now = time.perf_counter()
        result.completed += 1
        times.append(now - launched)
        if sessions and handshake.resumed():
            result.resumed += 1
        session = handshake.conn.get_session()
        if session is not None:
            new_sessions.append(session)
        try:
            handshake.conn.shutdown()  # close_notify; keeps the session good
            handshake._flush()
        except (SSL.Error, OSError):
            pass
        # The CPU window ends at the last completion: read the server's CPU
        # now and then as they come, and always at the very last.
        if not running or now - metered_at > 0.005:
            meter.stop()
            metered_at = now

    try:
        for index in range(clients):
            session = sessions[index % len(sessions)] if sessions else None
            handshake = ClientHandshake(
                client_socket(address), ctx, session, start=False
            )
            waiting.append(handshake)
        result.offered = clients if sessions else 0
        meter.start()
        launched = time.perf_counter()
        if probe is not None:
            probe.start()
        for handshake in waiting:
            handshake.start()
            running.add(handshake)
            selector.register(handshake.sock, selectors.EVENT_READ, handshake)
        now = time.perf_counter()
        result.launch_seconds = now - launched
        for handshake in waiting:
            arm(handshake, now)
        waiting.clear()
        stop_at = launched + time_limit
        # With a probe, the selector never blocks long, so that echo replies
        # are read within a few milliseconds even when no handshake moves.
        longest = _TICK if probe is None else 0.002
        while running and now < stop_at:
            wake = min(timers[0][0] if timers else math.inf, now + longest)
            for key, _ in selector.select(max(wake - now, 0.0)):
                handshake = key.data
                try:
                    if handshake.receive():
                        finish(handshake, None)
                    else:
                        arm(handshake, time.perf_counter())
                except (SSL.Error, OSError) as exc:
                    finish(handshake, exc)
                if probe is not None:
                    probe.poll()
            now = time.perf_counter()
            while timers and timers[0][0] <= now:
                when, _, handshake = heapq.heappop(timers)
                if due.get(handshake) != when:
                    continue
                try:
                    if handshake.conn.DTLSv1_handle_timeout():
                        result.retransmissions += 1
                        handshake._flush()
                except (SSL.Error, OSError) as exc:
                    finish(handshake, exc)
                    continue
                arm(handshake, now)
            if probe is not None:
                probe.poll()
            now = time.perf_counter()
        result.wedged = len(running)
        if not times:
            meter.stop()  # no completion: the window runs to the time limit
        result.cpu = meter.use
        if times:
            result.last_seconds = max(times)
            result.median_seconds = quantile(times, 0.5)
        if probe is not None:
            _storm_echo(result, probe, launched + (result.cpu.wall_seconds or 0.0))
    finally:
        for handshake in [*waiting, *running]:
            handshake.sock.close()
        for sock in ended:
            sock.close()
        selector.close()
    return result, new_sessions


def _storm_echo(result: StormResult, probe: EchoProbe, end: float) -> None:
    """The probe's figures for the messages it sent before ``end``."""
    probe.stop()
    grace_until = time.perf_counter() + probe.give_up
    while probe.outstanding and time.perf_counter() < grace_until:
        probe.poll()
        time.sleep(0.001)
    round_trips = [rtt for sent, rtt in probe.round_trips if sent <= end]
    result.echo_peers = len(probe.peers)
    result.echo_round_trips = len(round_trips)
    result.echo_lost = probe.unanswered(end)
    result.echo_sent = result.echo_round_trips + result.echo_lost
    result.echo_p50_ms = quantile(round_trips, 0.5) * 1000
    result.echo_p99_ms = quantile(round_trips, 0.99) * 1000
    result.echo_max_ms = max(round_trips, default=math.nan) * 1000
