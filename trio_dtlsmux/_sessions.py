"""Session resumption: keeping, exporting and offering DTLS sessions.

Theory of operation
-------------------

A resumed handshake (RFC 5246 7.3, abbreviated; RFC 5077 with a ticket)
skips the certificate and the key exchange: a fraction of a full handshake's
CPU on both sides, and one round trip less. What it needs:

* **The server keeps sessions resumable.** OpenSSL drops a session from its
  cache (and marks it not resumable) when an ``SSL`` object is freed
  without a clean shutdown mark, which is how an association ends when it is
  reaped, replaced, or closed from either side in a memory-BIO world. So an
  association that ended cleanly is marked shut down (``set_shutdown``)
  before its ``SSL`` object goes (:func:`keep_resumable`); one that failed
  is not, and its session is not resumed. Tickets need no cache: OpenSSL
  issues them by default, with keys per ``SSL.Context``.
* **The client offers a session.** :class:`SessionCache` remembers the last
  session per (address, server name, context): a session is only ever
  offered to the peer, under the name, with the settings it was made with.
  Sessions also travel as bytes (:func:`session_to_bytes`,
  :func:`session_from_bytes`: OpenSSL's DER encoding), so an application can
  keep one across restarts.

pyOpenSSL has ``get_session``/``set_session`` but no way to serialise a
session or ask whether one was reused, so those go through the cffi binding
pyOpenSSL itself uses, looked up once here, as ``_recordio`` does. Without
it, sessions still resume within the process; only the bytes are missing
(:data:`SESSION_BYTES` says so).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from OpenSSL import SSL

__all__ = [
    "SESSION_BYTES",
    "SessionCache",
    "keep_resumable",
    "session_from_bytes",
    "session_reused",
    "session_to_bytes",
]


def _binding() -> tuple[Any, Any] | None:
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    if lib is None or ffi is None:  # pragma: no cover - other pyOpenSSL
        return None
    for name in ("i2d_SSL_SESSION", "d2i_SSL_SESSION", "SSL_SESSION_free", "SSL_session_reused"):
        if not hasattr(lib, name):  # pragma: no cover - other binding
            return None
    # pyOpenSSL declares (but does not define) the attribute that holds the
    # SSL_SESSION pointer; get_session() sets it.
    if "_session" not in getattr(SSL.Session, "__annotations__", {}):
        return None  # pragma: no cover - other pyOpenSSL
    return lib, ffi


_BINDING = _binding()

#: Whether sessions can be exported and imported as bytes here.
SESSION_BYTES = _BINDING is not None

#: The largest encoded session accepted from a caller (a session with a
#: ticket and a certificate chain is a few KiB).
_MAX_SESSION_BYTES = 64 * 1024


def session_to_bytes(session: SSL.Session) -> bytes | None:
    """``session`` in OpenSSL's DER encoding, or None if it cannot be had."""
    if _BINDING is None:  # pragma: no cover - other pyOpenSSL
        return None
    lib, ffi = _BINDING
    pointer = session._session
    size = lib.i2d_SSL_SESSION(pointer, ffi.NULL)
    if size <= 0:
        return None
    buffer = ffi.new("unsigned char[]", size)
    cursor = ffi.new("unsigned char **", buffer)
    if lib.i2d_SSL_SESSION(pointer, cursor) != size:  # pragma: no cover
        return None
    return bytes(ffi.buffer(buffer, size))


def session_from_bytes(data: bytes, context: SSL.Context) -> SSL.Session:
    """A session from :func:`session_to_bytes` (or OpenSSL's ``-sess_out``
    in DER), to be offered by connections made from ``context``.

    Raises:
      TypeError: ``data`` is not bytes.
      ValueError: ``data`` is not an encoded session.
      NotImplementedError: this pyOpenSSL cannot import sessions.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a session is bytes, not {type(data).__name__}")
    blob = bytes(data)
    if not blob or len(blob) > _MAX_SESSION_BYTES:
        raise ValueError(
            f"a session is 1 to {_MAX_SESSION_BYTES} bytes, not {len(blob)}"
        )
    if _BINDING is None:  # pragma: no cover - other pyOpenSSL
        raise NotImplementedError("this pyOpenSSL cannot import sessions from bytes")
    lib, ffi = _BINDING
    source = ffi.new("unsigned char[]", blob)
    cursor = ffi.new("unsigned char **", source)
    pointer = lib.d2i_SSL_SESSION(ffi.NULL, cursor, len(blob))
    if pointer == ffi.NULL:
        lib.ERR_clear_error()
        raise ValueError("these bytes are not a DTLS session (OpenSSL cannot read them)")
    session = SSL.Session.__new__(SSL.Session)
    session._session = ffi.gc(pointer, lib.SSL_SESSION_free)
    # pyOpenSSL only lets a connection take a session of its own context.
    session._context = context
    return session


def session_reused(ssl: SSL.Connection) -> bool:
    """Whether the handshake just done resumed a session (abbreviated)."""
    if _BINDING is None:  # pragma: no cover - other pyOpenSSL
        return False
    lib, _ = _BINDING
    return bool(lib.SSL_session_reused(ssl._ssl))


def keep_resumable(ssl: SSL.Connection) -> None:
    """Mark a cleanly ended connection as shut down, so that freeing it does
    not make OpenSSL drop its session (see the module's notes)."""
    ssl.set_shutdown(SSL.SENT_SHUTDOWN | SSL.RECEIVED_SHUTDOWN)


class SessionCache:
    """The last session per (address, server name, context), at most
    ``size`` of them, least recently used first out."""

    __slots__ = ("_entries", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[Any, str | None, SSL.Context], SSL.Session] = (
            OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, address: Any, server_hostname: str | None, context: SSL.Context
    ) -> SSL.Session | None:
        key = (address, server_hostname, context)
        session = self._entries.get(key)
        if session is not None:
            self._entries.move_to_end(key)
        return session

    def remember(
        self,
        address: Any,
        server_hostname: str | None,
        context: SSL.Context,
        session: SSL.Session,
    ) -> None:
        if self._size <= 0:
            return
        key = (address, server_hostname, context)
        self._entries[key] = session
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def forget(self, address: Any, server_hostname: str | None, context: SSL.Context) -> None:
        self._entries.pop((address, server_hostname, context), None)
