"""Session resumption: the server keeps sessions resumable, the client offers
them (automatically, or from bytes), and never to the wrong peer."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, SelfSigned
from trio_dtlsmux.testing import FakeNetwork

from .conftest import fake_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)
CLIENT2 = ("10.0.0.3", 5000)


def contexts(identity: SelfSigned, *, tickets: bool) -> tuple[SSL.Context, SSL.Context]:
    server_ctx = trio_dtlsmux.server_context(identity)
    if not tickets:
        # Session-ID resumption only: the server's cache must keep it.
        server_ctx.set_options(SSL.OP_NO_TICKET)
    return server_ctx, trio_dtlsmux.client_context(fingerprint=identity.fingerprint)


@pytest.mark.parametrize("tickets", [True, False], ids=["ticket", "session-id"])
@pytest.mark.parametrize("ending", ["close", "reaped"])
async def test_a_second_connection_resumes(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned, tickets: bool, ending: str
) -> None:
    # Before: the server freed a reaped or closed association's SSL object
    # without a shutdown mark, and OpenSSL dropped its session from the
    # cache, so session-ID resumption never happened.
    server_ctx, client_ctx = contexts(identity, tickets=tickets)
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx, idle_timeout=10
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT), idle_timeout=10) as client:
        first = await client.connect(SERVER, client_ctx, server_hostname=False)
        theirs = await server.accept()
        assert not first.session_reused and not theirs.session_reused
        blob = first.session
        assert isinstance(blob, bytes) and blob
        if ending == "close":
            await first.aclose()
            with pytest.raises(trio.EndOfChannel):
                await theirs.receive()
        else:
            await trio.sleep(11)  # both sides reap
            assert server.statistics().peers_reaped == 1
            assert client.statistics().peers == 0
        second = await client.connect(SERVER, client_ctx, server_hostname=False)
        again = await server.accept()
        assert second.session_reused and again.session_reused
        await second.send(b"resumed")
        assert await again.receive() == b"resumed"
    # A new endpoint (a new process, say) offers the saved bytes.
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT2)) as client:
        third = await client.connect(SERVER, client_ctx, server_hostname=False, session=blob)
        assert third.session_reused
        assert (await server.accept()).session_reused


async def test_a_session_is_never_offered_to_another_name_or_context(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned
) -> None:
    server_ctx, client_ctx = contexts(identity, tickets=True)
    other_ctx = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        first = await client.connect(SERVER, client_ctx, server_hostname=False)
        await first.aclose()
        # Another context: a full handshake.
        second = await client.connect(SERVER, other_ctx, server_hostname=False)
        assert not second.session_reused
        await second.aclose()
        # Another name (checked by the context's pin, not by name here).
        third = await client.connect(SERVER, client_ctx, server_hostname="example.net")
        assert not third.session_reused
        await third.aclose()
        # The first context and name again: resumed.
        fourth = await client.connect(SERVER, client_ctx, server_hostname=False)
        assert fourth.session_reused
        del server


async def test_the_cache_can_be_turned_off(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned
) -> None:
    server_ctx, client_ctx = contexts(identity, tickets=True)
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT), session_cache=0) as client:
        first = await client.connect(SERVER, client_ctx, server_hostname=False)
        blob = first.session
        await first.aclose()
        second = await client.connect(SERVER, client_ctx, server_hostname=False)
        assert not second.session_reused
        await second.aclose()
        # An explicit session is still offered.
        assert blob is not None
        third = await client.connect(SERVER, client_ctx, server_hostname=False, session=blob)
        assert third.session_reused
        del server


async def test_the_server_role_has_no_session_bytes_and_bad_bytes_are_refused(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned
) -> None:
    server_ctx, client_ctx = contexts(identity, tickets=True)
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        await client.connect(SERVER, client_ctx, server_hostname=False)
        assert (await server.accept()).session is None
        with pytest.raises(ValueError, match="not a DTLS session"):
            await client.connect(("10.0.0.9", 1), client_ctx, session=b"\x30\x03abc")
        with pytest.raises(ValueError, match="1 to"):
            await client.connect(("10.0.0.9", 1), client_ctx, session=b"")
        with pytest.raises(TypeError, match="bytes"):
            await client.connect(("10.0.0.9", 1), client_ctx, session="text")  # type: ignore[arg-type]
        assert client.statistics().peers == 1


async def test_an_explicit_session_is_held_to_the_context_s_pin(
    autojump_clock: trio.testing.MockClock, identity: SelfSigned
) -> None:
    # A resumed handshake shows no certificate; before, a session handed in
    # as bytes resumed under a context pinned to another certificate.
    server_ctx, client_ctx = contexts(identity, tickets=True)
    other_pin = trio_dtlsmux.client_context(
        fingerprint=trio_dtlsmux.self_signed().fingerprint
    )
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        first = await client.connect(SERVER, client_ctx, server_hostname=False)
        blob = first.session
        assert blob is not None
        await first.aclose()
        with pytest.raises(trio_dtlsmux.HandshakeError) as refused:
            await client.connect(SERVER, other_pin, server_hostname=False, session=blob)
        assert refused.value.kind is trio_dtlsmux.HandshakeFailure.VERIFICATION
        assert "resumed session" in refused.value.reason
        assert client.statistics().handshakes_failed == {"verification": 1}
        # The right context still resumes with it.
        again = await client.connect(SERVER, client_ctx, server_hostname=False, session=blob)
        assert again.session_reused
        del server
