"""The waiting room: verified ClientHellos that found every handshake slot
taken.

Theory of operation
-------------------

A hello that passed the cookie check when ``max_handshakes`` handshakes
were already in progress used to be dropped; its client would resend it
after its retransmission timer, doubling each time (1, 2, 4, ... 32 s for
OpenSSL). In a storm of thousands of devices reconnecting at once, most
hellos are dropped again and again, the server idles while the clients back
off, and a client that backs off past its cookie's lifetime is stuck: the
fresh HelloVerifyRequest its stale cookie earns is numbered like the first
one, and an OpenSSL client ignores it as a retransmission.

So a verified hello waits here instead, as the bytes of its datagram, and
the endpoint starts its handshake as soon as a slot frees. What that costs
and what bounds it:

* **One entry per address.** A retransmission of a waiting hello replaces
  the stored datagram and marks the client as still there; it does not add
  an entry or move it.
* **Bounded by the caller**: the demux counts waiting hellos with the peers
  against ``max_connections`` (each is a connection to be), so the room
  holds at most that many datagrams of a few hundred bytes.
* **Random order, not first come first served.** A client that completed
  the cookie exchange and then stalls (half-open abuse) holds a slot until
  ``handshake_timeout``; with a queue, a good client would wait behind every
  such hello that came before it. Drawing the next hello at random gives
  it the same chance as any other at each free slot, while an honest storm
  is still served at the speed of the CPU: nobody is sent away to back off.
* **Clients that went quiet are shed** when drawn. A client that waits
  resends its hello each time its retransmission timer fires, and the
  timer doubles (RFC 6347, 4.2.4.1), so the next resend is due at most
  twice the last gap after the last one (the first gap is the initial
  timeout, 1 s for everyone we know). A client not heard from for 1.5 times
  that, and at least three initial timeouts (in a storm its resend may wait
  behind thousands of other datagrams, or be dropped, before it is read),
  has given up, and would only hold a slot until ``handshake_timeout``; its
  entry is dropped. A client that gave up
  before it was drawn costs nothing, then; one that was wrongly judged gone
  comes back with its next resend.

Nothing here does I/O or reads a clock; the random draw comes from an
injectable generator so that tests can replay it.
"""

from __future__ import annotations

import random
from typing import Any

from ._records import ClientHello

__all__ = ["WaitingRoom"]


class _Entry:
    __slots__ = ("data", "gap", "hello", "index", "last_seen")

    def __init__(self, hello: ClientHello, data: bytes, last_seen: float, index: int) -> None:
        self.hello = hello
        self.data = data
        self.last_seen = last_seen
        self.index = index
        # Time between the client's last two sends of the hello, once known.
        self.gap: float | None = None


class WaitingRoom:
    """Verified hellos by address, drawn at random.

    Args:
      initial_timeout: a client's first retransmission timeout (seconds).
      max_timeout: the cap of its doubling (seconds).
      rng: where the draws come from (a ``random.Random``); by default one
        seeded from the operating system.
    """

    __slots__ = ("_entries", "_initial", "_keys", "_max", "_rng")

    def __init__(
        self,
        initial_timeout: float,
        max_timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        self._entries: dict[tuple[Any, ...], _Entry] = {}
        self._keys: list[tuple[Any, ...]] = []
        self._initial = initial_timeout
        self._max = max_timeout
        self._rng = rng or random.Random()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def put(self, key: tuple[Any, ...], hello: ClientHello, data: bytes, now: float) -> None:
        """Let the hello from ``key`` wait; a retransmission of a waiting
        one replaces it (the newest datagram is the one answered)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.gap = now - entry.last_seen
            entry.hello, entry.data, entry.last_seen = hello, data, now
            return
        self._entries[key] = _Entry(hello, data, now, len(self._keys))
        self._keys.append(key)

    def draw(self, now: float) -> tuple[tuple[Any, ...], ClientHello, bytes, bool]:
        """Take one waiting hello at random: ``(address, hello, datagram,
        whether its client is still there)``. The room must not be empty."""
        keys = self._keys
        index = self._rng.randrange(len(keys))
        key = keys[index]
        last = keys.pop()
        if last != key:
            # Fill the hole with the last key: O(1), and order is no promise.
            keys[index] = last
            self._entries[last].index = index
        entry = self._entries.pop(key)
        gap = entry.gap
        next_due = self._initial if gap is None else min(2 * gap, self._max)
        alive = now - entry.last_seen <= max(1.5 * next_due, 3 * self._initial)
        return key, entry.hello, entry.data, alive

    def clear(self) -> None:
        self._entries.clear()
        self._keys.clear()
