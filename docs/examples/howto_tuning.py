"""How-to: tuning an endpoint's limits and timeouts."""

from __future__ import annotations

from typing import Any

import trio_dtlsmux


def tuned_endpoint(sock: Any, context: Any) -> trio_dtlsmux.DtlsEndpoint:
    return trio_dtlsmux.DtlsEndpoint(
        sock,
        server_context=context,
        # Timers
        handshake_timeout=15.0,  # give up on a handshake after 15 s
        initial_retransmit_timeout=0.5,  # a LAN answers fast
        max_retransmit_timeout=8.0,  # ... and never wait a minute
        idle_timeout=90.0,  # reap peers silent for 90 s
        # Sizes
        mtu=1200,  # leave room for tunnels and IPv6 headers
        inbox_size=256,  # bursts of up to 256 unread messages per peer
        # Limits
        max_connections=50_000,
        max_handshakes=2_000,
        cookie_lifetime=60.0,
    )
