"""The endpoint's options, validated once and then frozen.

Every tunable of :class:`~trio_dtlsmux.DtlsEndpoint` lives in
:class:`EndpointConfig` so that there is one place to read defaults, one place
that checks them, and no way to change them under a running endpoint.
"""

from __future__ import annotations

import math
from typing import IO, Any

import attrs

# RFC 6347 4.1.1.1: a datagram should fit the path MTU. 1,400 bytes leaves room
# for IPv6 and a tunnel header under a 1,500-byte Ethernet MTU, and some
# embedded stacks refuse more. Below 256 bytes even a ClientHello with a
# cookie no longer fits in a datagram.
MIN_MTU = 256
MAX_MTU = 65507


def _positive(name: str, value: object, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number, not {value!r}")


def _count(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")


@attrs.frozen(kw_only=True)
class EndpointConfig:
    """The options of a :class:`~trio_dtlsmux.DtlsEndpoint`.

    Pass them as keyword arguments to the endpoint; they are checked at
    construction and then frozen here (``endpoint.config``).

    Attributes:
      handshake_timeout: seconds a handshake may take before it is abandoned
        (``HandshakeTimeout`` from ``connect``; counted on a server).
      initial_retransmit_timeout: seconds before the first retransmission of
        a handshake flight (RFC 6347 4.2.4.1 recommends 1 s).
      max_retransmit_timeout: the cap of the doubling backoff (RFC: 60 s).
      mtu: the largest datagram the endpoint sends, in bytes.
      inbox_size: messages buffered per peer before new ones are dropped.
      idle_timeout: seconds without a valid datagram before a peer is reaped
        (``None`` never reaps).
      max_connections: associations at once (established and handshaking),
        counting the verified hellos that wait for a handshake slot.
      max_handshakes: handshakes in progress at once. A client whose
        verified hello finds them all taken waits (only its hello's bytes
        are kept: ``hellos_waiting`` in the statistics) and gets a slot,
        drawn at random among those waiting, as one frees.
      cookie_lifetime: seconds between cookie secret rotations; a cookie is
        accepted for one to two lifetimes.
      keylog: a path or a writable binary file that receives NSS key log lines
        (``CLIENT_RANDOM ...``) for Wireshark; ``None`` (default) keeps keys
        secret.
      receive_buffer: bytes of socket receive buffer to ask the kernel for
        when the endpoint opens (``SO_RCVBUF``), so that a burst of
        handshakes is not dropped before the receive task reads it. It is
        only ever raised (a socket that has more keeps it), the kernel caps
        it at ``net.core.rmem_max``, and ``None`` leaves the socket alone.
        ``statistics()`` reports what the socket got.
      send_buffer: the same for the send buffer (``SO_SNDBUF``,
        ``net.core.wmem_max``).
      session_cache: how many client sessions the endpoint remembers, the
        last one per (address, server name, context), to offer again on the
        next ``connect`` with the same three (an abbreviated handshake, if
        the server agrees). ``0`` turns it off. A session is never offered
        to another address, under another name or with another context.
      other_datagrams: how many datagrams that are not DTLS (by their first
        byte, RFC 7983: STUN, RTP/RTCP, ...) wait for
        :meth:`~trio_dtlsmux.DtlsEndpoint.receive_other`. ``0`` (the
        default) drops and counts them as junk; when the inbox is full, new
        ones are dropped and counted.
    """

    handshake_timeout: float = 30.0
    initial_retransmit_timeout: float = 1.0
    max_retransmit_timeout: float = 60.0
    mtu: int = 1400
    inbox_size: int = 64
    idle_timeout: float | None = 300.0
    max_connections: int = 10_000
    max_handshakes: int = 1_000
    cookie_lifetime: float = 30.0
    keylog: str | IO[bytes] | None = None
    receive_buffer: int | None = 4 * 1024 * 1024
    send_buffer: int | None = 1024 * 1024
    session_cache: int = 1000
    other_datagrams: int = 0

    def __attrs_post_init__(self) -> None:
        _positive("handshake_timeout", self.handshake_timeout)
        _positive("initial_retransmit_timeout", self.initial_retransmit_timeout)
        _positive("max_retransmit_timeout", self.max_retransmit_timeout)
        if self.max_retransmit_timeout < self.initial_retransmit_timeout:
            raise ValueError(
                "max_retransmit_timeout "
                f"({self.max_retransmit_timeout}) is less than "
                f"initial_retransmit_timeout ({self.initial_retransmit_timeout})"
            )
        _count("mtu", self.mtu, MIN_MTU)
        if self.mtu > MAX_MTU:
            raise ValueError(f"mtu must be at most {MAX_MTU} bytes, not {self.mtu}")
        _count("inbox_size", self.inbox_size, 0)
        _positive("idle_timeout", self.idle_timeout, allow_none=True)
        _count("max_connections", self.max_connections)
        _count("max_handshakes", self.max_handshakes)
        _positive("cookie_lifetime", self.cookie_lifetime)
        _count("other_datagrams", self.other_datagrams, 0)
        _count("session_cache", self.session_cache, 0)
        for name in ("receive_buffer", "send_buffer"):
            value = getattr(self, name)
            if value is not None:
                _count(name, value, 1024)
        if self.keylog is not None and not isinstance(self.keylog, str):
            write = getattr(self.keylog, "write", None)
            if not callable(write):
                raise TypeError(
                    "keylog must be a path or a writable binary file, "
                    f"not {self.keylog!r}"
                )


def make_config(options: dict[str, Any]) -> EndpointConfig:
    """Build the config from the endpoint's keyword arguments."""
    known = {field.name for field in attrs.fields(EndpointConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown DtlsEndpoint option(s): {', '.join(unknown)}; "
            f"known options are: {', '.join(sorted(known))}"
        )
    return EndpointConfig(**options)
