"""How-to: DTLS-SRTP key agreement, WebRTC style (RFC 5763, RFC 5764)."""

from __future__ import annotations

from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL

import trio_dtlsmux

PROFILES = ["SRTP_AES128_CM_SHA1_80"]
KEY_LENGTH, SALT_LENGTH = 16, 14  # for SRTP_AES128_CM_SHA1_80


def dtls_client_context(
    identity: trio_dtlsmux.SelfSigned, remote_fingerprint: str
) -> Any:
    # The fingerprint comes from the remote description (a=fingerprint in SDP).
    return trio_dtlsmux.client_context(
        certfile=identity,
        fingerprint=remote_fingerprint,
        srtp_profiles=PROFILES,
    )


def dtls_server_context(identity: trio_dtlsmux.SelfSigned) -> Any:
    context = trio_dtlsmux.server_context(identity, srtp_profiles=PROFILES)
    # Ask the client for its (self-signed) certificate and accept any; the
    # handler checks it against the fingerprint from the signalling channel.
    context.set_verify(
        SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
        lambda conn, cert, errno, depth, ok: True,
    )
    return context


def fingerprint_matches(conn: trio_dtlsmux.DtlsConnection, expected: str) -> bool:
    cert = conn.peer_certificate
    if cert is None:
        return False
    # SDP writes "AB:CD:..."; compare the digits only, in one case.
    actual = cert.fingerprint(hashes.SHA256()).hex()
    return actual == expected.replace(":", "").lower()


@attrs.frozen
class SrtpKeys:
    profile: bytes
    local_key: bytes
    local_salt: bytes
    remote_key: bytes
    remote_salt: bytes


def srtp_keys(conn: trio_dtlsmux.DtlsConnection, *, dtls_client: bool) -> SrtpKeys:
    if conn.srtp_profile is None:
        raise ValueError("the peer agreed to no SRTP profile")
    material = conn.export_keying_material(
        b"EXTRACTOR-dtls_srtp", 2 * (KEY_LENGTH + SALT_LENGTH)
    )
    # RFC 5764, 4.2: client key, server key, client salt, server salt.
    k, s = KEY_LENGTH, SALT_LENGTH
    client_key, server_key = material[:k], material[k : 2 * k]
    client_salt, server_salt = material[2 * k : 2 * k + s], material[2 * k + s :]
    if dtls_client:
        return SrtpKeys(conn.srtp_profile, client_key, client_salt, server_key, server_salt)
    return SrtpKeys(conn.srtp_profile, server_key, server_salt, client_key, client_salt)
