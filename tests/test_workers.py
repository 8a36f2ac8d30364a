"""Scaling out: a shared cookie secret, ``serve_workers`` and a real balancer.

The protocol side (cookies that verify in another instance) is tested
without sockets; the supervisor and its workers as a user meets them, with
``python -m trio_dtlsmux serve --workers N`` over loopback UDP; and the
many-hosts recipe with nginx's stream module in front of two ``serve``
processes. Every wait is for a line of output, an event or an exit, bounded
by ``trio.fail_after``; the only fixed waits are the bounds themselves.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsConnection, DtlsEndpoint, SelfSigned, serve_workers
from trio_dtlsmux._config import EndpointConfig
from trio_dtlsmux._cookies import CookieJar
from trio_dtlsmux._demux import Demux
from trio_dtlsmux._events import HandshakeCompleted
from trio_dtlsmux.testing import FakeNetwork, NetworkConditions

from .test_cli import START, STEP, Reader, child_env, serve

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="serve_workers needs Linux"
)
OPENSSL = shutil.which("openssl")
NGINX = shutil.which("nginx")
SECRET = bytes(range(32, 64))

# -- a cookie made by one instance verifies in another ---------------------------

CLIENT = ("192.0.2.7", 40000)
SERVER = ("198.51.100.1", 4433)


def test_a_cookie_from_one_demux_completes_the_handshake_in_another(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    """The second ClientHello reaches another instance than the first (a
    balancer changed its mind, a process was replaced): with the same secret
    it is served at once; with another it costs a second round trip."""
    config = EndpointConfig()
    first = Demux(config, server_ctx, cookies=CookieJar(secret=SECRET))
    second = Demux(config, server_ctx, cookies=CookieJar(secret=[SECRET]))
    stranger = Demux(config, server_ctx, cookies=CookieJar(secret=os.urandom(32)))
    client = Demux(config, None)
    _, ([hello1], _) = client.connect(client_ctx, SERVER, server_hostname=None, now=5.0)

    [hvr], events = first.receive_datagram(hello1, CLIENT, now=1000.0)
    assert events == [] and first.peers == 0  # stateless, as ever
    [hello2], _ = client.receive_datagram(hvr, SERVER, now=5.1)

    # Another secret: the cookie fails and a fresh one is sent instead.
    [again], _ = stranger.receive_datagram(hello2, CLIENT, now=0.0)
    assert stranger.peers == 0
    assert stranger.counters.cookie_failures == stranger.counters.cookies_sent == 1
    assert again[13] == 3  # HelloVerifyRequest

    # The same secret: the handshake goes on, whatever the instance's clock.
    to_client, _ = second.receive_datagram(hello2, CLIENT, now=77.0)
    assert second.peers == 1 and second.counters.cookie_failures == 0
    done = set()
    for _ in range(10):
        to_server: list[bytes] = []
        for datagram in to_client:
            replies, events = client.receive_datagram(datagram, SERVER, now=5.2)
            to_server += replies
            done |= {"client" for e in events if isinstance(e, HandshakeCompleted)}
        to_client = []
        for datagram in to_server:
            replies, events = second.receive_datagram(datagram, CLIENT, now=77.2)
            to_client += replies
            done |= {"server" for e in events if isinstance(e, HandshakeCompleted)}
        if not to_client:
            break
    assert done == {"client", "server"}
    assert second.counters.handshakes_completed == 1


async def test_a_replacement_endpoint_on_the_same_address_accepts_the_cookie(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    client_ctx: SSL.Context,
) -> None:
    """End to end: one endpoint answers the first hello and goes away; a new
    one bound to the same address gets the second hello. With the shared
    secret it sends no cookie of its own and refuses none."""
    net = FakeNetwork(conditions=NetworkConditions(delay=(0.05, 0.05)))
    client_sock = net.socket()
    await client_sock.bind(CLIENT)

    async def echo(conn: DtlsConnection) -> None:
        async for message in conn:
            await conn.send(message)

    async with DtlsEndpoint(client_sock) as client, trio.open_nursery() as nursery:
        connected: list[DtlsConnection] = []
        done = trio.Event()

        async def connect() -> None:
            connected.append(
                await client.connect(SERVER, client_ctx, server_hostname=False)
            )
            done.set()

        sock = net.socket()
        await sock.bind(SERVER)
        async with DtlsEndpoint(
            sock, server_context=server_ctx, cookie_secret=SECRET
        ) as first:
            await nursery.start(first.serve, echo)
            nursery.start_soon(connect)
            # Virtual time: the hello arrives at 0.05, the HelloVerifyRequest
            # at the client at 0.10, the second hello here at 0.15.
            await trio.sleep(0.075)
            assert first.statistics().cookies_sent == 1
        # The HelloVerifyRequest is on its way; the address changes hands.
        sock = net.socket()
        await sock.bind(SERVER)
        async with DtlsEndpoint(
            sock, server_context=server_ctx, cookie_secret=[SECRET]
        ) as second:
            await nursery.start(second.serve, echo)
            with trio.fail_after(5):
                await done.wait()
            [conn] = connected
            await conn.send(b"still me")
            assert await conn.receive() == b"still me"
            stats = second.statistics()
            assert (stats.cookies_sent, stats.cookie_failures) == (0, 0)
            assert stats.handshakes_completed == 1
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("secret", "error", "words"),
    [
        ("ab" * 32, TypeError, "bytes.fromhex"),
        (b"too short", ValueError, "at least 32"),
        ([], ValueError, "empty key ring"),
        ([SECRET, None], TypeError, "key 1 must be bytes"),
    ],
)
async def test_the_endpoint_refuses_a_bad_secret_at_once(
    secret: Any, error: type[Exception], words: str, server_ctx: SSL.Context
) -> None:
    sock = FakeNetwork().socket()
    with pytest.raises(error, match=re.escape(words)):
        DtlsEndpoint(sock, server_context=server_ctx, cookie_secret=secret)


# -- serve_workers' own checks (all before any fork) ------------------------------


@linux_only
@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"workers": 0}, ValueError, "workers must be from 1"),
        ({"workers": True}, TypeError, "workers must be an integer"),
        ({"workers": 2, "idle_timout": 3}, TypeError, "unknown DtlsEndpoint option"),
        ({"workers": 2, "cookie_secret": b"x"}, ValueError, "at least 32"),
        ({"workers": 2, "shutdown_timeout": 0}, ValueError, "shutdown_timeout"),
        ({"workers": 2, "server_context": None}, TypeError, "OpenSSL.SSL.Context"),
    ],
)
def test_serve_workers_checks_its_arguments_before_forking(
    kwargs: dict[str, Any],
    error: type[Exception],
    words: str,
    server_ctx: SSL.Context,
) -> None:
    arguments: dict[str, Any] = {"server_context": server_ctx, **kwargs}
    pid = os.getpid()
    with pytest.raises(error, match=re.escape(words)):
        serve_workers(_never, ("127.0.0.1", 0), **arguments)
    assert os.getpid() == pid


async def _never(conn: DtlsConnection) -> None:
    raise AssertionError("no peer expected")


@linux_only
async def test_serve_workers_refuses_to_run_inside_trio(server_ctx: SSL.Context) -> None:
    with pytest.raises(RuntimeError, match=r"outside trio\.run"):
        serve_workers(_never, ("127.0.0.1", 0), workers=1, server_context=server_ctx)


@linux_only
def test_serve_workers_refuses_other_threads(server_ctx: SSL.Context) -> None:
    caught: list[BaseException] = []

    def run() -> None:
        try:
            serve_workers(_never, ("127.0.0.1", 0), workers=1, server_context=server_ctx)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(STEP)
    [exc] = caught
    assert isinstance(exc, RuntimeError) and "main thread" in str(exc)


# -- session tickets cross a fork ---------------------------------------------------

_TICKET_SCRIPT = textwrap.dedent(
    """
    # One server context, made and prepared before the fork as serve_workers
    # does; one child issues a session ticket, another must accept it.
    import os, sys
    from OpenSSL import SSL
    from OpenSSL._util import ffi, lib
    import trio_dtlsmux
    from trio_dtlsmux._demux import prepare_server_context

    identity = trio_dtlsmux.self_signed()
    server_ctx = trio_dtlsmux.server_context(identity)
    prepare_server_context(server_ctx)
    other_ctx = trio_dtlsmux.server_context(identity)
    client_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)

    def connection(ctx):
        conn = SSL.Connection(ctx, None)
        conn.set_options(SSL.OP_NO_QUERY_MTU)
        conn.set_ciphertext_mtu(1400)
        return conn

    def drain(conn):
        out = []
        while True:
            try:
                out.append(conn.bio_read(65536))
            except SSL.WantReadError:
                return out

    def handshake(server_ctx, session=None):
        client, server = connection(client_ctx), connection(server_ctx)
        client.set_connect_state()
        server.set_accept_state()
        if session is not None:
            client.set_session(session)
        for _ in range(20):
            finished = 0
            for side in (client, server):
                try:
                    side.do_handshake()
                    finished += 1
                except SSL.WantReadError:
                    pass
            moved = 0
            for source, target in ((client, server), (server, client)):
                for datagram in drain(source):
                    target.bio_write(datagram)
                    moved += 1
            if finished == 2 and not moved:
                return client
        raise SystemExit("handshake did not finish")

    def child(job):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            os.write(write, job())
            os._exit(0)
        os.close(write)
        data = b""
        while chunk := os.read(read, 65536):
            data += chunk
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        return data

    def issue():
        session = handshake(server_ctx).get_session()
        size = lib.i2d_SSL_SESSION(session._session, ffi.NULL)
        buffer = ffi.new("unsigned char[]", size)
        lib.i2d_SSL_SESSION(session._session, ffi.new("unsigned char **", buffer))
        return ffi.buffer(buffer, size)[:]

    def resume(ctx, data):
        source = ffi.new("unsigned char[]", data)
        pointer = ffi.new("const unsigned char **", source)
        session = SSL.Session.__new__(SSL.Session)
        session._context = client_ctx  # the client's, inherited by the fork
        session._session = ffi.gc(
            lib.d2i_SSL_SESSION(ffi.NULL, pointer, len(data)), lib.SSL_SESSION_free
        )
        client = handshake(ctx, session)
        return b"%d" % lib.SSL_session_reused(client._ssl)

    ticket = child(issue)
    print("sibling", child(lambda: resume(server_ctx, ticket)).decode())
    print("stranger", child(lambda: resume(other_ctx, ticket)).decode())
    """
)


@linux_only
async def test_ticket_keys_are_per_context_and_survive_fork() -> None:
    """The session ticket keys live in the SSL_CTX, so every worker forked
    from one supervisor accepts the tickets any of them issued, and a
    context made elsewhere (another supervisor, another host) does not.
    (A child process, so that no thread of this test process is forked.)"""
    with trio.fail_after(START):
        result = await trio.run_process(
            [sys.executable, "-c", _TICKET_SCRIPT],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["sibling", "1", "stranger", "0"]


# -- serve --workers, as a user runs it --------------------------------------------

HANDSHAKE = re.compile(rb"\[(\d+)\] 127\.0\.0\.1:(\d+) handshake done")


@attrs.define
class Client:
    """One client peer on its own socket and endpoint."""

    endpoint: DtlsEndpoint
    conn: DtlsConnection
    port: int
    context: SSL.Context
    target: tuple[str, int]
    reconnects: int = 0

    async def echo(self, message: bytes, within: float) -> bool:
        """Send and wait for the echo; False if none came in time."""
        try:
            await self.conn.send(message)
            with trio.fail_after(within):
                return await self.conn.receive() == message
        except (trio.TooSlowError, trio.BrokenResourceError):
            return False

    async def reconnect(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            await self.conn.aclose()
        with trio.fail_after(STEP):
            self.conn = await self.endpoint.connect(
                self.target, self.context, server_hostname=False
            )
        self.reconnects += 1


@contextlib.asynccontextmanager
async def clients(
    count: int, target: tuple[str, int], context: SSL.Context
) -> AsyncIterator[list[Client]]:
    """``count`` clients connected to ``target``, each on its own socket."""
    async with contextlib.AsyncExitStack() as stack:
        endpoints = []
        for _ in range(count):
            sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await sock.bind(("127.0.0.1", 0))
            endpoints.append(await stack.enter_async_context(DtlsEndpoint(sock)))
        made: list[Client] = []

        async def connect(endpoint: DtlsEndpoint) -> None:
            conn = await endpoint.connect(target, context, server_hostname=False)
            port = endpoint.socket.getsockname()[1]
            made.append(Client(endpoint, conn, port, context, target))

        with trio.fail_after(START):
            async with trio.open_nursery() as nursery:
                for endpoint in endpoints:
                    nursery.start_soon(connect, endpoint)
        yield made


async def handshakes(reader: Reader, count: int) -> dict[int, int]:
    """Read ``count`` more handshake lines: client port -> worker pid."""
    found = {}
    for _ in range(count):
        line = await reader.until(b"\n", STEP)
        while not HANDSHAKE.search(line):
            line = await reader.until(b"\n", STEP)
        match = HANDSHAKE.search(line)
        assert match is not None
        found[int(match[2])] = int(match[1])
    return found


def worker_pids(banner: str) -> list[int]:
    match = re.search(r"workers: (\d+) \(pids ([\d, ]+)\)", banner)
    assert match is not None, banner
    pids = [int(pid) for pid in match[2].split(", ")]
    assert len(pids) == int(match[1])
    return pids


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid``, in clock ticks (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


@linux_only
async def test_a_killed_worker_is_restarted_and_only_its_peers_notice(
    identity_file: tuple[str, str, str],
) -> None:
    cert, key, fingerprint = identity_file
    context = trio_dtlsmux.client_context(fingerprint=fingerprint)
    async with serve(
        "--workers", "2", "--cert", cert, "--key", key, "--idle-timeout", "30"
    ) as server:
        pids = worker_pids(server.banner)
        target = ("127.0.0.1", server.port)
        async with clients(16, target, context) as peers:
            where = await handshakes(server.stderr, len(peers))
            by_worker = {pid: [c for c in peers if where[c.port] == pid] for pid in pids}
            # The kernel's hash spreads 16 peers over both (1 in 30,000 not).
            assert all(by_worker.values()), where
            victim, survivor = pids
            for client in peers:
                assert await client.echo(b"before", STEP)

            os.kill(victim, signal.SIGKILL)
            line = await server.stderr.until(b"restarted as pid ", STEP)
            line += await server.stderr.until(b"\n")
            assert f"(pid {victim}) ended (killed by SIGKILL)".encode() in line, line
            replacement = int(line.split(b"restarted as pid ")[1])

            # The survivor's peers keep their sessions; the victim's find
            # theirs gone, handshake again and reach the replacement, on the
            # socket the supervisor kept, so on the same worker slot.
            async def check(client: Client) -> None:
                if await client.echo(b"after", 1.0):
                    return
                await client.reconnect()
                assert await client.echo(b"again", STEP)

            async with trio.open_nursery() as nursery:
                for client in peers:
                    nursery.start_soon(check, client)
            moved = await handshakes(server.stderr, len(by_worker[victim]))
            assert sorted(moved) == sorted(c.port for c in by_worker[victim])
            assert set(moved.values()) == {replacement}
            assert [c.reconnects for c in by_worker[survivor]] == [0] * len(
                by_worker[survivor]
            )
            assert {c.reconnects for c in by_worker[victim]} == {1}
        code, log = await server.interrupt(signal.SIGTERM)
    assert code == 0, log


@linux_only
async def test_sigterm_to_one_worker_closes_its_peers_and_replaces_it(
    identity_file: tuple[str, str, str],
) -> None:
    """A rolling restart, one worker at a time: its peers get close_notify,
    the other worker's peers carry on."""
    cert, key, fingerprint = identity_file
    context = trio_dtlsmux.client_context(fingerprint=fingerprint)
    async with serve("--workers", "2", "--cert", cert, "--key", key) as server:
        victim, survivor = worker_pids(server.banner)
        async with clients(16, ("127.0.0.1", server.port), context) as peers:
            where = await handshakes(server.stderr, len(peers))
            mine = [c for c in peers if where[c.port] == victim]
            others = [c for c in peers if where[c.port] == survivor]
            assert mine and others, where
            os.kill(victim, signal.SIGTERM)
            for client in mine:
                with trio.fail_after(STEP), pytest.raises(trio.EndOfChannel):
                    await client.conn.receive()
            for client in others:
                assert await client.echo(b"carry on", STEP)
            line = await server.stderr.until(b"restarted as pid ", STEP)
            line += await server.stderr.until(b"\n")
            assert f"(pid {victim}) ended (exit status 0)".encode() in line, line
            for client in mine:
                await client.reconnect()
                assert await client.echo(b"back", STEP)
        code, log = await server.interrupt(signal.SIGTERM)
    assert code == 0, log


@linux_only
async def test_sigterm_sends_close_notify_from_every_worker_and_exits_0(
    identity_file: tuple[str, str, str],
) -> None:
    cert, key, fingerprint = identity_file
    context = trio_dtlsmux.client_context(fingerprint=fingerprint)
    async with serve(
        "--workers", "2", "--cert", cert, "--key", key, "--stats-every", "0.2"
    ) as server:
        pids = worker_pids(server.banner)
        async with clients(10, ("127.0.0.1", server.port), context) as peers:
            where = await handshakes(server.stderr, len(peers))
            # The supervisor only waits: no CPU while its workers serve.
            before = cpu_ticks(server.proc.pid)
            for _ in range(5):
                for client in peers:
                    assert await client.echo(b"x" * 100, STEP)
            assert cpu_ticks(server.proc.pid) - before <= 1
            # Each worker prints its own statistics, marked with its pid.
            stats = await server.stdout.until(b"handshakes=", STEP)
            assert re.search(rb"\[(\d+)\] stats: ", stats)

            code, log = await server.interrupt(signal.SIGTERM)
            assert code == 0, log
            for client in peers:
                with trio.fail_after(STEP), pytest.raises(trio.EndOfChannel):
                    await client.conn.receive()
    assert "SIGTERM: stopping 2 worker(s)" in log
    for pid in set(where.values()):
        assert log.count(f"[{pid}] 127.0.0.1:") >= 2  # handshake, closing
    assert log.count("closing: server shutting down") == len(peers)
    assert "Traceback" not in log
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@linux_only
async def test_workers_close_their_peers_when_the_supervisor_is_killed(
    identity_file: tuple[str, str, str],
) -> None:
    cert, key, fingerprint = identity_file
    context = trio_dtlsmux.client_context(fingerprint=fingerprint)
    async with serve("--workers", "2", "--cert", cert, "--key", key) as server:
        async with clients(6, ("127.0.0.1", server.port), context) as peers:
            await handshakes(server.stderr, len(peers))
            server.proc.kill()
            for client in peers:
                with trio.fail_after(STEP), pytest.raises(trio.EndOfChannel):
                    await client.conn.receive()
        log = (await server.stderr.rest()).decode()
    assert log.count("the supervisor is gone") == 2, log


_CRASHING_WORKER = textwrap.dedent(
    """
    import logging, sys, trio_dtlsmux
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    async def handler(conn):
        pass

    async def crash(endpoint):
        raise RuntimeError("this worker cannot start")

    identity = trio_dtlsmux.self_signed()
    trio_dtlsmux.serve_workers(
        handler,
        ("127.0.0.1", 0),
        workers=1,
        server_context=trio_dtlsmux.server_context(identity),
        started=lambda address, pids: print("started", flush=True),
        worker_task=crash,
    )
    print("returned", flush=True)
    """
)


@linux_only
async def test_a_worker_that_cannot_start_is_restarted_ever_more_slowly() -> None:
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _CRASHING_WORKER],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    try:
        out, err = Reader(proc.stdout), Reader(proc.stderr)
        await out.until(b"started\n", START)
        await err.until(b"restarting it in 0.5 s")
        await err.until(b"restarting it in 1.0 s")
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(STEP):
            assert await proc.wait() == 0
        assert await out.rest() == b"started\nreturned\n"
        log = (await err.rest()).decode()
        assert log.count("RuntimeError: this worker cannot start") == 2
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@linux_only
@pytest.mark.skipif(OPENSSL is None, reason="no openssl command line")
async def test_a_session_from_one_worker_resumes_in_the_other(
    tmp_path: Path,
) -> None:
    """openssl s_client saves a session (with its ticket) from one worker and
    resumes it; new source ports land on either worker, and both resume."""
    assert OPENSSL is not None
    saved = tmp_path / "session.pem"

    async def s_client(port: int, *args: str) -> str:
        with trio.fail_after(STEP):
            result = await trio.run_process(
                [OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}", *args],
                stdin=b"",
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return result.stdout.decode(errors="replace")

    async with serve("--workers", "2") as server:
        await s_client(server.port, "-sess_out", str(saved))
        [issuer] = (await handshakes(server.stderr, 1)).values()
        resumed_by = set()
        for _ in range(24):  # each lands on the other worker with p = 1/2
            out = await s_client(server.port, "-sess_in", str(saved))
            assert "Reused, TLSv1.2" in out, out
            resumed_by |= set((await handshakes(server.stderr, 1)).values())
            if len(resumed_by) == 2:
                break
        assert issuer in resumed_by and len(resumed_by) == 2


@pytest.fixture
def identity_file(tmp_path: Path, identity: SelfSigned) -> tuple[str, str, str]:
    """The session's identity on disk, so servers skip making their own."""
    cert, key = identity.write(tmp_path)
    return str(cert), str(key), identity.fingerprint


# -- many hosts: nginx's stream module in front of two serve processes -------------

_MODULE_DIRS = (
    "/usr/lib/nginx/modules",
    "/usr/lib64/nginx/modules",
    "/usr/share/nginx/modules",
    "/usr/local/nginx/modules",
)


def _stream_module() -> str | None:
    """The ``load_module`` line nginx needs for ``stream``; "" if built in;
    None if it has no stream module."""
    for directory in _MODULE_DIRS:
        path = Path(directory) / "ngx_stream_module.so"
        if path.is_file():
            return f"load_module {path};"
    if NGINX is None:
        return None
    built = subprocess.run(
        [NGINX, "-V"], capture_output=True, text=True, check=False, timeout=STEP
    ).stderr
    if re.search(r"--with-stream(\s|$)", built):
        return ""
    return None


STREAM_MODULE = _stream_module()
needs_nginx = pytest.mark.skipif(
    NGINX is None or STREAM_MODULE is None,
    reason="needs nginx with the stream module "
    "(apt-get install nginx libnginx-mod-stream)",
)

#: The configuration shown in docs/howto/deploy.rst, run here as it is
#: written but for its ports, the module's path, and a pid file and error log
#: of the test's own.
NGINX_CONF = Path(__file__).resolve().parent.parent / "docs/examples/nginx-dtls.conf"


def nginx_config(prefix: Path, port: int, backends: list[int]) -> str:
    assert STREAM_MODULE is not None
    text = NGINX_CONF.read_text()
    for old, new in (
        ("load_module /usr/lib/nginx/modules/ngx_stream_module.so;", STREAM_MODULE),
        ("listen 127.0.0.1:4433 ", f"listen 127.0.0.1:{port} "),
        ("server 127.0.0.1:4434;", f"server 127.0.0.1:{backends[0]};"),
        ("server 127.0.0.1:4435;", f"server 127.0.0.1:{backends[1]};"),
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return f"pid {prefix}/nginx.pid;\nerror_log stderr notice;\n" + text


def certificate_fingerprint(cert: Path) -> bytes:
    return x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(
        hashes.SHA256()
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def nginx(prefix: Path, backends: list[int]) -> AsyncIterator[int]:
    """nginx in the foreground with its own config, prefix and pid file."""
    assert NGINX is not None
    port = free_udp_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(prefix, port, backends))
    proc = await trio.lowlevel.open_process(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # The listening socket is open before the master starts its worker.
        await Reader(proc.stderr).until(b"start worker process", START)
        yield port
    finally:
        proc.terminate()
        with trio.move_on_after(STEP):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@needs_nginx
async def test_nginx_pins_clients_and_moves_only_a_dead_backends_peers(
    tmp_path: Path,
) -> None:
    idle_timeout = 5.0
    secret = tmp_path / "cookie.key"
    secret.write_text(os.urandom(32).hex() + "\n")
    secret.chmod(0o600)
    identities = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        # Distinct names, so one CA file can trust both self-signed servers.
        identity = trio_dtlsmux.self_signed(f"backend-{name}")
        identities.append(identity.write(tmp_path / name))
    cafile = tmp_path / "backends.pem"
    cafile.write_bytes(b"".join(cert.read_bytes() for cert, _ in identities))
    context = trio_dtlsmux.client_context(cafile=cafile)
    fingerprints = {
        certificate_fingerprint(cert): index for index, (cert, _) in enumerate(identities)
    }

    def backend_of(client: Client) -> int:
        certificate = client.conn.peer_certificate
        assert certificate is not None
        return fingerprints[certificate.fingerprint(hashes.SHA256())]

    common = ("--idle-timeout", str(idle_timeout), "--cookie-secret-file", str(secret))
    async with (
        serve("--cert", str(identities[0][0]), "--key", str(identities[0][1]), *common) as first,
        serve("--cert", str(identities[1][0]), "--key", str(identities[1][1]), *common) as second,
        nginx(tmp_path, [first.port, second.port]) as port,
        clients(100, ("127.0.0.1", port), context) as peers,
    ):
        on = {index: [c for c in peers if backend_of(c) == index] for index in (0, 1)}
        assert len(on[0]) >= 10 and len(on[1]) >= 10, {k: len(v) for k, v in on.items()}

        async def echo_all(message: bytes) -> None:
            async with trio.open_nursery() as nursery:
                for client in peers:
                    nursery.start_soon(expect_echo, client, message)

        async def expect_echo(client: Client, message: bytes) -> None:
            assert await client.echo(message, STEP)

        await echo_all(b"through nginx")

        first.proc.kill()
        with trio.fail_after(STEP):
            await first.proc.wait()

        async def carry_on(client: Client) -> None:
            if await client.echo(b"after", 1.5):
                return
            # No answer: the backend is gone. nginx sends the new handshake
            # to the other backend, which knows nothing of the old session.
            await client.reconnect()
            assert backend_of(client) == 1
            assert await client.echo(b"moved", STEP)

        async with trio.open_nursery() as nursery:
            for client in peers:
                nursery.start_soon(carry_on, client)
        assert {c.reconnects for c in on[0]} == {1}
        assert {c.reconnects for c in on[1]} == {0}
        await echo_all(b"all on the second")
        code, _ = await second.interrupt(signal.SIGTERM)
        assert code == 0

