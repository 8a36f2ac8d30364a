"""Stateless HelloVerifyRequest cookies (RFC 6347, section 4.2.1).

Theory of operation
-------------------

A server that allocates state for every ClientHello can be exhausted by a
flood of spoofed hellos, and one that answers them with big flights becomes
an amplifier. So the first ClientHello from an address gets only a small
HelloVerifyRequest carrying a cookie, and nothing is remembered. A client
that can receive at its address echoes the cookie in a second ClientHello,
and only then does the endpoint create a per-peer association.

The cookie is ``HMAC-SHA256(epoch key, address || hello-without-cookie)``.
It binds the address (so it cannot be replayed from elsewhere) and the exact
offer (so it cannot be grafted onto another hello).

**Epoch keys.** Time is cut into epochs of ``lifetime`` seconds, numbered
``floor(t / lifetime)``. The key of epoch ``e`` is derived from a master key
as ``HMAC-SHA256(master, label || e || lifetime)``. A cookie is made with the
current epoch's key and accepted with that key or the previous epoch's, so it
lives between one and two lifetimes, and a captured one soon expires. Nothing
has to be rotated by hand: a new epoch simply derives a new key, and after a
quiet spell the old epochs are out of reach at once.

**Private or shared.** By default the master key is random and known to this
endpoint only, and ``t`` is the ``now`` the endpoint passes in (Trio's clock,
so that ``trio.testing.MockClock`` drives expiry in tests). Several processes
or hosts behind one service address may instead share a *cookie secret*: a
key ring of one or more master keys, newest first, so that whichever instance
gets the second ClientHello can check the cookie that another instance sent.
Cookies are always made with the newest key and checked with every key of the
ring, newest first, which is how a secret is rotated without refusing the
cookies already out.

A shared secret needs a shared clock. Trio's clock is per process: it starts
at a random offset in every ``trio.run``, so two processes would number their
epochs differently and refuse each other's cookies. Wall-clock time (``time
.time()`` unless a test injects another clock) is the one clock that
processes and hosts have in common, so a jar with a shared secret numbers its
epochs from it and ignores ``now``. Wall clocks differ a little between hosts
(NTP keeps them within milliseconds; a cookie crossing an epoch boundary on
its way from one host to another would then look as if it came from the
future), so a shared jar also accepts the *next* epoch's key: clocks may
differ by up to one lifetime. That stretches the life of a cookie, measured
on the clock of the instance that checks it, to at most three lifetimes
(:attr:`CookieJar.max_age`). Instances that share a secret must use the same
``lifetime``: it is part of the key derivation.

This is the only place in the library that reads the wall clock, and only
for a shared secret. Everything else (retransmissions, timeouts, the
replayed-hello memory) stays on Trio's clock.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from collections.abc import Callable, Sequence

from ._records import ClientHello

__all__ = [
    "COOKIE_LENGTH",
    "DEFAULT_LIFETIME",
    "MAX_KEYS",
    "MIN_KEY_LENGTH",
    "CookieJar",
    "address_bytes",
    "cookie_keys",
]

COOKIE_LENGTH = 32
DEFAULT_LIFETIME = 30.0
#: 256 bits: the strength of HMAC-SHA256, and what ``secrets.token_bytes(32)``
#: or ``openssl rand -hex 32`` gives.
MIN_KEY_LENGTH = 32
#: A rotation needs two keys (the new and the old). Every key of the ring
#: costs up to three HMACs for each hello whose cookie is wrong, which is the
#: price a flood of forged cookies makes the endpoint pay, so the ring is
#: kept short.
MAX_KEYS = 4

_LABEL = b"trio_dtlsmux cookie epoch key v1\0"


def address_bytes(address: tuple[object, ...]) -> bytes:
    """A stable byte form of a normalised socket address (host and port)."""
    return f"{address[0]}|{address[1]}".encode()


def cookie_keys(secret: object) -> tuple[bytes, ...] | None:
    """Check a ``cookie_secret`` argument and return its key ring.

    ``None`` stays ``None`` (a private random key). One key (``bytes``) is a
    ring of one; a sequence of keys is a ring, newest first.

    Raises:
      TypeError: ``secret`` is neither bytes nor a sequence of bytes (a
        ``str``, for instance: decode hex with ``bytes.fromhex``).
      ValueError: the ring is empty or too long, or a key is shorter than
        :data:`MIN_KEY_LENGTH` bytes.
    """
    if secret is None:
        return None
    if isinstance(secret, str):
        raise TypeError(
            "cookie_secret must be bytes or a sequence of bytes, not str; "
            "for a hex string use bytes.fromhex(...)"
        )
    if isinstance(secret, (bytes, bytearray)):
        ring: list[object] = [secret]
    elif isinstance(secret, Sequence):
        ring = list(secret)
    else:
        raise TypeError(
            "cookie_secret must be bytes (one key) or a sequence of bytes "
            f"(a key ring, newest first), not {type(secret).__name__}"
        )
    if not ring:
        raise ValueError("cookie_secret is an empty key ring; give at least one key")
    if len(ring) > MAX_KEYS:
        raise ValueError(
            f"cookie_secret has {len(ring)} keys; at most {MAX_KEYS} are "
            "allowed (a rotation needs two: the new key and the old one)"
        )
    keys = []
    for index, key in enumerate(ring):
        which = "cookie_secret" if len(ring) == 1 else f"cookie_secret key {index}"
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"{which} must be bytes, not {type(key).__name__}")
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"{which} has {len(key)} bytes; a key needs at least "
                f"{MIN_KEY_LENGTH} (secrets.token_bytes({MIN_KEY_LENGTH}) makes one)"
            )
        keys.append(bytes(key))
    return tuple(keys)


class CookieJar:
    """Makes and checks cookies; holds master keys and nothing per peer.

    Args:
      lifetime: seconds per epoch; a cookie lives one to two of them.
      secret: ``None`` for a private random key, or a shared key or key
        ring (see :func:`cookie_keys`).
      random_bytes: where the private key comes from (tests seed it).
      wall_clock: the clock of a shared secret's epochs (tests inject one).
    """

    __slots__ = (
        "_epoch",
        "_keys",
        "_lifetime",
        "_make_key",
        "_pack",
        "_verify_keys",
        "_wall_clock",
    )

    def __init__(
        self,
        *,
        lifetime: float = DEFAULT_LIFETIME,
        secret: bytes | Sequence[bytes] | None = None,
        random_bytes: Callable[[int], bytes] = os.urandom,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not lifetime > 0:
            raise ValueError(f"cookie lifetime must be positive, not {lifetime!r}")
        keys = cookie_keys(secret)
        self._lifetime = float(lifetime)
        self._keys = keys if keys is not None else (random_bytes(MIN_KEY_LENGTH),)
        # A private key is only ever checked by this jar, on the endpoint's
        # own clock; a shared one on the clock all instances share.
        self._wall_clock = None if keys is None else wall_clock
        self._pack = struct.Struct(">qd").pack
        self._epoch: int | None = None
        self._make_key = b""
        self._verify_keys: tuple[bytes, ...] = ()

    @property
    def shared(self) -> bool:
        """Whether the keys came from a shared secret (epochs on wall time)."""
        return self._wall_clock is not None

    @property
    def max_age(self) -> float:
        """The longest a cookie can verify after it was made, in seconds of
        the ``now`` passed to this jar: two lifetimes, and one more for the
        clock skew a shared secret tolerates."""
        return (3 if self.shared else 2) * self._lifetime

    def _derive(self, master: bytes, epoch: int) -> bytes:
        return hmac.digest(
            master, _LABEL + self._pack(epoch, self._lifetime), "sha256"
        )

    def _update(self, now: float) -> None:
        clock = self._wall_clock
        epoch = int((clock() if clock is not None else now) // self._lifetime)
        if epoch == self._epoch:
            return
        # Checked in this order: newest key first, and within a key the
        # epoch a cookie most likely comes from first.
        epochs = (epoch, epoch - 1, epoch + 1) if clock is not None else (epoch, epoch - 1)
        self._verify_keys = tuple(
            self._derive(master, e) for master in self._keys for e in epochs
        )
        self._make_key = self._verify_keys[0]
        self._epoch = epoch

    @staticmethod
    def _mac(key: bytes, address: bytes, hello: ClientHello) -> bytes:
        # hmac.digest is the one-shot C path (no HMAC object); the flood
        # path runs this once per datagram.
        return hmac.digest(key, address + b"\0" + hello.cookie_input, "sha256")

    def make(self, address: tuple[object, ...], hello: ClientHello, now: float) -> bytes:
        """The cookie for ``hello`` from ``address``."""
        self._update(now)
        return self._mac(self._make_key, address_bytes(address), hello)

    def verify(
        self, address: tuple[object, ...], hello: ClientHello, now: float
    ) -> bool:
        """Whether ``hello`` carries a cookie this jar (or, with a shared
        secret, another instance) made for ``address`` and not long ago."""
        self._update(now)
        cookie = hello.cookie
        if len(cookie) != COOKIE_LENGTH:
            return False
        addr = address_bytes(address)
        for key in self._verify_keys:
            if hmac.compare_digest(cookie, self._mac(key, addr, hello)):
                return True
        return False
