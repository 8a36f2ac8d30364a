"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--json out.json]``.

Progress goes to stderr, the table of figures to stdout. See README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time

from benchmarks import scenarios
from benchmarks.scenarios import Bench, Settings, log
from benchmarks.server import split_cpus


def _raise_fd_limit() -> None:
    """Holding 10,000 idle peers takes one socket each in the load generator."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            wanted = 65536 if hard == resource.RLIM_INFINITY else hard
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, ValueError, OSError):
        pass


def _versions() -> dict[str, str]:
    import cryptography
    import OpenSSL
    import trio
    from OpenSSL import SSL

    versions = {
        "python": platform.python_version(),
        "trio": trio.__version__,
        "pyOpenSSL": OpenSSL.__version__,
        "cryptography": cryptography.__version__,
        "openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
    }
    try:
        from importlib.metadata import version

        versions["trio_dtlsmux"] = version("trio-dtlsmux")
    except Exception:
        versions["trio_dtlsmux"] = "not installed"
    return versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark trio_dtlsmux against raw UDP, trio.DTLSEndpoint "
        "and the bare OpenSSL engine, all measured in this run.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short phases, fewer peers (about a minute)",
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write all raw numbers here"
    )
    args = parser.parse_args(argv)

    _raise_fd_limit()
    settings = Settings.for_mode(args.quick)
    server_cpus = split_cpus()
    bench = Bench(settings, server_cpus)
    started = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat()
    log(f"{'quick' if settings.quick else 'full'} run, {os.cpu_count()} CPUs")
    if server_cpus is None:
        log("servers and load generator share the CPUs (could not pin them)")
    else:
        log(
            f"load generator on CPU {sorted(os.sched_getaffinity(0))}, "
            f"servers on CPU {sorted(server_cpus)}"
        )

    scenarios.engine_speed(bench, "before the servers")
    servers = scenarios.start_servers(bench, bench.available(scenarios.ECHO_ORDER))
    try:
        scenarios.shared_server_scenarios(bench, servers)
    finally:
        for server in servers.values():
            server.close()
    scenarios.storm_scenario(bench)
    scenarios.engine_speed(bench, "after the servers")
    scenarios.zero_overhead_rows(bench)
    scenarios.engine_memory(bench)
    scenarios.memory_scenario(bench)
    scenarios.reaping_scenario(bench)
    scenarios.workers_scenario(bench)

    elapsed = time.perf_counter() - started
    bench.report.meta = {
        "mode": "quick" if settings.quick else "full",
        "started": started_at,
        "seconds": elapsed,
        "cpus": os.cpu_count(),
        "server_cpus": None if server_cpus is None else sorted(server_cpus),
        "platform": platform.platform(),
        "versions": _versions(),
        "settings": dataclasses.asdict(settings),
        "unavailable": bench.unavailable,
    }
    bench.report.print_table()
    unavailable = "; ".join(
        f"{k} unavailable: {v}" for k, v in bench.unavailable.items()
    )
    print(f"\n{elapsed:.1f} s in total{'. ' + unavailable if unavailable else ''}")
    if args.json:
        bench.report.write_json(args.json)
        log(f"raw numbers written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
