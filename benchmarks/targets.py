"""The servers under test, behind one small adapter interface.

A :class:`Target` knows how to run an echo server on a bound UDP socket, in
the server process. The client side is not the target's business: the load
generator (:mod:`benchmarks.load`) drives every DTLS target with the same
minimal pyOpenSSL client, and ``raw_udp`` with the same plain datagrams, so
every target gets exactly the same traffic from the same cheap client.

* ``raw_udp``: plain Trio UDP echo, no crypto. The ceiling for any DTLS server
  written with Trio on this machine.
* ``udp_tasks``: plain UDP echo in trio_dtlsmux's shape, no crypto: a
  receive task hands each datagram through a memory channel to one task per
  peer, which sends the reply. What that shape costs in Trio by itself.
* ``trio_dtls``: a ``trio.DTLSEndpoint`` server. The incumbent.
* ``dtlsmux``: a ``trio_dtlsmux.DtlsEndpoint`` server. The library under
  test; it reports :class:`Unavailable` if it cannot be imported.
"""

from __future__ import annotations

import abc
import dataclasses
import socket as stdlib_socket
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, cast

import trio

from benchmarks import certs

# trio.DTLSEndpoint drops packets beyond this many queued per channel (its
# default is 10). The echo scenario keeps 32 messages in flight per peer, so
# the baseline gets room for them rather than losing a third of them.
TRIO_INCOMING_BUFFER = 64

# Loopback bursts (100 peers x 32 messages x 1,200 bytes) overflow the default
# 208 KiB socket buffer. Every target gets the same larger buffers.
SERVER_SOCKET_BUFFER = 16 << 20
CLIENT_SOCKET_BUFFER = 1 << 20
_SO_RCVBUFFORCE = getattr(stdlib_socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(stdlib_socket, "SO_SNDBUFFORCE", 32)

JsonDict = dict[str, Any]


class Unavailable(Exception):
    """The target cannot run on this machine (for instance, an import failed)."""


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server process should set up its target."""

    target: str
    idle_timeout: float | None = None
    # Enough for the memory and reaping scenarios; dtlsmux's default is lower.
    max_peers: int = 50_000
    # The endpoint with its own defaults: none of the options above, and
    # trio.DTLSEndpoint with its default incoming packet queue (the socket
    # is the benchmark's, with the same large buffers for every target).
    defaults: bool = False


class EchoServer(Protocol):
    """What a running server offers to the control loop of its process."""

    def statistics(self) -> JsonDict | None:
        """The server's own counters, if it keeps any; must include ``peers``."""

    def reap_times(self) -> list[list[float]]:
        """``[ended, lag]`` for every handler that ended after an idle timeout.

        ``ended`` is ``time.monotonic()`` when the handler saw its peer go;
        ``lag`` is how long after the peer's idle deadline that was, in
        seconds. Empty for targets without an idle timeout.
        """


def set_buffers(sock: stdlib_socket.socket | trio.socket.SocketType, size: int) -> None:
    """Give ``sock`` receive and send buffers of ``size`` bytes (or the most allowed)."""
    for force, plain in (
        (_SO_RCVBUFFORCE, stdlib_socket.SO_RCVBUF),
        (_SO_SNDBUFFORCE, stdlib_socket.SO_SNDBUF),
    ):
        try:  # beyond net.core.rmem_max, but needs CAP_NET_ADMIN
            sock.setsockopt(stdlib_socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(stdlib_socket.SOL_SOCKET, plain, size)


async def udp_socket(
    host: str = "127.0.0.1", *, buffer: int = CLIENT_SOCKET_BUFFER
) -> trio.socket.SocketType:
    """A UDP socket bound to ``host`` on an ephemeral port."""
    sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
    try:
        set_buffers(sock, buffer)
        await sock.bind((host, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class _Counters:
    """Per-server counters shared by the echo handlers."""

    def __init__(self) -> None:
        self.handlers = 0
        self.handler_errors = 0
        self.reap_times: list[list[float]] = []


async def _echo(conn: trio.abc.Channel[bytes], counters: _Counters) -> None:
    """Echo every message back until the peer goes away.

    Errors are counted, never raised: one misbehaving peer must not take the
    whole benchmark server down.
    """
    counters.handlers += 1
    try:
        async for message in conn:
            await conn.send(message)
    except Exception:
        counters.handler_errors += 1


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return repr(value)


def stats_to_dict(stats: object) -> JsonDict:
    """Turn an attrs/dataclass/plain statistics object into a JSON-able dict."""
    try:
        import attrs

        if attrs.has(type(stats)):
            fields = attrs.asdict(cast(Any, stats))
            return {k: _jsonable(v) for k, v in fields.items()}
    except ImportError:  # pragma: no cover - attrs is a dependency of the package
        pass
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(stats).items()}
    if hasattr(stats, "_asdict"):
        return {k: _jsonable(v) for k, v in stats._asdict().items()}
    if hasattr(stats, "__dict__"):
        return {k: _jsonable(v) for k, v in vars(stats).items()}
    return {"repr": repr(stats)}


class Target(abc.ABC):
    """One implementation of a UDP echo service that the benchmark can drive."""

    name: ClassVar[str]
    description: ClassVar[str]
    secure: ClassVar[bool] = True

    def check(self) -> None:  # noqa: B027 - an optional hook
        """Raise :class:`Unavailable` if this target cannot run here."""

    @abc.abstractmethod
    async def start_server(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        config: ServerConfig,
    ) -> EchoServer:
        """Start an echo server on the bound ``sock`` (runs in the server process).

        The server runs in ``nursery`` until it is cancelled and owns ``sock``.
        """


# --------------------------------------------------------------------- raw UDP


@dataclasses.dataclass
class _PlainServer:
    counters: _Counters

    def statistics(self) -> JsonDict | None:
        return {"peers": 0, "handler_errors": self.counters.handler_errors}

    def reap_times(self) -> list[list[float]]:
        return []


class RawUdp(Target):
    name = "raw_udp"
    description = "plain Trio UDP echo, no crypto"
    secure = False

    async def start_server(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        config: ServerConfig,
    ) -> EchoServer:
        async def loop() -> None:
            with sock:
                while True:
                    data, address = await sock.recvfrom(65536)
                    await sock.sendto(data, address)

        nursery.start_soon(loop)
        return _PlainServer(counters=_Counters())


# ---------------------------------------------------- UDP in the library's shape


class UdpTasks(Target):
    name = "udp_tasks"
    description = "plain UDP echo through a receive task and one task per peer"
    secure = False

    async def start_server(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        config: ServerConfig,
    ) -> EchoServer:
        counters = _Counters()
        inboxes: dict[Any, trio.MemorySendChannel[bytes]] = {}

        async def peer(address: Any, inbox: trio.MemoryReceiveChannel[bytes]) -> None:
            async for data in inbox:
                try:
                    await sock.sendto(data, address)
                except trio.BusyResourceError:
                    # Another peer's task is waiting for buffer space.
                    counters.handler_errors += 1

        async def loop() -> None:
            with sock:
                while True:
                    data, address = await sock.recvfrom(65536)
                    inbox = inboxes.get(address)
                    if inbox is None:
                        inbox, receive = trio.open_memory_channel[bytes](64)
                        inboxes[address] = inbox
                        counters.handlers += 1
                        nursery.start_soon(peer, address, receive)
                    try:
                        inbox.send_nowait(data)
                    except trio.WouldBlock:
                        counters.handler_errors += 1

        nursery.start_soon(loop)
        return _PlainServer(counters=counters)


# ------------------------------------------------------------ trio.DTLSEndpoint


@dataclasses.dataclass
class _TrioServer:
    endpoint: trio.DTLSEndpoint
    counters: _Counters

    def statistics(self) -> JsonDict | None:
        # trio keeps no statistics; its private table of live channels is the
        # closest thing to a peer count.
        streams = getattr(self.endpoint, "_streams", None)
        return {
            "peers": None if streams is None else len(streams),
            "handlers": self.counters.handlers,
            "handler_errors": self.counters.handler_errors,
        }

    def reap_times(self) -> list[list[float]]:
        return []


class TrioDtls(Target):
    name = "trio_dtls"
    description = "a trio.DTLSEndpoint server"

    async def start_server(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        config: ServerConfig,
    ) -> EchoServer:
        if config.idle_timeout is not None:
            raise Unavailable("trio.DTLSEndpoint has no idle timeout")
        cert, key = certs.make_cert()
        if config.defaults:
            endpoint = trio.DTLSEndpoint(sock)
        else:
            endpoint = trio.DTLSEndpoint(
                sock, incoming_packets_buffer=TRIO_INCOMING_BUFFER
            )
        counters = _Counters()
        # serve() configures the context it is given, so it gets a fresh one.
        await nursery.start(
            endpoint.serve, certs.server_context(cert, key), _echo, counters
        )
        return _TrioServer(endpoint=endpoint, counters=counters)


# ----------------------------------------------------------------- trio_dtlsmux


def _note_reaping(conn: Any, idle_timeout: float, counters: _Counters) -> None:
    """Record how late after its idle deadline this peer's handler ended."""
    try:
        stats = conn.statistics()
        last = stats.last_datagram_at or stats.established_at
    except Exception:
        return
    if last is not None:
        lag = trio.current_time() - (last + idle_timeout)
        counters.reap_times.append([time.monotonic(), lag])


@dataclasses.dataclass
class _MuxServer:
    endpoint: Any
    counters: _Counters

    def statistics(self) -> JsonDict | None:
        stats = stats_to_dict(self.endpoint.statistics())
        stats.setdefault("handler_errors", self.counters.handler_errors)
        return stats

    def reap_times(self) -> list[list[float]]:
        return self.counters.reap_times


class DtlsMux(Target):
    name = "dtlsmux"
    description = "a trio_dtlsmux.DtlsEndpoint server (library under test)"

    def check(self) -> None:
        try:
            import trio_dtlsmux

            for attribute in ("DtlsEndpoint", "server_context", "self_signed"):
                getattr(trio_dtlsmux, attribute)
        except Exception as exc:
            raise Unavailable(f"{type(exc).__name__}: {exc}") from exc

    async def start_server(
        self,
        nursery: trio.Nursery,
        sock: trio.socket.SocketType,
        config: ServerConfig,
    ) -> EchoServer:
        from trio_dtlsmux import DtlsEndpoint, self_signed, server_context

        identity = self_signed()
        options: dict[str, Any] = {}
        if not config.defaults:
            options = {
                "idle_timeout": config.idle_timeout,
                "max_connections": config.max_peers,
            }
        endpoint = DtlsEndpoint(
            sock, server_context=server_context(identity), **options
        )
        counters = _Counters()
        idle_timeout = config.idle_timeout

        async def handler(conn: Any) -> None:
            try:
                await _echo(conn, counters)
            finally:
                if idle_timeout is not None:
                    _note_reaping(conn, idle_timeout, counters)

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            async with endpoint:
                task_status.started()
                await endpoint.serve(handler)
                await trio.sleep_forever()  # in case serve() does not block

        await nursery.start(run)
        return _MuxServer(endpoint=endpoint, counters=counters)


TARGETS: dict[str, type[Target]] = {
    cls.name: cls for cls in (RawUdp, UdpTasks, TrioDtls, DtlsMux)
}


def get_target(name: str) -> Target:
    """A fresh adapter for the target called ``name``."""
    return TARGETS[name]()
