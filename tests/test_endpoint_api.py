"""The endpoint's public API: validation, errors, context reuse, routing."""

from __future__ import annotations

import socket

import pytest
import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import (
    DtlsConnection,
    DtlsEndpoint,
    HandshakeError,
    HandshakeTimeout,
    SelfSigned,
)
from trio_dtlsmux.testing import FakeNetwork

from .conftest import echo, fake_socket, udp_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"mtu": 100}, ValueError, "mtu must be at least 256"),
        ({"mtu": 70000}, ValueError, "at most 65507"),
        ({"mtu": 1400.0}, TypeError, "mtu must be an integer"),
        ({"handshake_timeout": 0}, ValueError, "handshake_timeout must be a positive"),
        ({"idle_timeout": -1}, ValueError, "idle_timeout"),
        ({"idle_timeout": float("inf")}, ValueError, "finite"),
        ({"initial_retransmit_timeout": 5, "max_retransmit_timeout": 1}, ValueError, "less than"),
        ({"inbox_size": -1}, ValueError, "inbox_size"),
        ({"max_handshakes": 0}, ValueError, "max_handshakes"),
        ({"keylog": 42}, TypeError, "keylog"),
        ({"retransmit": 1}, TypeError, "unknown DtlsEndpoint option"),
        ({"handshake_timeout": True}, TypeError, "number of seconds"),
    ],
)
def test_bad_options_are_rejected_at_construction(options: dict[str, object], error: type[Exception], match: str) -> None:
    net = FakeNetwork()
    with pytest.raises(error, match=match):
        DtlsEndpoint(net.socket(), **options)


def test_config_is_frozen_and_shows_defaults() -> None:
    ep = DtlsEndpoint(FakeNetwork().socket(), idle_timeout=None, mtu=1200)
    assert ep.config.mtu == 1200 and ep.config.idle_timeout is None
    assert ep.config.handshake_timeout == 30 and ep.config.initial_retransmit_timeout == 1
    assert ep.config.max_retransmit_timeout == 60 and ep.config.max_connections == 10_000
    with pytest.raises(AttributeError):
        ep.config.mtu = 9000  # type: ignore[misc]


async def test_socket_must_be_a_trio_udp_socket() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, pytest.raises(TypeError, match="trio socket"):
        DtlsEndpoint(plain)
    tcp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    with tcp, pytest.raises(ValueError, match="SOCK_DGRAM"):
        DtlsEndpoint(tcp)
    with pytest.raises(TypeError, match=r"OpenSSL\.SSL\.Context"):
        DtlsEndpoint(FakeNetwork().socket(), server_context="ctx")  # type: ignore[arg-type]


def test_connection_has_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        DtlsConnection(object(), None, None)  # type: ignore[arg-type]


async def test_methods_need_an_open_endpoint(client_ctx: SSL.Context) -> None:
    ep = DtlsEndpoint(FakeNetwork().socket())
    with pytest.raises(RuntimeError, match="async with"):
        await ep.connect(SERVER, client_ctx)
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as ep:
        with pytest.raises(RuntimeError, match="no server_context"):
            await ep.accept()
    with pytest.raises(trio.ClosedResourceError):
        await ep.connect(SERVER, client_ctx)
    with pytest.raises(RuntimeError, match="only once"):
        await ep.__aenter__()


async def test_bad_connect_arguments(client_ctx: SSL.Context) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as ep:
        with pytest.raises(ValueError, match="port"):
            await ep.connect(("10.0.0.1", 70000), client_ctx)
        with pytest.raises(ValueError, match="host"):
            await ep.connect((b"10.0.0.1", 4433), client_ctx)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="tuple"):
            await ep.connect("10.0.0.1:4433", client_ctx)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"SSL\.Context"):
            await ep.connect(SERVER, None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="server_hostname"):
            await ep.connect(SERVER, client_ctx, server_hostname=True)


async def test_second_connect_to_the_same_peer_is_an_error(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            first = await client.connect(SERVER, client_ctx, server_hostname=False)
            with pytest.raises(ValueError, match="already has an association"):
                await client.connect(SERVER, client_ctx, server_hostname=False)
            await first.send(b"first still works")
            assert await (await server.accept()).receive() == b"first still works"
            await first.aclose()
            again = await client.connect(SERVER, client_ctx, server_hostname=False)
            assert again.established


async def test_without_server_context_hellos_are_dropped_and_counted(
    autojump_clock: trio.testing.MockClock, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    async with DtlsEndpoint(await fake_socket(net, *SERVER)) as not_a_server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT), handshake_timeout=5) as client:
            with pytest.raises(HandshakeTimeout, match="did not finish"):
                await client.connect(SERVER, client_ctx, server_hostname=False)
        stats = not_a_server.statistics()
        assert stats.hellos_dropped_no_server >= 2  # the hello and its retransmissions
        assert stats.cookies_sent == 0 and stats.peers == 0


async def test_handshake_timeout_is_counted_on_both_sides(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    # Only the cookie exchange gets through; the server's flight never does.
    net.route_hook = lambda p: None if p.source == SERVER and len(p.payload) > 100 else p
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, handshake_timeout=10
    ) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT), handshake_timeout=10) as client:
            start = trio.current_time()
            with pytest.raises(HandshakeTimeout):
                await client.connect(SERVER, client_ctx, server_hostname=False)
            assert 10 <= trio.current_time() - start < 10.5
            assert client.statistics().handshakes_failed == {"timeout": 1}
            await trio.sleep(1)
            assert server.statistics().handshakes_failed == {"timeout": 1}
            assert server.statistics().peers == 0


async def test_one_context_serves_many_connects_and_endpoints(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    for round_ in range(2):  # the same server context in two endpoints, in turn
        async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, echo)
                for i in range(3):  # the same client context, many connects
                    async with DtlsEndpoint(await fake_socket(net, f"10.0.{round_}.{i + 2}")) as c:
                        conn = await c.connect(SERVER, client_ctx, server_hostname=False)
                        await conn.send(b"%d" % i)
                        assert await conn.receive() == b"%d" % i
                nursery.cancel_scope.cancel()
    # And a context made by hand works as a server context too.
    handmade = SSL.Context(SSL.DTLS_METHOD)
    identity = trio_dtlsmux.self_signed()
    handmade.use_certificate(identity.certificate)
    handmade.use_privatekey(identity.private_key)
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=handmade) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as c:
            await c.connect(SERVER, trio_dtlsmux.client_context(fingerprint=identity.fingerprint), server_hostname=False)


def test_a_context_already_used_elsewhere_gets_a_clear_error(identity: SelfSigned) -> None:
    ctx = trio_dtlsmux.server_context(identity)
    SSL.Connection(ctx, None)  # pyOpenSSL now refuses changes to ctx
    with pytest.raises(ValueError, match="already been used"):
        DtlsEndpoint(FakeNetwork().socket(), server_context=ctx)


async def test_ipv6_routing_normalises_addresses(server_ctx: SSL.Context, client_ctx: SSL.Context) -> None:
    server_sock = await udp_socket("::1")
    port = server_sock.getsockname()[1]
    with trio.fail_after(10):
        async with DtlsEndpoint(server_sock, server_context=server_ctx) as server, trio.open_nursery() as nursery:
            await nursery.start(server.serve, echo)
            async with DtlsEndpoint(await udp_socket("::1")) as client:
                conn = await client.connect(("::1", port), client_ctx, server_hostname=False)
                assert conn.peer_address == ("::1", port, 0, 0)
                await conn.send(b"v6")
                assert await conn.receive() == b"v6"
                with pytest.raises(ValueError, match="already has an association"):
                    await client.connect(("::1", port, 0, 0), client_ctx, server_hostname=False)
            nursery.cancel_scope.cancel()


async def test_unresolvable_host_is_an_oserror(client_ctx: SSL.Context) -> None:
    async with DtlsEndpoint(await udp_socket()) as client:
        with pytest.raises(OSError, match="resolve"):
            await client.connect(("no-such-host.invalid", 4433), client_ctx)


async def test_certificate_failure_is_a_handshake_error_not_an_openssl_error(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    wrong_pin = trio_dtlsmux.client_context(fingerprint=trio_dtlsmux.self_signed().fingerprint)
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            with pytest.raises(HandshakeError) as caught:
                await client.connect(SERVER, wrong_pin, server_hostname=False)
    assert not isinstance(caught.value, SSL.Error)
    assert isinstance(caught.value, trio.BrokenResourceError)
    assert "fingerprint" in caught.value.reason or "pin" in caught.value.reason
    assert server.statistics().handshakes_failed == {"alert": 1}


async def test_an_error_in_the_body_is_not_wrapped_in_a_group() -> None:
    net = FakeNetwork()
    with pytest.raises(KeyError, match="mine"):
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)):
            raise KeyError("mine")


async def test_oversized_message_is_refused_without_breaking_the_connection(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    options = {"mtu": 20_000}
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx, **options) as server:
        async with DtlsEndpoint(await fake_socket(net, *CLIENT), **options) as client:
            conn = await client.connect(SERVER, client_ctx, server_hostname=False)
            theirs = await server.accept()
            assert conn.get_cleartext_mtu() == 16384  # one record's plaintext at most
            with pytest.raises(ValueError, match="cleartext MTU"):
                await conn.send(b"x" * 16385)
            await conn.send(b"x" * 16384)
            assert await theirs.receive() == b"x" * 16384



async def test_a_context_for_the_other_role_is_refused(
    server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    # Before: connect() with a server context handshook and checked no
    # certificate, name or pin at all.
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        with pytest.raises(ValueError, match=r"trio_dtlsmux\.client_context"):
            await client.connect(SERVER, trio_dtlsmux.server_context(trio_dtlsmux.self_signed()))
        assert client.statistics().peers == 0
        assert server.statistics().handshakes_completed == 0
    with pytest.raises(ValueError, match=r"trio_dtlsmux\.server_context"):
        DtlsEndpoint(FakeNetwork().socket(), server_context=client_ctx)
