"""Reaping cost per peer, in one process, on Trio's virtual clock.

``count`` clients connect to one server endpoint over the in-memory
:class:`trio_dtlsmux.testing.FakeNetwork`, and the process's CPU time is
taken from just before the first idle deadline until the last handler has
seen its peer time out: the cost of reaping, per peer, with no network, no
load generator and no machine wake-up latency in it. Run in a fresh process
(``benchmarks.engine.run_isolated``).

``spread=True``: the virtual clock moves 1 ms between connections, so the
deadlines come one at a time, as they do when peers go quiet at different
moments; the clock then jumps from deadline to deadline. ``spread=False``:
the clock stands still while they connect, so every deadline falls on one
instant and all peers are reaped in one burst.
"""

from __future__ import annotations

import contextlib
import gc
import time

import trio
import trio.testing

import trio_dtlsmux
from trio_dtlsmux.testing import FakeNetwork

_IDLE_TIMEOUT = 60.0
_SERVER = ("10.0.0.1", 4433)


def measure_reap_cost(count: int, spread: bool = True) -> dict[str, float]:
    """CPU seconds per reaped peer, reaping ``count`` peers."""
    clock = trio.testing.MockClock()
    return trio.run(_reap, count, spread, clock, clock=clock)


async def _reap(
    count: int, spread: bool, clock: trio.testing.MockClock
) -> dict[str, float]:
    identity = trio_dtlsmux.self_signed()
    server_ctx = trio_dtlsmux.server_context(identity)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
    net = FakeNetwork()
    server_sock = net.socket()
    await server_sock.bind(_SERVER)
    live = [0]
    all_ended = trio.Event()

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        live[0] += 1
        try:
            async for _ in conn:
                pass
        finally:
            live[0] -= 1
            if live[0] == 0:
                all_ended.set()

    async with trio_dtlsmux.DtlsEndpoint(
        server_sock,
        server_context=server_ctx,
        idle_timeout=_IDLE_TIMEOUT,
        max_connections=count + 1,
    ) as server, trio.open_nursery() as nursery:
        await nursery.start(server.serve, handler)
        async with contextlib.AsyncExitStack() as clients:
            for index in range(count):
                sock = net.socket()
                await sock.bind((f"10.1.{index // 250}.{index % 250 + 1}", 5000))
                client = await clients.enter_async_context(
                    trio_dtlsmux.DtlsEndpoint(sock)
                )
                await client.connect(_SERVER, client_ctx)
                if spread:
                    clock.jump(0.001)
            while live[0] < count:
                await trio.lowlevel.checkpoint()
            started_at = trio.current_time()
            if server.statistics().peers != count:
                raise RuntimeError("not every peer was established")
            gc.collect()
            cpu_before = time.process_time()
            if spread:
                clock.autojump_threshold = 0
            else:
                clock.jump(_IDLE_TIMEOUT + 1.0)
            await all_ended.wait()
            cpu = time.process_time() - cpu_before
            stats = server.statistics()
            if stats.peers != 0 or stats.peers_reaped != count:
                raise RuntimeError(
                    f"{stats.peers_reaped} of {count} reaped, {stats.peers} left"
                )
            if trio.current_time() - started_at > _IDLE_TIMEOUT + 0.001 * count + 2.0:
                raise RuntimeError("reaping came later than the idle deadlines")
        nursery.cancel_scope.cancel()
    return {
        "peers": count,
        "spread": spread,
        "cpu_seconds": cpu,
        "cpu_per_peer": cpu / count,
    }
