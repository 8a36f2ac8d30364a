"""Application records in and out of an established ``SSL.Connection``.

Why this module exists
----------------------

An echoed message costs the server four calls into OpenSSL: write the
record into the input BIO, ``SSL_read`` it, ``SSL_write`` the reply, read
the reply's record out of the output BIO. OpenSSL does each in about a
microsecond. pyOpenSSL's wrappers around them (argument conversion, buffer
zeroing checks, ``SSL_get_error`` and the callback-problem checks on every
call, even on success) cost more than OpenSSL itself: in one process,
100-byte messages, the server's half of an echo takes about 17 us through
pyOpenSSL's methods and about 6 us through the same C functions called
directly (``benchmarks`` reports both as engine rows).

So the data path calls those four C functions through the cffi binding
pyOpenSSL itself uses, on the connection's own ``SSL*`` and BIO pointers.
Those are private names of pyOpenSSL (``SSL._lib``, ``SSL._ffi``,
``Connection._ssl``, ``_into_ssl``, ``_from_ssl``, ``_raise_ssl_error``),
stable for a decade but not promised. Hence:

* everything needed is looked up once, here, and checked per connection;
  if anything is missing, :func:`record_io` returns :class:`PublicRecordIO`,
  which does the same through pyOpenSSL's public methods (slower, same
  behaviour);
* failures (anything but "record consumed" and "record dropped") are turned
  into exceptions by pyOpenSSL's own ``_raise_ssl_error``, so both paths
  raise exactly what ``Connection.recv``/``send`` would;
* ``tests/test_recordio.py`` runs every case on both paths and fails if the
  fast path is not in use with the pyOpenSSL we test against, so a change
  in pyOpenSSL is noticed rather than silently slow.

Only established connections use this. Handshakes, shutdown and anything
that can run a Python callback go through pyOpenSSL's public API.
"""

from __future__ import annotations

from typing import Any, NoReturn, Protocol

from OpenSSL import SSL


class RecordIO(Protocol):
    def open(self, record: bytes) -> bytes | None:
        """Decrypt one record.

        Returns its plaintext, or ``None`` if OpenSSL dropped it (bad MAC,
        replay, or a warning alert that asks for nothing). Raises
        ``SSL.ZeroReturnError`` for close_notify and ``SSL.Error`` for a
        fatal alert or error.
        """

    def seal(self, message: bytes, limit: int) -> bytes:
        """Encrypt one message; returns up to ``limit`` bytes of output.

        Raises ``SSL.Error``.
        """


class PublicRecordIO:
    """The record path through pyOpenSSL's public methods."""

    __slots__ = ("_conn",)

    def __init__(self, conn: SSL.Connection) -> None:
        self._conn = conn

    def open(self, record: bytes) -> bytes | None:
        conn = self._conn
        conn.bio_write(record)
        try:
            return conn.recv(len(record))
        except SSL.WantReadError:
            return None

    def seal(self, message: bytes, limit: int) -> bytes:
        conn = self._conn
        conn.send(message)
        return conn.bio_read(limit)


def _binding() -> tuple[Any, Any, Any] | None:
    """pyOpenSSL's cffi ``lib`` and ``ffi`` and a no-zeroing allocator."""
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    if lib is None or ffi is None:  # pragma: no cover - other pyOpenSSL
        return None
    try:
        for name in (
            "BIO_write",
            "BIO_read",
            "SSL_read",
            "SSL_write",
            "SSL_get_error",
            "SSL_ERROR_WANT_READ",
        ):
            getattr(lib, name)
        allocate = ffi.new_allocator(should_clear_after_alloc=False)
    except (AttributeError, TypeError):  # pragma: no cover - other pyOpenSSL
        return None
    return lib, ffi, allocate


_BINDING = _binding()


class FastRecordIO:
    """The record path through OpenSSL's C functions (see the module docs)."""

    __slots__ = ("_conn", "_rbio", "_ssl", "_wbio")

    def __init__(self, conn: SSL.Connection) -> None:
        # Holding the Connection keeps the pointers below alive.
        self._conn = conn
        self._ssl = conn._ssl
        self._rbio = conn._into_ssl
        self._wbio = conn._from_ssl

    def open(self, record: bytes) -> bytes | None:
        lib, ffi, allocate = _BINDING  # type: ignore[misc]
        size = len(record)
        if lib.BIO_write(self._rbio, record, size) != size:
            raise SSL.Error("the memory BIO refused a record")
        buffer = allocate("char[]", size)
        result = lib.SSL_read(self._ssl, buffer, size)
        if result > 0:
            return ffi.buffer(buffer, result)[:]  # type: ignore[no-any-return]
        if lib.SSL_get_error(self._ssl, result) == lib.SSL_ERROR_WANT_READ:
            return None
        self._raise(result)

    def seal(self, message: bytes, limit: int) -> bytes:
        lib, ffi, allocate = _BINDING  # type: ignore[misc]
        result = lib.SSL_write(self._ssl, message, len(message))
        if result <= 0:
            self._raise(result)
        buffer = allocate("char[]", limit)
        size = lib.BIO_read(self._wbio, buffer, limit)
        if size <= 0:
            raise SSL.Error("OpenSSL wrote no record")
        return ffi.buffer(buffer, size)[:]  # type: ignore[no-any-return]

    def _raise(self, result: int) -> NoReturn:
        # pyOpenSSL's own mapping from OpenSSL's state and error queue to an
        # exception, so this path raises what Connection.recv/send would.
        self._conn._raise_ssl_error(self._ssl, result)
        raise SSL.Error(f"OpenSSL call failed ({result}) with no error queued")


def _fast_path_usable(conn: SSL.Connection) -> bool:
    if _BINDING is None:
        return False  # pragma: no cover - other pyOpenSSL
    return all(
        getattr(conn, name, None) is not None
        for name in ("_ssl", "_into_ssl", "_from_ssl", "_raise_ssl_error")
    )


# Tests switch this off to run everything on the public path as well.
use_fast_path = True


def record_io(conn: SSL.Connection) -> RecordIO:
    """The fastest record path that works for this connection."""
    if use_fast_path and _fast_path_usable(conn):
        return FastRecordIO(conn)
    return PublicRecordIO(conn)
