from __future__ import annotations

import itertools
import re

import pytest

from trio_dtlsmux import _records as rec
from trio_dtlsmux._cookies import COOKIE_LENGTH, CookieJar

from .test_records import HELLO


def seeded() -> CookieJar:
    counter = itertools.count()
    return CookieJar(lifetime=30, random_bytes=lambda n: bytes([next(counter) % 256]) * n)


def with_cookie(cookie: bytes) -> rec.ClientHello:
    hello = rec.parse_client_hello_untrusted(HELLO)
    return rec.ClientHello(
        hello.record_seq, hello.version, hello.random, cookie, hello.cookie_input
    )


ADDR = ("192.0.2.1", 5000)


def test_cookie_verifies_for_the_same_address_and_hello() -> None:
    jar = seeded()
    cookie = jar.make(ADDR, with_cookie(b""), now=0.0)
    assert len(cookie) == COOKIE_LENGTH
    assert jar.verify(ADDR, with_cookie(cookie), now=1.0)


def test_cookie_is_bound_to_address_and_offer() -> None:
    jar = seeded()
    cookie = jar.make(ADDR, with_cookie(b""), now=0.0)
    assert not jar.verify(("192.0.2.1", 5001), with_cookie(cookie), now=0.0)
    assert not jar.verify(("192.0.2.2", 5000), with_cookie(cookie), now=0.0)
    other = rec.ClientHello(0, 0xFEFD, b"r" * 32, cookie, b"different offer")
    assert not jar.verify(ADDR, other, now=0.0)
    forged = bytes([cookie[0] ^ 1]) + cookie[1:]
    assert not jar.verify(ADDR, with_cookie(forged), now=0.0)
    assert not jar.verify(ADDR, with_cookie(cookie[:-1]), now=0.0)


def test_cookie_expires_after_two_rotations() -> None:
    jar = seeded()
    cookie = jar.make(ADDR, with_cookie(b""), now=0.0)
    assert jar.verify(ADDR, with_cookie(cookie), now=29.0)
    assert jar.verify(ADDR, with_cookie(cookie), now=31.0)  # previous secret
    assert not jar.verify(ADDR, with_cookie(cookie), now=61.0)


def test_cookie_expires_after_a_long_idle_gap() -> None:
    jar = seeded()
    cookie = jar.make(ADDR, with_cookie(b""), now=0.0)
    assert not jar.verify(ADDR, with_cookie(cookie), now=1000.0)


def test_lifetime_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        CookieJar(lifetime=0)


# -- a shared secret ---------------------------------------------------------------

KEY = bytes(range(32))
OLD_KEY = bytes(range(100, 132))


class WallClock:
    """A wall clock that the test sets by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def shared(secret: object, clock: WallClock, lifetime: float = 30) -> CookieJar:
    return CookieJar(lifetime=lifetime, secret=secret, wall_clock=clock)  # type: ignore[arg-type]


def test_a_shared_secret_verifies_in_another_instance() -> None:
    # Two instances: their Trio clocks have nothing in common (each run
    # starts at a random offset), their wall clocks agree.
    wall = WallClock(1_700_000_000.0)
    one, two = shared(KEY, wall), shared(KEY, wall)
    cookie = one.make(ADDR, with_cookie(b""), now=12_345.0)
    assert len(cookie) == COOKIE_LENGTH
    assert two.verify(ADDR, with_cookie(cookie), now=987_654.0)
    # Bound to the address and the offer as ever.
    assert not two.verify(("192.0.2.1", 5001), with_cookie(cookie), now=0.0)
    # Private jars never agree, whatever their clocks say.
    assert not CookieJar().verify(ADDR, with_cookie(cookie), now=12_345.0)


def test_a_shared_cookie_expires_on_the_wall_clock() -> None:
    wall = WallClock(1_700_000_020.0)  # 10 s into an epoch of 30 s
    maker, checker = shared(KEY, wall), shared(KEY, wall)
    cookie = with_cookie(maker.make(ADDR, with_cookie(b""), now=0.0))
    assert maker.shared and maker.max_age == 90
    wall.now += 45  # the next epoch: the previous key still verifies
    assert checker.verify(ADDR, cookie, now=0.0)
    wall.now += 30  # two epochs later: expired
    assert not checker.verify(ADDR, cookie, now=0.0)
    # Trio's clock (``now``) has no say in a shared jar.
    wall.now -= 75
    assert checker.verify(ADDR, cookie, now=1e9)


def test_a_shared_cookie_tolerates_one_epoch_of_clock_skew() -> None:
    # Epochs of 30 s start at ..., 1_700_000_010, 1_700_000_040, ...
    ahead, behind = WallClock(1_700_000_040.5), WallClock(1_700_000_039.5)
    cookie = with_cookie(shared(KEY, ahead).make(ADDR, with_cookie(b""), now=0.0))
    # Made in epoch e+1 by a host one second ahead, across an epoch boundary:
    # still good where the clock says epoch e.
    assert shared(KEY, behind).verify(ADDR, cookie, now=0.0)
    behind.now -= 31  # more than a lifetime behind: from the future, refused
    assert not shared(KEY, behind).verify(ADDR, cookie, now=0.0)


def test_a_rotated_ring_verifies_old_cookies_until_they_expire() -> None:
    wall = WallClock(1_700_000_000.0)
    before = shared(OLD_KEY, wall)
    old_cookie = with_cookie(before.make(ADDR, with_cookie(b""), now=0.0))
    # The rotation: the new key goes first, the old one stays for a while.
    after = shared([KEY, bytearray(OLD_KEY)], wall)
    assert after.verify(ADDR, old_cookie, now=0.0)
    # New cookies are made with the newest key, which the old ring lacks.
    new_cookie = with_cookie(after.make(ADDR, with_cookie(b""), now=0.0))
    assert shared(KEY, wall).verify(ADDR, new_cookie, now=0.0)
    assert not before.verify(ADDR, new_cookie, now=0.0)
    wall.now += 90
    assert not after.verify(ADDR, old_cookie, now=0.0)


def test_a_wrong_secret_or_lifetime_refuses() -> None:
    wall = WallClock(1_700_000_000.0)
    cookie = with_cookie(shared(KEY, wall).make(ADDR, with_cookie(b""), now=0.0))
    assert not shared(OLD_KEY, wall).verify(ADDR, cookie, now=0.0)
    # The lifetime is part of the key: instances must agree on it.
    assert not shared(KEY, wall, lifetime=60).verify(ADDR, cookie, now=0.0)


def test_the_private_key_stays_on_the_endpoint_clock() -> None:
    jar = CookieJar(lifetime=30, wall_clock=lambda: 1 / 0)  # never read
    assert not jar.shared and jar.max_age == 60
    cookie = jar.make(ADDR, with_cookie(b""), now=0.0)
    assert jar.verify(ADDR, with_cookie(cookie), now=59.0)


@pytest.mark.parametrize(
    ("secret", "error", "words"),
    [
        ("00" * 32, TypeError, "bytes.fromhex"),
        (12345, TypeError, "not int"),
        (b"short", ValueError, "cookie_secret has 5 bytes; a key needs at least 32"),
        ([], ValueError, "empty key ring"),
        ((), ValueError, "empty key ring"),
        ([KEY, b"x" * 31], ValueError, "key 1 has 31 bytes"),
        ([KEY, "00" * 32], TypeError, "key 1 must be bytes, not str"),
        ([KEY] * 5, ValueError, "at most 4"),
    ],
)
def test_bad_secrets_are_refused_clearly(
    secret: object, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=re.escape(words)):
        CookieJar(secret=secret)  # type: ignore[arg-type]
