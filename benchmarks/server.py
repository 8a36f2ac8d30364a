"""The server process: one target's echo server plus a small control loop.

The orchestrator starts it with :class:`ServerProcess` (``multiprocessing``
with the *spawn* start method, so the server inherits nothing from the load
generator). The server binds 127.0.0.1 on an ephemeral port and reports the
port over a pipe, then answers requests on the same pipe:

``("rss", None)``
    The process's resident set size in bytes, after a full garbage collection.
``("stats", None)``
    The target's statistics (a dict with at least ``peers``), or None.
``("reap_times", None)``
    ``[ended, lag]`` for each peer whose handler ended after an idle timeout
    (see :meth:`benchmarks.targets.EchoServer.reap_times`).
``("watch_start", interval)``
    Start recording ``statistics()["peers"]`` every ``interval`` seconds,
    stamped with ``time.monotonic()`` (the same clock in every process on
    Linux, so the load generator can compare it with its own timestamps).
``("watch_result", timeout)``
    Wait until the peer count has gone up and back to 0 (at most ``timeout``
    s), then return the recorded series as a list of ``[time, peers]`` pairs.
``("quit", None)``
    Exit.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

import trio

from benchmarks.targets import (
    SERVER_SOCKET_BUFFER,
    EchoServer,
    JsonDict,
    ServerConfig,
    get_target,
    udp_socket,
)

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:  # not Linux: fall back to the peak, which is all we have
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class ServerError(RuntimeError):
    """The server process failed, hung or went away."""


class _PeerWatcher:
    def __init__(self, server: EchoServer) -> None:
        self._server = server
        self.series: list[tuple[float, int | None]] = []
        self.drained = trio.Event()

    def _peers(self) -> int | None:
        stats = self._server.statistics()
        peers = None if stats is None else stats.get("peers")
        return peers if isinstance(peers, int) else None

    async def run(self, interval: float) -> None:
        seen_peers = False
        while True:
            peers = self._peers()
            self.series.append((time.monotonic(), peers))
            seen_peers = seen_peers or bool(peers)
            if peers == 0 and seen_peers:
                self.drained.set()
            await trio.sleep(interval)


async def _serve(config: ServerConfig, conn: Connection) -> None:
    target = get_target(config.target)
    target.check()
    sock = await udp_socket(buffer=SERVER_SOCKET_BUFFER)
    port = sock.getsockname()[1]
    async with trio.open_nursery() as nursery:
        server = await target.start_server(nursery, sock, config)
        conn.send({"port": port})
        watcher = _PeerWatcher(server)
        while True:
            await trio.lowlevel.wait_readable(conn.fileno())
            try:
                command, argument = conn.recv()
            except EOFError:
                break
            reply: JsonDict
            if command == "quit":
                break
            elif command == "rss":
                gc.collect()
                await trio.lowlevel.checkpoint()
                reply = {"rss": rss_bytes()}
            elif command == "stats":
                reply = {"stats": server.statistics()}
            elif command == "reap_times":
                reply = {"reap_times": server.reap_times()}
            elif command == "watch_start":
                nursery.start_soon(watcher.run, float(argument))
                reply = {"ok": True}
            elif command == "watch_result":
                with trio.move_on_after(float(argument)):
                    await watcher.drained.wait()
                reply = {"series": watcher.series, "drained": watcher.drained.is_set()}
            else:
                reply = {"error": f"unknown command {command!r}"}
            conn.send(reply)
        nursery.cancel_scope.cancel()


def server_main(config: ServerConfig, conn: Connection) -> None:
    """Entry point of the server process."""
    try:
        trio.run(_serve, config, conn)
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        leaves = _leaves(exc)
        if leaves != [exc]:
            reason = "; ".join(f"{type(e).__name__}: {e}" for e in leaves[:3])
        try:
            conn.send({"error": reason, "traceback": traceback.format_exc()})
        except OSError:
            pass


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]`` itself."""
    inner = getattr(exc, "exceptions", None)
    if not inner:
        return [exc]
    return [leaf for child in inner for leaf in _leaves(child)]


def split_cpus() -> frozenset[int] | None:
    """Give the load generator and the servers a CPU each; return the servers'.

    Left to itself, Linux tends to keep two processes that wake each other
    up on one CPU: on a two-core machine the server and the load generator
    then take turns on one core (together about 100 %) while the other core
    idles, and the figures measure neither. So this process (the load
    generator, and the engine processes it spawns) is pinned to the first CPU
    it may use and the servers go to the second. Returns None, pinning
    nothing, if there is only one CPU or the platform cannot pin.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        os.sched_setaffinity(0, {cpus[0]})
    except (AttributeError, OSError):
        return None
    return frozenset({cpus[1]})


class ServerProcess:
    """Handle on a running server process, used from the orchestrator."""

    def __init__(
        self, config: ServerConfig, cpus: frozenset[int] | None = None
    ) -> None:
        """Start the process (on ``cpus``, if given); call :meth:`wait_ready`
        before using it."""
        self.config = config
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=server_main,
            args=(config, child_conn),
            name=f"bench-server-{config.target}",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self._failure: str | None = None
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self.pid = self._process.pid
        if cpus and self.pid is not None:
            os.sched_setaffinity(self.pid, cpus)

    def wait_ready(self, timeout: float = 30.0) -> ServerProcess:
        """Wait for the server to report its port; closes it on failure."""
        try:
            hello = self._receive(timeout)
        except BaseException:
            self.close()
            raise
        self.address = ("127.0.0.1", int(hello["port"]))
        return self

    def _receive(self, timeout: float) -> JsonDict:
        try:
            ready = self._conn.poll(timeout)
        except (OSError, EOFError) as exc:
            raise ServerError(self._death_reason()) from exc
        if not ready:
            raise ServerError(f"server did not answer within {timeout:g} s")
        try:
            message: JsonDict = self._conn.recv()
        except (OSError, EOFError) as exc:
            raise ServerError(self._death_reason()) from exc
        if "error" in message:
            self._failure = f"server failed: {message['error']}"
            raise ServerError(self._failure)
        return message

    def _death_reason(self) -> str:
        if self._failure is None:
            self._process.join(1.0)
            self._failure = (
                f"server process exited (exit code {self._process.exitcode})"
            )
        return self._failure

    def check_alive(self) -> None:
        """Raise :class:`ServerError` (with the server's own error) if it died."""
        if self._failure is None and self._process.is_alive():
            return
        try:
            while self._failure is None and self._conn.poll(0):
                message = self._conn.recv()
                if "error" in message:
                    self._failure = f"server failed: {message['error']}"
        except (OSError, EOFError):
            pass
        raise ServerError(self._death_reason())

    def request(
        self, command: str, argument: Any = None, wait: float = 20.0
    ) -> JsonDict:
        """Send one command and wait up to ``wait`` seconds for its reply."""
        self.check_alive()
        try:
            self._conn.send((command, argument))
        except OSError as exc:
            raise ServerError(self._death_reason()) from exc
        return self._receive(wait)

    def close(self) -> None:
        if self._conn.closed:
            return
        if self._process.is_alive():
            try:
                self._conn.send(("quit", None))
            except OSError:
                pass
            self._process.join(3.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(3.0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()

    def __enter__(self) -> ServerProcess:
        return self.wait_ready()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
