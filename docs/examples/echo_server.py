"""Tutorial, step 1: a DTLS echo server.

Run ``python make_cert.py`` once, then ``python echo_server.py``; stop it
with Ctrl-C (or ``kill``, which sends SIGTERM).
"""

from __future__ import annotations

import os
import signal

import trio

import trio_dtlsmux

PORT = int(os.environ.get("PORT", "4433"))


async def echo(conn: trio_dtlsmux.DtlsConnection) -> None:
    print(f"{conn.peer_address} connected")
    async for message in conn:
        await conn.send(message)
    print(f"{conn.peer_address} said goodbye")


async def main(
    sock: trio.socket.SocketType,
    certfile: str,
    keyfile: str,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    context = trio_dtlsmux.server_context(certfile, keyfile)
    async with trio_dtlsmux.DtlsEndpoint(sock, server_context=context) as endpoint:
        print(f"listening on {sock.getsockname()}")
        await endpoint.serve(echo, task_status=task_status)


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", PORT))
    await main(sock, "cert.pem", "key.pem")


if __name__ == "__main__":
    # SIGTERM (kill, service managers) stops the server as Ctrl-C does: it
    # is passed on as SIGINT, which Trio turns into a KeyboardInterrupt.
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
    print("stopped")
