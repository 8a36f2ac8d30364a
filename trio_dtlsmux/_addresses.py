"""Socket addresses: who a peer is, as a routing key.

Datagrams are mapped to peers by source address alone (the design note's
caveat: a socket cannot hold a connection to itself), so the key must be
the same whether it came from ``recvfrom`` or from a user's ``connect``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

__all__ = ["ip_literal", "is_ip_literal", "normalize_address"]


def ip_literal(text: str) -> str | None:
    """``text`` without brackets if it is an IPv4 or IPv6 literal, else None.

    An IPv6 literal may carry a zone (``fe80::1%eth0``) and may be written
    in brackets as URLs write it (``[::1]``).
    """
    literal = text.strip()
    if literal.startswith("[") and literal.endswith("]"):
        literal = literal[1:-1]
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return None
    return literal


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name (never sent as SNI)."""
    return ip_literal(host) is not None


def normalize_address(address: Any) -> tuple[Any, ...]:
    """The routing key for a socket address.

    IPv4 addresses are ``(host, port)``. IPv6 addresses are
    ``(host, port, 0, scope_id)``: the flow label is not part of who the
    peer is, and a 2-tuple given by a user gains the zero scope id that
    ``recvfrom`` reports, so replies find their association.
    """
    if len(address) == 2:
        return (address[0], address[1])
    return (address[0], address[1], 0, address[3] if len(address) > 3 else 0)
