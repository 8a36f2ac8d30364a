"""Judging the peer: the verify callback, the name check and the reasons.

Theory of operation
-------------------

This module decides whether the certificate a peer presents is the one we
expected, and says why not in one line. It holds no keys and reads no files;
``_identity`` loads what is trusted, and ``contexts`` installs one
:class:`_PeerVerifier` on every context it builds.

Who the peer is:

* A client checks the name it meant to reach against the certificate by the
  rules of RFC 6125, implemented by ``service_identity``: DNS names match
  ``dNSName`` subjectAltNames only, a wildcard may only be the whole left-most
  label and covers exactly one label, and the subject common name is never
  used. An IPv4 or IPv6 literal is compared with ``iPAddress`` entries only
  (RFC 2818, section 3.1).
* The check runs inside OpenSSL's verify callback at depth 0, so a wrong
  certificate aborts the handshake with an alert before any application data
  moves. The callback cannot raise a useful exception through OpenSSL, so it
  leaves a one-line reason on the connection's app data (see
  :class:`PeerIdentityTarget`) for the endpoint to report.
* A *fingerprint pin* replaces the CA check. Peer-to-peer systems such as
  WebRTC (RFC 5763, RFC 8122) use self-signed certificates and exchange their
  SHA-256 fingerprints over a separate, already authenticated channel. A pin
  names exactly one certificate, so a chain to some CA adds nothing, and the
  certificate's dates do not matter because trust comes from the key, whose
  possession the handshake itself proves. For the same reason the host name is
  not checked when a pin is given: the pin already says who the peer is.

The reasons are written for the person reading ``HandshakeError.reason``:
OpenSSL's verify error numbers that people actually meet get a sentence,
and a name mismatch lists what the certificate *is* for.
"""

from __future__ import annotations

import contextlib
import hmac
import weakref
from typing import Any, Protocol

import attrs
import service_identity
from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from ._addresses import ip_literal
from ._identity import _format_fingerprint, _sha256, _subject_text

__all__ = ["PeerIdentityTarget", "check_peer_identity", "is_identity_checking"]

# Readable text for the X509 verify errors people actually meet. Anything else
# is reported by number, which is enough to look it up in x509_vfy.h.
_X509_ERROR_TEXT = {
    2: "the issuer certificate could not be found",
    4: "the certificate signature could not be decrypted",
    7: "the certificate signature is invalid",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    13: "the certificate's notBefore field is malformed",
    14: "the certificate's notAfter field is malformed",
    18: "self-signed certificate that is not trusted",
    19: "self-signed certificate in the chain that is not trusted",
    20: "unable to get local issuer certificate (the issuing CA is not trusted)",
    21: "unable to verify the first certificate",
    22: "certificate chain too long",
    23: "certificate revoked",
    24: "invalid CA certificate",
    25: "path length constraint exceeded",
    26: "unsupported certificate purpose",
    27: "certificate not trusted",
    28: "certificate rejected",
    32: "issuer key usage does not allow certificate signing",
    66: "end-entity key too weak",
    67: "CA key too weak",
    68: "CA signature digest too weak",
}

# Contexts whose verify callback checks the peer's name, so that the endpoint
# can skip its own check after the handshake.
_IDENTITY_CHECKING: weakref.WeakSet[SSL.Context] = weakref.WeakSet()

# How many subjectAltName entries a mismatch message lists before it stops.
_MAX_NAMES_SHOWN = 8


class PeerIdentityTarget(Protocol):
    """The shape of a connection's app data that the verify callback uses.

    The endpoint stores one of these with ``Connection.set_app_data`` before
    the handshake. The contexts built here never create it; they only read and
    write these two attributes, and tolerate app data that is ``None`` or lacks
    them (then no name is checked and no reason is recorded).

    Attributes:
        server_hostname: The DNS name or IP literal the client meant to reach,
            or ``None`` to skip the name check.
        verify_failure: Set by the verify callback to a one-line reason when it
            rejects the peer's certificate. Left alone otherwise.
    """

    server_hostname: str | None
    verify_failure: str | None


def _describe_names(certificate: x509.Certificate) -> str | None:
    """List the certificate's subjectAltName entries, or None if it has none."""
    try:
        extension = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except x509.ExtensionNotFound:
        return None
    parts: list[str] = []
    for general_name in extension.value:
        if isinstance(general_name, x509.DNSName):
            parts.append(f"DNS:{general_name.value}")
        elif isinstance(general_name, x509.IPAddress):
            parts.append(f"IP:{general_name.value}")
        elif isinstance(general_name, x509.UniformResourceIdentifier):
            parts.append(f"URI:{general_name.value}")
        elif isinstance(general_name, x509.RFC822Name):
            parts.append(f"email:{general_name.value}")
        elif isinstance(general_name, x509.OtherName):
            parts.append(f"othername:{general_name.type_id.dotted_string}")
        elif isinstance(general_name, x509.DirectoryName):
            parts.append(f"DirName:{general_name.value.rfc4514_string()}")
        else:
            parts.append(type(general_name).__name__)
    if not parts:
        return "an empty subjectAltName"
    if len(parts) > _MAX_NAMES_SHOWN:
        hidden = len(parts) - _MAX_NAMES_SHOWN
        parts = [*parts[:_MAX_NAMES_SHOWN], f"and {hidden} more"]
    return ", ".join(parts)


def check_peer_identity(certificate: x509.Certificate, expected: str) -> str | None:
    """Check that a certificate was issued for the host we meant to reach.

    Matching follows RFC 6125 as implemented by ``service_identity``: a DNS
    name is compared with the certificate's DNS subjectAltName entries
    (wildcards only as the whole left-most label, matching one label), and the
    subject common name is never consulted. An IPv4 or IPv6 literal (IPv6 may
    be written in brackets) is compared with IP entries only. This checks the
    name and nothing else: whether the certificate is trustworthy is the chain
    check's business.

    Args:
        certificate: The peer's leaf certificate.
        expected: The DNS name or IP literal the connection was made to.

    Returns:
        ``None`` if the certificate matches, else a one-line reason naming
        ``expected`` and what the certificate holds, for example
        ``"certificate is for DNS:other.example, IP:10.0.0.1, not 'localhost'"``.
        A malformed ``expected`` is also reported as a reason, not raised.

    Raises:
        TypeError: If ``expected`` is not a str.
    """
    if not isinstance(expected, str):
        raise TypeError(f"expected must be a str, not {type(expected).__name__}")
    literal = ip_literal(expected)
    try:
        if literal is not None:
            verify_certificate_ip_address(certificate, literal)
        else:
            verify_certificate_hostname(certificate, expected)
    except service_identity.VerificationError:
        names = _describe_names(certificate)
        return f"certificate is for {names}, not {expected!r}"
    except service_identity.CertificateError as exc:
        names = _describe_names(certificate)
        if names is None:
            return (
                f"certificate has no subjectAltName, so it cannot be for "
                f"{expected!r} (the subject common name is not used)"
            )
        return f"certificate is for {names}, not {expected!r} ({exc})"
    except (ValueError, ImportError) as exc:
        return f"cannot check the certificate against {expected!r}: {exc}"
    return None


def _chain_failure(certificate: x509.Certificate, errno: int, depth: int) -> str:
    text = _X509_ERROR_TEXT.get(errno, "certificate verification error")
    if errno == 10:
        text += f" (notAfter {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC)"
    elif errno == 9:
        text += f" (notBefore {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC)"
    subject = _subject_text(certificate)
    return f"{text}, at depth {depth} ({subject}) [X509 error {errno}]"


def _record_failure(target: Any, reason: str) -> None:
    if target is None:
        return
    # App data of some other shape: the handshake still fails, there is just
    # nowhere to leave the reason.
    with contextlib.suppress(AttributeError, TypeError):
        target.verify_failure = reason


@attrs.frozen
class _PeerVerifier:
    """The verify callback installed on every context built here.

    One instance serves every connection made from its context, so it keeps no
    per-connection state; what differs per connection lives in the app data.
    """

    pin: bytes | None
    check_names: bool

    def __call__(
        self,
        conn: SSL.Connection,
        cert: crypto.X509,
        errno: int,
        depth: int,
        ok: int,
    ) -> bool:
        target = conn.get_app_data()
        try:
            reason = self._judge(target, cert, errno, depth, ok)
        except Exception as exc:
            # An exception here would be stashed by pyOpenSSL and re-raised
            # from do_handshake as whatever type it happened to be. Failing
            # closed with a reason is easier for the endpoint to handle.
            reason = f"certificate check failed unexpectedly: {exc!r}"
        if reason is None:
            return True
        _record_failure(target, reason)
        return False

    def _judge(
        self, target: Any, cert: crypto.X509, errno: int, depth: int, ok: int
    ) -> str | None:
        if self.pin is not None:
            # Only the leaf is pinned; what the rest of the chain says, and
            # OpenSSL's opinion of the leaf, do not matter.
            if depth != 0:
                return None
            actual = _sha256(cert.to_cryptography())
            if hmac.compare_digest(actual, self.pin):
                return None
            return (
                f"certificate fingerprint sha256 {_format_fingerprint(actual)} "
                f"does not match the pinned {_format_fingerprint(self.pin)}"
            )
        if not ok:
            return _chain_failure(cert.to_cryptography(), errno, depth)
        if depth != 0 or not self.check_names or target is None:
            return None
        hostname = getattr(target, "server_hostname", None)
        if hostname is None:
            return None
        if not isinstance(hostname, str):
            return (
                "server_hostname must be a str or None, not "
                f"{type(hostname).__name__}; refusing to skip the name check"
            )
        return check_peer_identity(cert.to_cryptography(), hostname)


# The verifier of every context built here, so that a resumed session (which
# shows no certificate, so the callback never runs) can be judged the same way.
_VERIFIERS: weakref.WeakKeyDictionary[SSL.Context, _PeerVerifier] = (
    weakref.WeakKeyDictionary()
)


def install_verifier(ctx: SSL.Context, mode: int, verifier: _PeerVerifier) -> None:
    """``ctx.set_verify(mode, verifier)``, remembered for resumed sessions."""
    ctx.set_verify(mode, verifier)
    _VERIFIERS[ctx] = verifier


def check_resumed_session(
    ctx: SSL.Context, conn: SSL.Connection, server_hostname: str | None
) -> str | None:
    """Judge the certificate a resumed session holds as ``ctx`` would have
    judged it in a full handshake; a one-line reason, or None if it passes.

    A resumed (abbreviated) handshake carries no certificate, so the verify
    callback does not run. A session from this context's own cache was
    checked when it was made, but a session handed in as bytes may come from
    anywhere: another context, another pin, another name. So the session's
    certificate is checked again here: against the pin, or against the
    context's trust store and the name. The session keeps the leaf only, so a
    chain that needs intermediates fails this check (closed, not open).
    Contexts not built by :func:`client_context` are not judged here.
    """
    verifier = _VERIFIERS.get(ctx)
    if verifier is None:
        return None
    leaf = conn.get_peer_certificate()
    if leaf is None:
        return "the resumed session holds no certificate to check"
    if verifier.pin is not None:
        actual = _sha256(leaf.to_cryptography())
        if hmac.compare_digest(actual, verifier.pin):
            return None
        return (
            f"the resumed session's certificate (sha256 {_format_fingerprint(actual)}) "
            f"does not match the pinned {_format_fingerprint(verifier.pin)}"
        )
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always gives a context a store
        return "this context has no trust store to check a resumed session against"
    try:
        crypto.X509StoreContext(store, leaf).verify_certificate()
    except crypto.X509StoreContextError as exc:
        return f"the resumed session's certificate is not trusted here: {exc}"
    if verifier.check_names and server_hostname is not None:
        return check_peer_identity(leaf.to_cryptography(), server_hostname)
    return None


def is_identity_checking(ctx: SSL.Context) -> bool:
    """Tell whether ``ctx`` checks the peer's identity during the handshake.

    True for contexts made by :func:`client_context`: their verify callback
    already compared the certificate with the app data's ``server_hostname``
    (or with the pinned fingerprint), so the endpoint need not check again
    after the handshake. False for any other context.

    Args:
        ctx: The context to ask about.

    Returns:
        Whether the context was built by :func:`client_context`.
    """
    return ctx in _IDENTITY_CHECKING
