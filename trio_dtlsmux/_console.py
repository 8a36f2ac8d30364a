"""What every command of ``python -m trio_dtlsmux`` shares with the others.

Exit codes, how addresses are written and read, the one-line messages on
stderr, the argument types, and ``trio.run`` with a Ctrl-C turned into an
exit code. :mod:`._cli` (the parser, ``serve`` and ``connect``) imports this
module, and so may any other command's module; this one imports none of
them. That keeps the command line free of import cycles: shared pieces live
here, and each command's own machinery is loaded only by the command that
needs it (:mod:`._demo` needs nothing from here or from :mod:`._cli`).

The names are public within the package; the module itself is private.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import trio

from ._workers import MAX_WORKERS, available_cpus

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Parser",
    "alpn_protocol",
    "fail",
    "format_address",
    "host_port",
    "idle_timeout_seconds",
    "leaves",
    "listen_port",
    "one_line",
    "peer_text",
    "probability",
    "run_until_interrupted",
    "say",
    "seconds",
    "usage_error",
    "wait_seconds",
    "warn",
    "whole_number",
    "worker_count",
]

EXIT_OK = 0
#: Failure at run time: a handshake, the network, a lost connection.
EXIT_FAILURE = 1
#: Bad arguments, files or options: found before anything ran.
EXIT_USAGE = 2
#: Interrupted (Ctrl-C) where that is not the normal way to stop.
EXIT_INTERRUPTED = 130


# -- text ----------------------------------------------------------------------


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets as URLs write them."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def peer_text(address: Any) -> str:
    """A socket address as :func:`format_address` writes it, or its repr."""
    try:
        return format_address(str(address[0]), int(address[1]))
    except (TypeError, IndexError, ValueError):
        return repr(address)


def one_line(text: object) -> str:
    """``text`` with every run of whitespace, newlines included, made one space."""
    return " ".join(str(text).split())


def say(text: str = "") -> None:
    """A line on stdout, flushed at once (other programs wait for it)."""
    print(text, flush=True)


def warn(prog: str, text: str) -> None:
    """``PROG: warning: ...``, one line on stderr."""
    print(f"{prog}: warning: {one_line(text)}", file=sys.stderr, flush=True)


def fail(prog: str, text: str) -> None:
    """``PROG: error: ...``, one line on stderr."""
    print(f"{prog}: error: {one_line(text)}", file=sys.stderr, flush=True)


# -- running -------------------------------------------------------------------


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    inner = getattr(exc, "exceptions", None)
    if not isinstance(inner, tuple):
        return [exc]
    found: list[BaseException] = []
    for item in inner:
        if isinstance(item, BaseException):
            found.extend(leaves(item))
    return found


def run_until_interrupted(
    async_fn: Callable[..., Awaitable[int]], *args: Any, interrupted: int
) -> int:
    """``trio.run`` that turns a Ctrl-C which slipped past the command's own
    signal handling (before it was installed, say) into ``interrupted``."""
    try:
        return trio.run(async_fn, *args)
    except BaseException as exc:
        found = leaves(exc)
        if found and all(isinstance(leaf, KeyboardInterrupt) for leaf in found):
            return interrupted
        raise


# -- parsing -------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are a single line on stderr."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n",
        )


def usage_error(parser: argparse.ArgumentParser, message: str) -> NoReturn:
    """Exit 2 with one line: for what argparse could not check itself."""
    parser.exit(EXIT_USAGE, f"{parser.prog}: error: {one_line(message)}\n")


def _port_number(text: str, *, minimum: int) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"port must be a number, not {text!r}"
        ) from None
    if not minimum <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"port must be from {minimum} to 65535, not {port}"
        )
    return port


def listen_port(text: str) -> int:
    """A port to bind: 0 (any free one) to 65535."""
    return _port_number(text, minimum=0)


def host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPV6]:PORT``."""
    if text.startswith("["):
        end = text.find("]")
        if end == -1 or text[end + 1 : end + 2] != ":":
            raise argparse.ArgumentTypeError(
                f"expected [IPV6-ADDRESS]:PORT, not {text!r}"
            )
        host, port_text = text[1:end], text[end + 2 :]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
        if ":" in host:
            raise argparse.ArgumentTypeError(
                f"put an IPv6 address in brackets, as in [::1]:{port_text or 4433}"
            )
    if not host:
        raise argparse.ArgumentTypeError(f"the host is missing in {text!r}")
    return host, _port_number(port_text, minimum=1)


def _number_of_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds, not {text!r}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(
            f"expected a finite number of seconds, not {text}"
        )
    return value


def seconds(text: str) -> float:
    """A positive, finite number of seconds."""
    value = _number_of_seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, not {text}"
        )
    return value


def wait_seconds(text: str) -> float:
    """Seconds to wait, where 0 means not at all."""
    value = _number_of_seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"must be 0 (do not wait) or a positive number of seconds, not {text}"
        )
    return value


def idle_timeout_seconds(text: str) -> float | None:
    """Positive seconds, or ``none`` (any case) for never, as the library's
    ``idle_timeout=None``. Zero is refused rather than read as "never": the
    library refuses it too, and a zero that meant the opposite of a short
    timeout would be a trap."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, or 'none' never to forget "
            f"a silent peer; not {text!r}"
        )
    return value


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argument type for integers from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a whole number, not {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be from {low} to {high}, not {value}"
            )
        return value

    return parse


def worker_count(text: str) -> int:
    """A number of worker processes, at least 1, or ``auto``: one per CPU
    this process may run on."""
    if text.strip().lower() == "auto":
        return available_cpus()
    return whole_number(1, MAX_WORKERS)(text)


def probability(text: str) -> float:
    """A share of something: at least 0, less than 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(
            f"must be at least 0 and less than 1 (a probability), not {text}"
        )
    return value


def alpn_protocol(text: str) -> str:
    """An ALPN protocol name: 1 to 255 ASCII bytes (RFC 7301, 3.1)."""
    try:
        size = len(text.encode("ascii"))
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(
            f"an ALPN protocol name must be ASCII, not {text!r}"
        ) from None
    if not 1 <= size <= 255:
        raise argparse.ArgumentTypeError(
            f"an ALPN protocol name must be 1 to 255 bytes long, not {size}"
        )
    return text
