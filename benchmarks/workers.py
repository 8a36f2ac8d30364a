"""Scaling out with ``serve_workers``: what carries over from a 2-core machine.

Two CPUs cannot show N workers doing N times the work. What they can show,
and what a bigger machine inherits, is that nothing is lost on the way:

* **CPU per handshake and per echoed message**, summed over all the workers,
  with 2 workers against 1. Every worker runs on the servers' CPU, so the
  2-worker server gets no more CPU than the 1-worker one; if the figures
  agree (the target is within 10 %), work spread over N processes costs
  what it costs in one, and N cores give N times the throughput as long as
  the load generator and the network keep up.
* **The spread of peers** over the workers that the kernel's
  ``SO_REUSEPORT`` hash gives (200 peers; max/min).
* **Restart time**: from ``SIGKILL`` of a worker to the supervisor forking
  its replacement, and to the first handshake the replacement completes, on
  the dead worker's socket, for a client that started its handshake right
  after the kill.
* **The supervisor's own CPU** while its workers serve: it should be 0.

The server under test is this module run as a program
(``python -m benchmarks.workers N``): ``serve_workers`` with the benchmark's
echo handler, printing a line per handshake (``hs PID PORT``, written by the
worker with one ``write``), a line when it has started, and the
supervisor's log lines with their ``time.monotonic()`` (the same clock in
every process on Linux, so the load generator can compare). Each worker
gets the benchmark's large socket buffers through ``worker_task``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from benchmarks import certs, load
from benchmarks.targets import SERVER_SOCKET_BUFFER, set_buffers

# ------------------------------------------------------------- the server side


def _server_main(workers: int) -> None:
    import trio

    import trio_dtlsmux

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            _say(f"log {time.monotonic():.6f} {record.getMessage()}")

    log = logging.getLogger("trio_dtlsmux.workers")
    log.addHandler(_Lines())
    log.setLevel(logging.INFO)
    log.propagate = False

    async def echo(conn: Any) -> None:
        _say(f"hs {os.getpid()} {conn.peer_address[1]}")
        with contextlib.suppress(Exception):
            async for message in conn:
                await conn.send(message)

    async def big_buffers(endpoint: Any) -> None:
        set_buffers(endpoint.socket, SERVER_SOCKET_BUFFER)
        await trio.sleep_forever()

    def started(address: tuple[Any, ...], pids: tuple[int, ...]) -> None:
        _say(f"started {address[1]} {os.getpid()} {' '.join(map(str, pids))}")

    identity = trio_dtlsmux.self_signed()
    trio_dtlsmux.serve_workers(
        echo,
        ("127.0.0.1", 0),
        workers=workers,
        server_context=trio_dtlsmux.server_context(identity),
        started=started,
        worker_task=big_buffers,
        idle_timeout=None,
        max_connections=50_000,
    )


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


# ------------------------------------------------------------ the load side


def cpu_seconds(pid: int) -> float | None:
    """CPU time of process ``pid`` so far (``/proc/PID/schedstat``, ns)."""
    times = load.cpu_times(pid)
    return None if times is None else times[0]


def time_slices(pid: int) -> int:
    """How many times process ``pid`` has been put on a CPU (its third
    ``/proc/PID/schedstat`` figure): once per wake-up, or per preemption."""
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return int(schedstat.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 0


class WorkerServer:
    """``serve_workers`` in a child process, and what it says."""

    def __init__(self, workers: int, cpus: frozenset[int] | None) -> None:
        self.workers = workers
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.workers", str(workers)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if cpus:
            # The workers are forked later and inherit this.
            os.sched_setaffinity(self._proc.pid, cpus)
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr: list[bytes] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        words = self.wait_for("started ", 30.0).split()
        self.address = ("127.0.0.1", int(words[1]))
        self.supervisor = int(words[2])
        self.pids = [int(pid) for pid in words[3:]]

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for raw in self._proc.stdout:
            with self._changed:
                self._lines.append(raw.decode().rstrip("\n"))
                self._changed.notify_all()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._stderr.append(raw)

    def lines(self, prefix: str) -> list[str]:
        with self._changed:
            return [line for line in self._lines if line.startswith(prefix)]

    def wait_for(
        self, prefix: str, timeout: float, count: int = 1, containing: str = ""
    ) -> str:
        """The ``count``-th line that starts with ``prefix`` (and contains
        ``containing``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [
                    line
                    for line in self._lines
                    if line.startswith(prefix) and containing in line
                ]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self._proc.poll() is not None:
                    tail = b"".join(self._stderr[-5:]).decode(errors="replace")
                    raise RuntimeError(
                        f"the worker server did not say {prefix!r} in time {tail}"
                    )
                self._changed.wait(left)

    def handshakes(self) -> dict[int, int]:
        """Client port -> the pid of the worker that served its handshake."""
        return {
            int(port): int(pid)
            for _, pid, port in (line.split() for line in self.lines("hs "))
        }

    def worker_slices(self) -> int:
        """Time slices of every current worker, summed."""
        return sum(time_slices(pid) for pid in self.pids)

    def worker_cpu(self) -> float:
        """CPU seconds of every current worker, summed."""
        total = 0.0
        for pid in self.pids:
            seconds = cpu_seconds(pid)
            if seconds is None:
                raise RuntimeError(f"cannot read the CPU time of worker {pid}")
            total += seconds
        return total

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> WorkerServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclasses.dataclass
class CostResult:
    """CPU per operation of one server, summed over its workers."""

    workers: int
    handshake_us: list[float] = dataclasses.field(default_factory=list)
    echo_us: list[float] = dataclasses.field(default_factory=list)
    # wake-ups of the workers per operation: more processes on one CPU means
    # smaller batches per wake-up and more switching between them
    handshake_slices: list[float] = dataclasses.field(default_factory=list)
    echo_slices: list[float] = dataclasses.field(default_factory=list)
    supervisor_cpu: float = 0.0  # seconds, over all the load phases
    worker_cpu: float = 0.0  # seconds, over the same phases
    wall: float = 0.0  # seconds of those phases
    notes: list[str] = dataclasses.field(default_factory=list)


def measure_costs(
    counts: tuple[int, ...],
    cpus: frozenset[int] | None,
    *,
    repetitions: int,
    handshake_seconds: float,
    echo_seconds: float,
    handshake_concurrency: int = 50,
    echo_peers: int = 100,
    echo_window: int = 8,
    size: int = 100,
) -> dict[int, CostResult]:
    """CPU per handshake (50 at once) and per echoed message, ``repetitions``
    samples each, for servers with each number of workers in ``counts``.

    The servers are up at once and take turns sample by sample, so that the
    drift of a shared machine falls on all of them alike.
    """
    results = {count: CostResult(count) for count in counts}
    with contextlib.ExitStack() as stack:
        servers = {
            count: stack.enter_context(WorkerServer(count, cpus)) for count in counts
        }
        before = {
            count: (cpu_seconds(server.supervisor) or 0.0, server.worker_cpu())
            for count, server in servers.items()
        }
        started = time.perf_counter()
        for _ in range(repetitions):
            for count, server in servers.items():
                cpu, slices = server.worker_cpu(), server.worker_slices()
                shakes = load.handshake_run(
                    server.address,
                    handshake_concurrency,
                    samples=1,
                    sample_seconds=handshake_seconds,
                    server_pid=None,
                )
                cpu = server.worker_cpu() - cpu
                slices = server.worker_slices() - slices
                if shakes.failed:
                    results[count].notes.append(f"{shakes.failed} handshakes failed")
                if shakes.completed:
                    results[count].handshake_us.append(cpu / shakes.completed * 1e6)
                    results[count].handshake_slices.append(slices / shakes.completed)
        peer_sets = {}
        for count, server in servers.items():
            peers = stack.enter_context(
                load.open_peers(
                    server.address, echo_peers, secure=True, connect_within=10.0
                )
            )
            if len(peers.peers) < echo_peers:
                results[count].notes.append(f"only {len(peers.peers)} echo peers")
            peer_sets[count] = peers.peers
        for _ in range(repetitions):
            for count, server in servers.items():
                cpu, slices = server.worker_cpu(), server.worker_slices()
                echoes = load.echo_run(
                    peer_sets[count],
                    size,
                    echo_window,
                    samples=1,
                    sample_seconds=echo_seconds,
                    server_pid=None,
                )
                cpu = server.worker_cpu() - cpu
                slices = server.worker_slices() - slices
                if echoes.timeouts:
                    results[count].notes.append(f"{echoes.timeouts} echo timeouts")
                if echoes.round_trips:
                    results[count].echo_us.append(cpu / echoes.round_trips * 1e6)
                    results[count].echo_slices.append(slices / echoes.round_trips)
        wall = time.perf_counter() - started
        for count, server in servers.items():
            supervisor, workers = before[count]
            result = results[count]
            result.wall = wall
            result.worker_cpu = server.worker_cpu() - workers
            result.supervisor_cpu = (cpu_seconds(server.supervisor) or 0.0) - supervisor
    return results


@dataclasses.dataclass
class SpreadResult:
    """How the kernel spread idle peers over 2 workers, and restarts."""

    peers: int
    per_worker: list[int]
    death_to_fork_ms: list[float]  # SIGKILL -> the supervisor forked again
    death_to_handshake_ms: list[float]  # SIGKILL -> a new handshake done
    live_handshake_ms: list[float]  # one handshake on a live worker
    supervisor_cpu_per_restart_ms: float
    notes: list[str]

    @property
    def spread(self) -> float:
        low = min(self.per_worker)
        return max(self.per_worker) / low if low else float("inf")


def _handshake(sock: Any, ctx: Any, timeout: float) -> float:
    """One client handshake on ``sock``; returns ``time.monotonic()`` when
    it completed."""
    start = time.monotonic()
    handshake = load.ClientHandshake(sock, ctx)
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while not handshake.done:
            if time.monotonic() - start > timeout:
                raise RuntimeError("handshake did not complete")
            if selector.select(0.05):
                handshake.receive()
            else:
                handshake.retransmit()
    return time.monotonic()


def measure_spread_and_restart(
    cpus: frozenset[int] | None, peers: int = 200, restarts: int = 3
) -> SpreadResult:
    """``peers`` idle peers on a 2-worker server: how they spread; then
    ``restarts`` times a worker is killed (each in turn) and a new
    handshake is timed on a socket that the kernel sends to it."""
    notes: list[str] = []
    ctx = certs.client_context()
    with WorkerServer(2, cpus) as server, load.idle_peers(
        server.address, peers, start_within=60.0
    ) as idle:
        # Each handshake line is written before the peer's handler goes on;
        # wait until all of them are in.
        server.wait_for("hs ", 10.0, count=len(idle.sockets))
        where = server.handshakes()
        per_worker = [list(where.values()).count(pid) for pid in server.pids]
        if len(idle.sockets) < peers:
            notes.append(f"only {len(idle.sockets)} peers established")
        by_port = {sock.getsockname()[1]: sock for sock in idle.sockets}
        # Sockets by worker slot: the slot, unlike the pid, survives restarts.
        slot_of = {pid: index for index, pid in enumerate(server.pids)}
        sockets: list[list[Any]] = [[], []]
        for port, pid in where.items():
            sockets[slot_of[pid]].append(by_port[port])
        forked, fresh, live = [], [], []
        # A worker that dies within a second of starting is restarted after
        # a delay (crash-loop protection); these deaths should not count as
        # such, so each victim has lived for a while.
        born = [time.monotonic()] * 2
        supervisor = cpu_seconds(server.supervisor) or 0.0
        for restart in range(restarts):
            slot = restart % 2
            victim, other = sockets[slot], sockets[1 - slot]
            if len(victim) <= restart or len(other) <= restart:
                notes.append("too few peers on a worker for the restarts")
                break
            # For scale, a handshake on a live worker: a new session on an
            # established peer's socket (to the server, a restarted peer).
            begun = time.monotonic()
            live.append(_handshake(other[restart], ctx, 10.0) - begun)
            restarted = sum("restarted as pid" in x for x in server.lines("log "))
            time.sleep(max(0.0, born[slot] + 1.2 - time.monotonic()))
            killed = time.monotonic()
            os.kill(server.pids[slot], signal.SIGKILL)
            # The client starts at once; its datagrams wait in the dead
            # worker's socket, which the supervisor kept, until the
            # replacement reads them.
            fresh.append(_handshake(victim[restart], ctx, 10.0) - killed)
            line = server.wait_for(
                "log ", 5.0, count=restarted + 1, containing="restarted as pid"
            )
            forked.append(float(line.split()[1]) - killed)
            server.pids[slot] = int(line.rsplit(" ", 1)[1])
            born[slot] = float(line.split()[1])
        supervisor = (cpu_seconds(server.supervisor) or 0.0) - supervisor
    return SpreadResult(
        peers=len(idle.sockets),
        per_worker=per_worker,
        death_to_fork_ms=[t * 1000 for t in forked],
        death_to_handshake_ms=[t * 1000 for t in fresh],
        live_handshake_ms=[t * 1000 for t in live],
        supervisor_cpu_per_restart_ms=supervisor / max(len(forked), 1) * 1000,
        notes=notes,
    )


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


if __name__ == "__main__":
    _server_main(int(sys.argv[1]))
