"""The bare engine baseline: pyOpenSSL connection pairs over memory BIOs.

A client and a server ``SSL.Connection`` live in one process and hand their
records to each other directly: no sockets, no tasks, no timers, no cookie
exchange. This is what OpenSSL plus pyOpenSSL cost on their own, the floor
under any Python DTLS server. Each measurement runs in a fresh process (see
``benchmarks.run``) so that the memory figure starts from a clean heap.
"""

from __future__ import annotations

import gc
import hmac
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from OpenSSL import SSL
from OpenSSL._util import lib as _ssl_lib

from benchmarks import certs
from benchmarks.server import rss_bytes

_T = TypeVar("_T")

# OpenSSL cannot ask a memory BIO for the path MTU; tell it one instead.
MTU = 1400


class _Pair:
    def __init__(
        self,
        client_ctx: SSL.Context,
        server_ctx: SSL.Context,
        session: SSL.Session | None = None,
    ) -> None:
        self.client = SSL.Connection(client_ctx, None)
        self.client.set_connect_state()
        self.client.set_ciphertext_mtu(MTU)
        if session is not None:
            self.client.set_session(session)
        self.server = SSL.Connection(server_ctx, None)
        self.server.set_accept_state()
        self.server.set_ciphertext_mtu(MTU)
        self._direct: tuple[Any, Any] | None = None

    def handshake(self) -> None:
        client_done = server_done = False
        for _ in range(20):
            client_done = _step(self.client)
            _move(self.client, self.server)
            server_done = _step(self.server)
            _move(self.server, self.client)
            if client_done and server_done:
                return
        raise RuntimeError("in-memory handshake did not finish")

    def resumed_handshake(self) -> None:
        """:meth:`handshake`, then keep the client's session resumable."""
        self.handshake()
        if not _session_reused(self.client):
            raise RuntimeError("the server did not resume the session")
        # OpenSSL marks a session not resumable when a connection that used
        # it is freed before a shutdown; flag one (nothing is sent).
        self.client.set_shutdown(SSL.SENT_SHUTDOWN)

    def direct_round_trip(self, payload: bytes) -> None:
        """The same echo through trio_dtlsmux's record path: OpenSSL's C
        functions called directly, without pyOpenSSL's per-call wrappers."""
        if self._direct is None:
            from trio_dtlsmux._recordio import FastRecordIO

            self._direct = (FastRecordIO(self.client), FastRecordIO(self.server))
        client, server = self._direct
        message = server.open(client.seal(payload, MTU + 1))
        assert message is not None
        reply = client.open(server.seal(message, MTU + 1))
        if reply is None or len(reply) != len(payload):
            raise RuntimeError("echo came back with the wrong length")

    def round_trip(self, payload: bytes) -> None:
        self.client.send(payload)
        _move(self.client, self.server)
        message = self.server.recv(65536)
        self.server.send(message)
        _move(self.server, self.client)
        if len(self.client.recv(65536)) != len(payload):
            raise RuntimeError("echo came back with the wrong length")


def _step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _move(source: SSL.Connection, sink: SSL.Connection) -> None:
    while True:
        try:
            data = source.bio_read(65536)
        except SSL.WantReadError:
            return
        sink.bio_write(data)


def _contexts() -> tuple[SSL.Context, SSL.Context]:
    cert, key = certs.make_cert()
    return certs.client_context(), certs.server_context(cert, key)


def _session_reused(conn: SSL.Connection) -> bool:
    return bool(_ssl_lib.SSL_session_reused(conn._ssl))


def _first_session(client_ctx: SSL.Context, server_ctx: SSL.Context) -> SSL.Session:
    """A session from one full handshake, still resumable."""
    pair = _Pair(client_ctx, server_ctx)
    pair.handshake()
    session = pair.client.get_session()
    if session is None:
        raise RuntimeError("the handshake left no session")
    pair.client.set_shutdown(SSL.SENT_SHUTDOWN)
    return session


def _rate(action: Any, duration: float) -> float:
    """How many times per second ``action()`` runs, over about ``duration`` s."""
    count = 0
    start = time.perf_counter()
    stop = start + duration
    now = start
    while now < stop:
        for _ in range(8):
            action()
        count += 8
        now = time.perf_counter()
    return count / (now - start)


def measure_speed(
    duration: float, repetitions: int, sizes: tuple[int, ...]
) -> dict[str, list[float]]:
    """Handshakes/s and round trips/s, ``repetitions`` samples of each."""
    client_ctx, server_ctx = _contexts()
    _Pair(client_ctx, server_ctx).handshake()  # warm up
    results: dict[str, list[float]] = {"handshakes_per_s": []}
    for _ in range(repetitions):
        results["handshakes_per_s"].append(
            _rate(lambda: _Pair(client_ctx, server_ctx).handshake(), duration)
        )
    session = _first_session(client_ctx, server_ctx)
    results["resumed_handshakes_per_s"] = [
        _rate(
            lambda: _Pair(client_ctx, server_ctx, session).resumed_handshake(),
            duration,
        )
        for _ in range(repetitions)
    ]
    results.update(measure_server_half(duration, repetitions))
    pair = _Pair(client_ctx, server_ctx)
    pair.handshake()
    for size in sizes:
        payload = b"x" * size
        pair.round_trip(payload)
        results[f"round_trips_per_s_{size}"] = [
            _rate(lambda p=payload: pair.round_trip(p), duration)
            for _ in range(repetitions)
        ]
        try:
            pair.direct_round_trip(payload)
        except ImportError:
            # The direct rows need trio_dtlsmux; the baseline rows above do
            # not, and must not fail with it.
            continue
        results[f"direct_round_trips_per_s_{size}"] = [
            _rate(lambda p=payload: pair.direct_round_trip(p), duration)
            for _ in range(repetitions)
        ]
    return results


# ----------------------------------------------------- the server half's CPU


def _cookie_contexts() -> tuple[SSL.Context, SSL.Context]:
    """Contexts whose server answers a ClientHello without a cookie with a
    HelloVerifyRequest, as every server under test does.

    OpenSSL makes the HelloVerifyRequest itself here (``DTLSv1_listen``);
    the cookie is an HMAC-SHA256 computed in Python, as trio_dtlsmux and
    trio compute theirs, once to make it and once to check it. There is no
    peer address in memory, so the cookie covers a fixed one.
    """
    client_ctx, server_ctx = _contexts()
    secret = os.urandom(32)

    def make_cookie(conn: SSL.Connection) -> bytes:
        return hmac.digest(secret, b"127.0.0.1:4433", "sha256")

    def check_cookie(conn: SSL.Connection, cookie: bytes) -> bool:
        return hmac.compare_digest(cookie, make_cookie(conn))

    server_ctx.set_cookie_generate_callback(make_cookie)
    server_ctx.set_cookie_verify_callback(check_cookie)
    return client_ctx, server_ctx


def _drain(conn: SSL.Connection) -> list[bytes]:
    datagrams = []
    while True:
        try:
            datagrams.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return datagrams


def _clock_cost(clock: Callable[[], float]) -> float:
    """What one interval between two clock readings adds by itself."""
    count = 2000
    total = 0.0
    for _ in range(count):
        start = clock()
        total += clock() - start
    return total / count


def _split_handshake(
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    session: SSL.Session | None,
    clock: Callable[[], float],
) -> tuple[float, float, int, bool]:
    """One in-memory handshake with the cookie exchange, each side's calls
    timed on their own.

    The server's time covers: making its ``SSL.Connection``, answering the
    first ClientHello with a HelloVerifyRequest (``DTLSv1_listen``), taking
    the second, ``do_handshake`` and ``bio_read`` of its flights, and
    freeing it. Returns the server's time, the client's time, how many
    intervals of ``clock`` each of them spans (the same number), and
    whether the session was resumed.
    """
    server_time = client_time = 0.0
    turns = 0
    start = clock()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_ciphertext_mtu(MTU)
    if session is not None:
        client.set_session(session)
    client_done = _step(client)
    to_server = _drain(client)
    now = clock()
    client_time += now - start

    start = now
    server: SSL.Connection | None = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    server.set_ciphertext_mtu(MTU)
    now = clock()
    server_time += now - start
    listening = True
    server_done = False
    for _ in range(10):
        start = clock()
        for datagram in to_server:
            server.bio_write(datagram)
        if listening:
            try:
                server.DTLSv1_listen()
                listening = False
            except SSL.WantReadError:  # it sent a HelloVerifyRequest
                pass
        if not listening and not server_done:
            server_done = _step(server)
        to_client = _drain(server)
        now = clock()
        server_time += now - start
        turns += 1

        start = now
        for datagram in to_client:
            client.bio_write(datagram)
        if not client_done:
            client_done = _step(client)
        to_server = _drain(client)
        now = clock()
        client_time += now - start
        if client_done and server_done and not to_server:
            break
    else:
        raise RuntimeError("in-memory handshake did not finish")
    resumed = _session_reused(client)
    start = clock()
    server = None
    now = clock()
    server_time += now - start
    start = now
    client.set_shutdown(SSL.SENT_SHUTDOWN)  # keeps an offered session good
    del client
    client_time += clock() - start
    # Both sides had one interval per turn, one to start and one to free.
    return server_time, client_time, turns + 2, resumed


def measure_server_half(duration: float, repetitions: int) -> dict[str, list[float]]:
    """The CPU time of the *server half* of a handshake, full and resumed.

    Client and server live in one process, and ``time.process_time()`` is
    read around the server's calls only (the client's work is timed apart),
    so the figure is what OpenSSL plus pyOpenSSL cost a server per handshake
    when nothing else is done: the cookie exchange, the handshake, making
    and freeing the connection. The clock's own cost per reading is measured
    and taken off. ``repetitions`` samples of about ``duration`` s each;
    microseconds per handshake.
    """
    clock = time.process_time
    client_ctx, server_ctx = _cookie_contexts()
    _split_handshake(client_ctx, server_ctx, None, clock)  # warm up
    session = _first_session(client_ctx, server_ctx)
    results: dict[str, list[float]] = {}
    for kind, offered in (("full", None), ("resumed", session)):
        for key in ("server", "client"):
            results[f"{key}_half_{kind}_us"] = []
        for _ in range(repetitions):
            cost = _clock_cost(clock)
            server_total = client_total = 0.0
            count = 0
            stop = time.perf_counter() + duration
            while time.perf_counter() < stop or count < 8:
                server, client, turns, resumed = _split_handshake(
                    client_ctx, server_ctx, offered, clock
                )
                if offered is not None and not resumed:
                    raise RuntimeError("the server did not resume the session")
                server_total += server - turns * cost
                client_total += client - turns * cost
                count += 1
            results[f"server_half_{kind}_us"].append(server_total / count * 1e6)
            results[f"client_half_{kind}_us"].append(client_total / count * 1e6)
    return results


def measure_memory(
    count: int, server_only: bool = False, warmup: int = 20
) -> dict[str, float]:
    """Resident memory per established connection half, from ``count`` pairs.

    With ``server_only`` each client half is dropped right after its handshake,
    so its memory is reused by the next pair and the delta is ``count`` server
    halves (plus one client).
    """
    client_ctx, server_ctx = _contexts()
    keep: list[object] = []

    def establish() -> None:
        pair = _Pair(client_ctx, server_ctx)
        pair.handshake()
        keep.append(pair.server if server_only else pair)

    for _ in range(warmup):
        establish()
    gc.collect()
    before = rss_bytes()
    for _ in range(count):
        establish()
    gc.collect()
    after = rss_bytes()
    halves = count if server_only else 2 * count
    return {
        "pairs": count,
        "rss_before": before,
        "rss_after": after,
        "bytes_per_half": (after - before) / halves,
    }


def _call_and_send(
    conn: Connection, function: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    try:
        conn.send((True, function(*args)))
    except BaseException as exc:
        conn.send((False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_isolated(
    function: Callable[..., _T],
    *args: Any,
    timeout: float,
    cpus: frozenset[int] | None = None,
) -> _T:
    """Call ``function(*args)`` in a freshly spawned process (on ``cpus``, if
    given) and return its result.

    Raises:
        TimeoutError: If it takes longer than ``timeout`` seconds.
        RuntimeError: If it raised; the message carries its traceback.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_call_and_send, args=(sender, function, args), daemon=True
    )
    process.start()
    sender.close()
    try:
        if cpus and process.pid is not None:
            os.sched_setaffinity(process.pid, cpus)
        if not receiver.poll(timeout):
            raise TimeoutError(f"{function.__name__} took longer than {timeout:g} s")
        try:
            ok, value = receiver.recv()
        except EOFError:
            raise RuntimeError(
                f"{function.__name__}: process died (exit code {process.exitcode})"
            ) from None
    finally:
        receiver.close()
        process.join(2.0)
        if process.is_alive():
            process.kill()
            process.join()
    if not ok:
        raise RuntimeError(value)
    return value  # type: ignore[no-any-return]
