"""Certificates and contexts for the baselines (trio.DTLSEndpoint, bare engine).

The library under test brings its own helpers; the baselines must not depend on
it, so they get this small self-signed ECDSA P-256 certificate instead. Every
DTLS party in the benchmark is pinned to the same cipher suite the library's
server prefers, so that the crypto work per handshake and per record is the
same for all targets.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto

CIPHER = b"ECDHE-ECDSA-AES128-GCM-SHA256"
DTLS1_2_VERSION = 0xFEFD


def make_cert() -> tuple[crypto.X509, crypto.PKey]:
    """A fresh self-signed ECDSA P-256 certificate and its key, in memory."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return crypto.X509.from_cryptography(cert), crypto.PKey.from_cryptography_key(key)


def _base_context() -> SSL.Context:
    ctx = SSL.Context(SSL.DTLS_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(CIPHER)
    # Memory BIOs cannot report a path MTU; connections set one themselves.
    ctx.set_options(SSL.OP_NO_QUERY_MTU)
    return ctx


# A server that resumes sessions by ID needs a session id context (OpenSSL
# refuses resumption without one when it verifies clients);
# trio_dtlsmux.server_context sets its own, the baselines set this one.
SESSION_ID_CONTEXT = b"trio_dtlsmux benchmarks"


def server_context(cert: crypto.X509, key: crypto.PKey) -> SSL.Context:
    """A DTLS 1.2 server context. Make a fresh one per trio ``serve`` call.

    OpenSSL's defaults for resumption stay: a server-side session cache and
    session tickets.
    """
    ctx = _base_context()
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    ctx.set_session_id(SESSION_ID_CONTEXT)
    return ctx


def client_context() -> SSL.Context:
    """A DTLS 1.2 client context that does not verify the server (benchmark only)."""
    ctx = _base_context()
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx
