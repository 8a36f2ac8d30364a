"""Pre-shared keys (RFC 4279) through the cffi binding pyOpenSSL uses.

Theory of operation
-------------------

pyOpenSSL has no API for PSK cipher suites, but the binding it is built on
(cryptography's, reached as ``SSL._lib`` and ``SSL._ffi``) exposes the three
OpenSSL functions they need: ``SSL_CTX_set_psk_server_callback``,
``SSL_CTX_set_psk_client_callback`` and ``SSL_CTX_use_psk_identity_hint``.
This module owns everything that touches them; ``contexts`` decides when to
use them and which suites go with them.

During a PSK handshake OpenSSL asks a C callback for the key:

* the server's gets the identity the client sent (RFC 4279, section 2) and
  writes the key for it, or answers 0 for "unknown identity", after which
  OpenSSL sends the ``unknown_psk_identity`` alert;
* the client's gets the server's identity hint (or NULL) and writes both the
  identity to send and the key.

The callbacks are cffi callbacks around Python objects kept in
:data:`_KEPT`, keyed weakly by the context, so each lives exactly as long
as its context (an ``SSL.Connection`` holds its context, and OpenSSL calls
the callback only while a connection exists). A cffi callback cannot raise:
an exception escaping it is printed and thrown away, and the C caller gets a
default value. So each callback catches everything, logs what a user's code
did wrong on the ``trio_dtlsmux.psk`` logger, and answers 0, which OpenSSL
turns into a failed handshake; cffi's own ``error=0`` backs that up for
anything that still escapes. The server's callback runs inside
``do_handshake`` in the endpoint's receive task, which is protected from
``KeyboardInterrupt`` (Trio delivers Ctrl-C at the main task's next
checkpoint instead of tearing through OpenSSL's stack); this module itself
stays free of Trio, as the protocol core must.

Which identity a session used is known only inside the callback (the binding
has no ``SSL_get_psk_identity``). The callback finds its ``SSL.Connection``
through pyOpenSSL's own map from ``SSL*`` to connection (the one pyOpenSSL's
callbacks use) and records the identity in :data:`_IDENTITIES`, weakly keyed
by the connection, for the association to read when the handshake is done.
Session resumption would skip the callback (and so the identity, and any key
revoked since), which is why ``contexts`` turns resumption off on PSK
servers.

As in ``_recordio``, the private names are looked up once, here, and
checked; if any is missing, :func:`require_psk` raises
``NotImplementedError`` and no PSK context can be built. Nothing falls back
silently: a PSK server that cannot tell which identity connected would be a
trap for code that authorises by identity.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

from OpenSSL import SSL

__all__ = [
    "MAX_IDENTITY_LENGTH",
    "MAX_KEY_LENGTH",
    "PskKeys",
    "check_client_psk",
    "check_hint",
    "check_server_psk",
    "install_client_psk",
    "install_server_psk",
    "psk_identity",
    "require_psk",
    "timeout_note",
]

#: What a server is given: identity -> key, or a function that looks it up.
PskKeys: TypeAlias = Mapping[bytes, bytes] | Callable[[bytes], bytes | None]

# RFC 4279, section 5.3: every implementation must accept identities of up to
# 128 bytes and keys of up to 64. OpenSSL 3 accepts 256 and 512 (it passes its
# limits to the callbacks, which check them again); OpenSSL 1.1 accepted 128
# and 256. These are the limits every OpenSSL we can meet accepts.
MAX_IDENTITY_LENGTH = 128
MAX_KEY_LENGTH = 256

# The callbacks' C types, as the binding declares them (OpenSSL's own
# prototypes have const identities and hints).
_SERVER_CALLBACK = "unsigned int(*)(SSL *, char *, unsigned char *, unsigned int)"
_CLIENT_CALLBACK = (
    "unsigned int(*)(SSL *, char *, char *, unsigned int, unsigned char *, "
    "unsigned int)"
)

_log = logging.getLogger("trio_dtlsmux.psk")


def _binding() -> tuple[Any, Any, Any] | None:
    """The binding's ``lib``, ``ffi`` and pyOpenSSL's ``SSL*`` map, or None."""
    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    connections = getattr(SSL.Connection, "_reverse_mapping", None)
    if lib is None or ffi is None or connections is None:
        return None
    try:
        if not getattr(lib, "Cryptography_HAS_PSK", True):
            return None
        for name in (
            "SSL_CTX_set_psk_server_callback",
            "SSL_CTX_set_psk_client_callback",
            "SSL_CTX_use_psk_identity_hint",
        ):
            getattr(lib, name)
        # Both callback types must be expressible, or installing would fail
        # later with a less helpful error.
        ffi.typeof(_SERVER_CALLBACK)
        ffi.typeof(_CLIENT_CALLBACK)
    except (AttributeError, TypeError, ffi.error):
        return None
    return lib, ffi, connections


_BINDING = _binding()

# The Python side of each context's callback, alive as long as the context.
_KEPT: weakref.WeakKeyDictionary[SSL.Context, object] = weakref.WeakKeyDictionary()

# The identity each PSK session used, recorded by the callbacks.
_IDENTITIES: weakref.WeakKeyDictionary[SSL.Connection, bytes] = (
    weakref.WeakKeyDictionary()
)


def require_psk() -> tuple[Any, Any, Any]:
    """The binding, or ``NotImplementedError`` saying it lacks PSK support."""
    if _BINDING is None:
        raise NotImplementedError(
            "this OpenSSL binding lacks PSK support (pyOpenSSL's cffi binding "
            "must offer SSL_CTX_set_psk_server_callback, "
            "SSL_CTX_set_psk_client_callback and SSL_CTX_use_psk_identity_hint)"
        )
    return _BINDING


def _context_pointer(ctx: SSL.Context) -> Any:
    pointer = getattr(ctx, "_context", None)
    if pointer is None:  # pragma: no cover - other pyOpenSSL
        raise NotImplementedError(
            "this pyOpenSSL does not expose the SSL_CTX of a Context; "
            "PSK support needs it"
        )
    return pointer


# -- checking what the user gives ---------------------------------------------


def _check_identity(value: object, argument: str) -> bytes:
    if not isinstance(value, bytes):
        hint = " (encode it, e.g. 'name'.encode())" if isinstance(value, str) else ""
        raise TypeError(
            f"{argument} must be bytes, not {type(value).__name__}{hint}"
        )
    if not 1 <= len(value) <= MAX_IDENTITY_LENGTH:
        raise ValueError(
            f"{argument} {value!r} must be 1 to {MAX_IDENTITY_LENGTH} bytes long, "
            f"not {len(value)}"
        )
    if b"\0" in value:
        # OpenSSL passes identities and hints as C strings.
        raise ValueError(f"{argument} {value!r} must not contain a NUL byte")
    return value


def _key_problem(value: object) -> str | None:
    """Why ``value`` cannot be a key, or None. Never shows the key itself."""
    if not isinstance(value, bytes):
        hint = " (use bytes.fromhex() for a hex key)" if isinstance(value, str) else ""
        return f"must be bytes, not {type(value).__name__}{hint}"
    if not 1 <= len(value) <= MAX_KEY_LENGTH:
        return f"must be 1 to {MAX_KEY_LENGTH} bytes long, not {len(value)}"
    return None


def _check_key(value: object, argument: str) -> bytes:
    problem = _key_problem(value)
    if problem is not None:
        kind = ValueError if isinstance(value, bytes) else TypeError
        raise kind(f"{argument} {problem}")
    assert isinstance(value, bytes)
    return value


def check_hint(value: object) -> bytes:
    """Check ``psk_identity_hint``."""
    return _check_identity(value, "psk_identity_hint")


def check_server_psk(psk: object) -> PskKeys:
    """Check a server's ``psk``: every entry of a mapping, or a callable."""
    if isinstance(psk, Mapping):
        if not psk:
            raise ValueError(
                "psk is an empty mapping, so no client could ever connect; "
                "give at least one identity"
            )
        for identity, key in psk.items():
            _check_identity(identity, "psk identity")
            _check_key(key, f"psk key for {identity!r}")
        return psk
    if callable(psk):
        return psk
    hint = (
        "; an (identity, key) pair is what client_context takes"
        if isinstance(psk, tuple)
        else ""
    )
    raise TypeError(
        "psk must be a mapping of identity (bytes) to key (bytes), or a callable "
        f"taking an identity and returning its key or None, not "
        f"{type(psk).__name__}{hint}"
    )


def check_client_psk(psk: object) -> tuple[bytes, bytes]:
    """Check a client's ``psk``: an ``(identity, key)`` pair."""
    if not isinstance(psk, tuple) or len(psk) != 2:
        what = type(psk).__name__
        if isinstance(psk, tuple):
            what = f"a tuple of {len(psk)}"
        raise TypeError(f"psk must be a pair (identity, key) of bytes, not {what}")
    identity, key = psk
    return _check_identity(identity, "psk identity"), _check_key(key, "psk key")


# -- the callbacks -------------------------------------------------------------


class _ServerKeys:
    """The server callback: the key for the identity a client sent."""

    __slots__ = ("__weakref__", "_keys", "callback")

    def __init__(self, keys: PskKeys) -> None:
        _lib, ffi, _connections = require_psk()
        self._keys = keys
        self.callback = ffi.callback(
            _SERVER_CALLBACK, self._answer, error=0, onerror=_escaped
        )

    def _key_for(self, identity: bytes) -> bytes | None:
        keys = self._keys
        if isinstance(keys, Mapping):
            return keys.get(identity)
        return keys(identity)

    def _answer(self, ssl: Any, identity_in: Any, key_out: Any, room: int) -> int:
        _lib, ffi, connections = require_psk()
        if identity_in == ffi.NULL:  # pragma: no cover - OpenSSL always passes one
            return 0
        identity = ffi.string(identity_in)
        try:
            key = self._key_for(identity)
        except Exception:
            _log.exception(
                "the PSK lookup raised for identity %r; the handshake fails", identity
            )
            return 0
        if key is None:
            return 0  # unknown identity: OpenSSL sends unknown_psk_identity
        problem = _key_problem(key)
        if problem is None and len(key) > room:
            problem = f"is {len(key)} bytes, more than OpenSSL's limit of {room}"
        if problem is not None:
            _log.error(
                "the PSK lookup's key for identity %r %s; the handshake fails",
                identity,
                problem,
            )
            return 0
        ffi.memmove(key_out, key, len(key))
        connection = connections.get(ssl)
        if connection is not None:
            _IDENTITIES[connection] = identity
        return len(key)


class _ClientKey:
    """The client callback: our identity and key, whatever the hint."""

    __slots__ = ("__weakref__", "_identity", "_key", "callback")

    def __init__(self, identity: bytes, key: bytes) -> None:
        _lib, ffi, _connections = require_psk()
        self._identity = identity
        self._key = key
        self.callback = ffi.callback(
            _CLIENT_CALLBACK, self._answer, error=0, onerror=_escaped
        )

    def _answer(
        self,
        ssl: Any,
        hint: Any,
        identity_out: Any,
        identity_room: int,
        key_out: Any,
        key_room: int,
    ) -> int:
        _lib, ffi, connections = require_psk()
        identity, key = self._identity, self._key
        # The identity buffer holds identity_room bytes and a terminating NUL.
        if len(identity) > identity_room or len(key) > key_room:
            _log.error(
                "this OpenSSL takes PSK identities of at most %d bytes and keys "
                "of at most %d; the handshake fails",
                identity_room,
                key_room,
            )
            return 0
        ffi.memmove(identity_out, identity + b"\0", len(identity) + 1)
        ffi.memmove(key_out, key, len(key))
        connection = connections.get(ssl)
        if connection is not None:
            _IDENTITIES[connection] = identity
        return len(key)


def _escaped(exc_type: Any, exc_value: Any, traceback: Any) -> None:
    # Only reached if a callback lets an exception out (they catch what user
    # code raises). cffi then answers 0, which fails the handshake; say why
    # instead of letting cffi print it to stderr.
    _log.error(
        "a PSK callback failed; the handshake fails",
        exc_info=(exc_type, exc_value, traceback),
    )


# -- installing them -----------------------------------------------------------


def install_server_psk(ctx: SSL.Context, keys: PskKeys, hint: bytes | None) -> None:
    """Make ``ctx`` answer PSK handshakes with ``keys`` (already checked)."""
    lib, _ffi, _connections = require_psk()
    pointer = _context_pointer(ctx)
    helper = _ServerKeys(keys)
    lib.SSL_CTX_set_psk_server_callback(pointer, helper.callback)
    _KEPT[ctx] = helper
    if hint is not None and lib.SSL_CTX_use_psk_identity_hint(pointer, hint) != 1:
        raise ValueError(  # pragma: no cover - only fails on allocation
            f"OpenSSL refused the psk_identity_hint {hint!r}"
        )


def install_client_psk(ctx: SSL.Context, identity: bytes, key: bytes) -> None:
    """Make ``ctx`` offer ``identity`` and ``key`` (already checked)."""
    lib, _ffi, _connections = require_psk()
    helper = _ClientKey(identity, key)
    lib.SSL_CTX_set_psk_client_callback(_context_pointer(ctx), helper.callback)
    _KEPT[ctx] = helper


def psk_identity(conn: SSL.Connection) -> bytes | None:
    """The PSK identity ``conn``'s handshake used, or None (no PSK suite)."""
    return _IDENTITIES.get(conn)


def timeout_note(conn: SSL.Connection | None, *, server: bool) -> str:
    """What to add to a handshake timeout's reason when keys were exchanged.

    A wrong key fails no check that OpenSSL reports: the side that receives
    the other's Finished cannot decrypt it, and DTLS drops records it cannot
    decrypt (RFC 6347, 4.1.2.7) instead of answering them. The handshake
    then simply stops until it times out. If the PSK callback ran, the
    identity was known and a key was used, so a mismatch is the likely
    cause, and the reason should say so.
    """
    identity = None if conn is None else _IDENTITIES.get(conn)
    if identity is None:
        return ""
    if server:
        return (
            f"; the client's PSK identity {identity!r} is known here but its "
            "Finished never decrypted, which is what a wrong key looks like: "
            "DTLS drops records it cannot decrypt"
        )
    return (
        f"; the server did not refuse our PSK identity {identity!r} but never "
        "answered our Finished, which is what a wrong key looks like: DTLS "
        "drops records it cannot decrypt (and some servers, GnuTLS among "
        "them, answer an unknown identity this way too)"
    )
