"""How-to: one service address on every core of a Linux host.

The supervisor (this process) binds one UDP socket per worker to the same
address and forks the workers; run it as the service's main process.
"""

from __future__ import annotations

import os
from typing import Any

import trio_dtlsmux


async def echo(conn: trio_dtlsmux.DtlsConnection) -> None:
    async for message in conn:
        await conn.send(message)


def read_cookie_secret(path: str) -> list[bytes]:
    """Hex keys, one per line, newest first (the format of --cookie-secret-file)."""
    with open(path) as lines:
        return [
            bytes.fromhex(line)
            for line in lines
            if line.strip() and not line.startswith("#")
        ]


def main(
    host: str = "0.0.0.0",
    port: int = 4433,
    cookie_secret_file: str | None = None,
    **more: Any,
) -> None:
    trio_dtlsmux.serve_workers(
        echo,
        (host, port),
        workers=len(os.sched_getaffinity(0)),  # one per CPU we may use
        server_context=trio_dtlsmux.server_context("cert.pem", "key.pem"),
        # Shared with the servers on other hosts behind the same balancer;
        # without it, the supervisor makes one for its own workers.
        cookie_secret=(
            None if cookie_secret_file is None else read_cookie_secret(cookie_secret_file)
        ),
        idle_timeout=60,  # any DtlsEndpoint option, for every worker
        **more,
    )


if __name__ == "__main__":
    main()
