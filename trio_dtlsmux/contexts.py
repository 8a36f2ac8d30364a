"""Ready-made pyOpenSSL contexts for DTLS 1.2 clients and servers.

Theory of operation
-------------------

This module and its two helpers below own certificate policy and nothing
else. It turns a few plain arguments into an ``OpenSSL.SSL.Context`` that the
endpoint can use for any number of peers. It reads files only while a context is being built and never
touches sockets, clocks or DTLS records: cookies, MTU and timers belong to the
endpoint. pyOpenSSL freezes a context once the first ``Connection`` has been made
from it, so everything here is configured up front and the endpoint must add its
own settings (cookie callbacks) before it creates connections.

The policy is spread over three modules, one concern each:

* ``contexts`` (this one) builds the contexts and chooses their settings:
  protocol version, ciphers, ALPN, SRTP, and which verify callback to use.
* ``_identity`` is who *we* are: our certificate and key, self-signed
  certificates, fingerprints, and loading the certificates we trust.
* ``_verification`` judges who the *peer* is: the verify callback, the name
  check and the readable reason for a rejection.

Every context built here remembers the role it was made for. One
``DtlsEndpoint`` serves and connects at once, so handing
``server_context(...)`` to ``connect`` is an easy slip, and it would not
fail: a server context checks no name or pin, and without
``client_cafile`` no certificate either, so the client would talk to
anyone. The endpoint asks
:func:`check_context_role` and refuses such a context with a
``ValueError`` that names the right builder; a client context given as the
server's is refused the same way. A context built by hand has no recorded
role and is used as it is: whoever builds one has chosen its settings.

This module stays the public home of all its public names; those defined
in the other two are re-exported here and report this module as theirs, so
documentation and tracebacks keep saying ``trio_dtlsmux.contexts``.

Why these defaults:

* **DTLS 1.2 only** (RFC 6347). DTLS 1.0 is the datagram twin of TLS 1.1 and
  has no AEAD suites. DTLS 1.3 (RFC 9147) changes the record header and the
  cookie exchange that the endpoint parses, and few OpenSSL builds offer it.
  The version is pinned at both ends (``0xFEFD``), so nothing older is even
  offered.
* **ECDHE with AEAD ciphers only.** ECDHE gives forward secrecy. CBC suites are
  left out because a transport that silently drops bad records lets an
  attacker retry as often as it likes, which is what made the padding-oracle
  attacks on DTLS (AlFardan and Paterson, NDSS 2012) practical.
* **No compression, no renegotiation.** Compression leaks plaintext length
  (CRIME). A multiplexed endpoint has no use for renegotiation, and leaving it
  out keeps the per-peer state machine to one handshake.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs
from OpenSSL import SSL

from ._errors import openssl_reason
from ._identity import (
    SelfSigned,
    _install_identity,
    _parse_fingerprint,
    _StrPath,
    _trust_authorities,
    _trust_client_authorities,
    self_signed,
)
from ._records import DTLS1_2_VERSION
from ._verification import (
    _IDENTITY_CHECKING,
    PeerIdentityTarget,
    _PeerVerifier,
    check_peer_identity,
    is_identity_checking,
)

__all__ = [
    "PeerIdentityTarget",
    "SelfSigned",
    "check_peer_identity",
    "client_context",
    "is_identity_checking",
    "self_signed",
    "server_context",
]

# The names defined in _identity and _verification are documented and raised
# from here, so they say so.
for _public in (
    PeerIdentityTarget,
    SelfSigned,
    check_peer_identity,
    is_identity_checking,
    self_signed,
):
    _public.__module__ = __name__
del _public

if TYPE_CHECKING:
    # pyOpenSSL only exposes the sentinel's type under a private name; it is
    # used here for annotations and nothing else.
    _AlpnChoice: TypeAlias = bytes | SSL._NoOverlappingProtocols

_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
)

# Lets a server that verifies client certificates resume sessions without
# OpenSSL complaining that the session id context was never set.
_SESSION_ID_CONTEXT = b"trio_dtlsmux"

_Role: TypeAlias = Literal["client", "server"]

# The role each context built here was made for. Weak keys, so remembering a
# context never keeps it (and its certificates and callbacks) alive.
_ROLES: weakref.WeakKeyDictionary[SSL.Context, _Role] = weakref.WeakKeyDictionary()


def _name_list(values: object, argument: str) -> list[bytes]:
    """Turn a sequence of str/bytes names into ASCII bytes, checking each."""
    if isinstance(values, (str, bytes, bytearray)):
        raise TypeError(
            f"{argument} must be a sequence of names, not a single "
            f"{type(values).__name__}"
        )
    if not isinstance(values, Sequence):
        raise TypeError(
            f"{argument} must be a sequence of str or bytes, not {type(values).__name__}"
        )
    if not values:
        raise ValueError(
            f"{argument} is empty; pass None to leave it out, or at least one name"
        )
    names: list[bytes] = []
    for value in values:
        if isinstance(value, str):
            try:
                name = value.encode("ascii")
            except UnicodeEncodeError as exc:
                raise ValueError(f"{argument} entry {value!r} is not ASCII") from exc
        elif isinstance(value, bytes):
            name = value
        else:
            raise TypeError(
                f"{argument} entries must be str or bytes, not {type(value).__name__}"
            )
        if not 1 <= len(name) <= 255:
            raise ValueError(f"{argument} entry {value!r} must be 1 to 255 bytes long")
        names.append(name)
    return names


def _use_srtp(ctx: SSL.Context, profiles: object) -> None:
    names = _name_list(profiles, "srtp_profiles")
    for name in names:
        if b":" in name:
            raise ValueError(f"srtp_profiles entry {name!r} must not contain ':'")
    try:
        ctx.set_tlsext_use_srtp(b":".join(names))
    except SSL.Error as exc:
        # OpenSSL does not say which name it disliked; ask it about each one on
        # a scratch context so the message can.
        culprit = next((name for name in names if not _srtp_known(name)), None)
        which = f"{culprit.decode('ascii', 'replace')!r} is" if culprit else "are"
        raise ValueError(
            f"srtp_profiles: {which} not accepted by OpenSSL ({openssl_reason(exc)})"
        ) from exc


def _srtp_known(name: bytes) -> bool:
    try:
        SSL.Context(SSL.DTLS_METHOD).set_tlsext_use_srtp(name)
    except SSL.Error:
        return False
    return True


def _base_context() -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    # pyOpenSSL names the TLS versions but not the DTLS ones, so DTLS 1.2 is
    # given by its wire number (RFC 6347, section 4.1).
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(_CIPHERS.encode("ascii"))
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    return ctx


def client_context(
    *,
    cafile: _StrPath | None = None,
    capath: _StrPath | None = None,
    cadata: str | bytes | None = None,
    fingerprint: str | None = None,
    certfile: _StrPath | SelfSigned | None = None,
    keyfile: _StrPath | None = None,
    password: str | bytes | None = None,
    alpn: Sequence[str | bytes] | None = None,
    srtp_profiles: Sequence[str | bytes] | None = None,
) -> SSL.Context:
    """Build a DTLS 1.2 client context that always verifies the server.

    The server is authenticated in one of two ways:

    * by a CA: its chain must lead to a certificate from ``cafile``,
      ``capath`` or ``cadata`` (all that are given are trusted), or to the
      system trust store when none of them is given; and its certificate must
      be for the ``server_hostname`` that
      :meth:`DtlsEndpoint.connect <trio_dtlsmux.DtlsEndpoint.connect>` was given
      (by default the host of the address);
    * or by a ``fingerprint`` pin: the leaf certificate's SHA-256 must equal
      the pin. Chain, dates and name are then not checked.

    Either way a rejected certificate fails the handshake, and the reason is
    left in the app data's ``verify_failure``.

    Args:
        cafile: PEM file of trusted CA certificates.
        capath: Directory of trusted CA certificates, prepared with
            ``openssl rehash``.
        cadata: Trusted CA certificates as PEM text (str or bytes, several
            certificates allowed) or one DER certificate (bytes).
        fingerprint: SHA-256 fingerprint of the server's leaf certificate: 64
            hex digits, any case, optionally separated by ``':'``. Cannot be
            combined with the CA arguments.
        certfile: Our own certificate for servers that ask for one: a PEM file
            (a chain may follow the leaf) or a :class:`SelfSigned`.
        keyfile: PEM file holding the private key; by default it is read from
            ``certfile``.
        password: Password of an encrypted private key.
        alpn: Protocol names to offer with ALPN, most preferred first.
        srtp_profiles: DTLS-SRTP protection profiles to offer (RFC 5764), such
            as ``"SRTP_AES128_CM_SHA1_80"``.

    Returns:
        A context that can serve any number of connections. Configure anything
        else on it before the first ``SSL.Connection`` is made from it.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is unusable: an unreadable or malformed
            file, a bad fingerprint, an empty ALPN list, an SRTP profile
            OpenSSL does not know, a key that does not match the certificate,
            or a wrong password. OpenSSL's own errors are wrapped in it.
    """
    pin = None if fingerprint is None else _parse_fingerprint(fingerprint)
    if pin is not None and (
        cafile is not None or capath is not None or cadata is not None
    ):
        raise ValueError(
            "fingerprint replaces the CA check; do not combine it with cafile, "
            "capath or cadata"
        )
    if certfile is None and (keyfile is not None or password is not None):
        raise ValueError("keyfile and password need a certfile")
    alpn_names = None if alpn is None else _name_list(alpn, "alpn")

    ctx = _base_context()
    if pin is None:
        _trust_authorities(ctx, cafile, capath, cadata)

    if certfile is not None:
        _install_identity(ctx, certfile, keyfile, password)
    ctx.set_verify(SSL.VERIFY_PEER, _PeerVerifier(pin=pin, check_names=pin is None))
    if alpn_names is not None:
        ctx.set_alpn_protos(alpn_names)
    if srtp_profiles is not None:
        _use_srtp(ctx, srtp_profiles)
    # A pinned context decides identity by the pin, which is stronger than a
    # name check, so the endpoint has nothing to add in either case.
    _IDENTITY_CHECKING.add(ctx)
    _ROLES[ctx] = "client"
    return ctx


@attrs.frozen
class _AlpnChooser:
    """Server-side ALPN: the first of our protocols that the client offered."""

    preferences: tuple[bytes, ...]

    def __call__(self, conn: SSL.Connection, offered: list[bytes]) -> _AlpnChoice:
        for protocol in self.preferences:
            if protocol in offered:
                return protocol
        # Carry on without ALPN rather than fail: the application can look at
        # get_alpn_proto_negotiated() and decide for itself.
        return SSL.NO_OVERLAPPING_PROTOCOLS


def server_context(
    certfile: _StrPath | SelfSigned,
    keyfile: _StrPath | None = None,
    *,
    password: str | bytes | None = None,
    client_cafile: _StrPath | None = None,
    require_client_cert: bool = False,
    alpn: Sequence[str | bytes] | None = None,
    srtp_profiles: Sequence[str | bytes] | None = None,
) -> SSL.Context:
    """Build a DTLS 1.2 server context.

    The certificate and key are loaded and checked against each other now, so
    a configuration mistake shows up at start-up rather than at the first
    handshake.

    Args:
        certfile: Our certificate: a PEM file (leaf first, then any
            intermediates) or a :class:`SelfSigned`, which is used without
            touching the disk.
        keyfile: PEM file holding the private key; by default it is read from
            ``certfile``. Must be None for a :class:`SelfSigned`.
        password: Password of an encrypted private key.
        client_cafile: PEM file of CAs that issue client certificates. When
            given, clients are asked for a certificate, it is verified against
            these CAs, and their names are sent as the acceptable CA list.
        require_client_cert: Fail the handshake when the client sends no
            certificate. Needs ``client_cafile``.
        alpn: Protocol names we accept, most preferred first. We pick the
            first of these that the client offered; with no overlap the
            handshake goes on without ALPN.
        srtp_profiles: DTLS-SRTP protection profiles we accept (RFC 5764),
            most preferred first.

    Returns:
        A context that can serve any number of connections. Configure anything
        else on it (cookie callbacks) before the first ``SSL.Connection`` is
        made from it.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a file is missing or malformed, the key does not match
            the certificate, the password is wrong, ``require_client_cert`` is
            set without ``client_cafile``, or an ALPN or SRTP list is unusable.
            OpenSSL's own errors are wrapped in it.
    """
    if require_client_cert and client_cafile is None:
        raise ValueError(
            "require_client_cert=True needs client_cafile to verify the certificates"
        )
    alpn_names = None if alpn is None else _name_list(alpn, "alpn")

    ctx = _base_context()
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    _install_identity(ctx, certfile, keyfile, password)

    if client_cafile is None:
        ctx.set_verify(SSL.VERIFY_NONE)
    else:
        _trust_client_authorities(ctx, client_cafile)
        mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
        if require_client_cert:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        # Same callback as the client's, minus the name check (a client has no
        # name we could expect), so failures still leave a reason behind.
        ctx.set_verify(mode, _PeerVerifier(pin=None, check_names=False))

    if alpn_names is not None:
        ctx.set_alpn_select_callback(_AlpnChooser(tuple(alpn_names)))
    if srtp_profiles is not None:
        _use_srtp(ctx, srtp_profiles)
    _ROLES[ctx] = "server"
    return ctx


def check_context_role(ctx: SSL.Context, role: _Role, argument: str) -> None:
    """Refuse a context that :func:`client_context` or :func:`server_context`
    made for the other role.

    The endpoint calls this before it uses a context, so that a context for
    the wrong side fails at once with a message that names the right builder
    rather than handshaking with the wrong settings. Contexts these builders
    did not make (built by hand, or not a context at all) pass: their
    settings, and the type check, are the caller's business.

    Args:
        ctx: The context the user gave.
        role: The role it is about to be used in.
        argument: Where the user gave it, to start the message with, such as
            ``"connect()"`` or ``"DtlsEndpoint(server_context=...)"``.

    Raises:
        ValueError: If ``ctx`` was made by the builder for the other role.
    """
    made_for = _ROLES.get(ctx) if isinstance(ctx, SSL.Context) else None
    if made_for is None or made_for == role:
        return
    raise ValueError(
        f"{argument} needs a {role} context, but this one was made by "
        f"trio_dtlsmux.{made_for}_context(); build one with "
        f"trio_dtlsmux.{role}_context(...)"
    )
