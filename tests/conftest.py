from __future__ import annotations

import pytest
import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import SelfSigned


@pytest.fixture(scope="session")
def identity() -> SelfSigned:
    return trio_dtlsmux.self_signed()


@pytest.fixture
def server_ctx(identity: SelfSigned) -> SSL.Context:
    return trio_dtlsmux.server_context(identity)


@pytest.fixture
def client_ctx(identity: SelfSigned) -> SSL.Context:
    return trio_dtlsmux.client_context(fingerprint=identity.fingerprint)


async def udp_socket(host: str = "127.0.0.1") -> trio.socket.SocketType:
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def echo(conn: trio_dtlsmux.DtlsConnection) -> None:
    async for message in conn:
        await conn.send(message)


async def fake_socket(net: object, host: str, port: int = 0) -> object:
    from trio_dtlsmux.testing import FakeNetwork

    assert isinstance(net, FakeNetwork)
    sock = net.socket()
    await sock.bind((host, port))
    return sock


def drain_bio(conn: SSL.Connection) -> list[bytes]:
    """Everything a memory-BIO ``SSL.Connection`` has written, one chunk a read."""
    out = []
    while True:
        try:
            out.append(conn.bio_read(65536))
        except SSL.WantReadError:
            return out
