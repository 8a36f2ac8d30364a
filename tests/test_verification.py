"""Secure by default, end to end on loopback: each failed check is named,
fails fast, and the server sees the alert."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, HandshakeError

from .conftest import echo, udp_socket
from .test_contexts import Pki, pki  # noqa: F401 - the session fixture

CASES = [
    # (server certificate, client context arguments, server_hostname, words in the reason)
    ("other", "root", None, ["localhost", "other.example"]),
    ("expired", "root", None, ["expired"]),
    ("rogue", "root", None, ["verification failed"]),
    ("localhost", "wrong pin", False, ["fingerprint"]),
]


@pytest.mark.parametrize(("served", "trust", "hostname", "words"), CASES, ids=[c[0] + "/" + c[1] for c in CASES])
async def test_failed_check_is_named_and_fast(
    pki: Pki,  # noqa: F811
    served: str,
    trust: str,
    hostname: object,
    words: list[str],
) -> None:
    if trust == "root":
        ctx = trio_dtlsmux.client_context(cafile=pki.root_file)
    else:
        ctx = trio_dtlsmux.client_context(fingerprint=trio_dtlsmux.self_signed().fingerprint)
    server_sock = await udp_socket()
    port = server_sock.getsockname()[1]
    with trio.fail_after(5):
        async with DtlsEndpoint(server_sock, server_context=pki.server(served)) as server:
            async with DtlsEndpoint(await udp_socket()) as client:
                start = trio.current_time()
                with pytest.raises(HandshakeError) as caught:
                    await client.connect(("localhost", port), ctx, server_hostname=hostname)  # type: ignore[arg-type]
                assert trio.current_time() - start < 1.0
            while not server.statistics().handshakes_failed:
                await trio.lowlevel.checkpoint()  # checkpoints only: let the alert arrive
    reason = caught.value.reason
    assert reason.startswith("certificate verification failed")
    for word in words:
        assert word in reason
    assert client.statistics().handshakes_failed == {"verification": 1}
    assert server.statistics().handshakes_failed == {"alert": 1}


async def test_ip_literal_checks_ip_sans_and_sends_no_sni(pki: Pki) -> None:  # noqa: F811
    ctx = trio_dtlsmux.client_context(cafile=pki.root_file)
    server_sock = await udp_socket()
    port = server_sock.getsockname()[1]
    seen: list[str | None] = []

    async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        seen.append(conn.server_hostname)
        await echo(conn)

    with trio.fail_after(5):
        async with DtlsEndpoint(server_sock, server_context=pki.server("localhost")) as server, trio.open_nursery() as nursery:
            await nursery.start(server.serve, handler)
            async with DtlsEndpoint(await udp_socket()) as client:
                by_ip = await client.connect(("127.0.0.1", port), ctx)
                assert by_ip.server_hostname == "127.0.0.1"
                await by_ip.send(b"ip")
                assert await by_ip.receive() == b"ip"
                await by_ip.aclose()
                by_name = await client.connect(("localhost", port), ctx)
                await by_name.send(b"name")
                assert await by_name.receive() == b"name"
            nursery.cancel_scope.cancel()
    # SNI is sent for a name and not for an IP literal (RFC 6066, 3).
    assert seen == [None, "localhost"]
