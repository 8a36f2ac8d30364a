"""How-to: verifying the server's certificate, and pinning it."""

from __future__ import annotations

from typing import Any

import trio_dtlsmux


def contexts(cafile: str, fingerprint: str) -> dict[str, Any]:
    return {
        # Trust the system's CA store (the default when no CA is named).
        "system": trio_dtlsmux.client_context(),
        # Trust only the CAs in this PEM file (a private CA, say).
        "private CA": trio_dtlsmux.client_context(cafile=cafile),
        # Trust exactly one certificate, named by its SHA-256 fingerprint.
        "pinned": trio_dtlsmux.client_context(fingerprint=fingerprint),
    }


async def connect_four_ways(
    endpoint: trio_dtlsmux.DtlsEndpoint, port: int, context: Any
) -> list[str | None]:
    checked = []
    # 1. By name: the certificate must hold DNS:localhost, and the name is
    #    sent to the server as SNI.
    conn = await endpoint.connect(("localhost", port), context)
    checked.append(conn.server_hostname)
    await conn.aclose()
    # 2. By IP literal: the certificate must hold IP:127.0.0.1; no SNI.
    conn = await endpoint.connect(("127.0.0.1", port), context)
    checked.append(conn.server_hostname)
    await conn.aclose()
    # 3. By address, but checked (and sent as SNI) under another name.
    conn = await endpoint.connect(
        ("127.0.0.1", port), context, server_hostname="localhost"
    )
    checked.append(conn.server_hostname)
    await conn.aclose()
    # 4. No name check at all: only for pinned contexts or when you check
    #    conn.peer_certificate yourself.
    conn = await endpoint.connect(("127.0.0.1", port), context, server_hostname=False)
    checked.append(conn.server_hostname)
    await conn.aclose()
    return checked


async def explain_failure(
    endpoint: trio_dtlsmux.DtlsEndpoint,
    address: Any,
    context: Any,
    server_hostname: str | None = None,
) -> str | None:
    try:
        conn = await endpoint.connect(address, context, server_hostname=server_hostname)
    except trio_dtlsmux.HandshakeError as exc:
        # For example: "certificate verification failed: certificate is
        # for DNS:localhost, IP:127.0.0.1, IP:::1, not 'example.com'"
        return exc.reason
    await conn.aclose()
    return None
