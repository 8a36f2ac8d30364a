"""What reading the kernel's drop count costs, with few and with many UDP sockets.

``python -m benchmarks.kernelcost`` (Linux) opens 10, then 2,000 UDP
sockets on loopback and times one ``kernel_drops`` call on one of them, by
each of its two ways: ``getsockopt(SO_MEMINFO)`` and the ``/proc/net/udp``
table, and one ``read_error_queue`` that finds the queue empty (what the
receive loop pays for a wake-up that brought no datagram). The file's cost grows with every UDP socket in the network
namespace, other processes' included, so the rows the table had are
printed too. Figures are medians of many calls, in microseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import sys
import time
from collections.abc import Callable

import trio

from trio_dtlsmux import _kernel


def _per_call(fn: Callable[[], object], calls: int) -> float:
    """Median microseconds per call over ``calls`` timed calls (after a warm-up)."""
    for _ in range(min(calls, 10)):
        fn()
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def _rows(path: str) -> int:
    with open(path, "rb") as table:
        return table.read().count(b"\n") - 1


def measure(open_sockets: int, calls: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        crowd = []
        for _ in range(open_sockets):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind(("127.0.0.1", 0))
            crowd.append(sock)
        target = crowd[len(crowd) // 2]
        assert _kernel._drops_from_meminfo(target) == _kernel._drops_from_proc(target)
        target.setblocking(False)
        _kernel.enable_error_queue(target)
        trio_sock = trio.socket.from_stdlib_socket(
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        )
        return {
            "sockets opened": open_sockets,
            "rows in /proc/net/udp": _rows("/proc/net/udp"),
            "kernel_drops (stdlib socket), us": _per_call(
                lambda: _kernel.kernel_drops(target), calls
            ),
            "kernel_drops (trio socket, borrowed), us": _per_call(
                lambda: _kernel.kernel_drops(trio_sock), calls
            ),
            "read_error_queue, queue empty, us": _per_call(
                lambda: _kernel.read_error_queue(target), calls
            ),
            "/proc/net/udp path, us": _per_call(
                lambda: _kernel._drops_from_proc(target), max(20, calls // 20)
            ),
        }


def main(argv: list[str] | None = None) -> None:
    if not sys.platform.startswith("linux"):
        sys.exit("Linux only: SO_MEMINFO and /proc/net/udp")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("counts", type=int, nargs="*", default=[10, 2000])
    args = parser.parse_args(argv)
    for count in args.counts:
        for name, value in measure(count, args.calls).items():
            print(f"{name:>42}: {value:,.1f}")
        print()


if __name__ == "__main__":
    main()
