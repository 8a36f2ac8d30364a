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

Pre-shared keys (``psk=``, RFC 4279) are for devices that carry a key
rather than a certificate: CoAP over DTLS (RFC 7252, section 9) and LwM2M.
The C side lives in ``_psk``; the choices live here:

* **AEAD PSK suites only**, ECDHE-PSK first for its forward secrecy, then
  plain PSK with AES-GCM, ChaCha20-Poly1305 and AES-CCM. No CBC, for the
  reason above, and no NULL or RC4 suites.
* **TLS_PSK_WITH_AES_128_CCM_8 by default**, because RFC 7252 (9.1.3.1)
  makes it the one suite every CoAP device in PSK mode must have, and many
  offer nothing else. Its 8-byte tag gives forgeries a 2^-64 chance each,
  so newer OpenSSL releases put it at security level 0 (the 4.0 that
  cryptography bundles does; 3.0 still allowed it at level 2). A context
  that offers it must therefore run at level 0, which also lifts the
  minimums on certificate keys and signatures. That is harmless where no
  certificate is checked, so ``psk_ccm8`` is refused together with
  ``client_cafile``; ``psk_ccm8=False`` keeps the default level.
* **A PSK client offers PSK suites only.** The key authenticates the server,
  so there is no certificate to verify; a server that cannot answer with
  PSK fails the handshake rather than being trusted some other way.
* **Mixed servers prefer PSK.** A client offers PSK suites only if it has a
  key, and a PSK handshake authenticates both sides, so it goes first;
  clients without a key get the certificate suites as before.
* **No session resumption on PSK servers.** A resumed session skips the key
  lookup, so it would neither report the identity nor notice a key that
  was removed since; PSK handshakes are cheap (no signatures) anyway.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, TypeAlias

import attrs
from OpenSSL import SSL

from . import _psk
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
    install_verifier,
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

# Pre-shared key suites (RFC 4279, 5487, 5489, 6655, 7905), AEAD only. The
# ECDHE one comes first: it is the only one with forward secrecy.
_PSK_CIPHERS = ":".join(
    [
        "ECDHE-PSK-CHACHA20-POLY1305",
        "PSK-AES128-GCM-SHA256",
        "PSK-AES256-GCM-SHA384",
        "PSK-CHACHA20-POLY1305",
        "PSK-AES128-CCM",
    ]
)

# CoAP's mandatory suite (RFC 7252, 9.1.3.1). Newer OpenSSL releases only
# allow its 8-byte tag at security level 0, so it always comes with that
# level (on every OpenSSL, so that a context behaves the same everywhere);
# the module docs say why that is acceptable where it is allowed.
_CCM8_CIPHER = "PSK-AES128-CCM8"
_LEVEL_ZERO = "@SECLEVEL=0"

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


def _base_context(ciphers: str = _CIPHERS) -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    # pyOpenSSL names the TLS versions but not the DTLS ones, so DTLS 1.2 is
    # given by its wire number (RFC 6347, section 4.1).
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(ciphers.encode("ascii"))
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION)
    return ctx


def _cipher_string(*, certificates: bool, psk: bool, ccm8: bool) -> str:
    parts = []
    if psk:
        # First on a mixed server: see "Mixed servers prefer PSK" above.
        parts.append(_PSK_CIPHERS)
        if ccm8:
            parts.append(_CCM8_CIPHER)
    if certificates:
        parts.append(_CIPHERS)
    if psk and ccm8:
        parts.append(_LEVEL_ZERO)
    return ":".join(parts)


def _check_ccm8(psk_ccm8: object) -> bool:
    if not isinstance(psk_ccm8, bool):
        raise TypeError(f"psk_ccm8 must be a bool, not {type(psk_ccm8).__name__}")
    return psk_ccm8


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
    psk: tuple[bytes, bytes] | None = None,
    psk_ccm8: bool = True,
) -> SSL.Context:
    """Build a DTLS 1.2 client context that always verifies the server.

    The server is authenticated in one of three ways:

    * by a CA: its chain must lead to a certificate from ``cafile``,
      ``capath`` or ``cadata`` (all that are given are trusted), or to the
      system trust store when none of them is given; and its certificate must
      be for the ``server_hostname`` that
      :meth:`DtlsEndpoint.connect <trio_dtlsmux.DtlsEndpoint.connect>` was given
      (by default the host of the address);
    * by a ``fingerprint`` pin: the leaf certificate's SHA-256 must equal
      the pin. Chain, dates and name are then not checked;
    * or by a pre-shared key, ``psk``: only PSK cipher suites are offered,
      and a server that does not know the same key for our identity cannot
      complete the handshake. No certificate is involved (see
      :doc:`/howto/coaps`).

    A rejected certificate fails the handshake, and the reason is left in
    the app data's ``verify_failure``.

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
        psk: A pre-shared key as ``(identity, key)``, both bytes: an identity
            of 1 to 128 bytes without NUL bytes, and a key of 1 to 256 bytes
            (16 or 32 random bytes is usual). Cannot be combined with the
            certificate arguments.
        psk_ccm8: With ``psk``, also offer TLS_PSK_WITH_AES_128_CCM_8, the
            suite CoAP requires (RFC 7252). This puts the context at OpenSSL
            security level 0, because of that suite's 8-byte tag; pass False
            if the server needs no CCM_8.

    Returns:
        A context that can serve any number of connections. Configure anything
        else on it before the first ``SSL.Connection`` is made from it.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If an argument is unusable: an unreadable or malformed
            file, a bad fingerprint, an empty ALPN list, an SRTP profile
            OpenSSL does not know, a key that does not match the certificate,
            a wrong password, a PSK identity or key of a bad length, or
            ``psk`` with certificate arguments. OpenSSL's own errors are
            wrapped in it.
        NotImplementedError: If ``psk`` is given and the OpenSSL binding
            that pyOpenSSL uses lacks PSK support.
    """
    ccm8 = _check_ccm8(psk_ccm8)
    if psk is not None:
        identity, key = _psk.check_client_psk(psk)
        given = [
            name
            for name, value in (
                ("cafile", cafile),
                ("capath", capath),
                ("cadata", cadata),
                ("fingerprint", fingerprint),
                ("certfile", certfile),
                ("keyfile", keyfile),
                ("password", password),
            )
            if value is not None
        ]
        if given:
            raise ValueError(
                "psk authenticates the server by the key alone, so no certificate "
                f"is sent or checked; do not combine it with {', '.join(given)}"
            )
        _psk.require_psk()
        return _psk_client_context(identity, key, ccm8, alpn, srtp_profiles)
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
    install_verifier(ctx, SSL.VERIFY_PEER, _PeerVerifier(pin=pin, check_names=pin is None))
    if alpn_names is not None:
        ctx.set_alpn_protos(alpn_names)
    if srtp_profiles is not None:
        _use_srtp(ctx, srtp_profiles)
    # A pinned context decides identity by the pin, which is stronger than a
    # name check, so the endpoint has nothing to add in either case.
    _IDENTITY_CHECKING.add(ctx)
    _ROLES[ctx] = "client"
    return ctx


def _psk_client_context(
    identity: bytes,
    key: bytes,
    ccm8: bool,
    alpn: Sequence[str | bytes] | None,
    srtp_profiles: Sequence[str | bytes] | None,
) -> SSL.Context:
    alpn_names = None if alpn is None else _name_list(alpn, "alpn")
    ctx = _base_context(_cipher_string(certificates=False, psk=True, ccm8=ccm8))
    _psk.install_client_psk(ctx, identity, key)
    # Only PSK suites are offered, so no certificate should ever arrive. If
    # one did, it is checked against an empty trust store and so refused.
    ctx.set_verify(SSL.VERIFY_PEER, _PeerVerifier(pin=None, check_names=False))
    if alpn_names is not None:
        ctx.set_alpn_protos(alpn_names)
    if srtp_profiles is not None:
        _use_srtp(ctx, srtp_profiles)
    # The key decides who the server is; there is no name to check after.
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
    certfile: _StrPath | SelfSigned | None = None,
    keyfile: _StrPath | None = None,
    *,
    password: str | bytes | None = None,
    client_cafile: _StrPath | None = None,
    require_client_cert: bool = False,
    alpn: Sequence[str | bytes] | None = None,
    srtp_profiles: Sequence[str | bytes] | None = None,
    psk: _psk.PskKeys | None = None,
    psk_identity_hint: bytes | None = None,
    psk_ccm8: bool = True,
) -> SSL.Context:
    """Build a DTLS 1.2 server context.

    The server proves who it is with a certificate, with pre-shared keys
    (``psk``), or with both, so that clients of either kind can connect;
    at least one of ``certfile`` and ``psk`` is needed. The certificate and
    key are loaded and checked against each other now, so a configuration
    mistake shows up at start-up rather than at the first handshake.

    Args:
        certfile: Our certificate: a PEM file (leaf first, then any
            intermediates) or a :class:`SelfSigned`, which is used without
            touching the disk. May be None only when ``psk`` is given.
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
        psk: Pre-shared keys (RFC 4279) for clients that have one: a mapping
            from identity to key, or a callable that takes the identity a
            client sent and returns its key, or None for an identity it does
            not know. Identities and keys are bytes: an identity of 1 to 128
            bytes without NUL bytes, a key of 1 to 256 bytes. A mapping is
            read at every handshake, so identities added to or removed from
            it take effect at the next one; its entries are checked now. The
            callable runs inside the handshake, in the endpoint's task, so it
            must be quick and must not block. A callable that raises or
            returns something that is not a usable key fails that handshake
            (it is logged on the ``trio_dtlsmux.psk`` logger); the endpoint
            carries on. :attr:`DtlsConnection.psk_identity
            <trio_dtlsmux.DtlsConnection.psk_identity>` says which identity
            a client used.
        psk_identity_hint: With ``psk``, a hint sent to clients to help them
            choose an identity (RFC 4279, section 5.2): 1 to 128 bytes
            without NUL bytes. Most clients ignore it.
        psk_ccm8: With ``psk``, also accept TLS_PSK_WITH_AES_128_CCM_8, the
            suite CoAP requires (RFC 7252). This puts the context at OpenSSL
            security level 0, because of that suite's 8-byte tag, which is
            why it cannot be combined with ``client_cafile``; pass False to
            leave the suite out.

    Returns:
        A context that can serve any number of connections. Configure anything
        else on it (cookie callbacks) before the first ``SSL.Connection`` is
        made from it.

    Raises:
        TypeError: If an argument has the wrong type, or neither ``certfile``
            nor ``psk`` is given.
        ValueError: If a file is missing or malformed, the key does not match
            the certificate, the password is wrong, ``require_client_cert`` is
            set without ``client_cafile``, an ALPN or SRTP list is unusable,
            or a PSK identity, key or hint is unusable. OpenSSL's own errors
            are wrapped in it.
        NotImplementedError: If ``psk`` is given and the OpenSSL binding
            that pyOpenSSL uses lacks PSK support.
    """
    ccm8 = _check_ccm8(psk_ccm8)
    if certfile is None and psk is None:
        raise TypeError(
            "server_context() needs a certfile, a psk, or both: there is "
            "nothing else to prove the server's identity with"
        )
    if certfile is None:
        if keyfile is not None or password is not None:
            raise ValueError("keyfile and password need a certfile")
        if client_cafile is not None:
            raise ValueError(
                "client_cafile needs a certfile: PSK cipher suites never ask "
                "for a client certificate (RFC 4279)"
            )
    if require_client_cert and client_cafile is None:
        raise ValueError(
            "require_client_cert=True needs client_cafile to verify the certificates"
        )
    keys = None
    if psk is not None:
        keys = _psk.check_server_psk(psk)
        if psk_identity_hint is not None:
            psk_identity_hint = _psk.check_hint(psk_identity_hint)
        if ccm8 and client_cafile is not None:
            raise ValueError(
                "psk_ccm8 needs OpenSSL security level 0, which would also accept "
                "weak client certificates from client_cafile; pass "
                "psk_ccm8=False, or serve the certificate clients from a "
                "context without psk"
            )
        _psk.require_psk()
    elif psk_identity_hint is not None:
        raise ValueError("psk_identity_hint has no use without psk")
    alpn_names = None if alpn is None else _name_list(alpn, "alpn")

    ctx = _base_context(
        _cipher_string(
            certificates=certfile is not None, psk=keys is not None, ccm8=ccm8
        )
    )
    ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.set_session_id(_SESSION_ID_CONTEXT)
    if certfile is not None:
        _install_identity(ctx, certfile, keyfile, password)
    if keys is not None:
        _psk.install_server_psk(ctx, keys, psk_identity_hint)
        # A resumed session would skip the key lookup: see the module docs.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_options(SSL.OP_NO_TICKET)

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
