"""The command line, mostly as a user meets it: separate processes over real
loopback UDP. Every wait is on the child's output or exit, bounded by
``trio.fail_after``; nothing sleeps on the real clock."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import SelfSigned, _demo
from trio_dtlsmux._cli import (
    DEMO_MIN_SIZE,
    _insecure_context,
    _Session,
    build_parser,
    main,
    read_cookie_secret,
)
from trio_dtlsmux._console import format_address, host_port
from trio_dtlsmux._demo import DemoOptions, percentile, run_demo
from trio_dtlsmux._records import MAX_PLAINTEXT
from trio_dtlsmux.testing import FakeNetwork, NetworkConditions

from .conftest import echo

OPENSSL = shutil.which("openssl")
CLI = [sys.executable, "-m", "trio_dtlsmux"]
posix_signals = pytest.mark.skipif(
    sys.platform == "win32", reason="sends SIGINT to a child process"
)

# Generous: a loaded CI machine may take a second or two to start Python and
# import cryptography, and the loss demo waits out retransmission timers.
START = 20
STEP = 10


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SSLKEYLOGFILE"}
    env.update(extra)
    return env


class Reader:
    """Reads a child's pipe and keeps what it read, for asserting on later."""

    def __init__(self, stream: trio.abc.ReceiveStream | None) -> None:
        assert stream is not None
        self._stream = stream
        self.seen = b""
        self._pos = 0

    async def until(self, marker: bytes, within: float = STEP) -> bytes:
        """Wait until ``marker`` appears after what earlier calls consumed."""
        with trio.fail_after(within):
            while marker not in self.seen[self._pos :]:
                chunk = await self._stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(
                        f"stream ended before {marker!r}; got {self.seen!r}"
                    )
                self.seen += chunk
        end = self.seen.index(marker, self._pos) + len(marker)
        piece = self.seen[self._pos : end]
        self._pos = end
        return piece

    async def rest(self, within: float = STEP) -> bytes:
        """Everything up to end of stream (the child has exited or will)."""
        with trio.fail_after(within):
            while chunk := await self._stream.receive_some(65536):
                self.seen += chunk
        return self.seen


@attrs.frozen
class Server:
    proc: trio.Process
    stdout: Reader
    stderr: Reader
    banner: str
    host: str
    port: int
    fingerprint: str

    async def interrupt(self, signum: int = signal.SIGINT) -> tuple[int, str]:
        """Ctrl-C (or ``signum``); returns the exit code and everything it logged."""
        self.proc.send_signal(signum)
        with trio.fail_after(STEP):
            code = await self.proc.wait()
        return code, (await self.stderr.rest()).decode()


@asynccontextmanager
async def serve(*args: str, env: dict[str, str] | None = None) -> AsyncIterator[Server]:
    proc = await trio.lowlevel.open_process(
        [*CLI, "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or child_env(),
    )
    try:
        stdout = Reader(proc.stdout)
        stderr = Reader(proc.stderr)
        banner = (await stdout.until(b"listening on ", START)).decode()
        banner += (await stdout.until(b"\n")).decode()
        where = re.search(r"listening on (\[[0-9a-f:]+\]|[0-9.]+):(\d+) ", banner)
        fingerprint = re.search(r"SHA-256 fingerprint: ([0-9a-f:]{95})\n", banner)
        assert where is not None and fingerprint is not None, banner
        yield Server(
            proc, stdout, stderr, banner, where[1], int(where[2]), fingerprint[1]
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def children() -> AsyncIterator[list[trio.Process]]:
    """Processes to kill when the test ends, however it ends."""
    procs: list[trio.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def start_connect(children: list[trio.Process], *args: str) -> trio.Process:
    proc = await trio.lowlevel.open_process(
        [*CLI, "connect", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    children.append(proc)
    return proc


async def connect_with_input(
    data: bytes, *args: str, within: float = START
) -> subprocess.CompletedProcess[bytes]:
    """``connect ARGS`` with ``data`` as all of its input, piped."""
    with trio.fail_after(within):
        return await trio.run_process(
            [*CLI, "connect", *args],
            stdin=data,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )


async def run_cli(
    *args: str, within: float = START, python: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m trio_dtlsmux ARGS`` (``python ARGS`` if ``python``)."""
    with trio.fail_after(within):
        return await trio.run_process(
            [sys.executable, *args] if python else [*CLI, *args],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )


def assert_one_line_error(stderr: bytes | str, *fragments: str) -> str:
    text = stderr.decode() if isinstance(stderr, bytes) else stderr
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    for fragment in fragments:
        assert fragment in lines[0], text
    return lines[0]


# -- the whole thing, as a user would run it ------------------------------------


@posix_signals
async def test_serve_echoes_for_connect_and_ctrl_c_says_goodbye(
    tmp_path: Path, children: list[trio.Process]
) -> None:
    server_keys = tmp_path / "server.keys"
    client_keys = tmp_path / "client.keys"
    # The server's key log comes from the environment, the client's from
    # the flag: both ways of asking must work.
    async with serve(env=child_env(SSLKEYLOGFILE=str(server_keys))) as server:
        assert (
            f"openssl s_client -dtls1_2 -connect 127.0.0.1:{server.port}"
            in server.banner
        )
        assert (
            f"connect 127.0.0.1:{server.port} --fingerprint {server.fingerprint}"
            in server.banner
        )
        address = f"127.0.0.1:{server.port}"

        # A client that leaves by closing its input.
        first = await start_connect(
            children,
            address,
            "--fingerprint",
            server.fingerprint,
            "--keylog",
            str(client_keys),
        )
        assert first.stdin is not None
        out = Reader(first.stdout)
        await first.stdin.send_all(b"hello\n")
        assert await out.until(b"hello\n", START) == b"hello\n"
        await first.stdin.send_all(b"two\nlines\n")
        assert await out.until(b"lines\n") == b"two\nlines\n"
        await server.stderr.until(b"handshake done")
        await first.stdin.aclose()
        with trio.fail_after(STEP):
            assert await first.wait() == 0
        assert await out.rest() == b"hello\ntwo\nlines\n"
        first_err = (await Reader(first.stderr).rest()).decode()
        assert "connected to" in first_err and "pinned" in first_err
        await server.stderr.until(b"closed by the peer (close_notify) (3 echoed)")

        # A client still connected when the server is stopped.
        second = await start_connect(
            children, address, "--fingerprint", server.fingerprint
        )
        assert second.stdin is not None
        out = Reader(second.stdout)
        await second.stdin.send_all(b"still here\n")
        await out.until(b"still here\n", START)

        code, log = await server.interrupt()
        assert code == 0, log
        assert "SIGINT: shutting down, sending close_notify to 1 peer(s)" in log
        assert "Traceback" not in log
        # The server's close_notify ends the client, though its stdin is open.
        with trio.fail_after(STEP):
            assert await second.wait() == 0
        second_err = (await Reader(second.stderr).rest()).decode()
        assert f"{address} closed the connection" in second_err
        await second.stdin.aclose()

    client_lines = client_keys.read_text().splitlines()
    server_lines = server_keys.read_text().splitlines()
    assert client_lines and all(
        line.startswith("CLIENT_RANDOM ") for line in client_lines
    )
    assert len(server_lines) == 2 and all(
        re.fullmatch(r"CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}", line)
        for line in server_lines
    )
    # Both ends logged the same session's secret.
    assert client_lines[0] in server_lines


async def test_connect_prints_the_replies_to_piped_input() -> None:
    # (The server is told never to reap, which the endpoint must accept.)
    async with serve("--idle-timeout", "none") as server:
        target = [f"127.0.0.1:{server.port}", "--fingerprint", server.fingerprint]
        # All of the input is there at once and ends at once; the echoes
        # come after it ended and must still be printed.
        result = await connect_with_input(b"a\nb\n", *target)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"a\nb\n"
        await server.stderr.until(b"closed by the peer (close_notify) (2 echoed)")

        # The wait ends as soon as every message has had its reply, not
        # when --wait runs out.
        result = await connect_with_input(
            b"one\ntwo\nthree", *target, "--wait", "600", within=STEP
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"one\ntwo\nthree"
        await server.stderr.until(b"closed by the peer (close_notify) (3 echoed)")


async def echo_first_only(conn: trio_dtlsmux.DtlsConnection) -> None:
    first = True
    async for message in conn:
        if first:
            await conn.send(message)
            first = False


@pytest.mark.parametrize(
    ("server", "wait", "replies", "seconds"),
    [
        # Every message answered: done after one round trip.
        (echo, 5.0, [b"first\n", b"second\n"], 0.1),
        # One answer missing: it waits the whole 5 s for it, then closes.
        (echo_first_only, 5.0, [b"first\n"], 5.0),
        # --wait 0: closes at the end of input; the echoes are still out.
        (echo, 0.0, [], 0.0),
    ],
    ids=["all-answered", "one-missing", "no-wait"],
)
async def test_connect_waits_for_replies_at_most_wait_seconds(
    autojump_clock: trio.testing.MockClock,
    identity: SelfSigned,
    server: Callable[[trio_dtlsmux.DtlsConnection], Awaitable[None]],
    wait: float,
    replies: list[bytes],
    seconds: float,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 50 ms each way, so that no reply can beat the end of the input.
    net = FakeNetwork(conditions=NetworkConditions(delay=(0.05, 0.05)))
    server_sock = net.socket()
    await server_sock.bind(("10.0.0.1", 4433))
    client_sock = net.socket()
    await client_sock.bind(("10.0.0.2", 0))
    closed = trio.Event()

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        # The client's close_notify ends it either way: the loop stops at
        # EndOfChannel, or an echo sent after it arrived raises PeerClosed.
        with contextlib.suppress(trio_dtlsmux.PeerClosed):
            await server(conn)
        closed.set()

    written: list[bytes] = []

    def write(data: bytes) -> bool:
        written.append(data)
        return True

    async with (
        trio_dtlsmux.DtlsEndpoint(
            server_sock, server_context=trio_dtlsmux.server_context(identity)
        ) as server_ep,
        trio_dtlsmux.DtlsEndpoint(client_sock) as client_ep,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server_ep.serve, handler)
        context = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
        conn = await client_ep.connect(
            ("10.0.0.1", 4433), context, server_hostname=False
        )
        session = _Session("connect", conn, "10.0.0.1:4433", wait=wait, write=write)
        feed, source = trio.testing.memory_stream_one_way_pair()
        await feed.send_all(b"first\nsecond\n")
        await feed.aclose()
        started = trio.current_time()
        assert await session.run(source) == 0
        elapsed = trio.current_time() - started
        with trio.fail_after(1):
            await closed.wait()
        nursery.cancel_scope.cancel()
    assert written == replies
    assert (session.sent, session.received) == (2, len(replies))
    assert elapsed == pytest.approx(seconds, abs=0.01)
    note = "connect: 1 message(s) back for 2 sent when --wait (5 s) ran out\n"
    assert capsys.readouterr().err == (note if server is echo_first_only else "")


async def test_connect_ends_at_once_when_the_handshake_fails(
    children: list[trio.Process],
) -> None:
    async with serve() as server:
        wrong = trio_dtlsmux.self_signed().fingerprint
        # Its input stays open: the failure alone must end the program.
        client = await start_connect(
            children, f"127.0.0.1:{server.port}", "--fingerprint", wrong
        )
        with trio.fail_after(START):
            assert await client.wait() == 1
        err = await Reader(client.stderr).rest()
        assert_one_line_error(err, "handshake with", "certificate verification failed")
        assert await Reader(client.stdout).rest() == b""


@posix_signals
async def test_serve_stops_cleanly_on_sigterm() -> None:
    async with serve() as server:
        code, log = await server.interrupt(signal.SIGTERM)
    assert code == 0, log
    assert "SIGTERM: shutting down, sending close_notify to 0 peer(s)" in log
    assert "Traceback" not in log


async def test_connect_refuses_a_certificate_it_cannot_verify(
    children: list[trio.Process],
) -> None:
    async with serve() as server:
        address = f"127.0.0.1:{server.port}"
        wrong = trio_dtlsmux.self_signed().fingerprint
        result = await run_cli("connect", address, "--fingerprint", wrong)
        assert result.returncode == 1
        line = assert_one_line_error(result.stderr, "certificate verification failed")
        assert server.fingerprint in line and wrong in line
        assert result.stdout == b""

        # By default the system's CAs are trusted, and they never signed a
        # certificate made a moment ago.
        result = await run_cli("connect", address)
        assert result.returncode == 1
        assert_one_line_error(
            result.stderr, "certificate verification failed", "self-signed"
        )

        # Opting out works, loudly.
        insecure = await start_connect(children, address, "--insecure")
        assert insecure.stdin is not None
        await insecure.stdin.send_all(b"anyone there?\n")
        await Reader(insecure.stdout).until(b"anyone there?\n", START)
        await insecure.stdin.aclose()
        with trio.fail_after(STEP):
            assert await insecure.wait() == 0
        warning = (await Reader(insecure.stderr).rest()).decode()
        assert "warning: --insecure" in warning


async def test_connect_over_ipv6_trusting_the_certificate_as_ca(
    tmp_path: Path, children: list[trio.Process]
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    identity = trio_dtlsmux.self_signed()
    cert, key = identity.write(tmp_path)
    async with serve("--host", "::1", "--cert", str(cert), "--key", str(key)) as server:
        assert server.host == "[::1]"
        assert server.fingerprint == identity.fingerprint
        client = await start_connect(
            children, f"[::1]:{server.port}", "--cafile", str(cert)
        )
        assert client.stdin is not None
        await client.stdin.send_all(b"over six\n")
        await Reader(client.stdout).until(b"over six\n", START)
        await client.stdin.aclose()
        with trio.fail_after(STEP):
            assert await client.wait() == 0
        err = (await Reader(client.stderr).rest()).decode()
        assert "certificate verified for ::1" in err


def test_insecure_offers_what_the_library_offers(identity: SelfSigned) -> None:
    # --insecure turns the certificate check off and nothing else: no
    # OpenSSL default cipher list (CBC suites) sneaking back in.
    checked = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
    unchecked = _insecure_context(["h2"])
    assert unchecked.get_verify_mode() == SSL.VERIFY_NONE
    # set_options(0) adds nothing and returns the options in force (asked
    # first: pyOpenSSL freezes a context once a Connection is made from it).
    assert unchecked.set_options(0) == checked.set_options(0)
    assert (
        SSL.Connection(unchecked, None).get_cipher_list()
        == SSL.Connection(checked, None).get_cipher_list()
    )


async def test_serve_with_certificate_and_key_in_one_file(tmp_path: Path) -> None:
    identity = trio_dtlsmux.self_signed()
    cert, key = identity.write(tmp_path)
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    async with serve("--cert", str(both)) as server:
        assert server.fingerprint == identity.fingerprint
        assert f"certificate from {both}" in server.banner
        result = await connect_with_input(
            b"one file\n",
            f"127.0.0.1:{server.port}",
            "--fingerprint",
            identity.fingerprint,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"one file\n"


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command line")
async def test_openssl_s_client_talks_to_serve() -> None:
    assert OPENSSL is not None
    async with serve() as server:
        proc = await trio.lowlevel.open_process(
            [
                OPENSSL,
                "s_client",
                "-dtls1_2",
                "-connect",
                f"127.0.0.1:{server.port}",
                "-quiet",
                "-no_ign_eof",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert proc.stdin is not None
            await proc.stdin.send_all(b"from openssl\n")
            await Reader(proc.stdout).until(b"from openssl\n", START)
            await proc.stdin.aclose()  # s_client sends close_notify
            await server.stderr.until(b"closed by the peer (close_notify) (1 echoed)")
            with trio.fail_after(STEP):
                await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


# -- what each command loads ------------------------------------------------------


async def test_children_run_this_checkout() -> None:
    # Every other test here that starts `python -m trio_dtlsmux` assumes the
    # child imports the same package as this process (the PYTHONPATH, not
    # some other installed copy).
    code = "import trio_dtlsmux; print(trio_dtlsmux.__file__)"
    result = await run_cli("-c", code, python=True)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == trio_dtlsmux.__file__


@pytest.mark.parametrize(
    "argv",
    [
        # Each gets past parsing into its command, and stops at a bad file.
        ["serve", "--port", "0", "--cert", "/nonexistent/cert.pem"],
        ["connect", "127.0.0.1:4433", "--cafile", "/nonexistent/ca.pem"],
        ["--help"],
    ],
    ids=["serve", "connect", "help"],
)
async def test_serve_and_connect_do_not_load_the_demo(argv: list[str]) -> None:
    result = await run_cli("-X", "importtime", "-m", "trio_dtlsmux", *argv, python=True)
    imported = {
        line.rpartition("|")[2].strip()
        for line in result.stderr.decode().splitlines()
        if line.startswith("import time:")
    }
    assert "trio_dtlsmux._cli" in imported, result.stderr.decode()[-2000:]
    assert "trio_dtlsmux._demo" not in imported
    assert "trio_dtlsmux.testing" not in imported
    if argv == ["--help"]:
        assert re.search(rb"\n +demo +run a server and many clients", result.stdout)


# -- bad arguments ---------------------------------------------------------------


async def test_bad_port_is_a_usage_error_from_the_real_entry_point() -> None:
    result = await run_cli("serve", "--port", "70000")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "--port", "70000")


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["serve", "--port", "70000"], ["--port", "0 to 65535", "70000"]),
        (["serve", "--port", "http"], ["--port", "'http'"]),
        (
            [
                "serve",
                "--cert",
                "/nonexistent/cert.pem",
                "--key",
                "/nonexistent/key.pem",
            ],
            ["certfile", "/nonexistent/cert.pem", "cannot be read"],
        ),
        (["serve", "--key", "key.pem"], ["--key needs --cert"]),
        (["serve", "--idle-timeout", "-3"], ["--idle-timeout", "'none'"]),
        # 0 is not "never": that is spelled none, as the API's None.
        (["serve", "--idle-timeout", "0"], ["--idle-timeout", "'none'", "'0'"]),
        (["serve", "--idle-timeout", "off"], ["--idle-timeout", "'none'"]),
        (["serve", "--idle-timeout", "inf"], ["--idle-timeout", "'none'"]),
        (
            ["serve", "--keylog", "/nonexistent/dir/keys"],
            ["--keylog", "cannot be opened"],
        ),
        (["connect", "localhost"], ["HOST:PORT", "'localhost'"]),
        (["connect", "::1:4433"], ["brackets", "[::1]:4433"]),
        (["connect", "[::1]:0"], ["1 to 65535"]),
        (["connect", "h:1", "--fingerprint", "abc"], ["fingerprint has 3 hex digits"]),
        (
            ["connect", "h:1", "--cafile", "/nonexistent/ca.pem"],
            ["cafile", "cannot be read"],
        ),
        (["connect", "h:1", "--insecure", "--cafile", "x"], ["not allowed with"]),
        (["connect", "h:1", "--insecure", "--alpn", "h\u00e9"], ["--alpn", "ASCII"]),
        (["connect", "h:1", "--alpn", ""], ["--alpn", "1 to 255 bytes"]),
        (["serve", "--workers", "0"], ["--workers", "from 1 to 1024", "not 0"]),
        (
            ["serve", "--workers", "2", "--metrics-port", "0"],
            ["--metrics-port", "--workers", "worker_task"],
        ),
        (["serve", "--workers", "many"], ["--workers", "'many'"]),
        (
            ["serve", "--cookie-secret-file", "/nonexistent/key"],
            ["--cookie-secret-file", "/nonexistent/key", "cannot be read"],
        ),
        (["demo", "--loss", "1.5"], ["--loss", "less than 1"]),
        (["demo", "--size", "3"], ["--size"]),
        (["demo", "--size", "16385"], ["--size", "8 to 16384"]),
        ([], ["COMMAND"]),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert_one_line_error(captured.err, "error:", *fragments)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], 300.0), (["--idle-timeout", "2.5"], 2.5), (["--idle-timeout", "NONE"], None)],
)
def test_idle_timeout(argv: list[str], expected: float | None) -> None:
    opts = build_parser().parse_args(["serve", *argv])
    assert opts.idle_timeout == expected


def test_workers_auto_means_one_per_usable_cpu() -> None:
    opts = build_parser().parse_args(["serve", "--workers", "AUTO"])
    assert opts.workers == len(os.sched_getaffinity(0))
    assert build_parser().parse_args(["serve"]).workers is None


def key_file(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "cookie.key"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_cookie_secret_file_holds_hex_keys_newest_first(tmp_path: Path) -> None:
    new, old = bytes(range(32)), bytes(range(1, 49))
    path = key_file(
        tmp_path, f"# rotated on Monday\n{new.hex()}\n\n  {old.hex().upper()}  \n"
    )
    assert read_cookie_secret(path) == (new, old)


@pytest.mark.parametrize(
    ("text", "mode", "fragments"),
    [
        ("00" * 32 + "\n", 0o644, ["open to every user", "mode 0644", "chmod 600"]),
        ("00" * 32 + "\n", 0o602, ["open to every user", "mode 0602"]),
        ("# nothing yet\n\n", 0o600, ["holds no key"]),
        ("00" * 32 + "\nnot hex\n", 0o600, ["line 2", "not a key in hex"]),
        ("00" * 31 + "\n", 0o600, ["31 bytes", "at least 32"]),
        (("00" * 32 + "\n") * 5, 0o600, ["5 keys", "at most 4"]),
    ],
)
def test_a_bad_cookie_secret_file_is_a_usage_error(
    tmp_path: Path,
    text: str,
    mode: int,
    fragments: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = key_file(tmp_path, text, mode)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", "--cookie-secret-file", path])
    assert exited.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "--cookie-secret-file", *fragments)


async def test_serve_with_a_cookie_secret_file(tmp_path: Path) -> None:
    path = key_file(tmp_path, bytes(range(32)).hex() + "\n", 0o640)
    async with serve("--cookie-secret-file", path) as server:
        result = await connect_with_input(
            b"shared\n",
            f"127.0.0.1:{server.port}",
            "--fingerprint",
            server.fingerprint,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b"shared\n"


def test_cert_without_a_key_and_no_key_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = trio_dtlsmux.self_signed().write(tmp_path)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--cert", str(cert)])
    assert exited.value.code == 2
    assert_one_line_error(capsys.readouterr().err, str(cert), "no private key", "--key")


def test_key_that_does_not_match_the_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = trio_dtlsmux.self_signed().write(tmp_path / "a")
    _, other_key = trio_dtlsmux.self_signed().write(tmp_path / "b")
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--cert", str(cert), "--key", str(other_key)])
    assert exited.value.code == 2
    assert_one_line_error(capsys.readouterr().err, "does not match", str(other_key))


def test_the_cli_page_describes_every_option() -> None:
    page = (Path(__file__).parent.parent / "docs" / "cli.rst").read_text()
    documented: dict[str, set[str]] = {}
    for section in re.split(r"^\.\. program:: ", page, flags=re.M)[1:]:
        name, _, body = section.partition("\n")
        documented[name.strip()] = set(re.findall(r"^\.\. option:: (\S+)", body, re.M))
    parser = build_parser()
    [commands] = [
        action
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    offered = {
        name: {
            option
            for action in command._actions
            for option in action.option_strings
            if option not in ("-h", "--help")
        }
        for name, command in commands.choices.items()
    }
    assert documented == offered


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"trio-dtlsmux {trio_dtlsmux.__version__}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:4433", ("localhost", 4433)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[::1]:4433", ("::1", 4433)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
    ],
)
def test_host_port(text: str, expected: tuple[str, int]) -> None:
    assert host_port(text) == expected
    assert format_address(*expected) == text


# -- demo ------------------------------------------------------------------------


async def test_demo_on_loopback() -> None:
    result = await run_cli("demo", "--peers", "5", "--messages", "5")
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "5 peers x 5 messages of 100 bytes, over real UDP" in out
    assert re.search(
        r"handshakes: +5/5 in [\d.]+ s = [\d,]+/s \(p50 [\d.]+ ms, p99", out
    ), out
    assert re.search(r"round trips: +25/25 in [\d.]+ s = [\d,]+/s", out), out
    assert re.search(r"latency: +p50 [\d.]+ ms, p99 [\d.]+ ms", out), out
    assert re.search(r"datagrams: +\d+ sent, 0 dropped", out), out
    assert re.search(r"retransmissions: \d+ handshake flights", out), out
    assert "result:       OK: every message came back intact" in out


async def test_demo_over_a_lossy_network() -> None:
    result = await run_cli(
        "demo", "--peers", "5", "--messages", "5", "--loss", "0.2", within=60
    )
    out = result.stdout.decode()
    assert result.returncode == 0, out + result.stderr.decode()
    assert "simulated network dropping 20% of datagrams" in out
    assert "handshakes:   5/5" in out
    assert re.search(
        r"datagrams: +\d+ sent, [1-9]\d* dropped by the simulated network", out
    ), out
    assert "result:       OK" in out


async def test_demo_lossy_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    out = io.StringIO()
    code = await run_demo(DemoOptions(peers=8, messages=20, loss=0.3, seed=7), out)
    text = out.getvalue()
    assert code == 0, text
    assert "handshakes:   8/8" in text
    match = re.search(r"retransmissions: (\d+) handshake flights", text)
    assert match is not None and int(match[1]) > 0, text
    lost = re.search(r"(\d+) of 160 round trips .* lost to the simulated loss", text)
    assert lost is not None and 0 < int(lost[1]) < 160, text


async def test_demo_notices_a_wrong_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    async def bad_echo(self: object, conn: trio_dtlsmux.DtlsConnection) -> None:
        async for message in conn:
            await conn.send(message[::-1])

    monkeypatch.setattr(_demo._Demo, "echo", bad_echo)
    out = io.StringIO()
    with trio.fail_after(START):
        code = await run_demo(DemoOptions(peers=2, messages=3), out)
    assert code == 1
    assert "FAILED: 6 messages came back ALTERED" in out.getvalue()


@pytest.mark.parametrize("size", [DEMO_MIN_SIZE, MAX_PLAINTEXT])
async def test_demo_at_the_sizes_the_command_line_allows(size: int) -> None:
    out = io.StringIO()
    with trio.fail_after(START):
        code = await run_demo(DemoOptions(peers=2, messages=3, size=size), out)
    assert code == 0, out.getvalue()
    assert "OK: every message came back intact" in out.getvalue()


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) != percentile([], 0.5)  # NaN


async def test_serve_exports_metrics_for_prometheus() -> None:
    pytest.importorskip("prometheus_client")
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    async with serve("--port", "0", "--metrics-port", "0") as server:
        line = (await server.stdout.until(b"/metrics\n")).decode()
        url = re.search(r"metrics on (http://\S+/metrics)", line)
        assert url is not None, line

        def scrape() -> str:
            with urlopen(url[1], timeout=10) as response:
                return str(response.read().decode())

        text = await trio.to_thread.run_sync(scrape)
        families = {family.name: family for family in text_string_to_metric_families(text)}
        [peers] = families["trio_dtlsmux_peers"].samples
        assert peers.value == 0
        assert peers.labels["dtls_endpoint"] == f"{server.host}:{server.port}"
        assert "trio_dtlsmux_handshakes_failed" in families
        code, _ = await server.interrupt()
        assert code == 0
