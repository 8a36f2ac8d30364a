"""Ready-made pyOpenSSL contexts for DTLS 1.2 clients and servers.

Theory of operation
-------------------

This module owns certificate policy and nothing else. It turns a few plain
arguments into an ``OpenSSL.SSL.Context`` that the endpoint can use for any
number of peers. It reads files only while a context is being built and never
touches sockets, clocks or DTLS records: cookies, MTU and timers belong to the
endpoint. pyOpenSSL freezes a context once the first ``Connection`` has been made
from it, so everything here is configured up front and the endpoint must add its
own settings (cookie callbacks) before it creates connections.

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
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import ipaddress
import os
import string
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import attrs
import service_identity
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)

from ._addresses import ip_literal
from ._errors import openssl_reason
from ._records import DTLS1_2_VERSION

__all__ = [
    "PeerIdentityTarget",
    "SelfSigned",
    "check_peer_identity",
    "client_context",
    "is_identity_checking",
    "self_signed",
    "server_context",
]

_StrPath: TypeAlias = str | os.PathLike[str]

_PrivateKey: TypeAlias = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)

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


def _format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in digest)


def _sha256(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


@attrs.frozen
class SelfSigned:
    """An in-memory certificate and private key made by :func:`self_signed`.

    Pass it as ``certfile`` to :func:`server_context` (or :func:`client_context`)
    to use it without writing anything to disk, and give :attr:`fingerprint` to
    the other side as its pin.

    Attributes:
        certificate: The certificate, as a ``cryptography`` object.
        private_key: The ECDSA P-256 private key.
        cert_pem: The certificate in PEM form.
        key_pem: The private key in unencrypted PKCS#8 PEM form.
        fingerprint: SHA-256 of the certificate's DER encoding, as lowercase
            hex pairs joined by ``':'``.
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey = attrs.field(repr=False)
    cert_pem: bytes = attrs.field(repr=False)
    key_pem: bytes = attrs.field(repr=False)
    fingerprint: str

    def write(self, directory: _StrPath) -> tuple[Path, Path]:
        """Write ``cert.pem`` and ``key.pem`` into an existing directory.

        Existing files of those names are replaced. The key file is made
        readable by its owner only (mode ``0o600``) before the key is written
        into it.

        Args:
            directory: Where to write the two files.

        Returns:
            The paths of the certificate file and the key file, in that order.

        Raises:
            OSError: If the directory does not exist or cannot be written.
        """
        folder = Path(directory)
        cert_path = folder / "cert.pem"
        key_path = folder / "key.pem"
        cert_path.write_bytes(self.cert_pem)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)
        fd = os.open(key_path, flags, 0o600)
        # O_CREAT's mode only applies to a new file; a file that was already
        # there keeps its old mode unless we narrow it before writing.
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(self.key_pem)
        if not hasattr(os, "fchmod"):  # pragma: no cover - Windows before 3.13
            os.chmod(key_path, 0o600)
        return cert_path, key_path


def self_signed(
    common_name: str = "localhost",
    *,
    sans: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 30,
) -> SelfSigned:
    """Make a fresh self-signed ECDSA P-256 certificate in memory.

    The certificate is valid from one hour ago (to absorb clock skew) for
    ``days`` days, is not a CA, and allows both server and client
    authentication, so it can serve either end of a pinned connection.

    Args:
        common_name: The subject's common name. Only for display: peers match
            names against the subjectAltName entries.
        sans: subjectAltName entries. Entries that parse as an IPv4 or IPv6
            address become IP entries, the rest DNS entries. An empty sequence
            leaves the extension out.
        days: How long the certificate stays valid, at least 1.

    Returns:
        The certificate, key and fingerprint.

    Raises:
        TypeError: If an argument has the wrong type (for instance ``sans``
            given as one string).
        ValueError: If ``common_name`` is empty or too long, ``days`` is not
            positive, or a DNS entry is not a valid ASCII name.
    """
    if not isinstance(common_name, str):
        raise TypeError(f"common_name must be a str, not {type(common_name).__name__}")
    if not common_name:
        raise ValueError("common_name must not be empty")
    if isinstance(days, bool) or not isinstance(days, int):
        raise TypeError(f"days must be an int, not {type(days).__name__}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if isinstance(sans, (str, bytes)):
        raise TypeError("sans must be a sequence of names, not a single string")

    alt_names: list[x509.GeneralName] = []
    for entry in sans:
        if not isinstance(entry, str):
            raise TypeError(f"sans entries must be str, not {type(entry).__name__}")
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(entry)))
            continue
        except ValueError:
            pass
        if not entry or not entry.isascii():
            raise ValueError(
                f"sans entry {entry!r} is neither an IP address nor an ASCII DNS "
                "name (encode internationalised names as A-labels first)"
            )
        alt_names.append(x509.DNSName(entry))

    try:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    except ValueError as exc:
        raise ValueError(f"common_name {common_name!r} is not usable: {exc}") from exc

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    if alt_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alt_names), critical=False
        )
    certificate = builder.sign(key, hashes.SHA256())
    return SelfSigned(
        certificate=certificate,
        private_key=key,
        cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        fingerprint=_format_fingerprint(_sha256(certificate)),
    )


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


def _subject_text(certificate: x509.Certificate) -> str:
    subject = certificate.subject.rfc4514_string()
    return subject or "an empty subject"


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


def _check_path(value: object, argument: str) -> str:
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    raise TypeError(
        f"{argument} must be a str or os.PathLike path, not {type(value).__name__}"
    )


def _read_file(path: str, argument: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{argument} {path!r} cannot be read: {reason}") from exc


def _password_bytes(password: object) -> bytes | None:
    if password is None or isinstance(password, bytes):
        return password
    if isinstance(password, str):
        return password.encode("utf-8")
    raise TypeError(f"password must be str or bytes, not {type(password).__name__}")


def _load_private_key(data: bytes, path: str, password: bytes | None) -> _PrivateKey:
    if b"PRIVATE KEY-----" not in data:
        raise ValueError(f"no PEM private key found in {path!r}")
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError as exc:
        if password is None:
            raise ValueError(
                f"the private key in {path!r} is encrypted, but no password was given"
            ) from exc
        # A password for a key that needs none is harmless; OpenSSL and
        # Python's ssl module ignore it too.
        key = serialization.load_pem_private_key(data, None)
    except ValueError as exc:
        if password is not None and b"ENCRYPTED" in data:
            raise ValueError(
                f"cannot decrypt the private key in {path!r}: wrong password? ({exc})"
            ) from exc
        raise ValueError(f"cannot load the private key in {path!r}: {exc}") from exc
    if not isinstance(
        key,
        (
            dsa.DSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
            rsa.RSAPrivateKey,
        ),
    ):
        raise ValueError(
            f"the private key in {path!r} is a {type(key).__name__}, which cannot sign"
        )
    return key


def _install_identity(
    ctx: SSL.Context,
    certfile: _StrPath | SelfSigned,
    keyfile: _StrPath | None,
    password: str | bytes | None,
) -> None:
    """Load our own certificate (chain) and key into ``ctx`` and cross-check."""
    if isinstance(certfile, SelfSigned):
        if keyfile is not None:
            raise ValueError("keyfile must be None when certfile is a SelfSigned")
        if password is not None:
            raise ValueError("password has no use when certfile is a SelfSigned")
        try:
            ctx.use_certificate(certfile.certificate)
            ctx.use_privatekey(certfile.private_key)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise ValueError(
                f"OpenSSL rejected the SelfSigned certificate: {openssl_reason(exc)}"
            ) from exc
        return

    cert_path = _check_path(certfile, "certfile")
    key_path = cert_path if keyfile is None else _check_path(keyfile, "keyfile")
    secret = _password_bytes(password)
    cert_data = _read_file(cert_path, "certfile")
    if b"CERTIFICATE-----" not in cert_data:
        raise ValueError(f"no PEM certificate found in certfile {cert_path!r}")
    key_data = cert_data if keyfile is None else _read_file(key_path, "keyfile")
    key = _load_private_key(key_data, key_path, secret)
    try:
        ctx.use_certificate_chain_file(cert_path)
    except SSL.Error as exc:
        raise ValueError(
            f"cannot load the certificate chain from {cert_path!r}: "
            f"{openssl_reason(exc)}"
        ) from exc
    mismatch = (
        f"the private key in {key_path!r} does not match the certificate in "
        f"{cert_path!r}"
    )
    try:
        ctx.use_privatekey(key)
    except (SSL.Error, TypeError) as exc:
        # OpenSSL already compares the key with the loaded certificate here,
        # so a mismatch usually surfaces now rather than in check_privatekey.
        reason = openssl_reason(exc)
        if "mismatch" in reason:
            raise ValueError(f"{mismatch} ({reason})") from exc
        raise ValueError(
            f"OpenSSL rejected the private key in {key_path!r}: {reason}"
        ) from exc
    try:
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise ValueError(f"{mismatch} ({openssl_reason(exc)})") from exc


def _trust_certificates(
    ctx: SSL.Context, certs: Sequence[x509.Certificate], source: str
) -> None:
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always gives a context a store
        raise ValueError("this SSL.Context has no certificate store")
    for cert in certs:
        try:
            store.add_cert(crypto.X509.from_cryptography(cert))
        except (crypto.Error, SSL.Error) as exc:
            raise ValueError(
                f"cannot add {_subject_text(cert)} from {source} to the trust store: "
                f"{openssl_reason(exc)}"
            ) from exc


def _parse_ca_data(cadata: object) -> list[x509.Certificate]:
    if isinstance(cadata, str):
        data = cadata.encode("ascii", errors="replace")
    elif isinstance(cadata, (bytes, bytearray, memoryview)):
        data = bytes(cadata)
    else:
        raise TypeError(f"cadata must be str or bytes, not {type(cadata).__name__}")
    if b"-----BEGIN" not in data and not isinstance(cadata, str):
        try:
            return [x509.load_der_x509_certificate(data)]
        except ValueError as exc:
            raise ValueError(
                f"cadata is neither PEM nor a DER certificate: {exc}"
            ) from exc
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"cadata holds no usable PEM certificate: {exc}") from exc


def _parse_fingerprint(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError(
            f"fingerprint must be a str of hex digits, not {type(value).__name__}"
        )
    digits = value.strip().replace(":", "")
    if not digits:
        raise ValueError("fingerprint is empty; expected 64 hex digits (SHA-256)")
    for char in digits:
        if char not in string.hexdigits:
            raise ValueError(
                f"fingerprint contains {char!r}, which is not a hex digit; expected "
                "64 hex digits of a SHA-256 digest, optionally separated by ':'"
            )
    if len(digits) != 64:
        raise ValueError(
            f"fingerprint has {len(digits)} hex digits, but a SHA-256 fingerprint "
            "has 64"
        )
    return bytes.fromhex(digits)


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
        if cafile is None and capath is None and cadata is None:
            try:
                ctx.set_default_verify_paths()
            except SSL.Error as exc:  # pragma: no cover - depends on the system
                raise ValueError(
                    f"cannot load the system trust store: {openssl_reason(exc)}"
                ) from exc
        if cafile is not None:
            path = _check_path(cafile, "cafile")
            if b"CERTIFICATE-----" not in _read_file(path, "cafile"):
                raise ValueError(f"no PEM certificate found in cafile {path!r}")
            try:
                ctx.load_verify_locations(path)
            except SSL.Error as exc:
                raise ValueError(
                    f"cannot load cafile {path!r}: {openssl_reason(exc)}"
                ) from exc
        if capath is not None:
            directory = _check_path(capath, "capath")
            if not os.path.isdir(directory):
                raise ValueError(f"capath {directory!r} is not a directory")
            try:
                ctx.load_verify_locations(None, directory)
            except SSL.Error as exc:
                raise ValueError(
                    f"cannot use capath {directory!r}: {openssl_reason(exc)}"
                ) from exc
        if cadata is not None:
            _trust_certificates(ctx, _parse_ca_data(cadata), "cadata")

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
        path = _check_path(client_cafile, "client_cafile")
        data = _read_file(path, "client_cafile")
        try:
            authorities = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(
                f"no usable PEM certificate in client_cafile {path!r}: {exc}"
            ) from exc
        _trust_certificates(ctx, authorities, f"client_cafile {path!r}")
        for authority in authorities:
            ctx.add_client_ca(authority)
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
    return ctx


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
