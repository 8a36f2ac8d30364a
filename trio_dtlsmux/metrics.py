"""Endpoint statistics for Prometheus (``pip install trio-dtlsmux[metrics]``).

::

    with trio_dtlsmux.metrics.register(endpoint):
        await nursery.start(trio_dtlsmux.metrics.serve_metrics, 9433)
        ...

Theory of operation
-------------------

Prometheus pulls: each scrape asks every collector in a registry for its
values as they are now. So this module keeps no counters of its own and adds
nothing to the endpoint's hot path. An :class:`EndpointCollector` holds a
table of endpoints and the names they are exported under; at each scrape it
takes one ``statistics()`` snapshot per endpoint and turns every field of
it into a metric family whose samples carry a ``dtls_endpoint`` label
(not ``endpoint``, which prometheus-operator puts on every series it
scrapes).

**Names and types.** Field ``x`` of
:class:`~trio_dtlsmux.EndpointStatistics` becomes the metric
``trio_dtlsmux_x``, with ``_total`` appended when it is a counter, so the
statistics reference is also the metrics reference. Today's fields have
their type and help text in a table here. A field that the table does not
know yet (the snapshot gains fields over time) is still exported, typed by
its name: it is a counter if its name ends in ``_in`` or ``_out`` or
contains one of the words in :data:`COUNTER_WORDS` (``sent``, ``dropped``,
``errors``, ...), and a gauge otherwise. That is how the statistics name
things: a counter is named by what happened, a gauge by what is. The tests
hold the table to the same rule, so a field keeps its metric name when it
moves into the table. Values are exported as follows:

* a number is one sample per endpoint;
* a mapping (like ``handshakes_failed``) is one sample per key, labelled
  ``kind`` for ``handshakes_failed`` and ``key`` otherwise; every kind of
  handshake failure is reported, zero until it happens, so that ``rate()``
  sees the first one;
* ``None`` (a value this platform cannot give) and anything else is left
  out.

**Threads.** :func:`serve_metrics` (like ``prometheus_client``'s own
``start_http_server``) answers each scrape on a thread of its own, so
``collect`` normally runs outside Trio. The endpoint is not thread-safe.
Reading its counters from another thread would mostly work under the GIL
(each field is one attribute read), but only because of what
``statistics()`` happens to do today, and even so the fields would not all
be from one moment; a snapshot that reads the socket (kernel counters,
buffer sizes) could race with the endpoint closing it and the descriptor
being reused. So the collector never
calls ``statistics()`` from another thread. It sends one function to the
Trio thread that runs the endpoints (``trio.from_thread.run_sync``, with
the Trio token captured when the endpoint was added), which snapshots all
of that run's endpoints in one go, and waits for the answer. So:

* a scrape costs the Trio loop one short callback, and all endpoints of a
  run are read at the same instant;
* a scrape waits while the loop is busy, and if the loop is stuck the scrape
  times out, which is what a monitoring system should see;
* ``collect`` called in the Trio thread itself (``generate_latest`` in a
  Trio task) reads directly, since waiting for itself would deadlock;
* an endpoint whose ``trio.run`` has returned, or that has closed, is
  removed at the next scrape without an error; its series disappear.
"""

from __future__ import annotations

import socket as _socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import attrs
import trio

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.exposition import make_wsgi_app
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as _missing:
    raise ImportError(
        "trio_dtlsmux.metrics needs prometheus-client: "
        "pip install trio-dtlsmux[metrics]",
        name=_missing.name,
    ) from _missing

from ._endpoint import DtlsEndpoint
from ._errors import HandshakeFailure

__all__ = ["COUNTER_WORDS", "EndpointCollector", "register", "serve_metrics"]

_PREFIX = "trio_dtlsmux_"
# Not plain "endpoint": prometheus-operator gives every series of a
# ServiceMonitor target an "endpoint" label, and would rename ours.
_LABEL = "dtls_endpoint"

COUNTER_WORDS: tuple[str, ...] = (
    "completed",
    "dropped",
    "drops",
    "errors",
    "failed",
    "failures",
    "reaped",
    "received",
    "rejected",
    "restarted",
    "retransmissions",
    "sent",
)
"""A statistics field that this module has no entry for is a counter if
one of these is a word of its name, or if the name ends in ``_in`` or
``_out``; otherwise it is a gauge."""

_COUNTER = "counter"
_GAUGE = "gauge"

# Today's fields of EndpointStatistics: (type, help). A test checks that it
# covers every field and agrees with the naming rule.
_KNOWN: dict[str, tuple[str, str]] = {
    "peers": (_GAUGE, "Associations held now, established and handshaking."),
    "handshakes_in_progress": (_GAUGE, "Associations still handshaking."),
    "hellos_waiting": (
        _GAUGE,
        "Verified ClientHellos waiting for a handshake slot (max_handshakes).",
    ),
    "handshakes_completed": (_COUNTER, "Handshakes that finished, in both roles."),
    "handshakes_failed": (
        _COUNTER,
        "Handshakes that failed, by kind: "
        + ", ".join(kind.value for kind in HandshakeFailure)
        + ".",
    ),
    "cookies_sent": (_COUNTER, "HelloVerifyRequests sent."),
    "cookie_failures": (
        _COUNTER,
        "ClientHellos whose cookie was wrong, expired or already used.",
    ),
    "junk_dropped": (
        _COUNTER,
        "Datagrams dropped because they could not be parsed or belong to no peer.",
    ),
    "peers_reaped": (_COUNTER, "Associations removed after idle_timeout."),
    "peers_restarted": (
        _COUNTER,
        "Associations replaced by a new handshake from the same address.",
    ),
    "hellos_dropped_limits": (
        _COUNTER,
        "Verified ClientHellos shed at max_connections, or after waiting "
        "handshake_timeout for a handshake slot.",
    ),
    "handshake_datagrams_dropped": (
        _COUNTER,
        "Handshake datagrams dropped on arrival: 4,096 were already held back "
        "while established peers went first.",
    ),
    "hellos_dropped_no_server": (
        _COUNTER,
        "ClientHellos dropped because the endpoint has no server_context.",
    ),
    "other_received": (
        _COUNTER,
        "Datagrams that are not DTLS (RFC 7983), with other_datagrams set.",
    ),
    "other_dropped": (
        _COUNTER,
        "Datagrams that are not DTLS dropped because their inbox was full.",
    ),
    "datagrams_in": (_COUNTER, "Datagrams read from the socket."),
    "bytes_in": (_COUNTER, "Bytes in the datagrams read from the socket."),
    "datagrams_out": (_COUNTER, "Datagrams written to the socket."),
    "bytes_out": (_COUNTER, "Bytes in the datagrams written to the socket."),
    "socket_errors": (_COUNTER, "Socket errors that the endpoint survived."),
    "receive_buffer": (
        _GAUGE,
        "The socket's receive buffer in bytes, as the kernel reports it.",
    ),
    "send_buffer": (
        _GAUGE,
        "The socket's send buffer in bytes, as the kernel reports it.",
    ),
    "hello_fragments_in": (
        _COUNTER,
        "Datagrams from strangers holding a piece of a ClientHello.",
    ),
    "fragmented_hellos_completed": (
        _COUNTER,
        "ClientHellos that came in fragments and were put back together.",
    ),
    "hello_fragments_dropped": (
        _COUNTER,
        "ClientHello fragments and partial hellos given up on.",
    ),
    "kernel_drops": (
        _COUNTER,
        "Datagrams the kernel dropped for the socket, mostly for a full receive buffer.",
    ),
}

# The label of a mapping field's keys, and the keys always reported.
_KEY_LABELS = {"handshakes_failed": "kind"}
_ALWAYS_KEYS = {"handshakes_failed": tuple(kind.value for kind in HandshakeFailure)}


def _metric_type(field: str) -> str:
    known = _KNOWN.get(field)
    if known is not None:
        return known[0]
    return _type_by_name(field)


def _type_by_name(field: str) -> str:
    words = field.split("_")
    if words[-1] in ("in", "out") or not set(words).isdisjoint(COUNTER_WORDS):
        return _COUNTER
    return _GAUGE


def _family(field: str, labels: list[str]) -> CounterMetricFamily | GaugeMetricFamily:
    known = _KNOWN.get(field)
    text = known[1] if known else f"EndpointStatistics.{field}"
    if _metric_type(field) == _COUNTER:
        return CounterMetricFamily(_PREFIX + field, text, labels=labels)
    return GaugeMetricFamily(_PREFIX + field, text, labels=labels)


def _samples(field: str, value: object) -> list[tuple[str | None, float]] | None:
    """``[(key or None, number)]`` for one field's value, or ``None`` to skip it."""
    if isinstance(value, (int, float)):
        return [(None, value)]
    if isinstance(value, Mapping):
        found = {str(key): count for key, count in value.items()}
        for key in _ALWAYS_KEYS.get(field, ()):
            found.setdefault(key, 0)
        return [
            (key, count)
            for key, count in sorted(found.items())
            if isinstance(count, (int, float))
        ]
    return None


def _address_text(endpoint: DtlsEndpoint) -> str:
    host, port = endpoint.socket.getsockname()[:2]
    host = str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _read(endpoint: DtlsEndpoint) -> dict[str, Any] | None:
    """One endpoint's snapshot as plain values, or ``None`` if it has closed.

    Runs in the endpoint's Trio thread. The endpoint closes its socket when
    it closes, so a socket that no longer has an address means it is gone.
    """
    try:
        endpoint.socket.getsockname()
        return endpoint.statistics().as_dict()
    except (OSError, trio.ClosedResourceError):
        return None


def _read_all(endpoints: list[DtlsEndpoint]) -> list[dict[str, Any] | None]:
    return [_read(endpoint) for endpoint in endpoints]


@attrs.frozen(eq=False)
class _Entry:
    endpoint: DtlsEndpoint
    name: str
    token: trio.lowlevel.TrioToken


class EndpointCollector(Collector):
    """Exports the statistics of some endpoints; made by :func:`register`.

    It is a ``prometheus_client`` collector (``collect`` and ``describe``),
    registered with one registry until :meth:`unregister`. Used as a
    context manager, it unregisters itself at the end of the block.
    ``add``, ``remove`` and ``unregister`` may be called at any time, also
    while a scrape runs in another thread.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()
        self._registered = False

    def add(self, endpoint: DtlsEndpoint, name: str | None = None) -> None:
        """Export ``endpoint`` too, labelled ``dtls_endpoint="<name>"``.

        Call it from the Trio run that owns the endpoint. ``name`` defaults
        to the socket's local address as ``host:port`` (``[host]:port`` for
        IPv6), so add the endpoint after its socket is bound.

        Raises:
          ValueError: the endpoint or the name is exported already, or the
            name is empty, or the socket is closed and no name was given.
          RuntimeError: not called inside a Trio run.
        """
        if not isinstance(endpoint, DtlsEndpoint):
            raise TypeError(f"expected a DtlsEndpoint, not {type(endpoint).__name__}")
        try:
            token = trio.lowlevel.current_trio_token()
        except RuntimeError:
            raise RuntimeError(
                "add endpoints from inside the Trio run that owns them"
            ) from None
        if name is None:
            try:
                name = _address_text(endpoint)
            except (OSError, trio.ClosedResourceError) as exc:
                raise ValueError(
                    f"the endpoint's socket has no address ({exc}); give a name"
                ) from None
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"an endpoint's name must be a non-empty string, not {name!r}"
            )
        with self._lock:
            for entry in self._entries:
                if entry.endpoint is endpoint:
                    raise ValueError(
                        f"this endpoint is exported already, as {entry.name!r}"
                    )
                if entry.name == name:
                    raise ValueError(f"an endpoint named {name!r} is exported already")
            self._entries.append(_Entry(endpoint, name, token))

    def remove(self, endpoint: DtlsEndpoint) -> None:
        """Stop exporting ``endpoint``. Nothing happens if it is not exported
        (closed endpoints are removed by the next scrape anyway)."""
        with self._lock:
            self._entries = [e for e in self._entries if e.endpoint is not endpoint]

    def _register(self) -> None:
        self._registry.register(self)
        self._registered = True

    def unregister(self) -> None:
        """Leave the registry; the endpoints' metrics are no longer exported.
        Calling it again does nothing."""
        with self._lock:
            registered, self._registered = self._registered, False
        if registered:
            self._registry.unregister(self)

    def __enter__(self) -> EndpointCollector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def describe(self) -> Iterable[Metric]:
        """The families of today's fields, without samples. The registry uses
        them to refuse a second collector that would export the same names."""
        return [
            _family(
                field,
                [_LABEL, _KEY_LABELS[field]] if field in _KEY_LABELS else [_LABEL],
            )
            for field in _KNOWN
        ]

    def collect(self) -> Iterable[Metric]:
        """The current statistics of every exported endpoint, as metric families."""
        with self._lock:
            entries = list(self._entries)
        snapshots = self._snapshots(entries)
        gone = [
            entry
            for entry, values in zip(entries, snapshots, strict=True)
            if values is None
        ]
        if gone:
            with self._lock:
                self._entries = [e for e in self._entries if e not in gone]

        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        mapped: dict[str, bool] = {}
        for entry, values in zip(entries, snapshots, strict=True):
            for field, value in (values or {}).items():
                samples = _samples(field, value)
                if samples is None:
                    continue
                is_mapping = isinstance(value, Mapping)
                if field not in families:
                    labels = [_LABEL]
                    if is_mapping:
                        labels.append(_KEY_LABELS.get(field, "key"))
                    families[field] = _family(field, labels)
                    mapped[field] = is_mapping
                elif mapped[field] != is_mapping:
                    continue  # a number here and a mapping there: keep the first
                family = families[field]
                for key, number in samples:
                    label_values = [entry.name] if key is None else [entry.name, key]
                    family.add_metric(label_values, number)
        return list(families.values())

    def _snapshots(self, entries: list[_Entry]) -> list[dict[str, Any] | None]:
        try:
            here: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        results: dict[int, dict[str, Any] | None] = {}
        by_run: dict[trio.lowlevel.TrioToken, list[int]] = {}
        for index, entry in enumerate(entries):
            by_run.setdefault(entry.token, []).append(index)
        for token, indices in by_run.items():
            endpoints = [entries[i].endpoint for i in indices]
            if here is not None:
                # In a Trio thread: our own run's endpoints are ours to read;
                # another run's cannot be waited for from here (Trio refuses a
                # blocking call in a Trio thread), so it is read directly.
                values = _read_all(endpoints)
            else:
                try:
                    values = trio.from_thread.run_sync(
                        _read_all, endpoints, trio_token=token
                    )
                except trio.RunFinishedError:
                    values = [None] * len(endpoints)
            results.update(zip(indices, values, strict=True))
        return [results[index] for index in range(len(entries))]


def register(
    *endpoints: DtlsEndpoint,
    registry: CollectorRegistry | None = None,
    names: Sequence[str] | None = None,
) -> EndpointCollector:
    """Export the statistics of ``endpoints`` to a Prometheus registry.

    Call it from the Trio run that owns the endpoints. Endpoints can be
    added and removed later with the collector's
    :meth:`~EndpointCollector.add` and :meth:`~EndpointCollector.remove`.

    Args:
      endpoints: the endpoints to export (none is fine too).
      registry: the ``prometheus_client`` registry; by default the global
        ``prometheus_client.REGISTRY``, which ``start_http_server`` and most
        frameworks serve.
      names: the ``dtls_endpoint`` label of each endpoint, in the same
        order; by default each endpoint's local address.

    Returns:
      The registered collector.

    Raises:
      ValueError: two endpoints share a name, ``names`` does not match
        ``endpoints``, or the registry already has a collector that
        exports these metrics (one collector per registry; use ``add``).
      RuntimeError: not called inside a Trio run.
    """
    if names is not None:
        if isinstance(names, str):
            raise TypeError("names must be a sequence of names, not one string")
        if len(names) != len(endpoints):
            raise ValueError(f"{len(names)} names given for {len(endpoints)} endpoints")
    collector = EndpointCollector(REGISTRY if registry is None else registry)
    for index, endpoint in enumerate(endpoints):
        collector.add(endpoint, None if names is None else names[index])
    collector._register()
    return collector


# -- HTTP ---------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds; they are not logged to stderr."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    # A thread per scrape; a scrape in progress never holds up the exit.
    daemon_threads = True

    def __init__(self, family: int, address: tuple[Any, ...]) -> None:
        self.address_family = _socket.AddressFamily(family)
        super().__init__(address, _QuietHandler)


def _make_server(host: str, port: int) -> _MetricsServer:
    # Resolving the host and binding may block (DNS), so this runs in a thread.
    family, _, _, _, address = _socket.getaddrinfo(
        host or None, port, type=_socket.SOCK_STREAM, flags=_socket.AI_PASSIVE
    )[0]
    return _MetricsServer(family, address)


async def serve_metrics(
    port: int,
    *,
    host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``registry`` over HTTP for Prometheus until cancelled.

    Start it with ``await nursery.start(serve_metrics, port)``, which
    returns the address it listens on as ``(host, port)``; with ``port=0``
    the system picks a free port. Every path answers with the metrics in
    Prometheus' text format. The HTTP server is ``prometheus_client``'s WSGI
    application on the standard library's threaded server: it answers each
    scrape on a thread of its own, outside Trio (see the module's notes on
    threads). When the task is cancelled, the server stops and its port is
    closed before this returns.

    Args:
      port: the TCP port to listen on.
      host: the address to listen on. The default is loopback only:
        statistics tell anyone who can read them how busy the server is,
        so listen more widely (``"0.0.0.0"``, ``"::"``) on purpose.
      registry: the registry to serve; by default the global
        ``prometheus_client.REGISTRY``, which also holds the process
        metrics ``prometheus_client`` collects by itself.

    Raises:
      OSError: the address cannot be used (a port in use, an unknown host).
    """
    server = await trio.to_thread.run_sync(_make_server, host, port)
    try:
        server.set_app(make_wsgi_app(REGISTRY if registry is None else registry))
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"trio_dtlsmux metrics on port {server.server_address[1]}",
            daemon=True,
        )
        thread.start()
    except BaseException:
        server.server_close()
        raise
    try:
        task_status.started(
            (str(server.server_address[0]), int(server.server_address[1]))
        )
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            # shutdown() waits up to poll_interval for serve_forever to notice.
            await trio.to_thread.run_sync(server.shutdown)
        server.server_close()
