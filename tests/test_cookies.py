from __future__ import annotations

import itertools

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
