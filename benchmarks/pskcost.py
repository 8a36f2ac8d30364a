"""What a pre-shared key handshake costs next to a certificate handshake.

``python -m benchmarks.pskcost`` (``--quick`` for a smoke run) counts
handshakes per second, both sides in this one process, for the contexts
``trio_dtlsmux`` builds:

* ``cert``: ``server_context(self_signed())`` and a pinned client, which
  negotiate ECDHE-ECDSA-AES128-GCM-SHA256 (an ECDHE exchange, an ECDSA
  signature and its verification per handshake);
* ``ecdhe-psk``: the default PSK suite, ECDHE-PSK-CHACHA20-POLY1305 (an
  ECDHE exchange, no signature);
* ``psk-gcm`` and ``psk-ccm8``: the plain PSK suites (no public-key
  operation at all), CCM_8 being the one CoAP requires.

Two ways, each a row per context:

* ``engine``: a client and a server ``SSL.Connection`` over memory BIOs,
  handing records to each other; OpenSSL, pyOpenSSL and our PSK callbacks.
* ``endpoint``: two ``DtlsEndpoint`` objects on a
  :class:`~trio_dtlsmux.testing.FakeNetwork` under Trio's real clock, one
  ``connect`` after another: the cookie exchange, the flights, the tasks,
  everything but the kernel.

Each figure is the median of a few samples, taken in turns so that a slow
spell of the machine hits every row; the ratio column divides by the
``cert`` row of the same way. As with every benchmark here, read the ratios
rather than the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import trio
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux.testing import FakeNetwork

KEY = bytes(range(16))
MTU = 1400
Contexts = tuple[SSL.Context, SSL.Context]


def _contexts() -> dict[str, Callable[[], Contexts]]:
    identity = trio_dtlsmux.self_signed()

    def cert() -> Contexts:
        return (
            trio_dtlsmux.client_context(fingerprint=identity.fingerprint),
            trio_dtlsmux.server_context(identity),
        )

    def psk(ciphers: str | None) -> Callable[[], Contexts]:
        def build() -> Contexts:
            client = trio_dtlsmux.client_context(psk=(b"device", KEY))
            if ciphers is not None:
                client.set_cipher_list(ciphers.encode())
            return client, trio_dtlsmux.server_context(psk={b"device": KEY})

        return build

    return {
        "cert": cert,
        "ecdhe-psk": psk(None),
        "psk-gcm": psk("PSK-AES128-GCM-SHA256"),
        "psk-ccm8": psk("PSK-AES128-CCM8:@SECLEVEL=0"),
    }


def _drain(source: SSL.Connection, sink: SSL.Connection) -> None:
    while True:
        try:
            sink.bio_write(source.bio_read(65536))
        except SSL.WantReadError:
            return


def _step(conn: SSL.Connection) -> bool:
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def engine_handshake(client_ctx: SSL.Context, server_ctx: SSL.Context) -> str:
    """One in-memory handshake; returns the suite."""
    client = SSL.Connection(client_ctx, None)
    server = SSL.Connection(server_ctx, None)
    for conn in (client, server):
        conn.set_ciphertext_mtu(MTU)
        conn.set_options(SSL.OP_NO_QUERY_MTU)
    client.set_connect_state()
    server.set_accept_state()
    for _ in range(20):
        client_done = _step(client)
        _drain(client, server)
        server_done = _step(server)
        _drain(server, client)
        if client_done and server_done:
            return server.get_cipher_name() or "?"
    raise RuntimeError("in-memory handshake did not finish")


def engine_rate(contexts: Contexts, seconds: float) -> tuple[float, str]:
    suite = engine_handshake(*contexts)  # warm up, and name the suite
    count = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        engine_handshake(*contexts)
        count += 1
    return count / elapsed, suite


async def _endpoint_run(contexts: Contexts, seconds: float) -> tuple[float, str]:
    client_ctx, server_ctx = contexts
    net = FakeNetwork(seed=1)
    server_sock = net.socket()
    await server_sock.bind(("10.0.0.1", 4433))
    client_sock = net.socket()
    await client_sock.bind(("10.0.0.2", 0))

    async def hold(conn: trio_dtlsmux.DtlsConnection) -> None:
        async for _ in conn:
            pass

    suite = "?"
    async with (
        trio_dtlsmux.DtlsEndpoint(server_sock, server_context=server_ctx) as server,
        trio_dtlsmux.DtlsEndpoint(client_sock) as client,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(server.serve, hold)
        count = -1  # the first handshake is a warm-up
        start = time.perf_counter()
        while True:
            conn = await client.connect(
                ("10.0.0.1", 4433), client_ctx, server_hostname=False
            )
            suite = conn.cipher or "?"
            await conn.aclose()
            count += 1
            if count == 0:
                start = time.perf_counter()
            elif (elapsed := time.perf_counter() - start) >= seconds:
                break
        nursery.cancel_scope.cancel()
    return count / elapsed, suite


def endpoint_rate(contexts: Contexts, seconds: float) -> tuple[float, str]:
    return trio.run(_endpoint_run, contexts, seconds)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short samples")
    args = parser.parse_args(argv)
    seconds, samples = (0.3, 3) if args.quick else (2.0, 5)
    builders = _contexts()
    print(f"{'way':9} {'contexts':10} {'suite':30} {'hs/s':>8} {'/cert':>6}")
    for way, measure in (("engine", engine_rate), ("endpoint", endpoint_rate)):
        rates: dict[str, list[float]] = {name: [] for name in builders}
        suites: dict[str, str] = {}
        # Interleaved, so that a slow spell of the machine hits every
        # context rather than one.
        for _ in range(samples):
            for name, build in builders.items():
                rate, suites[name] = measure(build(), seconds)
                rates[name].append(rate)
        baseline = statistics.median(rates["cert"])
        for name in builders:
            median = statistics.median(rates[name])
            print(
                f"{way:9} {name:10} {suites[name]:30} {median:8.0f} "
                f"{median / baseline:6.2f}"
            )
        sys.stdout.flush()

if __name__ == "__main__":
    main()
