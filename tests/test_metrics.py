"""The Prometheus exporter, read back with prometheus-client's own parser."""

from __future__ import annotations

import functools
import importlib
import re
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from OpenSSL import SSL
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import trio_dtlsmux
from trio_dtlsmux import DtlsEndpoint, EndpointStatistics, HandshakeError
from trio_dtlsmux import metrics as tm
from trio_dtlsmux.testing import FakeNetwork

from .conftest import echo, fake_socket, udp_socket

SERVER = ("10.0.0.1", 4433)
CLIENT = ("10.0.0.2", 5000)

# Written out here rather than taken from the module, so that a renamed or
# retyped metric fails a test.
GAUGES = {
    "peers",
    "handshakes_in_progress",
    "hellos_waiting",
    "receive_buffer",
    "send_buffer",
}
KINDS = {kind.value for kind in trio_dtlsmux.HandshakeFailure}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Samples by (name, labels), and each sample name's family type."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
            types[sample.name] = family.type
    return samples, types


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())[0]


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


def expected(name: str, stats: EndpointStatistics) -> Samples:
    out: Samples = {}
    for field, value in stats.as_dict().items():
        if value is None:
            continue  # not known on this platform or socket: not exported
        if field in GAUGES:
            out[key(f"trio_dtlsmux_{field}", dtls_endpoint=name)] = value
        elif field == "handshakes_failed":
            assert set(value) <= KINDS
            for kind in KINDS:
                metric = "trio_dtlsmux_handshakes_failed_total"
                out[key(metric, dtls_endpoint=name, kind=kind)] = value.get(kind, 0)
        else:
            out[key(f"trio_dtlsmux_{field}_total", dtls_endpoint=name)] = value
    return out


async def test_scrape_matches_statistics_after_a_good_and_a_failed_handshake(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    wrong_pin = trio_dtlsmux.client_context(fingerprint=trio_dtlsmux.self_signed().fingerprint)
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        async with (
            DtlsEndpoint(await fake_socket(net, *CLIENT)) as good,
            DtlsEndpoint(await fake_socket(net, "10.0.0.3", 5000)) as bad,
        ):
            await good.connect(SERVER, client_ctx, server_hostname=False)
            with pytest.raises(HandshakeError):
                await bad.connect(SERVER, wrong_pin, server_hostname=False)
            # Which kind a wrong pin counts as is the endpoint's business.
            (kind,) = bad.statistics().handshakes_failed
            await trio.sleep(1)

            registry = CollectorRegistry()
            tm.register(server, good, bad, registry=registry, names=["server", "good", "bad"])
            text = generate_latest(registry).decode()
            samples, types = parse(text)
            assert samples == (
                expected("server", server.statistics())
                | expected("good", good.statistics())
                | expected("bad", bad.statistics())
            )

            assert samples[key("trio_dtlsmux_handshakes_completed_total", dtls_endpoint="good")] == 1
            assert samples[key("trio_dtlsmux_handshakes_completed_total", dtls_endpoint="bad")] == 0
            assert samples[key("trio_dtlsmux_peers", dtls_endpoint="good")] == 1
            assert samples[key("trio_dtlsmux_datagrams_in_total", dtls_endpoint="server")] > 0
            assert samples[key("trio_dtlsmux_bytes_out_total", dtls_endpoint="server")] > 0
            failed = "trio_dtlsmux_handshakes_failed_total"
            assert samples[key(failed, dtls_endpoint="bad", kind=kind)] == 1
            others = KINDS - {kind}
            assert [samples[key(failed, dtls_endpoint="bad", kind=k)] for k in others] == [0] * len(others)
            assert samples[key(failed, dtls_endpoint="good", kind=kind)] == 0

            for name, kind in types.items():
                assert kind == ("counter" if name.endswith("_total") else "gauge"), name
            assert "# HELP trio_dtlsmux_peers Associations held now" in text
            assert "# TYPE trio_dtlsmux_cookies_sent_total counter" in text


async def test_endpoints_are_named_by_address_unless_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    v6 = net.socket(family=socket.AF_INET6)
    await v6.bind(("fd00::1", 4433, 0, 0))
    registry = CollectorRegistry()
    async with DtlsEndpoint(await fake_socket(net, *SERVER)) as four, DtlsEndpoint(v6) as six:
        collector = tm.register(four, six, registry=registry)
        peers = {dict(labels)["dtls_endpoint"] for (name, labels) in scrape(registry) if name == "trio_dtlsmux_peers"}
        assert peers == {"10.0.0.1:4433", "[fd00::1]:4433"}

        with pytest.raises(ValueError, match=r"exported already, as '10\.0\.0\.1:4433'"):
            collector.add(four, "again")
        async with DtlsEndpoint(await fake_socket(net, "10.0.0.3", 1)) as other:
            with pytest.raises(ValueError, match=r"named '10\.0\.0\.1:4433' is exported already"):
                collector.add(other, "10.0.0.1:4433")
            with pytest.raises(ValueError, match="non-empty"):
                collector.add(other, "")
            collector.add(other, "third")
            assert key("trio_dtlsmux_peers", dtls_endpoint="third") in scrape(registry)
            collector.remove(other)
            collector.remove(other)  # not exported: nothing happens
            assert key("trio_dtlsmux_peers", dtls_endpoint="third") not in scrape(registry)
        with pytest.raises(ValueError, match="2 names given for 1 endpoints"):
            tm.register(four, registry=CollectorRegistry(), names=["a", "b"])
        with pytest.raises(TypeError, match="not one string"):
            tm.register(four, registry=CollectorRegistry(), names="a")
        with pytest.raises(TypeError, match="DtlsEndpoint"):
            collector.add(object())  # type: ignore[arg-type]


async def test_one_collector_per_registry_and_unregister(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = FakeNetwork()
    registry = CollectorRegistry()
    async with DtlsEndpoint(await fake_socket(net, *SERVER)) as ep:
        with tm.register(ep, registry=registry) as collector:
            with pytest.raises(ValueError, match="trio_dtlsmux_peers"):
                tm.register(ep, registry=registry, names=["twice"])
            assert key("trio_dtlsmux_peers", dtls_endpoint="10.0.0.1:4433") in scrape(registry)
        assert scrape(registry) == {}
        collector.unregister()  # again: nothing happens
        # The registry is free again.
        tm.register(ep, registry=registry).unregister()


async def test_closed_endpoints_are_dropped_without_errors(
    autojump_clock: trio.testing.MockClock, server_ctx: SSL.Context, client_ctx: SSL.Context
) -> None:
    net = FakeNetwork()
    registry = CollectorRegistry()
    async with DtlsEndpoint(await fake_socket(net, *SERVER), server_context=server_ctx) as server:
        collector = tm.register(server, registry=registry, names=["server"])
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as client:
            collector.add(client, "client")
            await client.connect(SERVER, client_ctx, server_hostname=False)
            assert key("trio_dtlsmux_peers", dtls_endpoint="client") in scrape(registry)
        assert {dict(labels)["dtls_endpoint"] for _, labels in scrape(registry)} == {"server"}
        # The closed endpoint was removed, so its name is free again.
        async with DtlsEndpoint(await fake_socket(net, *CLIENT)) as again:
            collector.add(again, "client")
            assert scrape(registry)[key("trio_dtlsmux_peers", dtls_endpoint="client")] == 0
        collector.remove(client)  # long gone: nothing happens
    assert scrape(registry) == {}


@attrs.frozen(kw_only=True)
class FutureStatistics(EndpointStatistics):
    """A snapshot with fields that later versions may add."""

    kernel_datagrams_dropped: int
    receive_buffer_size: int
    drops_by_reason: Mapping[str, int]
    kernel_name: str


class FutureEndpoint(DtlsEndpoint):
    calls: list[int]

    def statistics(self) -> FutureStatistics:
        self.calls = [*getattr(self, "calls", []), threading.get_ident()]
        today = attrs.asdict(super().statistics(), recurse=False)
        return FutureStatistics(
            **today,
            kernel_datagrams_dropped=5,
            receive_buffer_size=212992,
            drops_by_reason={"full": 2, "bogus": "x"},  # type: ignore[dict-item]
            kernel_name="linux",
        )


async def test_unknown_fields_are_exported_by_the_naming_rule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    registry = CollectorRegistry()
    async with FutureEndpoint(await fake_socket(FakeNetwork(), *SERVER)) as ep:
        tm.register(ep, registry=registry, names=["ep"])
        samples, types = parse(generate_latest(registry).decode())
        today = expected("ep", DtlsEndpoint.statistics(ep))
    assert {k: v for k, v in samples.items() if k in today} == today
    assert {k: v for k, v in samples.items() if k not in today} == {
        key("trio_dtlsmux_kernel_datagrams_dropped_total", dtls_endpoint="ep"): 5,
        key("trio_dtlsmux_receive_buffer_size", dtls_endpoint="ep"): 212992,
        key("trio_dtlsmux_drops_by_reason_total", dtls_endpoint="ep", key="full"): 2,
    }
    assert types["trio_dtlsmux_receive_buffer_size"] == "gauge"
    assert types["trio_dtlsmux_kernel_datagrams_dropped_total"] == "counter"


def test_the_table_covers_todays_fields_and_follows_the_naming_rule() -> None:
    fields = {field.name for field in attrs.fields(EndpointStatistics)}
    assert set(tm._KNOWN) == fields
    for field, (kind, help_text) in tm._KNOWN.items():
        # A field keeps its metric name when it moves into the table.
        assert tm._type_by_name(field) == kind, field
        assert (kind == "gauge") == (field in GAUGES), field
        assert help_text.endswith(".")


async def test_a_scrape_from_another_thread_reads_in_the_trio_thread() -> None:
    # No autojump clock: time must not race ahead while the worker thread runs.
    net = FakeNetwork()
    registry = CollectorRegistry()
    ep = FutureEndpoint(await fake_socket(net, *SERVER))
    async with ep:
        tm.register(ep, registry=registry, names=["ep"])
        ep.calls = []
        with trio.fail_after(10):
            samples = await trio.to_thread.run_sync(scrape, registry)
        assert ep.calls == [threading.get_ident()]
        assert samples[key("trio_dtlsmux_receive_buffer_size", dtls_endpoint="ep")] == 212992


def test_endpoints_of_a_finished_run_are_dropped() -> None:
    registry = CollectorRegistry()

    async def main() -> DtlsEndpoint:
        # Never entered, so its socket stays open after the run: only the
        # finished run tells that nobody can read it any more.
        ep = DtlsEndpoint(FakeNetwork().socket())
        tm.register(ep, registry=registry, names=["ep"])
        assert key("trio_dtlsmux_peers", dtls_endpoint="ep") in scrape(registry)
        return ep

    ep = trio.run(main)
    assert scrape(registry) == {}
    with pytest.raises(RuntimeError, match="inside the Trio run"):
        tm.register(ep, registry=CollectorRegistry())


async def test_serve_metrics_over_http(server_ctx: SSL.Context, client_ctx: SSL.Context) -> None:
    # Real loopback UDP and real HTTP, on the real clock: nothing sleeps.
    registry = CollectorRegistry()

    def fetch(url: str) -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.headers["Content-Type"], response.read().decode()

    with trio.fail_after(20):
        server_sock = await udp_socket()
        async with (
            DtlsEndpoint(server_sock, server_context=server_ctx) as server,
            DtlsEndpoint(await udp_socket()) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(server.serve, echo)
            conn = await client.connect(server_sock.getsockname(), client_ctx, server_hostname=False)
            await conn.send(b"ping")
            assert await conn.receive() == b"ping"
            name = f"127.0.0.1:{server_sock.getsockname()[1]}"
            with tm.register(server, registry=registry):
                serve = functools.partial(tm.serve_metrics, 0, registry=registry)
                host, port = await nursery.start(serve)
                assert host == "127.0.0.1" and port > 0
                url = f"http://127.0.0.1:{port}/metrics"
                content_type, text = await trio.to_thread.run_sync(fetch, url)
                assert content_type.startswith("text/plain")
                samples, _ = parse(text)
                assert samples == expected(name, server.statistics())
                assert samples[key("trio_dtlsmux_handshakes_completed_total", dtls_endpoint=name)] == 1
                nursery.cancel_scope.cancel()
        # The server is gone when serve_metrics has returned.
        with pytest.raises(urllib.error.URLError):
            await trio.to_thread.run_sync(fetch, url)


async def test_serve_metrics_reports_a_busy_port() -> None:
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        with trio.fail_after(10), pytest.raises(OSError):
            await tm.serve_metrics(taken.getsockname()[1], registry=CollectorRegistry())


def test_import_without_prometheus_client_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m.startswith("prometheus_client")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "trio_dtlsmux.metrics")
    with pytest.raises(ImportError, match=r"pip install trio-dtlsmux\[metrics\]"):
        importlib.import_module("trio_dtlsmux.metrics")


def test_the_howto_lists_every_metric() -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "howto" / "metrics.rst"
    # The first column of the table's rows.
    listed = set(re.findall(r"\* - ``(trio_dtlsmux_\w+)``", page.read_text()))
    described = set()
    for family in tm.register(registry=CollectorRegistry()).describe():
        described.add(family.name + ("_total" if family.type == "counter" else ""))
    assert listed == described
