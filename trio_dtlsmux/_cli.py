"""The command line: ``python -m trio_dtlsmux serve | connect | demo``.

* ``serve`` runs a DTLS echo server for any number of peers, with a
  throw-away self-signed certificate unless one is given.
* ``connect`` is a small ``openssl s_client`` in the other direction: lines
  from stdin go out as messages, messages that come back go to stdout.
* ``demo`` (in :mod:`._demo`) runs a server and many clients in one process
  and reports how fast it went.

This module holds the parser of all three commands and runs ``serve`` and
``connect``. What the commands share (exit codes, messages, argument types)
is in :mod:`._console`. The demo's machinery, and the in-memory network it
brings along (:mod:`trio_dtlsmux.testing`), is imported only when ``demo``
runs, so that ``serve`` and ``connect`` never load it.

Exit codes: 0 success (also after Ctrl-C for ``serve``), 1 failure at run
time (a handshake or the network), 2 bad arguments, 130 ``connect``
interrupted.

Everything that can be checked before the event loop starts (arguments,
certificate files, the key log file) is checked first, so a mistake is one
line on stderr and exit code 2 rather than a traceback from inside a task.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import socket as _stdlib_socket
import stat
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import IO, Any

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

from . import __version__
from ._connection import DtlsConnection
from ._console import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    alpn_protocol,
    fail,
    format_address,
    host_port,
    idle_timeout_seconds,
    listen_port,
    one_line,
    peer_text,
    probability,
    run_until_interrupted,
    say,
    seconds,
    usage_error,
    wait_seconds,
    warn,
    whole_number,
    worker_count,
)
from ._cookies import cookie_keys
from ._endpoint import DtlsEndpoint
from ._errors import (
    ConnectionTimedOut,
    HandshakeError,
    PeerAlert,
    PeerClosed,
    PeerRestarted,
)
from ._records import MAX_PLAINTEXT
from ._statistics import EndpointStatistics
from ._workers import serve_workers
from .contexts import _base_context, client_context, self_signed, server_context

__all__ = ["build_parser", "main"]

DEFAULT_PORT = 4433

_log = logging.getLogger("trio_dtlsmux.cli")

# The demo's bounds are checked here, while parsing, so that a bad value is
# a usage error without loading the demo. A message must hold the demo's
# header (peer and message number, 4 bytes each) and fit in one record
# (MAX_PLAINTEXT); the demo's own tests run it at both ends of the range.
DEMO_MAX_PEERS = 10_000
DEMO_MIN_SIZE = 8


def build_parser(prog: str = "trio-dtlsmux") -> argparse.ArgumentParser:
    """The argument parser of the whole command line."""
    parser = Parser(
        prog=prog,
        description="DTLS 1.2 over one UDP socket, for Trio: an echo server, "
        "a line-based client and a load demo.",
        epilog="SSLKEYLOGFILE, if set, is where serve and connect write TLS "
        "secrets for Wireshark (as browsers do); --keylog overrides it.",
    )
    parser.add_argument(
        "--version", action="version", version=f"trio-dtlsmux {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run a DTLS echo server",
        description="Run a DTLS 1.2 echo server: every message a peer sends "
        "comes back unchanged. Without --cert it makes a self-signed ECDSA "
        "P-256 certificate for this run and prints its fingerprint. Ctrl-C "
        "or SIGTERM sends close_notify to every peer and exits.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    serve.add_argument(
        "--port",
        type=listen_port,
        default=DEFAULT_PORT,
        help="UDP port; 0 picks a free one (default: %(default)s)",
    )
    serve.add_argument(
        "--cert",
        metavar="PEM",
        help="certificate (chain) file; it may hold the private key too",
    )
    serve.add_argument(
        "--key",
        metavar="PEM",
        help="private key file of --cert (default: read from the --cert file)",
    )
    serve.add_argument(
        "--idle-timeout",
        type=idle_timeout_seconds,
        default=300.0,
        metavar="S",
        help="forget a peer after S seconds of silence; 'none' never does "
        "(default: %(default)g)",
    )
    serve.add_argument(
        "--keylog",
        metavar="FILE",
        help="append TLS secrets to FILE (NSS key log format) for Wireshark "
        "(default: $SSLKEYLOGFILE)",
    )
    serve.add_argument(
        "--stats-every",
        type=seconds,
        metavar="S",
        help="print the endpoint's statistics every S seconds",
    )
    serve.add_argument(
        "--metrics-port",
        type=listen_port,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP on this TCP port; 0 picks a "
        "free one (needs: pip install trio-dtlsmux[metrics])",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="address the metrics listen on (default: %(default)s; the "
        "statistics show how busy the server is, so widen it on purpose)",
    )
    serve.add_argument(
        "--workers",
        type=worker_count,
        metavar="N",
        help="serve the address with N worker processes (Linux; 'auto' is one "
        "per CPU) under a supervisor that restarts them; without it, one process",
    )
    serve.add_argument(
        "--cookie-secret-file",
        metavar="FILE",
        help="the cookie secret shared with other servers of this address: "
        "hex keys of at least 32 bytes, one per line, newest first; the file "
        "must not be readable by other users",
    )
    serve.set_defaults(handler=_serve_command, subparser=serve)

    connect = commands.add_parser(
        "connect",
        help="send stdin's lines to a DTLS server, print what comes back",
        description="Connect to a DTLS 1.2 server. Each line read from stdin "
        "(newline included) is sent as one message; each message received is "
        "written to stdout unchanged. At the end of input it waits until as "
        "many messages have come back as it sent (at most --wait seconds), "
        "then sends close_notify and exits. The server's certificate is checked against the system's "
        "trusted CAs and the host name unless told otherwise.",
    )
    connect.add_argument(
        "address",
        type=host_port,
        metavar="HOST:PORT",
        help="the server, e.g. localhost:4433 or [::1]:4433",
    )
    trust = connect.add_mutually_exclusive_group()
    trust.add_argument(
        "--cafile",
        metavar="PEM",
        help="trust the CAs in this file instead of the system's",
    )
    trust.add_argument(
        "--fingerprint",
        metavar="SHA256",
        help="accept exactly the certificate with this SHA-256 fingerprint "
        "(hex, ':' optional); no CA or host name check",
    )
    trust.add_argument(
        "--insecure",
        action="store_true",
        help="do not check the server's certificate at all (testing only)",
    )
    connect.add_argument(
        "--alpn",
        action="append",
        type=alpn_protocol,
        metavar="PROTOCOL",
        help="offer this ALPN protocol (repeat for more, most preferred first)",
    )
    connect.add_argument(
        "--wait",
        type=wait_seconds,
        default=2.0,
        metavar="S",
        help="at the end of input, wait at most S seconds for the replies "
        "still due; 0 does not wait (default: %(default)g)",
    )
    connect.add_argument(
        "--keylog",
        metavar="FILE",
        help="append TLS secrets to FILE for Wireshark (default: $SSLKEYLOGFILE)",
    )
    connect.set_defaults(handler=_connect_command, subparser=connect)

    demo = commands.add_parser(
        "demo",
        help="run a server and many clients in this process and measure them",
        description="Start a DTLS echo server and PEERS clients, each with its "
        "own UDP socket, in this one process. Every client handshakes, then "
        "sends MESSAGES messages one at a time and checks each echo. Prints "
        "the rates, latencies and losses. With --loss the datagrams cross a "
        "simulated network that drops that share of them instead of the "
        "loopback interface.",
    )
    demo.add_argument(
        "--peers",
        type=whole_number(1, DEMO_MAX_PEERS),
        default=100,
        help="client peers (default: %(default)s)",
    )
    demo.add_argument(
        "--messages",
        type=whole_number(0, 1_000_000),
        default=100,
        help="round trips per peer (default: %(default)s)",
    )
    demo.add_argument(
        "--size",
        type=whole_number(DEMO_MIN_SIZE, MAX_PLAINTEXT),
        default=100,
        help="bytes per message (default: %(default)s)",
    )
    demo.add_argument(
        "--loss",
        type=probability,
        default=0.0,
        help="share of datagrams to drop, 0 to <1; above 0 uses the simulated "
        "network (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        type=whole_number(0, 2**32 - 1),
        default=1,
        help="seed of the simulated network (default: %(default)s)",
    )
    demo.set_defaults(handler=_demo_command, subparser=demo)
    return parser


def _default_prog() -> str:
    if os.path.basename(sys.argv[0] if sys.argv else "") == "__main__.py":
        return "python -m trio_dtlsmux"
    return "trio-dtlsmux"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code.

    Args:
      argv: the arguments after the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser(_default_prog())
    opts = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace, argparse.ArgumentParser], int]
    handler = opts.handler
    return handler(opts, opts.subparser)


# -- the key log ---------------------------------------------------------------


def _open_keylog(
    opts: argparse.Namespace, parser: argparse.ArgumentParser
) -> IO[bytes] | None:
    """Open the key log file named by --keylog or $SSLKEYLOGFILE.

    A bad --keylog is a usage error. A bad $SSLKEYLOGFILE only earns a
    warning, as in browsers: the variable may be meant for some other program.
    """
    path: str | None = opts.keylog
    from_environment = False
    if path is None:
        path = os.environ.get("SSLKEYLOGFILE") or None
        from_environment = True
    if path is None:
        return None
    try:
        # Key log lines are appended and flushed one at a time, like NSS does.
        return open(path, "ab")  # the caller closes it
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if from_environment:
            warn(
                parser.prog,
                f"SSLKEYLOGFILE {path!r} cannot be opened ({reason}); not logging keys",
            )
            return None
        usage_error(parser, f"--keylog {path!r} cannot be opened: {reason}")


# -- serve ---------------------------------------------------------------------


def _read_quietly(path: str) -> bytes | None:
    """The file's bytes, or None: server_context reports unreadable files."""
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError:
        return None


def _certificate_fingerprint(pem: bytes | None) -> str | None:
    if pem is None:
        return None
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        return None
    digest = certificates[0].fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02x}" for byte in digest)


def _serve_command(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if opts.cert is None and opts.key is not None:
        usage_error(parser, "--key needs --cert")
    if opts.cert is None:
        identity = self_signed()
        context = server_context(identity)
        fingerprint: str | None = identity.fingerprint
        origin = (
            "self-signed ECDSA P-256 certificate made for this run "
            f"(CN=localhost, not written to disk, valid until "
            f"{identity.certificate.not_valid_after_utc:%Y-%m-%d})"
        )
    else:
        pem = _read_quietly(opts.cert)
        if opts.key is None and pem is not None and b"PRIVATE KEY-----" not in pem:
            # Said here rather than by server_context, which cannot know
            # that the key may come from an option called --key.
            usage_error(
                parser,
                f"{opts.cert!r} holds no private key: name the key's file with "
                "--key, or put the key in the same file after the certificate",
            )
        try:
            # Without --key, server_context reads the key from the cert file.
            context = server_context(opts.cert, opts.key)
        except (ValueError, TypeError) as exc:
            usage_error(parser, str(exc))
        fingerprint = _certificate_fingerprint(pem)
        origin = f"certificate from {opts.cert}"
    if opts.metrics_port is not None and opts.workers is not None:
        usage_error(
            parser,
            "--metrics-port serves one process's endpoint; with --workers, "
            "export each worker's statistics from your own program "
            "(serve_workers(worker_task=...)) instead",
        )
    if opts.metrics_port is not None:
        # Checked before the event loop, so a missing extra is one line.
        try:
            from . import metrics  # noqa: F401
        except ImportError as exc:
            usage_error(parser, str(exc))
    cookie_secret = None
    if opts.cookie_secret_file is not None:
        try:
            cookie_secret = read_cookie_secret(opts.cookie_secret_file)
        except ValueError as exc:
            usage_error(parser, f"--cookie-secret-file: {exc}")
    keylog = _open_keylog(opts, parser)
    _setup_logging(with_pid=opts.workers is not None)
    banner = _Banner(origin, fingerprint, keylog)
    try:
        if opts.workers is not None:
            return _serve_with_workers(opts, parser.prog, context, banner, cookie_secret)
        return run_until_interrupted(
            _serve,
            opts,
            parser.prog,
            context,
            banner,
            cookie_secret,
            interrupted=EXIT_OK,
        )
    finally:
        if keylog is not None:
            keylog.close()


def read_cookie_secret(path: str) -> tuple[bytes, ...]:
    """The key ring in a cookie secret file, newest key first.

    One key per line, in hex (``openssl rand -hex 32`` makes one); blank
    lines and lines that start with ``#`` are skipped. The file must not be
    readable or writable by other users: anyone who reads it can make
    cookies for any address, so a cookie no longer proves that a client
    receives at its address.

    Raises:
      ValueError: the file cannot be read, is open to other users, or holds
        no key, a line that is not hex, or a key that is too short.
    """
    try:
        with open(path, "rb") as stream:
            mode = os.fstat(stream.fileno()).st_mode
            data = stream.read()
    except OSError as exc:
        raise ValueError(f"{path!r} cannot be read: {exc.strerror or exc}") from None
    if stat.S_ISREG(mode) and mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ValueError(
            f"{path!r} is open to every user on this machine (mode "
            f"{stat.S_IMODE(mode):04o}); make it private first: chmod 600 {path}"
        )
    keys = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            keys.append(bytes.fromhex(line.decode("ascii")))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(
                f"line {number} of {path!r} is not a key in hex"
            ) from None
    if not keys:
        raise ValueError(f"{path!r} holds no key (one hex key per line, newest first)")
    try:
        ring = cookie_keys(keys)
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    assert ring is not None
    return ring


def _setup_logging(*, with_pid: bool = False) -> None:
    """Log lines on stderr; with workers, each says which process wrote it.

    The handler is on the library's logger, so that its own lines (each
    failed handshake, rate-limited; the workers' supervisor) appear beside
    the server's.
    """
    library = logging.getLogger("trio_dtlsmux")
    if library.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    form = "%(asctime)s [%(process)d] %(message)s" if with_pid else "%(asctime)s %(message)s"
    handler.setFormatter(logging.Formatter(form, "%H:%M:%S"))
    library.addHandler(handler)
    library.setLevel(logging.INFO)
    library.propagate = False


async def _bind(host: str, port: int) -> trio.socket.SocketType:
    infos = await trio.socket.getaddrinfo(
        host,
        port,
        type=_stdlib_socket.SOCK_DGRAM,
        flags=_stdlib_socket.AI_PASSIVE,
    )
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"{host!r} has no address")
    family, _, _, _, address = infos[0]
    sock = trio.socket.socket(family, _stdlib_socket.SOCK_DGRAM)
    try:
        await sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _reachable_host(host: str) -> str:
    """Where a client on this machine should send to reach ``host``."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host in ("::", "::0"):
        return "::1"
    return host


class _EchoService:
    """The echo handler, with one log line per peer event."""

    def __init__(self, idle_timeout: float | None) -> None:
        self._idle_timeout = idle_timeout
        self.active = 0

    async def __call__(self, conn: DtlsConnection) -> None:
        peer = peer_text(conn.peer_address)
        self.active += 1
        details = ", ".join(
            part
            for part in (
                conn.version,
                conn.cipher,
                f"SNI {conn.server_hostname}" if conn.server_hostname else None,
                f"ALPN {conn.alpn_protocol.decode('ascii', 'replace')}"
                if conn.alpn_protocol
                else None,
            )
            if part
        )
        _log.info("%s handshake done (%s); %d peer(s)", peer, details, self.active)
        echoed = 0
        try:
            async for message in conn:
                try:
                    await conn.send(message)
                except ValueError as exc:
                    # Bigger than our MTU allows (the peer's may be larger):
                    # drop this one rather than the server.
                    _log.warning("%s message not echoed: %s", peer, one_line(exc))
                    continue
                echoed += 1
        except trio.Cancelled:
            _log.info("%s closing: server shutting down (%d echoed)", peer, echoed)
            raise
        except ConnectionTimedOut:
            _log.info(
                "%s reaped: silent for %s s, the idle timeout (%d echoed)",
                peer,
                f"{self._idle_timeout:g}" if self._idle_timeout else "?",
                echoed,
            )
        except PeerRestarted:
            _log.info(
                "%s restarted: a new handshake from the same address replaced "
                "this connection (%d echoed)",
                peer,
                echoed,
            )
        except PeerAlert as exc:
            _log.info(
                "%s ended by the peer's fatal alert: %s (%d echoed)",
                peer,
                exc.alert,
                echoed,
            )
        except PeerClosed:
            _log.info("%s closed by the peer (close_notify) (%d echoed)", peer, echoed)
        except trio.BrokenResourceError as exc:
            _log.info("%s lost: %s (%d echoed)", peer, one_line(exc), echoed)
        except trio.ClosedResourceError:
            _log.info("%s closed: server shutting down (%d echoed)", peer, echoed)
        else:
            _log.info("%s closed by the peer (close_notify) (%d echoed)", peer, echoed)
        finally:
            self.active -= 1


def format_statistics(stats: EndpointStatistics) -> str:
    """One line with an endpoint's counters."""
    failed = ",".join(
        f"{reason}:{count}" for reason, count in sorted(stats.handshakes_failed.items())
    )
    return (
        f"stats: peers={stats.peers} handshaking={stats.handshakes_in_progress} "
        f"waiting={stats.hellos_waiting} "
        f"handshakes={stats.handshakes_completed} failed={failed or 0} "
        f"cookies={stats.cookies_sent} bad_cookies={stats.cookie_failures} "
        f"reaped={stats.peers_reaped} restarted={stats.peers_restarted} "
        f"junk={stats.junk_dropped} over_limits={stats.hellos_dropped_limits} "
        f"datagrams_in={stats.datagrams_in} datagrams_out={stats.datagrams_out} "
        f"bytes_in={stats.bytes_in} bytes_out={stats.bytes_out} "
        f"socket_errors={stats.socket_errors}"
    )


async def _print_statistics(
    endpoint: DtlsEndpoint, every: float, prefix: str = ""
) -> None:
    while True:
        await trio.sleep(every)
        say(prefix + format_statistics(endpoint.statistics()))


class _Banner:
    """What ``serve`` says about itself once it listens."""

    def __init__(
        self, origin: str, fingerprint: str | None, keylog: IO[bytes] | None
    ) -> None:
        self.origin = origin
        self.fingerprint = fingerprint
        self.keylog = keylog

    def show(self, host: str, port: int, workers: tuple[int, ...] | None = None) -> None:
        target = format_address(_reachable_host(host), port)
        fingerprint = self.fingerprint
        say(f"trio-dtlsmux {__version__}: DTLS 1.2 echo server")
        say(f"certificate: {self.origin}")
        if fingerprint is not None:
            say(f"SHA-256 fingerprint: {fingerprint}")
        say("talk to it with:")
        say(f"  openssl s_client -dtls1_2 -connect {target}")
        if fingerprint is not None:
            say(f"  python -m trio_dtlsmux connect {target} --fingerprint {fingerprint}")
        if self.keylog is not None:
            say(f"key log: {getattr(self.keylog, 'name', self.keylog)}")
        if workers is not None:
            say(f"workers: {len(workers)} (pids {', '.join(map(str, workers))})")
        say(f"listening on {format_address(host, port)} (Ctrl-C to stop)")


async def _serve(
    opts: argparse.Namespace,
    prog: str,
    context: SSL.Context,
    banner: _Banner,
    cookie_secret: tuple[bytes, ...] | None,
) -> int:
    # Take over SIGINT/SIGTERM before anything else, so that a Ctrl-C is a
    # request to shut down rather than an exception at a random checkpoint.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            sock = await _bind(opts.host, opts.port)
        except OSError as exc:
            fail(
                prog,
                f"cannot listen on {format_address(opts.host, opts.port)}: {exc.strerror or exc}",
            )
            return EXIT_FAILURE
        host, port = sock.getsockname()[:2]
        async with DtlsEndpoint(
            sock,
            server_context=context,
            cookie_secret=cookie_secret,
            idle_timeout=opts.idle_timeout,
            keylog=banner.keylog,
        ) as endpoint:
            service = _EchoService(opts.idle_timeout)
            async with trio.open_nursery() as nursery:
                await nursery.start(endpoint.serve, service)
                banner.show(host, port)
                if opts.stats_every is not None:
                    nursery.start_soon(_print_statistics, endpoint, opts.stats_every)
                exporting = contextlib.ExitStack()
                if opts.metrics_port is not None:
                    from . import metrics

                    exporting.enter_context(metrics.register(endpoint))
                    try:
                        metrics_host, metrics_port = await nursery.start(
                            functools.partial(
                                metrics.serve_metrics,
                                opts.metrics_port,
                                host=opts.metrics_host,
                            )
                        )
                    except OSError as exc:
                        exporting.close()
                        fail(prog, f"cannot serve metrics: {exc.strerror or exc}")
                        nursery.cancel_scope.cancel()
                        return EXIT_FAILURE
                    say(
                        "metrics on "
                        f"http://{format_address(metrics_host, metrics_port)}/metrics"
                    )
                with exporting:
                    async for signum in signals:
                        _log.info(
                            "%s: shutting down, sending close_notify to %d peer(s)",
                            signal.Signals(signum).name,
                            endpoint.statistics().peers,
                        )
                        break
                nursery.cancel_scope.cancel()
        final = endpoint.statistics()
    _log.info(
        "stopped after %d handshake(s); %d datagrams in, %d out",
        final.handshakes_completed,
        final.datagrams_in,
        final.datagrams_out,
    )
    return EXIT_OK


def _serve_with_workers(
    opts: argparse.Namespace,
    prog: str,
    context: SSL.Context,
    banner: _Banner,
    cookie_secret: tuple[bytes, ...] | None,
) -> int:
    """``serve --workers N``: the same echo service in N processes."""
    stats_every: float | None = opts.stats_every

    async def print_statistics(endpoint: DtlsEndpoint) -> None:
        assert stats_every is not None
        await _print_statistics(endpoint, stats_every, prefix=f"[{os.getpid()}] ")

    def started(address: tuple[Any, ...], pids: tuple[int, ...]) -> None:
        banner.show(address[0], address[1], pids)

    try:
        serve_workers(
            _EchoService(opts.idle_timeout),
            (opts.host, opts.port),
            workers=opts.workers,
            server_context=context,
            cookie_secret=cookie_secret,
            started=started,
            worker_task=None if stats_every is None else print_statistics,
            idle_timeout=opts.idle_timeout,
            keylog=banner.keylog,
        )
    except (NotImplementedError, OSError) as exc:
        where = format_address(opts.host, opts.port)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        fail(prog, f"cannot serve {where} with workers: {reason}")
        return EXIT_FAILURE
    except KeyboardInterrupt:  # before the supervisor took the signals over
        return EXIT_OK
    return EXIT_OK


# -- connect -------------------------------------------------------------------


def _insecure_context(alpn: Sequence[str] | None) -> SSL.Context:
    """What :func:`client_context` builds, minus the certificate check.

    It starts from the same base context (versions, cipher suites, options),
    so that --insecure changes what is verified and nothing else: what the
    client offers on the wire stays the library's choice.
    """
    context = _base_context()
    context.set_verify(SSL.VERIFY_NONE)
    if alpn:
        # The names were checked while parsing (alpn_protocol).
        context.set_alpn_protos([name.encode("ascii") for name in alpn])
    return context


def _connect_command(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    host, port = opts.address
    server_hostname: str | bool | None = None
    try:
        if opts.insecure:
            context = _insecure_context(opts.alpn)
            # No certificate check at all; the name is only sent as SNI.
            server_hostname = host
            verification = "certificate NOT checked"
        elif opts.fingerprint is not None:
            context = client_context(fingerprint=opts.fingerprint, alpn=opts.alpn)
            # The pin says who the server is; its name does not matter.
            server_hostname = False
            verification = "certificate matches the pinned fingerprint"
        else:
            context = client_context(cafile=opts.cafile, alpn=opts.alpn)
            trusted = opts.cafile or "the system's CAs"
            verification = f"certificate verified for {host} by {trusted}"
    except (ValueError, TypeError) as exc:
        usage_error(parser, str(exc))
    keylog = _open_keylog(opts, parser)
    if opts.insecure:
        warn(
            parser.prog,
            "--insecure: the server's certificate is not checked, so anyone on "
            "the path can pose as the server",
        )
    try:
        return run_until_interrupted(
            _connect,
            parser.prog,
            host,
            port,
            context,
            server_hostname,
            verification,
            keylog,
            opts.wait,
            interrupted=EXIT_INTERRUPTED,
        )
    finally:
        if keylog is not None:
            keylog.close()


class _ThreadReader(trio.abc.ReceiveStream):
    """Reads a file descriptor in a worker thread.

    For what :class:`trio.lowlevel.FdStream` cannot or should not wait on
    (regular files, terminals) and for Windows. ``os.read`` holds no Python-level lock, so a read left
    behind by a cancellation cannot wedge the interpreter at exit.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await trio.to_thread.run_sync(
            os.read, self._fd, max_bytes or 65536, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def open_stdin() -> trio.abc.ReceiveStream:
    """An async byte stream of this process's standard input."""
    if sys.platform != "win32":
        try:
            mode = os.fstat(0).st_mode
        except OSError:
            mode = 0
        # Not for terminals: FdStream makes the descriptor non-blocking, and
        # a terminal usually shares that flag with stdout and stderr, whose
        # plain writes could then fail with BlockingIOError.
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return trio.lowlevel.FdStream(os.dup(0))
    return _ThreadReader(0)


def _write_stdout(data: bytes) -> bool:
    """Write and flush; False once stdout is gone (a closed pipe)."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        # Keep the interpreter from failing again when it flushes at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return False
    return True


def _split_for_mtu(line: bytes, limit: int) -> list[bytes]:
    return [line[start : start + limit] for start in range(0, len(line), limit)]


class _Session:
    """One ``connect`` run after the handshake: each line of the input goes
    out as a message, each message that comes back is written out.

    The input may end before the replies arrive (piped input always does),
    so at its end the session waits until as many messages have come back
    as went out, for at most ``wait`` seconds, and only then says goodbye
    with close_notify. Counting is the best it can do: DTLS messages carry
    no request ids, and a server need not answer each message with one.
    """

    def __init__(
        self,
        prog: str,
        conn: DtlsConnection,
        peer: str,
        *,
        wait: float,
        write: Callable[[bytes], bool] = _write_stdout,
    ) -> None:
        self.prog = prog
        self.conn = conn
        self.peer = peer
        self.wait = wait
        self._write = write
        self.exit_code = EXIT_OK
        self.sent = 0
        self.received = 0
        self._answered = trio.Event()
        self._warned_split = False

    async def run(self, source: trio.abc.ReceiveStream) -> int:
        """Send ``source``'s lines until it ends, wait for the replies and
        close; or stop early when the connection ends. Returns the exit code."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._print_replies, nursery.cancel_scope)
            if await self._send_input(source):
                await self._wait_for_replies()
                await self.conn.aclose()
            nursery.cancel_scope.cancel()
        return self.exit_code

    async def _send_input(self, source: trio.abc.ReceiveStream) -> bool:
        """Send every line of ``source``; False if the connection broke."""
        limit = self.conn.get_cleartext_mtu()
        pending = b""
        while chunk := await source.receive_some(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not await self._send(line + b"\n", limit):
                    return False
        return not pending or await self._send(pending, limit)

    async def _send(self, message: bytes, limit: int) -> bool:
        pieces = [message] if len(message) <= limit else _split_for_mtu(message, limit)
        if len(pieces) > 1 and not self._warned_split:
            self._warned_split = True
            warn(
                self.prog,
                f"a line of {len(message)} bytes is longer than one DTLS record "
                f"can carry here ({limit} bytes); sending it in pieces",
            )
        for piece in pieces:
            # Counted before it goes: its reply may be read before send()
            # returns.
            self.sent += 1
            try:
                await self.conn.send(piece)
            except trio.BrokenResourceError as exc:
                fail(self.prog, f"connection to {self.peer} lost: {exc}")
                self.exit_code = EXIT_FAILURE
                return False
        return True

    async def _wait_for_replies(self) -> None:
        if self.wait <= 0 or self.received >= self.sent:
            return
        self._answered = trio.Event()
        with trio.move_on_after(self.wait) as waiting:
            await self._answered.wait()
        if waiting.cancelled_caught:
            # Not an error (a server need not answer everything), but worth
            # knowing when the output looks short.
            print(
                f"{self.prog}: {self.received} message(s) back for {self.sent} "
                f"sent when --wait ({self.wait:g} s) ran out",
                file=sys.stderr,
                flush=True,
            )

    async def _print_replies(self, done: trio.CancelScope) -> None:
        try:
            async for message in self.conn:
                if not self._write(message):
                    await self.conn.aclose()
                    break
                self.received += 1
                if self.received >= self.sent:
                    self._answered.set()
            else:
                print(
                    f"{self.prog}: {self.peer} closed the connection",
                    file=sys.stderr,
                    flush=True,
                )
        except trio.ClosedResourceError:
            return  # we closed it; whoever did will finish up
        except trio.BrokenResourceError as exc:
            fail(self.prog, f"connection to {self.peer} lost: {exc}")
            self.exit_code = EXIT_FAILURE
        done.cancel()


async def _watch_signals(
    signals: Any, on_signal: Callable[[], Awaitable[None]]
) -> None:
    async for _ in signals:
        await on_signal()
        return


async def _connect(
    prog: str,
    host: str,
    port: int,
    context: SSL.Context,
    server_hostname: str | bool | None,
    verification: str,
    keylog: IO[bytes] | None,
    wait: float,
) -> int:
    peer = format_address(host, port)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            infos = await trio.socket.getaddrinfo(
                host, port, type=_stdlib_socket.SOCK_DGRAM
            )
            family = infos[0][0]
            sock = trio.socket.socket(family, _stdlib_socket.SOCK_DGRAM)
        except OSError as exc:
            fail(prog, f"cannot reach {peer}: {exc.strerror or exc}")
            return EXIT_FAILURE
        try:
            await sock.bind(
                ("::" if family == _stdlib_socket.AF_INET6 else "0.0.0.0", 0)
            )
        except OSError as exc:
            sock.close()
            fail(prog, f"cannot reach {peer}: {exc.strerror or exc}")
            return EXIT_FAILURE
        session: _Session | None = None
        interrupted = False
        async with (
            DtlsEndpoint(sock, keylog=keylog) as endpoint,
            trio.open_nursery() as nursery,
        ):

            async def stop() -> None:
                nonlocal interrupted
                interrupted = True
                if session is not None:
                    await session.conn.aclose()
                nursery.cancel_scope.cancel()

            nursery.start_soon(_watch_signals, signals, stop)
            try:
                conn = await endpoint.connect(
                    (host, port), context, server_hostname=server_hostname
                )
            except HandshakeError as exc:
                fail(prog, f"handshake with {peer} failed: {exc.reason}")
                nursery.cancel_scope.cancel()  # the signal watcher
                return EXIT_FAILURE
            except (OSError, ValueError) as exc:
                fail(prog, f"cannot connect to {peer}: {exc}")
                nursery.cancel_scope.cancel()
                return EXIT_FAILURE
            session = _Session(prog, conn, peer, wait=wait)
            alpn = conn.alpn_protocol
            details = ", ".join(
                part
                for part in (
                    conn.version,
                    conn.cipher,
                    verification,
                    f"ALPN {alpn.decode('ascii', 'replace')}" if alpn else None,
                )
                if part
            )
            print(
                f"{prog}: connected to {peer} ({details})", file=sys.stderr, flush=True
            )
            async with open_stdin() as stdin:
                await session.run(stdin)
            nursery.cancel_scope.cancel()  # the signal watcher
    if interrupted:
        return EXIT_INTERRUPTED
    assert session is not None
    return session.exit_code


# -- demo ----------------------------------------------------------------------


def _demo_command(opts: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Imported here rather than at the top: the demo brings the in-memory
    # network (trio_dtlsmux.testing), which serve and connect never use and
    # should not pay for at every start. There is no cycle to hide: _demo
    # imports nothing from this module.
    from ._demo import DemoOptions, run_demo

    options = DemoOptions(
        peers=opts.peers,
        messages=opts.messages,
        size=opts.size,
        loss=opts.loss,
        seed=opts.seed,
    )
    if options.loss == 0:
        problem = _ensure_descriptors(options.peers + 64)
        if problem is not None:
            parser.error(problem)
    try:
        return run_until_interrupted(run_demo, options, interrupted=EXIT_INTERRUPTED)
    finally:
        # A progress line may have been left without its newline.
        sys.stdout.flush()


def _ensure_descriptors(needed: int) -> str | None:
    """Raise the open-file limit to ``needed`` if allowed; a reason if not."""
    if sys.platform == "win32":
        return None
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        target = soft
    if target >= needed:
        return None
    return (
        f"--peers needs about {needed} open files (one socket per peer), but "
        f"this process may open only {target}; raise the limit (ulimit -n) or "
        "use fewer peers"
    )
