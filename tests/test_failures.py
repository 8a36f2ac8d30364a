"""Handshake failures: counted by kind, and logged (rate-limited) for operators."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio
import trio.testing
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, HandshakeError, HandshakeFailure, SelfSigned
from trio_dtlsmux._logs import FailureLog
from trio_dtlsmux.testing import FakeNetwork

from .conftest import fake_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_dtlsmux"]


async def test_a_missing_client_certificate_counts_as_verification(
    autojump_clock: trio.testing.MockClock,
    identity: SelfSigned,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    # Before: counted as "protocol", although the reference says a failed
    # check of the peer's certificate is "verification".
    caplog.set_level(logging.INFO, logger="trio_dtlsmux")
    client_id = trio_dtlsmux.self_signed("client")
    cert, _ = client_id.write(tmp_path)
    server_ctx = trio_dtlsmux.server_context(
        identity, client_cafile=str(cert), require_client_cert=True
    )
    net = FakeNetwork()
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        with pytest.raises(HandshakeError):
            await client.connect(
                SERVER,
                trio_dtlsmux.client_context(fingerprint=identity.fingerprint),
                server_hostname=False,
            )
        await trio.sleep(1)
        assert server.statistics().handshakes_failed == {"verification": 1}
    [line] = [r for r in records(caplog) if "10.0.0.2" in r.getMessage()]
    assert line.levelno == logging.INFO
    message = line.getMessage()
    assert "(verification)" in message
    assert "did not return a certificate" in message


async def test_every_failure_is_logged_with_address_kind_and_reason(
    autojump_clock: trio.testing.MockClock,
    server_ctx: SSL.Context,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_dtlsmux")
    net = FakeNetwork()
    wrong_pin = trio_dtlsmux.client_context(
        fingerprint=trio_dtlsmux.self_signed().fingerprint
    )
    async with DtlsEndpoint(
        await fake_socket(net, *SERVER), server_context=server_ctx
    ) as server, DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
        with pytest.raises(HandshakeError) as info:
            await client.connect(SERVER, wrong_pin, server_hostname=False)
        assert info.value.kind is HandshakeFailure.VERIFICATION
        assert info.value.peer_address == SERVER
        await trio.sleep(1)
        assert server.statistics().handshakes_failed == {"alert": 1}
    messages = [r.getMessage() for r in records(caplog)]
    # The client logs its verification failure, the server the alert it got.
    assert any(str(SERVER) in m and "(verification)" in m for m in messages)
    assert any(str(CLIENT) in m and "(alert)" in m for m in messages)


def test_the_failure_log_is_rate_limited() -> None:
    logged: list[str] = []

    class Sink(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    log = logging.getLogger("trio_dtlsmux.test_rate")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(Sink())
    failures = FailureLog(burst=20, per_second=2.0, log=log)
    for _ in range(1000):  # a flood, all at once
        failures.handshake_failed(("192.0.2.1", 1), "protocol", "bad hello", 100.0)
    assert len(logged) == 20
    assert failures.suppressed == 980
    # Two seconds later the bucket holds four lines; the first says how many
    # were left out.
    for _ in range(10):
        failures.handshake_failed(("192.0.2.1", 1), "protocol", "bad hello", 102.0)
    assert len(logged) == 24
    assert "[980 more failures not logged]" in logged[20]
    assert failures.suppressed == 6
    # An hour of quiet refills the bucket only to its burst size.
    for _ in range(100):
        failures.handshake_failed(("192.0.2.1", 1), "protocol", "bad hello", 3700.0)
    assert len(logged) == 44


def test_nothing_is_formatted_when_info_is_off() -> None:
    log = logging.getLogger("trio_dtlsmux.test_quiet")
    log.setLevel(logging.WARNING)
    failures = FailureLog(log=log)
    assert not failures.handshake_failed(("192.0.2.1", 1), "timeout", "slow", 0.0)
    assert failures.suppressed == 0
