"""Stateless HelloVerifyRequest cookies (RFC 6347, section 4.2.1).

Theory of operation
-------------------

A server that allocates state for every ClientHello can be exhausted by a
flood of spoofed hellos, and one that answers them with big flights becomes
an amplifier. So the first ClientHello from an address gets only a small
HelloVerifyRequest carrying a cookie, and nothing is remembered. A client
that can receive at its address echoes the cookie in a second ClientHello,
and only then does the endpoint create a per-peer association.

The cookie is ``HMAC-SHA256(secret, address || hello-without-cookie)``. It
binds the address (so it cannot be replayed from elsewhere) and the exact
offer (so it cannot be grafted onto another hello). The secret rotates every
``lifetime`` seconds and the previous one is still accepted, so a cookie
lives between one and two lifetimes; a captured cookie expires after that.
Time is passed in (``now``), never read here, and the secrets come from a
callable that tests can seed.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable

from ._records import ClientHello

COOKIE_LENGTH = 32
DEFAULT_LIFETIME = 30.0


def address_bytes(address: tuple[object, ...]) -> bytes:
    """A stable byte form of a normalised socket address (host and port)."""
    return f"{address[0]}|{address[1]}".encode()


class CookieJar:
    """Makes and checks cookies; holds two secrets and nothing per peer."""

    __slots__ = ("_lifetime", "_next_rotation", "_previous", "_random", "_secret")

    def __init__(
        self,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not lifetime > 0:
            raise ValueError(f"cookie lifetime must be positive, not {lifetime!r}")
        self._lifetime = lifetime
        self._random = random_bytes
        self._secret = random_bytes(32)
        # A fresh random "previous" secret keeps verify() branch-free; no
        # cookie was ever made with it.
        self._previous = random_bytes(32)
        self._next_rotation: float | None = None

    def _rotate(self, now: float) -> None:
        if self._next_rotation is None:
            self._next_rotation = now + self._lifetime
            return
        if now < self._next_rotation:
            return
        if now >= self._next_rotation + self._lifetime:
            # Idle for more than a whole lifetime: both secrets are stale.
            self._previous = self._random(32)
        else:
            self._previous = self._secret
        self._secret = self._random(32)
        self._next_rotation = now + self._lifetime

    @staticmethod
    def _mac(secret: bytes, address: bytes, hello: ClientHello) -> bytes:
        # hmac.digest is the one-shot C path (no HMAC object); the flood
        # path runs this once per datagram.
        return hmac.digest(secret, address + b"\0" + hello.cookie_input, "sha256")

    def make(self, address: tuple[object, ...], hello: ClientHello, now: float) -> bytes:
        self._rotate(now)
        return self._mac(self._secret, address_bytes(address), hello)

    def verify(
        self, address: tuple[object, ...], hello: ClientHello, now: float
    ) -> bool:
        self._rotate(now)
        if len(hello.cookie) != COOKIE_LENGTH:
            return False
        addr = address_bytes(address)
        return hmac.compare_digest(
            hello.cookie, self._mac(self._secret, addr, hello)
        ) or hmac.compare_digest(hello.cookie, self._mac(self._previous, addr, hello))
