"""Our own identity: certificates, keys and fingerprints.

Theory of operation
-------------------

This module owns what a context presents and what it trusts: our certificate
chain and private key, the CA certificates a client or server accepts, and
the SHA-256 fingerprints that name one certificate. It reads files only while
a context is being built, and checks them then, so a missing file, a key that
does not belong to its certificate or a wrong password becomes a
``ValueError`` that names the file at start-up rather than a failed
handshake later. It knows nothing about the peer: judging the peer's
certificate is ``_verification``'s business.

* **We read the files, not OpenSSL, where the message matters.** Keys are
  parsed with ``cryptography`` so that an encrypted key without a password, a
  wrong password and a key of a type that cannot sign each get their own
  sentence; OpenSSL would report a bare error queue. Our certificate chain,
  ``cafile`` and ``capath`` are still handed to OpenSSL by path, because it
  reads chains and hashed directories itself, but only after we have checked
  that the file holds a PEM certificate at all, or that the directory is one.
* **Which CAs to trust is the caller's choice, how to load them is ours.**
  With no CA argument a client trusts the system's store; otherwise it
  trusts every source it was given (``cafile``, ``capath``, ``cadata``) and
  the system's store not at all.
* **A self-signed identity needs no disk.** :class:`SelfSigned` keeps the
  certificate and key in memory and installs them straight into a context.
  Tests use it, and so do peer-to-peer systems that pin certificates instead
  of trusting a CA (WebRTC, RFC 8122). Its certificate is ECDSA P-256, not a
  CA, and good for both server and client authentication, so one identity
  serves either end of a pinned connection.
* **A fingerprint is SHA-256 over the DER encoding**, written as hex pairs
  joined by ``':'``, the shape of RFC 8122's fingerprint attribute and of
  ``openssl x509 -fingerprint -sha256``. Those write upper case; we write
  lower case and accept either, with or without the colons.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import TypeAlias

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

from ._errors import openssl_reason

__all__ = ["SelfSigned", "self_signed"]

_StrPath: TypeAlias = str | os.PathLike[str]

_PrivateKey: TypeAlias = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)


def _format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in digest)


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


def _sha256(certificate: x509.Certificate) -> bytes:
    return certificate.fingerprint(hashes.SHA256())


def _subject_text(certificate: x509.Certificate) -> str:
    subject = certificate.subject.rfc4514_string()
    return subject or "an empty subject"


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


def _trust_authorities(
    ctx: SSL.Context,
    cafile: _StrPath | None,
    capath: _StrPath | None,
    cadata: str | bytes | None,
) -> None:
    """Trust the CAs from every argument given, or the system's when none is."""
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


def _trust_client_authorities(ctx: SSL.Context, client_cafile: _StrPath) -> None:
    """Trust the CAs in ``client_cafile`` and name them in CertificateRequest."""
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
