"""Many DTLS 1.2 peers over one UDP socket, for Trio.

::

    async with DtlsEndpoint(sock, server_context=server_context(cert, key)) as ep:
        async def echo(conn):
            async for msg in conn:
                await conn.send(msg)
        await ep.serve(echo)

See the documentation for the tutorial, how-to guides and the design.
"""

from ._config import EndpointConfig
from ._connection import DtlsConnection
from ._endpoint import DtlsEndpoint
from ._errors import (
    ConnectionLost,
    ConnectionTimedOut,
    HandshakeError,
    HandshakeFailure,
    HandshakeTimeout,
    PeerAlert,
    PeerClosed,
    PeerRestarted,
)
from ._statistics import ConnectionStatistics, EndpointStatistics
from ._workers import serve_workers
from .contexts import (
    SelfSigned,
    check_peer_identity,
    client_context,
    self_signed,
    server_context,
)

__version__ = "0.1.0"

__all__ = [
    "ConnectionLost",
    "ConnectionStatistics",
    "ConnectionTimedOut",
    "DtlsConnection",
    "DtlsEndpoint",
    "EndpointConfig",
    "EndpointStatistics",
    "HandshakeError",
    "HandshakeFailure",
    "HandshakeTimeout",
    "PeerAlert",
    "PeerClosed",
    "PeerRestarted",
    "SelfSigned",
    "check_peer_identity",
    "client_context",
    "self_signed",
    "serve_workers",
    "server_context",
]

# Public names report the public module, so tracebacks and docs say
# trio_dtlsmux.DtlsEndpoint rather than a private module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trio_dtlsmux._"):
        _obj.__module__ = __name__
del _name, _obj
