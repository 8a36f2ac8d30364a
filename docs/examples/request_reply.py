"""Tutorial, step 3: requests with timeouts and retries, and giving up cleanly.

Talks to ``echo_server.py`` (or ``idle_server.py``).
"""

from __future__ import annotations

from typing import Any

import trio

import trio_dtlsmux

SERVER = ("127.0.0.1", 4433)


async def request(
    conn: trio_dtlsmux.DtlsConnection,
    request_id: int,
    payload: bytes,
    *,
    retry_after: float = 1.0,
    attempts: int = 4,
) -> bytes:
    """Send a request until its reply arrives; replies carry the request's id."""
    tag = request_id.to_bytes(4, "big")
    for _ in range(attempts):
        await conn.send(tag + payload)
        with trio.move_on_after(retry_after):
            while True:
                reply = await conn.receive()
                if reply[:4] == tag:
                    return reply[4:]
                # A late reply to an earlier request: not the one we wait for.
        retry_after *= 2
    raise TimeoutError(f"no reply to request {request_id} after {attempts} attempts")


async def main(
    sock: trio.socket.SocketType, server: tuple[Any, ...], cafile: str
) -> list[bytes]:
    context = trio_dtlsmux.client_context(cafile=cafile)
    async with trio_dtlsmux.DtlsEndpoint(sock, handshake_timeout=10) as endpoint:
        try:
            conn = await endpoint.connect(server, context)
        except trio_dtlsmux.HandshakeTimeout:
            print(f"no answer from {server} within 10 seconds")
            return []
        except trio_dtlsmux.HandshakeError as exc:
            print(f"handshake with {server} failed: {exc.reason}")
            return []
        answers = []
        try:
            for number, word in enumerate([b"one", b"two", b"three"]):
                answers.append(await request(conn, number, word))
        except TimeoutError as exc:
            print(exc)
        except trio_dtlsmux.ConnectionLost as exc:
            print(f"lost the server: {exc}")
        await conn.aclose()
    return answers


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", 0))
    print(await main(sock, SERVER, "cert.pem"))


if __name__ == "__main__":
    trio.run(run)
