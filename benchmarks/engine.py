"""The bare engine baseline: pyOpenSSL connection pairs over memory BIOs.

A client and a server ``SSL.Connection`` live in one process and hand their
records to each other directly: no sockets, no tasks, no timers, no cookie
exchange. This is what OpenSSL plus pyOpenSSL cost on their own, the floor
under any Python DTLS server. Each measurement runs in a fresh process (see
``benchmarks.run``) so that the memory figure starts from a clean heap.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from OpenSSL import SSL

from benchmarks import certs
from benchmarks.server import rss_bytes

_T = TypeVar("_T")

# OpenSSL cannot ask a memory BIO for the path MTU; tell it one instead.
MTU = 1400


class _Pair:
    def __init__(self, client_ctx: SSL.Context, server_ctx: SSL.Context) -> None:
        self.client = SSL.Connection(client_ctx, None)
        self.client.set_connect_state()
        self.client.set_ciphertext_mtu(MTU)
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
