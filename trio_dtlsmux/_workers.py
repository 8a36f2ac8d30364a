"""One service address on many cores: worker processes under a supervisor.

Theory of operation
-------------------

An endpoint is one Trio task reading one socket, so it uses one core. To use
more, :func:`serve_workers` runs several worker processes, each with its own
:class:`~trio_dtlsmux.DtlsEndpoint` on its own UDP socket, all bound to the
same address with ``SO_REUSEPORT``. Linux then spreads the datagrams over the
sockets by a hash of the source and destination addresses and ports, so all
datagrams of one peer reach the same socket, and therefore the same worker
and the association that worker holds (the design's one-association-per-
address rule still holds within each worker).

What DTLS adds to an ordinary pre-fork server:

* **The sockets belong to the supervisor.** Linux picks a socket by the
  hash modulo the number of sockets in the group, in the order they joined.
  If a dead worker's socket closed and its replacement bound a new one, the
  group would shrink and grow again in a different order, and peers of
  *other* workers would suddenly reach a worker that has never heard of them
  and must handshake again. So the supervisor binds every socket once, before
  any worker exists, and keeps them open for its whole life; a worker gets
  its socket by inheritance (``fork``) and a replacement gets the very same
  one. While a worker is down, its peers' datagrams wait in its socket's
  receive buffer (or are dropped when it is full); the replacement finds no
  association for them, counts them as junk, and serves the peers again as
  soon as they make a new handshake. Peers of the other workers notice
  nothing.
* **Cookies verify in every worker.** The supervisor makes one cookie secret
  (or takes the caller's) and gives it to every endpoint, so a cookie is good
  whichever worker gets the second ClientHello (see :mod:`._cookies`).
* **One server context for all.** The context is prepared once, before the
  first fork, and every worker inherits it, session ticket keys included:
  OpenSSL generates those randomly per ``SSL_CTX`` when the context is made,
  so every worker of one supervisor accepts the tickets the others issue.
  (OpenSSL reseeds its random generator in a forked child, so nothing else
  random is shared.)

The workers are made with ``os.fork`` rather than ``multiprocessing``: the
handler, the context and the options are inherited, not pickled, so any
callable works, closures included. The price is the usual one of fork: call
:func:`serve_workers` from the main thread, outside ``trio.run``, before
starting threads that the workers would need (threads do not survive a fork).

The supervisor itself does nothing but wait: for a signal (``SIGCHLD`` when a
worker ends; ``SIGINT`` or ``SIGTERM`` to stop), through a wakeup pipe that
Python's signal handling writes to, and for the time of a restart that was
put off. It never polls. A worker that dies is replaced at once on the same
socket; one that dies within a second of starting is replaced after a delay
that doubles with every such death (up to 30 s), so that a handler that
cannot start does not turn the supervisor into a fork loop. A worker ends on
``SIGTERM`` or ``SIGINT`` by closing its endpoint, which sends close_notify to
its peers; it also ends if the supervisor vanishes (the read end of a pipe
whose write end only the supervisor holds becomes readable at end of file).
``SIGTERM`` sent to one worker therefore restarts just that worker, politely.

Linux only: ``SO_REUSEPORT`` balances UDP datagrams over the sockets of a
group on Linux (since 3.9); on the BSDs and macOS it does not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import signal
import socket as _stdlib_socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Any

import trio
from OpenSSL import SSL

from ._config import make_config
from ._connection import DtlsConnection
from ._cookies import MIN_KEY_LENGTH, cookie_keys
from ._demux import prepare_server_context
from ._endpoint import DtlsEndpoint

__all__ = ["MAX_WORKERS", "available_cpus", "serve_workers"]

_log = logging.getLogger("trio_dtlsmux.workers")

#: A guard against a typo forking a process per unit of something else.
MAX_WORKERS = 1024
#: A worker that lived less than this is restarted only after a delay.
_MIN_UPTIME = 1.0
_FIRST_DELAY = 0.5
_MAX_DELAY = 30.0
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_HANDLED = (*_STOP_SIGNALS, signal.SIGCHLD)

Handler = Callable[[DtlsConnection], Awaitable[object]]
WorkerTask = Callable[[DtlsEndpoint], Awaitable[object]]
Started = Callable[[tuple[Any, ...], tuple[int, ...]], object]


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, where known)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_platform() -> None:
    if not sys.platform.startswith("linux") or not hasattr(
        _stdlib_socket, "SO_REUSEPORT"
    ):
        raise NotImplementedError(
            "serve_workers needs Linux: it relies on SO_REUSEPORT spreading UDP "
            f"datagrams over the sockets of a group, which {sys.platform} does "
            "not do; run one DtlsEndpoint per process on separate ports behind a "
            "load balancer instead"
        )
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "serve_workers must be called from the main thread (it handles "
            "SIGINT, SIGTERM and SIGCHLD)"
        )
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return
    raise RuntimeError(
        "serve_workers runs trio.run in every worker; call it outside trio.run, "
        "as you would call trio.run itself"
    )


def _bind_all(address: tuple[Any, ...], count: int) -> list[_stdlib_socket.socket]:
    """``count`` UDP sockets in one SO_REUSEPORT group on ``address``."""
    if not isinstance(address, tuple) or len(address) < 2:
        raise ValueError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    infos = _stdlib_socket.getaddrinfo(
        host,
        port,
        type=_stdlib_socket.SOCK_DGRAM,
        flags=_stdlib_socket.AI_PASSIVE,
    )
    family, _, _, _, sockaddr = infos[0]
    if sockaddr[1] == 0:
        # Port 0 with SO_REUSEPORT could join another group of the same user
        # that happens to use the port the kernel picks (Linux lets reuseport
        # sockets of one user share a port), so pick a free port without it.
        with _stdlib_socket.socket(family, _stdlib_socket.SOCK_DGRAM) as probe:
            probe.bind(sockaddr)
            sockaddr = (sockaddr[0], probe.getsockname()[1], *sockaddr[2:])
    sockets: list[_stdlib_socket.socket] = []
    try:
        for _ in range(count):
            sock = _stdlib_socket.socket(family, _stdlib_socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
            sock.set_inheritable(False)
            sock.bind(sockaddr)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# -- the worker process ---------------------------------------------------------


async def _watch_lifeline(fd: int, scope: trio.CancelScope) -> None:
    """End the worker when the supervisor is gone (end of file on the pipe)."""
    await trio.lowlevel.wait_readable(fd)
    _log.warning("the supervisor is gone; worker %d stopping", os.getpid())
    scope.cancel()


async def _worker(
    sock: _stdlib_socket.socket,
    lifeline: int,
    handler: Handler,
    server_context: SSL.Context,
    cookie_secret: tuple[bytes, ...],
    options: dict[str, Any],
    worker_task: WorkerTask | None,
) -> None:
    with trio.open_signal_receiver(*_STOP_SIGNALS) as signals:
        endpoint = DtlsEndpoint(
            trio.socket.from_stdlib_socket(sock),
            server_context=server_context,
            cookie_secret=cookie_secret,
            **options,
        )
        async with endpoint, trio.open_nursery() as nursery:
            nursery.start_soon(_watch_lifeline, lifeline, nursery.cancel_scope)
            await nursery.start(endpoint.serve, handler)
            if worker_task is not None:
                nursery.start_soon(worker_task, endpoint)
            async for _ in signals:
                break
            # Leaving the endpoint's block sends close_notify to every peer.
            nursery.cancel_scope.cancel()


def _only_interrupts(exc: BaseException) -> bool:
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple):
        return all(_only_interrupts(item) for item in inner)
    return isinstance(exc, KeyboardInterrupt)


def _run_worker(
    sock: _stdlib_socket.socket,
    others: list[_stdlib_socket.socket],
    wakeup: tuple[int, int],
    lifeline: tuple[int, int],
    *args: Any,
) -> int:
    """The body of a freshly forked worker; returns its exit status.

    It starts with the supervisor's signals blocked (see ``spawn``), so that
    nothing reaches the supervisor's handlers and wakeup pipe from here.
    """
    # Undo what the supervisor set up for itself.
    signal.set_wakeup_fd(-1)
    for signum in _HANDLED:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
    for fd in (*wakeup, lifeline[1]):
        os.close(fd)
    for other in others:
        if other is not sock:
            other.close()
    try:
        trio.run(_worker, sock, lifeline[0], *args)
    except BaseException as exc:
        if _only_interrupts(exc):
            return 0
        traceback.print_exc()
        return 1
    return 0


# -- the supervisor -------------------------------------------------------------


class _Slot:
    """One socket and the worker serving it, if any."""

    __slots__ = ("due", "index", "pid", "quick_deaths", "sock", "started")

    def __init__(self, index: int, sock: _stdlib_socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.pid: int | None = None
        self.started = 0.0
        self.quick_deaths = 0
        self.due: float | None = None  # a restart put off until then


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = str(signum)
        return f"killed by {name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


class _Supervisor:
    def __init__(
        self,
        sockets: list[_stdlib_socket.socket],
        worker_args: tuple[Any, ...],
        shutdown_timeout: float,
    ) -> None:
        self.slots = [_Slot(index, sock) for index, sock in enumerate(sockets)]
        self.worker_args = worker_args
        self.shutdown_timeout = shutdown_timeout
        self.wakeup = os.pipe()
        self.lifeline = os.pipe()
        for fd in (*self.wakeup, *self.lifeline):
            os.set_inheritable(fd, False)
        os.set_blocking(self.wakeup[0], False)
        os.set_blocking(self.wakeup[1], False)
        # poll, not select: with many workers the pipe's descriptor may be
        # above select's limit of 1023.
        self.poller = select.poll()
        self.poller.register(self.wakeup[0], select.POLLIN)

    # -- processes --

    def spawn(self, slot: _Slot) -> None:
        # Anything buffered now would be written twice, once by each process.
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: a signal for the new worker that arrived
        # before it has put its own handling in place would otherwise run
        # the supervisor's handler and wake the supervisor, in its name.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HANDLED)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HANDLED)
        if pid == 0:  # pragma: no cover - the child; reported by the tests
            status = 1
            try:
                status = _run_worker(
                    slot.sock,
                    [s.sock for s in self.slots],
                    self.wakeup,
                    self.lifeline,
                    *self.worker_args,
                )
            finally:
                with contextlib.suppress(BaseException):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(status)
        slot.pid = pid
        slot.started = time.monotonic()
        slot.due = None

    def reap(self) -> list[tuple[_Slot, int, int]]:
        """Collect the workers that ended: (slot, old pid, wait status)."""
        ended = []
        for slot in self.slots:
            if slot.pid is None:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: treat as a crash
                pid, status = slot.pid, 1 << 8
            if pid == 0:
                continue
            ended.append((slot, slot.pid, status))
            slot.pid = None
        return ended

    def signal_all(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    # -- waiting --

    def wait(self, timeout: float | None) -> list[int]:
        """Sleep until a signal arrives or ``timeout`` passes; the signals."""
        if timeout is None:
            ready = bool(self.poller.poll())
        else:
            # poll takes milliseconds; round up, so as not to wake early.
            ready = timeout <= 0 or bool(self.poller.poll(math.ceil(timeout * 1000)))
        if not ready:
            return []
        try:
            return list(os.read(self.wakeup[0], 512))
        except BlockingIOError:
            return []

    # -- the life of the pool --

    def run(self, started: Started | None, address: tuple[Any, ...]) -> None:
        for slot in self.slots:
            self.spawn(slot)
        pids = tuple(slot.pid for slot in self.slots if slot.pid is not None)
        host, port = address[0], address[1]
        _log.info(
            "%d worker(s) serving %s: pid(s) %s",
            len(pids),
            f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
            ", ".join(map(str, pids)),
        )
        try:
            if started is not None:
                started(address, pids)
            stop = self.supervise()
        except BaseException:
            self.stop(signal.SIGTERM)
            raise
        self.stop(stop)

    def supervise(self) -> int:
        """Keep every slot served until SIGINT or SIGTERM; returns which."""
        while True:
            now = time.monotonic()
            dues = [slot.due for slot in self.slots if slot.due is not None]
            timeout = None if not dues else max(min(dues) - now, 0.0)
            for signum in self.wait(timeout):
                if signum in _STOP_SIGNALS:
                    return signum
            for slot, pid, status in self.reap():
                self.schedule(slot, pid, status)
            now = time.monotonic()
            for slot in self.slots:
                if slot.pid is None and slot.due is not None and slot.due <= now:
                    self.spawn(slot)
                    _log.info("worker %d restarted as pid %d", slot.index, slot.pid)

    def schedule(self, slot: _Slot, pid: int, status: int) -> None:
        now = time.monotonic()
        if now - slot.started < _MIN_UPTIME:
            slot.quick_deaths += 1
            delay = min(_FIRST_DELAY * 2 ** (slot.quick_deaths - 1), _MAX_DELAY)
        else:
            slot.quick_deaths = 0
            delay = 0.0
        slot.due = now + delay
        how = _describe_status(status)
        if delay:
            _log.warning(
                "worker %d (pid %d) ended (%s) %.1f s after it started; "
                "restarting it in %.1f s",
                slot.index,
                pid,
                how,
                now - slot.started,
                delay,
            )
        else:
            _log.warning("worker %d (pid %d) ended (%s)", slot.index, pid, how)

    def stop(self, signum: int) -> None:
        """Ask every worker to close its peers, wait, then insist."""
        for slot in self.slots:
            slot.due = None
        live = [slot for slot in self.slots if slot.pid is not None]
        _log.info(
            "%s: stopping %d worker(s); each sends close_notify to its peers",
            signal.Signals(signum).name,
            len(live),
        )
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout
        while True:
            for slot, pid, status in self.reap():
                # A worker restarted a moment ago may not handle SIGTERM yet,
                # and simply dies of it: nothing to warn about.
                stopped = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
                if status != 0 and not stopped:
                    _log.warning(
                        "worker %d (pid %d) ended (%s) while stopping",
                        slot.index,
                        pid,
                        _describe_status(status),
                    )
            if all(slot.pid is None for slot in self.slots):
                _log.info("every worker has stopped")
                return
            left = deadline - time.monotonic()
            if left <= 0 or any(s in _STOP_SIGNALS for s in self.wait(left)):
                # Out of time, or asked twice: no more waiting.
                _log.warning("killing the workers that are still running")
                self.signal_all(signal.SIGKILL)
                for slot in self.slots:
                    if slot.pid is not None:
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(slot.pid, 0)
                        slot.pid = None
                return

    def close(self) -> None:
        for fd in (*self.wakeup, *self.lifeline):
            with contextlib.suppress(OSError):
                os.close(fd)


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """Python-level handler: the wakeup pipe already has the signal number."""


def serve_workers(
    handler: Handler,
    address: tuple[Any, ...],
    *,
    workers: int,
    server_context: SSL.Context,
    cookie_secret: bytes | Sequence[bytes] | None = None,
    started: Started | None = None,
    worker_task: WorkerTask | None = None,
    shutdown_timeout: float = 10.0,
    **options: Any,
) -> None:
    """Serve ``address`` with ``workers`` processes, each a
    :class:`DtlsEndpoint` running ``serve(handler)``; blocks until SIGINT or
    SIGTERM, then returns.

    The supervisor (the calling process) binds ``workers`` UDP sockets to
    ``address`` with ``SO_REUSEPORT`` and keeps them, so that Linux always
    sends a peer's datagrams to the same socket; it forks one worker per
    socket, restarts a worker that dies on the same socket (only that
    worker's peers have to handshake again), and on SIGINT or SIGTERM asks
    every worker to send close_notify to its peers and waits for them. See
    :doc:`howto/deploy`.

    Call it like ``trio.run``: from the main thread and outside ``trio.run``.
    The workers are forked, so ``handler`` and the rest are inherited rather
    than pickled: any callable works.

    Args:
      handler: ``await handler(conn)`` for each peer, as in
        :meth:`DtlsEndpoint.serve`; it runs in the worker that holds the peer.
      address: ``(host, port)`` to bind; port 0 picks a free port (``started``
        is told which).
      workers: the number of worker processes, at least 1; see
        :func:`available_cpus`.
      server_context: the server's ``SSL.Context``, prepared here once before
        the workers start; every worker inherits it, session ticket keys
        included.
      cookie_secret: as for :class:`DtlsEndpoint`. By default the supervisor
        makes a random secret that its workers share; pass one to share
        cookies with instances on other hosts too.
      started: called once in the supervisor, as ``started(address, pids)``,
        when every worker has been started: the bound address and the
        workers' process ids.
      worker_task: ``await worker_task(endpoint)`` runs in every worker next
        to ``serve`` (statistics, metrics); the worker's nursery cancels it
        when the worker stops.
      shutdown_timeout: seconds the workers get to close their peers before
        they are killed.
      **options: :class:`EndpointConfig` options for every worker's endpoint.

    Raises:
      NotImplementedError: not on Linux.
      RuntimeError: called from a thread other than the main one, or inside
        ``trio.run``.
      TypeError, ValueError: a bad argument or option (checked before any
        worker starts).
      OSError: the address cannot be bound.
    """
    _check_platform()
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise TypeError(f"workers must be an integer, not {workers!r}")
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be from 1 to {MAX_WORKERS}, not {workers}")
    if not callable(handler):
        raise TypeError(f"handler must be an async function, not {handler!r}")
    if worker_task is not None and not callable(worker_task):
        raise TypeError(f"worker_task must be an async function, not {worker_task!r}")
    if isinstance(shutdown_timeout, bool) or not isinstance(
        shutdown_timeout, (int, float)
    ):
        raise TypeError(f"shutdown_timeout must be seconds, not {shutdown_timeout!r}")
    if not (shutdown_timeout > 0 and math.isfinite(shutdown_timeout)):
        raise ValueError(
            f"shutdown_timeout must be positive and finite, not {shutdown_timeout!r}"
        )
    # Everything a worker would trip over is checked here, once.
    make_config(options)
    keys = cookie_keys(cookie_secret) or (os.urandom(MIN_KEY_LENGTH),)
    prepare_server_context(server_context)

    sockets = _bind_all(address, workers)
    try:
        supervisor = _Supervisor(
            sockets,
            (handler, server_context, keys, dict(options), worker_task),
            float(shutdown_timeout),
        )
        try:
            _supervise(supervisor, started, sockets[0].getsockname())
        finally:
            supervisor.close()
    finally:
        for sock in sockets:
            sock.close()


def _supervise(
    supervisor: _Supervisor, started: Started | None, address: tuple[Any, ...]
) -> None:
    """Run the supervisor with its signal handling in place, then undo it."""
    previous = {signum: signal.getsignal(signum) for signum in _HANDLED}
    old_wakeup = signal.set_wakeup_fd(supervisor.wakeup[1], warn_on_full_buffer=False)
    try:
        for signum in _HANDLED:
            signal.signal(signum, _note_signal)
        supervisor.run(started, address)
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler_before in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):
                signal.signal(signum, handler_before)

