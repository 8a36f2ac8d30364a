"""The six scenarios, each turning measurements into :class:`Row` s.

Baselines and the library under test are measured in the same run. Where
several servers can be up at once (echo, handshakes, flood), the targets take
turns case by case, so slow drifts of a noisy machine hit every target alike
and the ratios stay meaningful even when the absolute figures wander. Within
a case, a target's repetitions are consecutive samples of one steady run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import statistics
import sys
import time
from collections.abc import Iterable
from typing import Any

from benchmarks import engine, load, reapcost, workers
from benchmarks.report import Report, Row
from benchmarks.server import ServerProcess
from benchmarks.targets import TARGETS, ServerConfig, Target, Unavailable

ECHO = "1. echo round trips/s"
HANDSHAKES = "2. handshakes/s"
MEMORY = "3. memory per established idle peer"
FLOOD = "4. cookie-less ClientHello flood"
REAPING = "5. idle reaping (dtlsmux only)"
HANDSHAKE_CPU = "6. server CPU per handshake"
STORM = "7. handshake storm"
WORKERS = "8. serve_workers (dtlsmux only)"

ENGINE = "engine"
OURS = "dtlsmux"
ORDER = ("raw_udp", "trio_dtls", OURS)
# The echo scenario also runs plain UDP in the library's shape (see targets).
ECHO_ORDER = ("raw_udp", "udp_tasks", "trio_dtls", OURS)

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress goes to stderr; the table alone goes to stdout."""
    print(
        f"[{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True
    )


def describe(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups."""
    while getattr(exc, "exceptions", None):  # an exception group
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and durations of a run; see :meth:`for_mode` for the two modes.

    Durations are in seconds: ``*_seconds`` is the length of one sample, and
    each case takes ``repetitions`` samples.
    """

    quick: bool
    repetitions: int
    echo_seconds: float
    handshake_seconds: float
    flood_seconds: float
    engine_seconds: float
    memory_peers: tuple[int, ...]
    engine_memory_pairs: int
    reap_peers: tuple[int, int]
    # Peers of the in-process reaping cost (connecting them takes ~6 ms each).
    reap_cost_peers: tuple[int, int]
    echo_sizes: tuple[int, ...] = (100, 1200)
    echo_peers: tuple[int, ...] = (1, 100)
    echo_windows: tuple[int, ...] = (1, 32)
    handshake_concurrency: tuple[int, ...] = (1, 50)
    # Clients of each handshake storm, and the longest a storm may last:
    # a client still handshaking then counts as wedged.
    storm_clients: int = 10_000
    storm_time_limit: float = 90.0
    storm_echo_peers: int = 100
    # How long the echo peers echo alone, to measure what that costs.
    storm_quiet_seconds: float = 1.0
    flood_sources: int = 16
    flood_window: int = 8
    idle_timeout: float = 1.0
    connect_timeout: float = 20.0
    # Longest idle timeout the reaping scenario may stretch to.
    max_idle_timeout: float = 60.0
    # Longest time to spend establishing the idle peers of one memory case.
    establish_timeout: float = 300.0
    # Whole-run budget: the reaping and workers scenarios, which come last,
    # skip the cases that would not fit in what is left of it.
    budget: float = math.inf
    # Worker restarts timed by the workers scenario.
    restarts: int = 4

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                quick=True,
                repetitions=3,
                echo_seconds=0.1,
                handshake_seconds=0.25,
                flood_seconds=0.15,
                engine_seconds=0.15,
                memory_peers=(1000,),
                engine_memory_pairs=500,
                reap_peers=(200, 1000),
                reap_cost_peers=(100, 300),
                max_idle_timeout=3.0,
                establish_timeout=5.0,
                budget=85.0,
                connect_timeout=10.0,
                restarts=2,
                storm_clients=1000,
                storm_time_limit=10.0,
                storm_quiet_seconds=0.3,
            )
        return cls(
            quick=False,
            repetitions=5,
            echo_seconds=1.0,
            handshake_seconds=1.5,
            flood_seconds=1.0,
            engine_seconds=1.0,
            memory_peers=(1000, 10000),
            engine_memory_pairs=2000,
            reap_peers=(1000, 10000),
            reap_cost_peers=(1000, 10000),
        )


class Bench:
    """State shared by the scenarios: settings, targets and the report."""

    def __init__(
        self, settings: Settings, server_cpus: frozenset[int] | None = None
    ) -> None:
        self.settings = settings
        # CPUs for the server processes (see benchmarks.server.split_cpus)
        self.server_cpus = server_cpus
        self.started = time.perf_counter()
        self.report = Report()
        self.targets: dict[str, Target] = {}
        self.unavailable: dict[str, str] = {}
        # idle peers established per second by the lightweight client, per target
        self.establish_rate: dict[str, float] = {}
        for name in ECHO_ORDER:
            target = TARGETS[name]()
            try:
                target.check()
            except Unavailable as exc:
                self.unavailable[name] = str(exc)
                log(f"{name} unavailable: {exc}")
            self.targets[name] = target

    def time_left(self) -> float:
        """Seconds left of the run's budget (infinite unless --quick)."""
        return self.settings.budget - (time.perf_counter() - self.started)

    def available(self, names: Iterable[str] = ORDER) -> list[str]:
        return [name for name in names if name not in self.unavailable]

    def skip(
        self,
        scenario: str,
        case: str,
        target: str,
        reason: str,
        *,
        status: str = "unavailable",
    ) -> Row:
        """Add a row without figures that says why there are none."""
        log(f"{scenario}: {target} {status}: {reason}")
        return self.report.add(
            Row(scenario, case, target, "", note=f"{status}: {reason}")
        )

    def skip_unavailable(self, scenario: str, names: Iterable[str]) -> None:
        for name in names:
            if name in self.unavailable:
                self.skip(scenario, "all cases", name, self.unavailable[name])


def _log_row(row: Row) -> None:
    median = row.median
    figure = "-" if median is None else f"{median:,.4g}"
    log(f"{row.scenario} | {row.case} | {row.target}: {figure} {row.unit} {row.note}")


def _isolated(bench: Bench, function: Any, *args: Any, timeout: float) -> Any:
    """Run ``function`` in a fresh process on the servers' CPU; its result,
    or the exception it raised."""
    try:
        return engine.run_isolated(
            function, *args, timeout=timeout, cpus=bench.server_cpus
        )
    except Exception as exc:
        return exc


# ---------------------------------------------------------------- bare engine


def engine_case(size: int) -> str:
    return f"{size} B in memory (bare engine)"


def direct_engine_case(size: int) -> str:
    return f"{size} B in memory (direct C calls)"


ENGINE_HANDSHAKE_CASE = "in memory (bare engine)"
ENGINE_RESUMED_CASE = "resumed, in memory (bare engine)"
ENGINE_HALF_CASE = "per connection half (bare engine)"
ENGINE_SERVER_HALF_CASE = "per server half (bare engine)"
ZERO_OVERHEAD_CASE = "sequential, zero overhead: engine + 3 UDP round trips"
FULL = "full"
RESUMED = "resumed"


def server_half_case(kind: str) -> str:
    """The engine's row for the server half of a ``kind`` handshake."""
    return f"{kind}: server half (bare engine)"


def client_half_case(kind: str) -> str:
    return f"{kind}: client half (bare engine)"


def engine_speed(bench: Bench, when: str) -> None:
    """Handshakes and round trips of the bare engine, in a fresh process.

    Called before and after the servers' turns (``when`` says which), on
    the servers' CPU: the speed of a shared machine drifts, and each engine
    row pools the samples of both passes, so that its median sits in the
    middle of the time the servers were measured in.
    """
    s = bench.settings
    report = bench.report
    log(f"bare engine: handshakes and round trips in memory ({when})")
    budget = 30 + 4 * s.repetitions * s.engine_seconds * (4 + 2 * len(s.echo_sizes))
    speed = _isolated(
        bench,
        engine.measure_speed,
        s.engine_seconds,
        s.repetitions,
        s.echo_sizes,
        timeout=budget,
    )
    rows = [
        (HANDSHAKES, ENGINE_HANDSHAKE_CASE, "hs/s", "handshakes_per_s"),
        (HANDSHAKES, ENGINE_RESUMED_CASE, "hs/s", "resumed_handshakes_per_s"),
    ]
    for kind in (FULL, RESUMED):
        rows += [
            (HANDSHAKE_CPU, server_half_case(kind), "us", f"server_half_{kind}_us"),
            # Information: what the load generator's client spends.
            (HANDSHAKE_CPU, client_half_case(kind), "us", f"client_half_{kind}_us"),
        ]
    rows += [
        (ECHO, engine_case(size), "rt/s", f"round_trips_per_s_{size}")
        for size in s.echo_sizes
    ]
    rows += [
        # Information, not a baseline: the same echo through the record
        # path trio_dtlsmux uses (see trio_dtlsmux/_recordio.py).
        (ECHO, direct_engine_case(size), "rt/s", f"direct_round_trips_per_s_{size}")
        for size in s.echo_sizes
    ]
    for scenario, case, unit, key in rows:
        row = report.find(scenario, case, ENGINE)
        if row is None:
            row = report.add(Row(scenario, case, ENGINE, unit))
        if isinstance(speed, Exception):
            row.note = f"{when}: unavailable: {describe(speed)}"
            log(f"{scenario}: {ENGINE} {row.note}")
            continue
        if key not in speed:
            row.note = f"{when}: unavailable: trio_dtlsmux cannot be imported"
            continue
        row.samples += speed[key]
        row.raw.append({"when": when, "samples": speed[key]})
        _log_row(row)


def engine_memory(bench: Bench) -> None:
    """Memory per connection half of the bare engine, in a fresh process."""
    s = bench.settings
    report = bench.report
    log(f"bare engine: memory of {s.engine_memory_pairs:,} established pairs")
    for case, server_only in (
        (ENGINE_HALF_CASE, False),
        (ENGINE_SERVER_HALF_CASE, True),
    ):
        memory = _isolated(
            bench,
            engine.measure_memory,
            s.engine_memory_pairs,
            server_only,
            timeout=120,
        )
        if isinstance(memory, Exception):
            bench.skip(MEMORY, case, ENGINE, describe(memory))
            continue
        _log_row(
            report.add(
                Row(
                    MEMORY,
                    case,
                    ENGINE,
                    "KiB",
                    samples=[memory["bytes_per_half"] / 1024],
                    raw=[memory],
                )
            )
        )


# ---------------------------------------- echo, handshakes, flood (shared servers)


def start_servers(bench: Bench, names: Iterable[str]) -> dict[str, ServerProcess]:
    """Start one server process per target (in parallel), skip the failures."""
    starting = {
        name: ServerProcess(ServerConfig(name), bench.server_cpus) for name in names
    }
    ready: dict[str, ServerProcess] = {}
    for name, server in starting.items():
        try:
            ready[name] = server.wait_ready()
            log(f"{name} server pid {server.pid} on port {server.address[1]}")
        except Exception as exc:
            bench.unavailable[name] = f"server did not start: {describe(exc)}"
            log(f"{name} unavailable: {bench.unavailable[name]}")
    return ready


def shared_server_scenarios(bench: Bench, servers: dict[str, ServerProcess]) -> None:
    # The flood goes first, while no server has any peer, so that the live peer
    # count afterwards must be exactly 0. Handshakes go last because they leave
    # many abandoned peers behind on the servers.
    flood_scenario(bench, servers)
    echo_scenario(bench, servers)
    handshake_scenario(bench, servers)


def echo_case(peers: int, size: int, window: int) -> str:
    plural = "peer" if peers == 1 else "peers"
    mode = "ping-pong" if window == 1 else f"{window} in flight"
    return f"{size} B, {peers} {plural}, {mode}"


def _echo_refs(name: str, case: str, size: int) -> dict[str, tuple[str, str]]:
    refs: dict[str, tuple[str, str]] = {}
    if name != "raw_udp":
        refs["raw_udp"] = (case, "raw_udp")
    if name in ("trio_dtls", OURS):
        refs["engine"] = (engine_case(size), ENGINE)
    if name == OURS:
        refs["trio_dtls"] = (case, "trio_dtls")
        refs["udp_tasks"] = (case, "udp_tasks")
    return refs


def _note_cpu(row: Row, uses: list[load.CpuUse]) -> None:
    """Put the mean CPU use of one or more measurements on their row."""
    for field, column in (
        ("server", "server_cpu"),
        ("server_wait", "server_wait"),
        ("load", "load_cpu"),
    ):
        values = [getattr(use, field) for use in uses]
        if values and None not in values:
            setattr(row, column, statistics.fmean(values))


def echo_scenario(bench: Bench, servers: dict[str, ServerProcess]) -> None:
    s = bench.settings
    bench.skip_unavailable(ECHO, ECHO_ORDER)
    most_peers = max(s.echo_peers)
    with contextlib.ExitStack() as stack:
        peer_sets: dict[str, load.PeerSet] = {}
        for name in bench.available(ECHO_ORDER):
            if name not in servers:
                continue
            server = servers[name]
            try:
                server.check_alive()
                peers = stack.enter_context(
                    load.open_peers(
                        server.address,
                        most_peers,
                        secure=bench.targets[name].secure,
                        connect_within=s.connect_timeout,
                    )
                )
                if not peers.peers:
                    raise RuntimeError(
                        peers.errors[0] if peers.errors else "no peer connected"
                    )
            except Exception as exc:
                bench.skip(ECHO, "all cases", name, describe(exc))
                continue
            peer_sets[name] = peers
            log(
                f"echo: {name}: {len(peers.peers)}/{most_peers} peers connected "
                f"in {peers.connect_seconds:.2f} s"
            )

        # Within a case the targets take turns sample by sample (raw, trio,
        # ours, raw, ...), so that the machine's drift over a case, which
        # is large on a shared machine, falls on every target alike.
        cases = itertools.product(s.echo_peers, s.echo_sizes, s.echo_windows)
        for peer_count, size, window in cases:
            case = echo_case(peer_count, size, window)
            rows: dict[str, Row] = {}
            results: dict[str, list[load.EchoResult]] = {}
            for name in peer_sets:
                refs = _echo_refs(name, case, size)
                rows[name] = bench.report.add(Row(ECHO, case, name, "rt/s", refs=refs))
                results[name] = []
            for _ in range(s.repetitions):
                for name in list(results):
                    if name not in peer_sets:
                        continue
                    clients = peer_sets[name].peers[:peer_count]
                    try:
                        servers[name].check_alive()
                        result = load.echo_run(
                            clients,
                            size,
                            window,
                            samples=1,
                            sample_seconds=s.echo_seconds,
                            server_pid=servers[name].pid,
                        )
                    except Exception as exc:
                        rows[name].note = f"unavailable: {describe(exc)}"
                        log(f"echo: {name} failed: {describe(exc)}")
                        del peer_sets[name]
                        continue
                    results[name].append(result)
                    rows[name].raw.append(
                        dataclasses.asdict(result) | {"peers": len(clients)}
                    )
            for name, row in rows.items():
                done = [r for r in results[name] if r.round_trips]
                if not done:
                    if not row.note:
                        row.note = "unavailable: no echo came back"
                else:
                    row.samples = [rate for r in done for rate in r.rates]
                    _note_cpu(row, [r.cpu for r in done])
                _annotate_echo(row, peer_count)
                _log_row(row)


def _annotate_echo(row: Row, wanted_peers: int) -> None:
    if not row.raw:
        return
    peers = row.raw[0]["peers"]
    timeouts = sum(raw["timeouts"] for raw in row.raw)
    notes = [row.note] if row.note else []
    if peers < wanted_peers:
        notes.append(f"only {peers} of {wanted_peers} peers")
    if timeouts:
        answered = sum(raw["round_trips"] for raw in row.raw)
        sent = sum(raw["sent"] for raw in row.raw)
        notes.append(f"{timeouts} reply timeouts, {answered:,}/{sent:,} answered")
    row.note = "; ".join(notes)


def handshake_case(concurrency: int, resume: bool = False) -> str:
    case = "sequential" if concurrency == 1 else f"{concurrency} concurrent"
    return f"{case}, resumed" if resume else case


def handshake_cpu_case(kind: str, concurrency: int) -> str:
    return f"{kind}, {handshake_case(concurrency)}"


def _cpu_row(bench: Bench, name: str, kind: str, case: str) -> Row:
    """A row of server CPU per ``kind`` handshake, against the engine's
    server half (and, for ours, against trio.DTLSEndpoint)."""
    refs = {"engine": (server_half_case(kind), ENGINE)}
    if name == OURS:
        refs["trio_dtls"] = (case, "trio_dtls")
    return bench.report.add(Row(HANDSHAKE_CPU, case, name, "us", refs=refs))


# The goals for server CPU per handshake over the engine's server half.
CPU_GOALS = {FULL: "goal <= 2.0x engine", RESUMED: "goal <= 3.0x engine"}


def handshake_scenario(bench: Bench, servers: dict[str, ServerProcess]) -> None:
    """Handshakes per second, and the server's CPU time per handshake.

    Fresh peers, full handshakes and then resumed ones (each client offers
    the session of one earlier handshake). The same runs give both figures:
    the rate, and the server process's CPU time (utime + stime) over the
    sampling window divided by the handshakes completed in it.
    """
    s = bench.settings
    names = [n for n in bench.available() if n in servers and bench.targets[n].secure]
    bench.skip_unavailable(HANDSHAKES, (n for n in ORDER if bench.targets[n].secure))
    bench.skip_unavailable(HANDSHAKE_CPU, (n for n in ORDER if bench.targets[n].secure))
    for resume in (False, True):
        kind = RESUMED if resume else FULL
        for concurrency in s.handshake_concurrency:
            case = handshake_case(concurrency, resume)
            cpu_case = handshake_cpu_case(kind, concurrency)
            rows: dict[str, Row] = {}
            cpu_rows: dict[str, Row] = {}
            results: dict[str, list[load.HandshakeResult]] = {}
            for name in names:
                engine_case = ENGINE_RESUMED_CASE if resume else ENGINE_HANDSHAKE_CASE
                refs = {"engine": (engine_case, ENGINE)}
                if name == OURS:
                    refs["trio_dtls"] = (case, "trio_dtls")
                rows[name] = bench.report.add(
                    Row(HANDSHAKES, case, name, "hs/s", refs=refs)
                )
                cpu_rows[name] = _cpu_row(bench, name, kind, cpu_case)
                results[name] = []
            # The targets take turns sample by sample, as in the echo scenario.
            for _ in range(s.repetitions):
                for name in names:
                    if rows[name].note.startswith("unavailable"):
                        continue
                    server = servers[name]
                    try:
                        server.check_alive()
                        result = load.handshake_run(
                            server.address,
                            concurrency,
                            samples=1,
                            sample_seconds=s.handshake_seconds,
                            server_pid=server.pid,
                            resume=resume,
                        )
                    except Exception as exc:
                        rows[name].note = f"unavailable: {describe(exc)}"
                        log(f"handshakes: {name} failed: {describe(exc)}")
                        continue
                    rows[name].raw.append(dataclasses.asdict(result))
                    results[name].append(result)
            for name, row in rows.items():
                _handshake_rows(row, cpu_rows[name], results[name], kind)
                _log_row(row)
                _log_row(cpu_rows[name])


def _handshake_rows(
    row: Row, cpu_row: Row, results: list[load.HandshakeResult], kind: str
) -> None:
    """Fill the rate row and the CPU row of one target's handshake case."""
    done = [r for r in results if r.completed]
    failed = sum(r.failed for r in results)
    errors = [e for r in results for e in r.errors]
    if row.note.startswith("unavailable"):
        cpu_row.note = row.note
        return
    if not done:
        reason = errors[0] if errors else "no handshake completed"
        row.note = cpu_row.note = f"unavailable: {reason}"
        return
    notes = []
    if failed:
        notes.append(f"{failed} failed" + (f" ({errors[0]})" if errors else ""))
    if kind == RESUMED:
        completed = sum(r.completed for r in done)
        resumed = sum(r.resumed for r in done)
        notes.append(f"{resumed / completed:.0%} resumed")
    row.samples = [rate for r in done for rate in r.rates]
    _note_cpu(row, [r.cpu for r in done])
    row.note = "; ".join(notes)
    per_handshake = [r.server_cpu_per_handshake for r in done]
    cpu_row.samples = [cpu * 1e6 for cpu in per_handshake if cpu is not None]
    cpu_row.raw = [
        {"server_seconds": r.cpu.server_seconds, "handshakes": r.sampled} for r in done
    ]
    _note_cpu(cpu_row, [r.cpu for r in done])
    sampled = sum(r.sampled for r in done)
    cpu_row.note = "; ".join(
        [*notes, f"{sampled:,} handshakes", CPU_GOALS[kind]]
        if cpu_row.samples
        else ["unavailable: no CPU time from /proc/<pid>/stat"]
    )


def zero_overhead_rows(bench: Bench) -> None:
    """Sequential handshakes against what an implementation with no overhead
    of its own would score: one in-memory handshake of the bare engine
    (both halves, one after the other) plus three UDP round trips (the
    cookie's, the server's first flight, the client's last flight), the
    round trip being raw UDP's 100 B ping-pong with one peer. Every term is
    a median of this run."""
    report = bench.report
    engine_row = report.find(HANDSHAKES, ENGINE_HANDSHAKE_CASE, ENGINE)
    udp_row = report.find(ECHO, echo_case(1, 100, 1), "raw_udp")
    engine_rate = None if engine_row is None else engine_row.median
    udp_rate = None if udp_row is None else udp_row.median
    if not engine_rate or not udp_rate:
        missing = (
            "the engine's handshakes" if not engine_rate else "raw UDP's ping-pong"
        )
        bench.skip(HANDSHAKES, ZERO_OVERHEAD_CASE, ENGINE, f"no figure for {missing}")
        return
    seconds = 1 / engine_rate + 3 / udp_rate
    bound = report.add(
        Row(
            HANDSHAKES,
            ZERO_OVERHEAD_CASE,
            ENGINE,
            "hs/s",
            samples=[1 / seconds],
            note=f"{1e6 / engine_rate:.0f} us + 3 x {1e6 / udp_rate:.0f} us",
            raw=[{"engine_hs_per_s": engine_rate, "udp_rt_per_s": udp_rate}],
        )
    )
    _log_row(bound)
    for name in ("trio_dtls", OURS):
        row = report.find(HANDSHAKES, handshake_case(1), name)
        if row is None or row.median is None:
            continue
        _log_row(
            report.add(
                Row(
                    HANDSHAKES,
                    "sequential / zero overhead",
                    name,
                    "x",
                    samples=[row.median / (1 / seconds)],
                    note="goal >= 0.6",
                )
            )
        )


def flood_scenario(bench: Bench, servers: dict[str, ServerProcess]) -> None:
    s = bench.settings
    hello = load.client_hello()
    rate_case = f"answers/s ({s.flood_sources} sources, {len(hello)} B hello)"
    amp_case = "amplification (bytes out / bytes in)"
    peers_case = "live peers after the flood"
    bench.skip_unavailable(FLOOD, ORDER)
    names = [n for n in bench.available() if n in servers]
    rate_rows: dict[str, Row] = {}
    amp_rows: dict[str, Row] = {}
    flood_cpu: dict[str, list[load.CpuUse]] = {}
    for name in names:
        refs = {} if name == "raw_udp" else {"raw_udp": (rate_case, "raw_udp")}
        if name == OURS:
            refs["trio_dtls"] = (rate_case, "trio_dtls")
        rate_rows[name] = bench.report.add(
            Row(FLOOD, rate_case, name, "answers/s", refs=refs)
        )
        amp_rows[name] = bench.report.add(Row(FLOOD, amp_case, name, "x"))
    for _ in range(s.repetitions):
        for name in list(names):
            try:
                servers[name].check_alive()
                result = load.flood(
                    servers[name].address,
                    hello,
                    sources=s.flood_sources,
                    window=s.flood_window,
                    duration=s.flood_seconds,
                    server_pid=servers[name].pid,
                )
                if result.responses == 0:
                    raise RuntimeError("no answer to any ClientHello")
            except Exception as exc:
                rate_rows[name].note = f"unavailable: {describe(exc)}"
                log(f"flood: {name} failed: {describe(exc)}")
                names.remove(name)
                continue
            rate_rows[name].samples.append(result.rate)
            rate_rows[name].raw.append(dataclasses.asdict(result))
            flood_cpu.setdefault(name, []).append(result.cpu)
            amp_rows[name].samples.append(result.amplification)
    for name in names:
        row = rate_rows[name]
        _note_cpu(row, flood_cpu.get(name, []))
        if bench.targets[name].secure and row.raw:
            answers = sum(r["responses"] for r in row.raw)
            verify = sum(r["hello_verify_requests"] for r in row.raw)
            row.note = f"{verify / answers:.0%} HelloVerifyRequests"
        try:
            reply = servers[name].request("stats")
        except Exception as exc:
            log(f"flood: {name} statistics failed: {describe(exc)}")
            continue
        stats = reply.get("stats") or {}
        peers = stats.get("peers")
        if bench.targets[name].secure:
            bench.report.add(
                Row(
                    FLOOD,
                    peers_case,
                    name,
                    "peers",
                    samples=[] if peers is None else [float(peers)],
                    note=""
                    if peers is None
                    else ("ok" if peers == 0 else "SHOULD BE 0"),
                    raw=[stats],
                )
            )
    for rows in (rate_rows, amp_rows):
        for row in rows.values():
            _log_row(row)


# ------------------------------------------------------------ handshake storm


def storm_case(kind: str, clients: int) -> str:
    return f"{kind}, storm of {clients:,} clients"


def _descriptor_limit() -> int | None:
    try:
        import resource

        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None


def storm_scenario(bench: Bench) -> None:
    """Many clients start a handshake at the same instant, first without a
    session and then offering the one they got, against a fresh server with
    its default options, while established peers keep echoing.

    Each target gets its own fresh server; both are up at once and take
    turns (full storms, then resumed storms), as in the other scenarios.
    """
    s = bench.settings
    clients = s.storm_clients
    secure = [n for n in ORDER if bench.targets[n].secure]
    bench.skip_unavailable(STORM, secure)
    names = bench.available(secure)
    # One socket per client, per echo peer, and some to spare.
    needed = clients + s.storm_echo_peers + 100
    limit = _descriptor_limit()
    if limit is not None and limit != -1 and limit < needed:
        for name in names:
            bench.skip(
                STORM,
                "all cases",
                name,
                f"needs {needed:,} open files, limit {limit:,}",
            )
        return
    with contextlib.ExitStack() as stack:
        servers: dict[str, ServerProcess] = {}
        starting: dict[str, ServerProcess] = {}
        for name in names:
            config = ServerConfig(name, defaults=True)
            starting[name] = ServerProcess(config, bench.server_cpus)
            stack.callback(starting[name].close)
        probes: dict[str, load.EchoProbe] = {}
        echo_costs: dict[str, float | None] = {}
        for name, server in starting.items():
            try:
                server.wait_ready()
                peers = stack.enter_context(
                    load.open_peers(
                        server.address,
                        s.storm_echo_peers,
                        secure=True,
                        connect_within=s.connect_timeout,
                    )
                )
            except Exception as exc:
                bench.skip(STORM, "all cases", name, describe(exc))
                continue
            servers[name] = server
            probes[name] = load.EchoProbe(peers.peers)
            stack.callback(probes[name].close)
            # What the echo costs the server by itself, to say how much of
            # the CPU per handshake in a storm is the echo's.
            echo_costs[name] = probes[name].cost(s.storm_quiet_seconds, server.pid)
            log(
                f"storm: {name} server pid {server.pid} (default options), "
                f"{len(peers.peers)} echo peers"
            )
        sessions: dict[str, list[Any]] = {}
        for kind in (FULL, RESUMED):
            for name in list(servers):
                if kind == RESUMED and not sessions.get(name):
                    bench.skip(STORM, storm_case(kind, clients), name, "no sessions")
                    continue
                log(f"storm: {name}: {clients:,} clients, {kind} handshakes")
                try:
                    server = servers[name]
                    server.check_alive()
                    before = server.request("stats").get("stats") or {}
                    result, sessions[name] = load.storm(
                        server.address,
                        clients,
                        server_pid=server.pid,
                        probe=probes[name],
                        sessions=sessions.get(name) if kind == RESUMED else None,
                        time_limit=s.storm_time_limit,
                    )
                    after = server.request("stats").get("stats") or {}
                except Exception as exc:
                    bench.skip(STORM, storm_case(kind, clients), name, describe(exc))
                    continue
                _storm_rows(bench, name, kind, result, before, after, echo_costs[name])


def _storm_rows(
    bench: Bench,
    name: str,
    kind: str,
    result: load.StormResult,
    before: dict[str, Any],
    after: dict[str, Any],
    echo_cost: float | None,
) -> None:
    clients = result.clients
    case = storm_case(kind, clients)
    refs = (
        {}
        if name != OURS
        else {"trio_dtls": (f"{case}: time to the last", "trio_dtls")}
    )
    raw = dataclasses.asdict(result) | {
        "stats_before": before,
        "stats_after": after,
        "echo_cpu_per_round_trip": echo_cost,
    }
    notes = [f"{result.completed:,}/{clients:,} done"]
    if result.failed:
        notes.append(
            f"{result.failed:,} failed"
            + (f" ({result.errors[0]})" if result.errors else "")
        )
    if result.wedged:
        notes.append(f"{result.wedged:,} WEDGED")
    if kind == RESUMED and result.completed:
        notes.append(f"{result.resumed / result.completed:.0%} resumed")
    notes.append(f"median {result.median_seconds:.2f} s")
    notes.append(f"launch {result.launch_seconds:.2f} s")
    notes.append(f"{result.retransmissions:,} client resends")
    for field, label in (
        ("hellos_dropped_limits", "verified hellos shed"),
        ("handshake_datagrams_dropped", "handshake datagrams dropped"),
    ):
        count = after.get(field)
        if isinstance(count, int):
            count -= before.get(field, 0)
            notes.append(f"{count:,} {label}")
    timing = Row(
        STORM,
        f"{case}: time to the last",
        name,
        "s",
        samples=[] if math.isnan(result.last_seconds) else [result.last_seconds],
        refs=refs,
        note="; ".join(notes),
        raw=[raw],
    )
    _note_cpu(timing, [result.cpu])
    _log_row(bench.report.add(timing))

    echo_notes = [
        f"p50 {result.echo_p50_ms:.1f}, max {result.echo_max_ms:.0f} ms",
        f"{result.echo_round_trips:,} round trips",
        f"{result.echo_lost} lost" if result.echo_lost else "none lost",
        "goal < 100 ms",
    ]
    echo_case_name = f"{case}: echo p99, {result.echo_peers} peers"
    _log_row(
        bench.report.add(
            Row(
                STORM,
                echo_case_name,
                name,
                "ms",
                samples=[] if math.isnan(result.echo_p99_ms) else [result.echo_p99_ms],
                refs={}
                if name != OURS
                else {"trio_dtls": (echo_case_name, "trio_dtls")},
                note="; ".join(echo_notes),
            )
        )
    )

    cpu_row = _cpu_row(bench, name, kind, case)
    per_handshake = result.server_cpu_per_handshake
    if per_handshake is not None:
        cpu_row.samples = [per_handshake * 1e6]
    cpu_row.raw = [
        {"server_seconds": result.cpu.server_seconds, "handshakes": result.completed}
    ]
    _note_cpu(cpu_row, [result.cpu])
    notes = [
        f"{result.completed:,} handshakes, each with its close_notify"
        if result.completed
        else "no handshake completed",
        f"{result.echo_round_trips:,} echo round trips",
    ]
    if echo_cost is not None and result.completed:
        share = result.echo_round_trips * echo_cost / result.completed
        notes[-1] += f" (~{share * 1e6:.0f} us/hs at their cost before the storm)"
    if result.wedged:
        notes.append(f"{result.wedged:,} wedged, left out")
    cpu_row.note = "; ".join(notes)
    _log_row(cpu_row)


# ----------------------------------------------------------- memory per peer


def memory_scenario(bench: Bench) -> None:
    """Server RSS growth per established idle peer, in a fresh server each."""
    s = bench.settings
    bench.skip_unavailable(MEMORY, ("trio_dtls", OURS))
    for name in bench.available(("trio_dtls", OURS)):
        log(f"memory: {name}: establishing {max(s.memory_peers):,} idle peers")
        try:
            with ServerProcess(ServerConfig(name), bench.server_cpus) as server:
                rows = _memory_run(bench, name, server)
        except Exception as exc:
            bench.skip(MEMORY, "all cases", name, describe(exc))
            continue
        for row in rows:
            bench.report.add(row)
            _log_row(row)


def _memory_run(bench: Bench, name: str, server: ServerProcess) -> list[Row]:
    s = bench.settings
    rows: list[Row] = []
    refs = {"engine": (ENGINE_SERVER_HALF_CASE, ENGINE)}
    with contextlib.ExitStack() as stack:
        # A few peers first, so one-time allocations are not counted per peer.
        stack.enter_context(load.idle_peers(server.address, 20))
        base = server.request("rss")["rss"]
        established = 0
        for wanted in s.memory_peers:
            batch = stack.enter_context(
                load.idle_peers(
                    server.address,
                    wanted - established,
                    start_within=min(
                        10 + (wanted - established) / 50, s.establish_timeout
                    ),
                )
            )
            established += len(batch.sockets)
            if not established:
                raise RuntimeError("no peer could be established")
            if batch.seconds > 0:
                bench.establish_rate[name] = len(batch.sockets) / batch.seconds
            rss = server.request("rss")["rss"]
            stats = server.request("stats").get("stats")
            case = f"{wanted:,} idle peers"
            row_refs = dict(refs)
            if name == OURS:
                row_refs["trio_dtls"] = (case, "trio_dtls")
            note = (
                [] if established == wanted else [f"only {established:,} established"]
            )
            server_peers = (stats or {}).get("peers")
            if isinstance(server_peers, int) and server_peers < established:
                note.append(f"server reports {server_peers:,} peers")
            rows.append(
                Row(
                    MEMORY,
                    case,
                    name,
                    "KiB",
                    samples=[(rss - base) / established / 1024],
                    refs=row_refs,
                    note="; ".join(note),
                    raw=[
                        {
                            "rss_base": base,
                            "rss": rss,
                            "peers": established,
                            "establish_seconds": batch.seconds,
                            "failures": batch.failures,
                            "stats": stats,
                        }
                    ],
                )
            )
            log(
                f"memory: {name}: {established:,} peers, {batch.seconds:.1f} s for the last batch"
            )
    return rows


# ------------------------------------------------------------------- reaping


@dataclasses.dataclass
class ReapResult:
    peers: int
    reaped: int  # handlers that ended after the idle timeout
    drained: bool  # statistics().peers went back to 0
    idle_timeout: float
    mean_lag: float  # mean of (handler ended - idle deadline), seconds
    max_lag: float
    tail: float  # last idle deadline -> statistics().peers == 0, seconds
    establish_seconds: float
    overlap: float  # how long establishing went on after the first expiry


def reaping_scenario(bench: Bench) -> None:
    s = bench.settings
    small, big = s.reap_peers
    if OURS in bench.unavailable:
        bench.skip(REAPING, "all cases", OURS, bench.unavailable[OURS])
        return
    # Reaping is measured on an otherwise idle server: the idle timeout is
    # stretched past the time it takes to establish all the peers, judged
    # from how fast the memory scenario established them.
    rate = bench.establish_rate.get(OURS, 200.0)
    results: dict[int, ReapResult] = {}
    for count in (small, big):
        idle_timeout = round(
            min(max(s.idle_timeout, 1.3 * count / rate + 0.3), s.max_idle_timeout), 1
        )
        case = f"{count:,} idle peers"
        needed = 2.0 + count / rate + idle_timeout
        if bench.time_left() < needed:
            reason = f"needs ~{needed:.0f} s, {max(bench.time_left(), 0):.0f} s left"
            bench.skip(REAPING, case, OURS, reason, status="skipped (time budget)")
            continue
        log(f"reaping: {count:,} peers, idle timeout {idle_timeout:g} s")
        try:
            config = ServerConfig(OURS, idle_timeout=idle_timeout)
            with ServerProcess(config, bench.server_cpus) as server:
                results[count] = _reap_run(server, count, idle_timeout)
        except Exception as exc:
            bench.skip(REAPING, case, OURS, describe(exc))
            continue
        result = results[count]
        notes = [f"idle timeout {idle_timeout:g} s"]
        if result.peers < count:
            notes.append(f"only {result.peers:,} of {count:,} peers established")
        if result.reaped < result.peers:
            notes.append(f"{result.reaped:,} of {result.peers:,} reaped")
        if not result.drained:
            notes.append("statistics().peers never reached 0")
        if result.overlap > 0:
            notes.append(f"overlapped establishing by {result.overlap:.1f} s")
        for label, value in (
            ("mean lag, idle deadline to handler end", result.mean_lag),
            ("last idle deadline to statistics().peers == 0", result.tail),
        ):
            _log_row(
                bench.report.add(
                    Row(
                        REAPING,
                        f"{case}: {label}",
                        OURS,
                        "ms",
                        samples=[] if math.isnan(value) else [value * 1000],
                        note="; ".join(notes),
                        raw=[dataclasses.asdict(result)],
                    )
                )
            )
    _reap_cost_rows(bench, *s.reap_cost_peers)
    if small in results and big in results and results[small].mean_lag > 0:
        ratio = results[big].mean_lag / results[small].mean_lag
        _log_row(
            bench.report.add(
                Row(
                    REAPING,
                    f"mean lag, {big:,} / {small:,} peers",
                    OURS,
                    "x",
                    samples=[ratio],
                    note="mostly wake-up latency of an idle server; the CPU row is the cost",
                )
            )
        )


def _reap_cost_rows(bench: Bench, small: int, big: int) -> None:
    """CPU per reaped peer, on the virtual clock (``benchmarks/reapcost.py``):
    the cost figure, free of the wake-up latency that dominates the lag rows
    on an idle virtual machine. Deadlines one at a time (the target's
    figure), and, in full runs, all at one instant."""
    variants = [(True, "deadlines 1 ms apart")]
    if not bench.settings.quick:
        variants.append((False, "all deadlines at once"))
    for spread, label in variants:
        costs: dict[int, float] = {}
        for count in (small, big):
            case = f"{count:,} peers: CPU per reaped peer, {label}"
            # Connecting the peers in process takes about 6 ms each.
            timeout = 60.0 + 0.03 * count
            if bench.time_left() < 0.008 * count + 2:
                bench.skip(
                    REAPING, case, OURS, "time budget", status="skipped (time budget)"
                )
                continue
            # Each sample in a fresh process; the quick run only checks that
            # the measurement works, and the burst is information.
            repetitions = 3 if spread and not bench.settings.quick else 1
            log(f"reaping cost: {count:,} peers, {label}, {repetitions} time(s)")
            results = [
                _isolated(
                    bench, reapcost.measure_reap_cost, count, spread, timeout=timeout
                )
                for _ in range(repetitions)
            ]
            failed = [r for r in results if isinstance(r, Exception)]
            if failed:
                bench.skip(REAPING, case, OURS, describe(failed[0]))
                continue
            row = bench.report.add(
                Row(
                    REAPING,
                    case,
                    OURS,
                    "us",
                    samples=[r["cpu_per_peer"] * 1e6 for r in results],
                    raw=results,
                )
            )
            costs[count] = statistics.median(row.samples)
            _log_row(row)
        if small in costs and big in costs and costs[small] > 0:
            _log_row(
                bench.report.add(
                    Row(
                        REAPING,
                        f"CPU per reaped peer, {big:,} / {small:,} peers, {label}",
                        OURS,
                        "x",
                        samples=[costs[big] / costs[small]],
                        note="target <= 1.2: reaping cost is flat"
                        if spread
                        else "information: one burst of reaps",
                    )
                )
            )


def _reap_run(server: ServerProcess, count: int, idle_timeout: float) -> ReapResult:
    server.request("watch_start", 0.002)
    with load.idle_peers(server.address, count, start_within=idle_timeout) as peers:
        if not peers.sockets:
            raise RuntimeError("no peer could be established")
        # Reaping is expected within milliseconds of the deadline; a few
        # seconds of grace is plenty, and keeps a stuck peer from stalling us.
        wait = idle_timeout + 3.0
        watched = server.request("watch_result", wait, wait=wait + 10.0)
        times = server.request("reap_times")["reap_times"]
    lags = [lag for _, lag in times]
    deadlines = [ended - lag for ended, lag in times]
    drained_at = next(
        (
            when
            for when, peers in watched["series"]
            if peers == 0 and when > min(deadlines, default=0)
        ),
        None,
    )
    overlap = max(peers.last_sent_at) - (min(peers.last_sent_at) + idle_timeout)
    return ReapResult(
        peers=len(peers.sockets),
        reaped=len(times),
        drained=bool(watched["drained"]),
        idle_timeout=idle_timeout,
        mean_lag=statistics.fmean(lags) if lags else math.nan,
        max_lag=max(lags, default=math.nan),
        tail=math.nan
        if drained_at is None or not deadlines
        else drained_at - max(deadlines),
        establish_seconds=peers.seconds,
        overlap=max(overlap, 0.0),
    )


# ------------------------------------------------------------------- workers


def workers_scenario(bench: Bench) -> None:
    """``serve_workers`` with 2 workers against 1 (``benchmarks/workers.py``).

    On two CPUs the figures that carry over to a big machine are the costs
    per operation summed over the workers (both servers get the same one
    CPU), the spread of peers, the restart times and the supervisor's CPU.
    """
    s = bench.settings
    report = bench.report
    if OURS in bench.unavailable:
        bench.skip(WORKERS, "all cases", OURS, bench.unavailable[OURS])
        return
    if not sys.platform.startswith("linux"):
        bench.skip(WORKERS, "all cases", OURS, "serve_workers needs Linux")
        return
    needed = 6 + s.repetitions * 2 * (s.handshake_seconds + s.echo_seconds + 0.5)
    if bench.time_left() < needed:
        reason = f"needs ~{needed:.0f} s, {max(bench.time_left(), 0):.0f} s left"
        bench.skip(WORKERS, "all cases", OURS, reason, status="skipped (time budget)")
        return
    log("workers: CPU per operation with 2 workers and with 1, taking turns")
    try:
        costs = workers.measure_costs(
            (1, 2),
            bench.server_cpus,
            repetitions=s.repetitions,
            handshake_seconds=s.handshake_seconds,
            echo_seconds=s.echo_seconds,
        )
    except Exception as exc:
        bench.skip(WORKERS, "CPU per operation", OURS, describe(exc))
    else:
        one, two = costs[1], costs[2]
        for what, unit_case, attribute, slices in (
            ("handshake", "CPU per handshake (50 at once)", "handshake_us", "handshake_slices"),
            ("echo", "CPU per echoed message (100 B, 100 peers, 8 in flight)", "echo_us", "echo_slices"),
        ):
            for result in (one, two):
                plural = "worker" if result.workers == 1 else "workers"
                _log_row(
                    report.add(
                        Row(
                            WORKERS,
                            f"{unit_case}, {result.workers} {plural}",
                            OURS,
                            "us",
                            samples=getattr(result, attribute),
                            note="; ".join(dict.fromkeys(result.notes)),
                            raw=[dataclasses.asdict(result)],
                        )
                    )
                )
            # Pairs of samples taken one after the other: the machine's
            # drift cancels out of each ratio.
            ratios = [
                b / a
                for a, b in zip(
                    getattr(one, attribute), getattr(two, attribute), strict=False
                )
                if a > 0
            ]
            wakeups = [
                statistics.median(getattr(r, slices)) if getattr(r, slices) else math.nan
                for r in (one, two)
            ]
            _log_row(
                report.add(
                    Row(
                        WORKERS,
                        f"CPU per {what}, 2 workers / 1 worker",
                        OURS,
                        "x",
                        samples=ratios,
                        note=f"target 0.9-1.1; wake-ups per {what} "
                        f"{wakeups[0]:.3g} (1) vs {wakeups[1]:.3g} (2): here "
                        "both workers share one CPU",
                    )
                )
            )
        wall = two.wall or math.nan
        _log_row(
            report.add(
                Row(
                    WORKERS,
                    "supervisor CPU while its 2 workers serve, / theirs",
                    OURS,
                    "%",
                    samples=[100 * two.supervisor_cpu / two.worker_cpu]
                    if two.worker_cpu
                    else [],
                    note=f"{two.supervisor_cpu * 1000:.1f} ms in {wall:.1f} s; "
                    f"workers {two.worker_cpu:.2f} s",
                )
            )
        )
    log("workers: spread of 200 peers over 2 workers, and restarts")
    try:
        spread = workers.measure_spread_and_restart(
            bench.server_cpus, peers=200, restarts=s.restarts
        )
    except Exception as exc:
        bench.skip(WORKERS, "spread and restarts", OURS, describe(exc))
        return
    for case, unit, samples, note in (
        (
            f"spread of {spread.peers} peers over 2 workers, max/min",
            "x",
            [spread.spread],
            f"target <= 1.5; {spread.per_worker[0]} and {spread.per_worker[1]}",
        ),
        (
            "worker killed -> replacement forked",
            "ms",
            spread.death_to_fork_ms,
            "on the same socket",
        ),
        (
            "worker killed -> a new handshake done on its socket",
            "ms",
            spread.death_to_handshake_ms,
            "the client starts right after the kill",
        ),
        (
            "one handshake on a live worker (for scale)",
            "ms",
            spread.live_handshake_ms,
            "",
        ),
        (
            "supervisor CPU per restart (the fork)",
            "ms",
            [spread.supervisor_cpu_per_restart_ms],
            "",
        ),
    ):
        notes = [note, *spread.notes]
        _log_row(
            report.add(
                Row(
                    WORKERS,
                    case,
                    OURS,
                    unit,
                    samples=samples,
                    note="; ".join(n for n in notes if n),
                    raw=[dataclasses.asdict(spread)],
                )
            )
        )
