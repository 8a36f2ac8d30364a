"""How-to: exporting an endpoint's statistics to Prometheus.

Needs ``pip install trio-dtlsmux[metrics]``.
"""

from __future__ import annotations

import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import metrics


async def echo(conn: trio_dtlsmux.DtlsConnection) -> None:
    async for message in conn:
        await conn.send(message)


async def main(
    sock: trio.socket.SocketType,
    context: SSL.Context,
    metrics_port: int = 9433,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with trio_dtlsmux.DtlsEndpoint(sock, server_context=context) as endpoint:
        # Export the endpoint's statistics, labelled with its address, to
        # prometheus_client's global registry until the block ends.
        with metrics.register(endpoint):
            async with trio.open_nursery() as nursery:
                # Serve that registry on http://127.0.0.1:9433/metrics.
                address = await nursery.start(metrics.serve_metrics, metrics_port)
                task_status.started(address)
                await endpoint.serve(echo)
