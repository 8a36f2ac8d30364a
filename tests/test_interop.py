"""Interop with peers we did not write: the openssl command line and
trio.DTLSEndpoint. Real loopback, real clock, bounded in time."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, SelfSigned

from .conftest import udp_socket

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="no openssl command line")
pytestmark = pytest.mark.interop


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes, limit: float = 15) -> bytes:
    seen = b""
    with trio.fail_after(limit):
        while marker not in seen:
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"stream ended before {marker!r}; saw {seen!r}")
            seen += chunk
    return seen


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@needs_openssl
async def test_openssl_s_client_talks_to_our_server(
    server_ctx: SSL.Context, tmp_path: Path
) -> None:
    server_sock = await udp_socket()
    port = server_sock.getsockname()[1]
    ended = trio.Event()
    received: list[bytes] = []

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        async for message in conn:
            received.append(message)
            await conn.send(b"echo:" + message)
        ended.set()  # the loop ended normally: close_notify arrived

    with trio.fail_after(20):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server, trio.open_nursery() as nursery:
            await nursery.start(server.serve, handler)
            assert OPENSSL is not None
            proc = await trio.lowlevel.open_process(
                [OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{port}",
                 "-quiet", "-no_ign_eof"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )
            assert proc.stdin is not None and proc.stdout is not None
            await proc.stdin.send_all(b"hello from s_client\n")
            seen = await read_until(proc.stdout, b"echo:hello from s_client\n")
            assert seen.endswith(b"echo:hello from s_client\n")
            await proc.stdin.aclose()  # s_client sends close_notify at EOF
            await ended.wait()
            await proc.wait()
            nursery.cancel_scope.cancel()
    assert received == [b"hello from s_client\n"]
    assert server.statistics().handshakes_completed == 1


@needs_openssl
async def test_our_client_talks_to_openssl_s_server(
    identity: SelfSigned, tmp_path: Path
) -> None:
    cert, key = identity.write(tmp_path)
    port = free_udp_port()
    assert OPENSSL is not None
    proc = await trio.lowlevel.open_process(
        [OPENSSL, "s_server", "-dtls1_2", "-accept", f"127.0.0.1:{port}",
         "-cert", str(cert), "-key", str(key), "-naccept", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        await read_until(proc.stdout, b"ACCEPT")
        ctx = trio_dtlsmux.client_context(cadata=identity.cert_pem)
        with trio.fail_after(20):
            async with DtlsEndpoint(await udp_socket()) as client:
                conn = await client.connect(("127.0.0.1", port), ctx, server_hostname="localhost")
                assert conn.version == "DTLSv1.2"
                await conn.send(b"hello s_server\n")
                await read_until(proc.stdout, b"hello s_server\n")
                await proc.stdin.send_all(b"hello client\n")
                assert await conn.receive() == b"hello client\n"
                await conn.aclose()  # close_notify: s_server ends (-naccept 1)
                await proc.wait()
    finally:
        proc.kill()
        await proc.wait()


def trio_client_context() -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


async def test_trio_dtls_client_talks_to_our_server(server_ctx: SSL.Context) -> None:
    server_sock = await udp_socket()
    with trio.fail_after(15):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server, trio.open_nursery() as nursery:
            async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
                async for message in conn:
                    await conn.send(message.upper())

            await nursery.start(server.serve, handler)
            with trio.DTLSEndpoint(await udp_socket()) as theirs:
                channel = theirs.connect(server_sock.getsockname(), trio_client_context())
                await channel.do_handshake()
                for word in (b"one", b"two", b"three"):
                    await channel.send(word)
                    assert await channel.receive() == word.upper()
            nursery.cancel_scope.cancel()


async def test_our_client_talks_to_trio_dtls_server(identity: SelfSigned) -> None:
    theirs_ctx = SSL.Context(SSL.DTLS_METHOD)
    theirs_ctx.use_certificate(identity.certificate)
    theirs_ctx.use_privatekey(identity.private_key)
    server_sock = await udp_socket()
    address = server_sock.getsockname()

    got_close_notify = trio.Event()

    async def handler(channel: trio.DTLSChannel) -> None:
        try:
            async for message in channel:
                await channel.send(message[::-1])
        except SSL.ZeroReturnError:
            # trio.DTLSEndpoint lets OpenSSL's exception for close_notify
            # escape; it is how we see that ours arrived.
            got_close_notify.set()

    with trio.fail_after(15), trio.DTLSEndpoint(server_sock) as theirs:
        async with trio.open_nursery() as nursery:
            await nursery.start(theirs.serve, theirs_ctx, handler)
            ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
            async with DtlsEndpoint(await udp_socket()) as client:
                conn = await client.connect(address, ctx, server_hostname=False)
                await conn.send(b"abc")
                assert await conn.receive() == b"cba"
                assert conn.peer_certificate is not None
            # Leaving the endpoint sent close_notify to the trio server.
            await got_close_notify.wait()
            nursery.cancel_scope.cancel()


@needs_openssl
async def test_three_kinds_of_peer_on_one_server_socket(server_ctx: SSL.Context, client_ctx: SSL.Context) -> None:
    server_sock = await udp_socket()
    address = server_sock.getsockname()

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        async for message in conn:
            await conn.send(b"<" + message + b">")

    async def ours() -> None:
        async with DtlsEndpoint(await udp_socket()) as client:
            conn = await client.connect(address, client_ctx, server_hostname=False)
            for i in range(5):
                await conn.send(b"ours%d" % i)
                assert await conn.receive() == b"<ours%d>" % i

    async def trio_dtls() -> None:
        with trio.DTLSEndpoint(await udp_socket()) as theirs:
            channel = theirs.connect(address, trio_client_context())
            for i in range(5):
                await channel.send(b"trio%d" % i)
                assert await channel.receive() == b"<trio%d>" % i

    async def s_client() -> None:
        assert OPENSSL is not None
        proc = await trio.lowlevel.open_process(
            [OPENSSL, "s_client", "-dtls1_2", "-connect", f"127.0.0.1:{address[1]}",
             "-quiet", "-no_ign_eof"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert proc.stdin is not None and proc.stdout is not None
        for i in range(5):
            await proc.stdin.send_all(b"cli%d\n" % i)
            await read_until(proc.stdout, b"<cli%d\n>" % i)
        await proc.stdin.aclose()
        await proc.wait()

    with trio.fail_after(30):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server, trio.open_nursery() as nursery:
            await nursery.start(server.serve, handler)
            async with trio.open_nursery() as peers:
                peers.start_soon(ours)
                peers.start_soon(trio_dtls)
                peers.start_soon(s_client)
            nursery.cancel_scope.cancel()
    assert server.statistics().handshakes_completed == 3
