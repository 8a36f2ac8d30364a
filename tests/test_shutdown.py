"""A server stops on Ctrl-C and SIGTERM: close_notify to every peer, exit 0,
no traceback.

Real processes and real signals, on loopback; bounded in time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint

from .conftest import udp_socket

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="POSIX signals"
)

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"

# The plainest server a user writes: no signal handling of its own.
PLAIN_SERVER = textwrap.dedent(
    """
    import trio, trio_dtlsmux
    from trio_dtlsmux import DtlsEndpoint

    async def echo(conn):
        async for message in conn:
            await conn.send(message)

    async def main():
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        context = trio_dtlsmux.server_context("cert.pem", "key.pem")
        async with DtlsEndpoint(sock, server_context=context) as ep:
            print("listening on", sock.getsockname(), flush=True)
            await ep.serve(echo)

    try:
        trio.run(main)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
)


async def _start(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[trio.Process, tuple[str, int]]:
    process = await trio.lowlevel.open_process(
        args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    seen = b""
    while b"\n" not in seen:
        chunk = await process.stdout.receive_some(4096)
        assert chunk, f"the server exited early: {seen!r}"
        seen += chunk
    line = seen.split(b"\n", 1)[0].decode()
    assert line.startswith("listening on"), line
    host_port = line.split("(", 1)[1].rstrip(")").replace("'", "").split(",")
    return process, (host_port[0].strip(), int(host_port[1]))


async def _finish(process: trio.Process) -> tuple[int, str, str]:
    assert process.stdout is not None and process.stderr is not None
    out = b""
    err = b""
    async with trio.open_nursery() as nursery:

        async def read_all(stream: trio.abc.ReceiveStream, sink: list[bytes]) -> None:
            while chunk := await stream.receive_some(4096):
                sink.append(chunk)

        out_parts: list[bytes] = []
        err_parts: list[bytes] = []
        nursery.start_soon(read_all, process.stdout, out_parts)
        nursery.start_soon(read_all, process.stderr, err_parts)
        await process.wait()
    out = b"".join(out_parts)
    err = b"".join(err_parts)
    return process.returncode, out.decode(), err.decode()


async def _stop_with(
    signum: int, args: list[str], cwd: Path, env: dict[str, str], client_ctx: SSL.Context
) -> tuple[int, str, str]:
    with trio.fail_after(20):
        process, address = await _start(args, cwd, env)
        try:
            async with DtlsEndpoint(await udp_socket()) as client:
                conn = await client.connect(address, client_ctx, server_hostname=False)
                await conn.send(b"ping")
                assert await conn.receive() == b"ping"
                process.send_signal(signum)
                # The server says goodbye before it exits.
                with pytest.raises(trio.EndOfChannel):
                    await conn.receive()
            return await _finish(process)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
def certs(tmp_path: Path) -> trio_dtlsmux.SelfSigned:
    identity = trio_dtlsmux.self_signed()
    cert, key = identity.write(tmp_path)
    cert.rename(tmp_path / "cert.pem")
    key.rename(tmp_path / "key.pem")
    return identity


async def test_ctrl_c_on_the_plainest_server(
    tmp_path: Path, certs: trio_dtlsmux.SelfSigned
) -> None:
    # Before: the KeyboardInterrupt came out wrapped in two exception
    # groups, missed `except KeyboardInterrupt`, and printed a 44-line
    # traceback with exit status 1.
    (tmp_path / "server.py").write_text(PLAIN_SERVER)
    client_ctx = trio_dtlsmux.client_context(fingerprint=certs.fingerprint)
    code, out, err = await _stop_with(
        signal.SIGINT, [sys.executable, "server.py"], tmp_path, {}, client_ctx
    )
    assert (code, err) == (0, "")
    assert out.strip().endswith("interrupted")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_the_tutorial_server_stops_cleanly(
    tmp_path: Path, certs: trio_dtlsmux.SelfSigned, signum: int
) -> None:
    client_ctx = trio_dtlsmux.client_context(fingerprint=certs.fingerprint)
    code, out, err = await _stop_with(
        signum,
        [sys.executable, str(EXAMPLES / "echo_server.py")],
        tmp_path,
        {"PORT": "0"},
        client_ctx,
    )
    assert (code, err) == (0, "")
    assert out.strip().endswith("stopped")


async def test_a_handler_error_comes_out_of_serve_unwrapped(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    class Oops(Exception):
        pass

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        raise Oops("from the handler")

    # Only this test's own nursery groups it: serve and the endpoints add
    # no layer of their own (before, there were two more).
    with trio.fail_after(10), pytest.RaisesGroup(pytest.RaisesExc(Oops, match="from the handler")):
        async with DtlsEndpoint(
            await udp_socket(), server_context=server_ctx
        ) as server, DtlsEndpoint(await udp_socket()) as client, trio.open_nursery() as nursery:
            await nursery.start(server.serve, handler)
            await client.connect(server.socket.getsockname(), client_ctx, server_hostname=False)
            await trio.sleep_forever()
