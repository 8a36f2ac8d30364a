"""Tests for trio_dtlsmux.contexts.

Every handshake here runs in memory: two ``SSL.Connection`` objects with
memory BIOs, with each side's output fed to the other until both finish or one
gives up. The certificates are made fresh for the test session with
``cryptography``; nothing is committed to the repository.
"""

from __future__ import annotations

import builtins
import datetime
import gc
import hashlib
import ipaddress
import os
import stat
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

import trio_dtlsmux
from trio_dtlsmux import contexts
from trio_dtlsmux.contexts import (
    PeerIdentityTarget,
    SelfSigned,
    check_context_role,
    check_peer_identity,
    client_context,
    is_identity_checking,
    self_signed,
    server_context,
)

from .conftest import drain_bio

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
PASSWORD = "correct horse"
SRTP_LABEL = b"EXTRACTOR-dtls_srtp"


# --------------------------------------------------------------------------
# Certificates


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@attrs.frozen
class Issued:
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def _names(
    entries: Sequence[str],
) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for entry in entries:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            result.append(x509.DNSName(entry))
    return result


def issue(
    common_name: str,
    *,
    issuer: Issued | None = None,
    ca: bool = False,
    sans: Sequence[str] = (),
    dns_sans: Sequence[str] = (),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    rsa_key: bool = False,
    client: bool = False,
) -> Issued:
    """Issue a certificate; self-signed when no issuer is given."""
    key: PrivateKey
    if rsa_key:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    issuer_name = subject if issuer is None else issuer.certificate.subject
    signing_key = key if issuer is None else issuer.key
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or NOW - DAY)
        .not_valid_after(not_after or NOW + 30 * DAY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if not ca:
        usage = (
            ExtendedKeyUsageOID.CLIENT_AUTH
            if client
            else (ExtendedKeyUsageOID.SERVER_AUTH)
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    names = _names(sans) + [x509.DNSName(name) for name in dns_sans]
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return Issued(builder.sign(signing_key, hashes.SHA256()), key)


def key_pem(key: PrivateKey, password: str | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption
    if password is None:
        encryption = serialization.NoEncryption()
    else:
        encryption = serialization.BestAvailableEncryption(password.encode())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


@attrs.frozen
class Pki:
    """Paths and objects for one session's worth of test certificates."""

    directory: Path
    root: Issued
    root_file: Path
    rogue_root: Issued
    rogue_root_file: Path
    items: dict[str, Issued]

    def cert(self, name: str) -> Path:
        return self.directory / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.directory / f"{name}.key"

    def server(self, name: str, **kwargs: Any) -> SSL.Context:
        return server_context(self.cert(name), self.key(name), **kwargs)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    root = issue("Test Root CA", ca=True)
    rogue_root = issue("Rogue Root CA", ca=True)
    intermediate = issue("Test Intermediate CA", issuer=root, ca=True)
    items = {
        "localhost": issue(
            "localhost", issuer=root, sans=["localhost", "127.0.0.1", "::1"]
        ),
        "other": issue("other", issuer=root, sans=["other.example", "10.0.0.1"]),
        "wildcard": issue("wildcard", issuer=root, sans=["*.example.com"]),
        "ips": issue("ips", issuer=root, sans=["192.0.2.7", "2001:db8::7"]),
        "ip_as_dns": issue("ip as dns", issuer=root, dns_sans=["192.0.2.7"]),
        "no_san": issue("localhost", issuer=root),
        "expired": issue(
            "expired",
            issuer=root,
            sans=["localhost"],
            not_before=NOW - 30 * DAY,
            not_after=NOW - 2 * DAY,
        ),
        "future": issue(
            "future",
            issuer=root,
            sans=["localhost"],
            not_before=NOW + 2 * DAY,
            not_after=NOW + 30 * DAY,
        ),
        "rogue": issue("rogue", issuer=rogue_root, sans=["localhost"]),
        "chained": issue("chained", issuer=intermediate, sans=["localhost"]),
        "rsa": issue("rsa", issuer=root, sans=["localhost"], rsa_key=True),
        "client": issue("alice", issuer=root, client=True),
        "rogue_client": issue("mallory", issuer=rogue_root, client=True),
        "self_signed_expired": issue(
            "old peer",
            sans=["peer.invalid"],
            not_before=NOW - 30 * DAY,
            not_after=NOW - 2 * DAY,
        ),
    }
    for name, item in items.items():
        pem = item.pem
        if name == "chained":
            pem += intermediate.pem
        (directory / f"{name}.crt").write_bytes(pem)
        (directory / f"{name}.key").write_bytes(key_pem(item.key))
    (directory / "root.crt").write_bytes(root.pem)
    (directory / "rogue_root.crt").write_bytes(rogue_root.pem)
    return Pki(
        directory=directory,
        root=root,
        root_file=directory / "root.crt",
        rogue_root=rogue_root,
        rogue_root_file=directory / "rogue_root.crt",
        items=items,
    )


# --------------------------------------------------------------------------
# In-memory handshakes


@attrs.define
class Target:
    """App data in the shape the verify callback expects."""

    server_hostname: str | None = None
    verify_failure: str | None = None


def _target_fits_protocol(target: Target) -> PeerIdentityTarget:
    # Lets mypy confirm that Target satisfies the exported Protocol.
    return target


@attrs.define
class Outcome:
    client: SSL.Connection
    server: SSL.Connection
    client_error: SSL.Error | None
    server_error: SSL.Error | None

    @property
    def ok(self) -> bool:
        return self.client_error is None and self.server_error is None


def handshake(
    client_ctx: SSL.Context,
    server_ctx: SSL.Context,
    *,
    client_data: object = None,
    server_data: object = None,
) -> Outcome:
    client = SSL.Connection(client_ctx, None)
    server = SSL.Connection(server_ctx, None)
    for conn in (client, server):
        conn.set_ciphertext_mtu(1400)
        conn.set_options(SSL.OP_NO_QUERY_MTU)
    client.set_app_data(client_data)
    server.set_app_data(server_data)
    client.set_connect_state()
    server.set_accept_state()
    sides = [client, server]
    done = [False, False]
    errors: list[SSL.Error | None] = [None, None]
    for _ in range(30):
        moved = False
        for index, conn in enumerate(sides):
            if not done[index] and errors[index] is None:
                try:
                    conn.do_handshake()
                    done[index] = True
                except SSL.WantReadError:
                    pass
                except SSL.Error as exc:
                    errors[index] = exc
            for datagram in drain_bio(conn):
                sides[1 - index].bio_write(datagram)
                moved = True
        if all(done) or not moved:
            break
    assert all(done) or any(errors), "handshake neither finished nor failed"
    return Outcome(client, server, errors[0], errors[1])


def assert_failed(outcome: Outcome) -> None:
    assert outcome.client_error is not None or outcome.server_error is not None


# --------------------------------------------------------------------------
# CA-verified servers


def test_ca_signed_certificate_with_matching_name_passes(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("localhost"),
        client_data=target,
    )
    assert outcome.ok
    assert target.verify_failure is None
    peer = outcome.client.get_peer_certificate(as_cryptography=True)
    assert peer == pki.items["localhost"].certificate
    assert outcome.client.get_protocol_version_name() == "DTLSv1.2"
    assert outcome.client.get_cipher_name() == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_rsa_server_certificate_uses_ecdhe_rsa(pki: Pki) -> None:
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("rsa"),
        client_data=Target("localhost"),
    )
    assert outcome.ok
    cipher = outcome.client.get_cipher_name()
    assert cipher is not None
    assert cipher.startswith("ECDHE-RSA-")


def test_chain_file_with_intermediate_is_sent(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("chained"),
        client_data=target,
    )
    assert outcome.ok, target.verify_failure
    chain = outcome.client.get_peer_cert_chain(as_cryptography=True)
    assert chain is not None
    assert len(chain) == 2


def test_cadata_with_several_certificates(pki: Pki) -> None:
    bundle = pki.rogue_root.pem + pki.root.pem
    for cadata in (bundle, bundle.decode("ascii")):
        outcome = handshake(
            client_context(cadata=cadata),
            pki.server("localhost"),
            client_data=Target("localhost"),
        )
        assert outcome.ok


def test_cadata_der_certificate(pki: Pki) -> None:
    der = pki.root.certificate.public_bytes(serialization.Encoding.DER)
    outcome = handshake(
        client_context(cadata=der),
        pki.server("localhost"),
        client_data=Target("localhost"),
    )
    assert outcome.ok


def test_name_mismatch_fails_with_reason(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("other"),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert outcome.server_error is not None  # it got our alert
    assert target.verify_failure == (
        "certificate is for DNS:other.example, IP:10.0.0.1, not 'localhost'"
    )


def test_common_name_is_not_used(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("no_san"),
        client_data=target,
    )
    assert_failed(outcome)
    assert target.verify_failure is not None
    assert "no subjectAltName" in target.verify_failure
    assert "'localhost'" in target.verify_failure


@pytest.mark.parametrize(
    ("hostname", "matches"),
    [
        ("a.example.com", True),
        ("A.Example.COM", True),
        ("a.b.example.com", False),
        ("example.com", False),
        ("a.example.org", False),
    ],
)
def test_wildcard(pki: Pki, hostname: str, matches: bool) -> None:
    target = Target(hostname)
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("wildcard"),
        client_data=target,
    )
    assert outcome.ok is matches
    if matches:
        assert target.verify_failure is None
    else:
        assert target.verify_failure == (
            f"certificate is for DNS:*.example.com, not {hostname!r}"
        )


@pytest.mark.parametrize(
    ("address", "matches"),
    [
        ("192.0.2.7", True),
        ("2001:db8::7", True),
        ("2001:0db8:0000::0007", True),
        ("[2001:db8::7]", True),
        ("192.0.2.8", False),
        ("2001:db8::8", False),
        ("::ffff:192.0.2.7", False),
    ],
)
def test_ip_address(pki: Pki, address: str, matches: bool) -> None:
    target = Target(address)
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("ips"),
        client_data=target,
    )
    assert outcome.ok is matches
    if not matches:
        assert target.verify_failure == (
            f"certificate is for IP:192.0.2.7, IP:2001:db8::7, not {address!r}"
        )


def test_ip_literal_is_not_matched_against_dns_names(pki: Pki) -> None:
    certificate = pki.items["ip_as_dns"].certificate
    reason = check_peer_identity(certificate, "192.0.2.7")
    assert reason is not None
    assert reason.startswith("certificate is for DNS:192.0.2.7, not '192.0.2.7'")


def test_expired_certificate_fails(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("expired"),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure is not None
    assert "expired" in target.verify_failure
    not_after = pki.items["expired"].certificate.not_valid_after_utc
    assert f"{not_after:%Y-%m-%d %H:%M:%S}" in target.verify_failure
    assert "[X509 error 10]" in target.verify_failure


def test_not_yet_valid_certificate_fails(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("future"),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure is not None
    assert "not yet valid" in target.verify_failure


def test_untrusted_ca_fails(pki: Pki) -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("rogue"),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure is not None
    assert "unable to get local issuer certificate" in target.verify_failure
    assert "CN=rogue" in target.verify_failure


def test_untrusted_self_signed_fails_without_pin() -> None:
    target = Target("localhost")
    outcome = handshake(
        client_context(cadata=self_signed().cert_pem),
        server_context(self_signed()),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure is not None
    assert "self-signed" in target.verify_failure


def test_trusted_self_signed_passes_as_its_own_ca() -> None:
    identity = self_signed()
    outcome = handshake(
        client_context(cadata=identity.cert_pem),
        server_context(identity),
        client_data=Target("::1"),
    )
    assert outcome.ok


def test_no_app_data_skips_name_check_without_crashing(pki: Pki) -> None:
    ctx = client_context(cafile=pki.root_file)
    assert handshake(ctx, pki.server("other"), client_data=None).ok
    assert handshake(ctx, pki.server("other"), client_data=object()).ok
    # ...but the chain is still checked, even with nowhere to put a reason.
    assert not handshake(ctx, pki.server("rogue"), client_data=object()).ok


def test_hostname_of_wrong_type_fails_closed(pki: Pki) -> None:
    target = Target()
    target.server_hostname = b"localhost"  # type: ignore[assignment]
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("localhost"),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure is not None
    assert "server_hostname must be a str" in target.verify_failure


# --------------------------------------------------------------------------
# Pinned servers


def test_right_pin_passes_for_self_signed() -> None:
    identity = self_signed()
    target = Target("not-the-name-in-the-certificate.example")
    outcome = handshake(
        client_context(fingerprint=identity.fingerprint),
        server_context(identity),
        client_data=target,
    )
    assert outcome.ok
    assert target.verify_failure is None


def test_right_pin_passes_for_expired_self_signed(pki: Pki) -> None:
    certificate = pki.items["self_signed_expired"].certificate
    pin = certificate.fingerprint(hashes.SHA256()).hex().upper()
    outcome = handshake(
        client_context(fingerprint=pin),
        pki.server("self_signed_expired"),
        client_data=Target("localhost"),
    )
    assert outcome.ok


def test_pin_ignores_untrusted_chain(pki: Pki) -> None:
    certificate = pki.items["chained"].certificate
    pin = certificate.fingerprint(hashes.SHA256()).hex()
    outcome = handshake(
        client_context(fingerprint=pin), pki.server("chained"), client_data=Target()
    )
    assert outcome.ok


def test_wrong_pin_fails_with_reason() -> None:
    identity = self_signed()
    pinned = self_signed().fingerprint
    target = Target("localhost")
    outcome = handshake(
        client_context(fingerprint=pinned.upper()),
        server_context(identity),
        client_data=target,
    )
    assert outcome.client_error is not None
    assert target.verify_failure == (
        f"certificate fingerprint sha256 {identity.fingerprint} "
        f"does not match the pinned {pinned}"
    )


def test_wrong_pin_fails_even_for_ca_signed_certificate(pki: Pki) -> None:
    outcome = handshake(
        client_context(fingerprint=self_signed().fingerprint),
        pki.server("localhost"),
        client_data=Target("localhost"),
    )
    assert outcome.client_error is not None


PINNED_IDENTITY = self_signed()
PINNED_SERVER = server_context(PINNED_IDENTITY)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_pin_accepts_any_spelling(data: st.DataObject) -> None:
    identity = PINNED_IDENTITY
    pairs = identity.fingerprint.split(":")
    cased = "".join(
        pair.upper() if data.draw(st.booleans()) else pair for pair in pairs
    )
    separated = data.draw(st.booleans())
    spelled = (
        ":".join(cased[i : i + 2] for i in range(0, 64, 2)) if separated else cased
    )
    outcome = handshake(
        client_context(fingerprint=spelled),
        PINNED_SERVER,
        client_data=Target(),
    )
    assert outcome.ok


@pytest.mark.parametrize(
    ("fingerprint", "message"),
    [
        ("", "fingerprint is empty"),
        ("ab:cd", "has 4 hex digits"),
        ("0" * 63, "has 63 hex digits"),
        ("0" * 66, "has 66 hex digits"),
        ("g" * 64, "'g', which is not a hex digit"),
        ("sha256:" + "0" * 64, "'s', which is not a hex digit"),
    ],
)
def test_bad_fingerprint_format(fingerprint: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_context(fingerprint=fingerprint)


def test_fingerprint_must_be_text() -> None:
    with pytest.raises(TypeError, match="fingerprint must be a str"):
        client_context(fingerprint=b"00" * 32)  # type: ignore[arg-type]


def test_pin_and_ca_are_exclusive(pki: Pki) -> None:
    with pytest.raises(ValueError, match="fingerprint replaces the CA check"):
        client_context(fingerprint="00" * 32, cafile=pki.root_file)


# --------------------------------------------------------------------------
# ALPN and SRTP


def test_alpn_server_preference_wins() -> None:
    identity = self_signed()
    outcome = handshake(
        client_context(fingerprint=identity.fingerprint, alpn=["x-low", b"x-high"]),
        server_context(identity, alpn=["x-high", "x-low"]),
        client_data=Target(),
    )
    assert outcome.ok
    assert outcome.client.get_alpn_proto_negotiated() == b"x-high"
    assert outcome.server.get_alpn_proto_negotiated() == b"x-high"


def test_alpn_without_overlap_is_not_negotiated() -> None:
    identity = self_signed()
    outcome = handshake(
        client_context(fingerprint=identity.fingerprint, alpn=["x-one"]),
        server_context(identity, alpn=["x-two"]),
        client_data=Target(),
    )
    assert outcome.ok
    assert outcome.client.get_alpn_proto_negotiated() == b""
    assert outcome.server.get_alpn_proto_negotiated() == b""


def test_srtp_profile_and_keying_material() -> None:
    identity = self_signed()
    outcome = handshake(
        client_context(
            fingerprint=identity.fingerprint,
            srtp_profiles=["SRTP_AES128_CM_SHA1_32", "SRTP_AES128_CM_SHA1_80"],
        ),
        server_context(identity, srtp_profiles=[b"SRTP_AES128_CM_SHA1_80"]),
        client_data=Target(),
    )
    assert outcome.ok
    assert outcome.client.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    assert outcome.server.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"
    client_keys = outcome.client.export_keying_material(SRTP_LABEL, 60)
    server_keys = outcome.server.export_keying_material(SRTP_LABEL, 60)
    assert len(client_keys) == 60
    assert client_keys == server_keys


@pytest.mark.parametrize(
    ("alpn", "error", "message"),
    [
        ([], ValueError, "alpn is empty"),
        ("webrtc", TypeError, "not a single str"),
        ([b""], ValueError, "1 to 255 bytes"),
        (["x" * 256], ValueError, "1 to 255 bytes"),
        (["caf\u00e9"], ValueError, "not ASCII"),
        ([1], TypeError, "must be str or bytes"),
    ],
)
def test_bad_alpn(alpn: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        client_context(alpn=alpn)
    with pytest.raises(error, match=message):
        server_context(self_signed(), alpn=alpn)


def test_unknown_srtp_profile_is_named() -> None:
    profiles = ["SRTP_AES128_CM_SHA1_80", "SRTP_NO_SUCH_PROFILE"]
    with pytest.raises(ValueError, match="'SRTP_NO_SUCH_PROFILE' is not accepted"):
        client_context(srtp_profiles=profiles)
    with pytest.raises(ValueError, match="'SRTP_NO_SUCH_PROFILE' is not accepted"):
        server_context(self_signed(), srtp_profiles=profiles)
    with pytest.raises(ValueError, match="srtp_profiles is empty"):
        client_context(srtp_profiles=[])


# --------------------------------------------------------------------------
# Client certificates


def test_client_certificate_requested_but_optional(pki: Pki) -> None:
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("localhost", client_cafile=pki.root_file),
        client_data=Target("localhost"),
    )
    assert outcome.ok
    assert outcome.server.get_peer_certificate() is None


def test_required_client_certificate_missing_fails(pki: Pki) -> None:
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("localhost", client_cafile=pki.root_file, require_client_cert=True),
        client_data=Target("localhost"),
    )
    assert outcome.server_error is not None


def test_required_client_certificate_present(pki: Pki) -> None:
    server_target = Target()
    outcome = handshake(
        client_context(
            cafile=pki.root_file,
            certfile=pki.cert("client"),
            keyfile=pki.key("client"),
        ),
        pki.server("localhost", client_cafile=pki.root_file, require_client_cert=True),
        client_data=Target("localhost"),
        server_data=server_target,
    )
    assert outcome.ok
    peer = outcome.server.get_peer_certificate(as_cryptography=True)
    assert peer == pki.items["client"].certificate
    assert server_target.verify_failure is None


def test_client_certificate_from_unknown_ca_fails_with_reason(pki: Pki) -> None:
    server_target = Target()
    outcome = handshake(
        client_context(
            cafile=pki.root_file,
            certfile=pki.cert("rogue_client"),
            keyfile=pki.key("rogue_client"),
        ),
        pki.server("localhost", client_cafile=pki.root_file, require_client_cert=True),
        client_data=Target("localhost"),
        server_data=server_target,
    )
    assert outcome.server_error is not None
    assert server_target.verify_failure is not None
    assert "unable to get local issuer certificate" in server_target.verify_failure


def test_server_sends_client_ca_list(pki: Pki) -> None:
    outcome = handshake(
        client_context(cafile=pki.root_file),
        pki.server("localhost", client_cafile=pki.root_file),
        client_data=Target("localhost"),
    )
    assert outcome.ok
    ca_names = outcome.client.get_client_ca_list()
    assert [name.CN for name in ca_names] == ["Test Root CA"]


# --------------------------------------------------------------------------
# Loading errors


def test_missing_certfile(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=r"nope\.pem") as info:
        server_context(missing)
    assert "No such file" in str(info.value)


def test_file_without_certificate(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"hello\n")
    with pytest.raises(ValueError, match="no PEM certificate found"):
        server_context(empty)


def test_key_not_matching_certificate(pki: Pki) -> None:
    with pytest.raises(ValueError, match="does not match the certificate") as info:
        server_context(pki.cert("localhost"), pki.key("other"))
    assert str(pki.key("other")) in str(info.value)
    assert str(pki.cert("localhost")) in str(info.value)


def test_key_in_the_certificate_file(pki: Pki, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(
        pki.cert("localhost").read_bytes() + pki.key("localhost").read_bytes()
    )
    outcome = handshake(
        client_context(cafile=pki.root_file),
        server_context(combined),
        client_data=Target("localhost"),
    )
    assert outcome.ok
    with pytest.raises(ValueError, match="no PEM private key found"):
        server_context(pki.cert("localhost"))


@pytest.fixture
def encrypted_key(pki: Pki, tmp_path: Path) -> Path:
    path = tmp_path / "encrypted.key"
    path.write_bytes(key_pem(pki.items["localhost"].key, PASSWORD))
    return path


def test_encrypted_key_with_password(pki: Pki, encrypted_key: Path) -> None:
    for password in (PASSWORD, PASSWORD.encode()):
        ctx = server_context(pki.cert("localhost"), encrypted_key, password=password)
        outcome = handshake(
            client_context(cafile=pki.root_file),
            ctx,
            client_data=Target("localhost"),
        )
        assert outcome.ok


def test_encrypted_key_wrong_password(pki: Pki, encrypted_key: Path) -> None:
    with pytest.raises(ValueError, match="wrong password") as info:
        server_context(pki.cert("localhost"), encrypted_key, password="hunter2")
    assert str(encrypted_key) in str(info.value)


def test_encrypted_key_without_password(pki: Pki, encrypted_key: Path) -> None:
    with pytest.raises(ValueError, match="encrypted, but no password was given"):
        server_context(pki.cert("localhost"), encrypted_key)


def test_require_client_cert_needs_cafile(pki: Pki) -> None:
    with pytest.raises(ValueError, match="needs client_cafile"):
        pki.server("localhost", require_client_cert=True)


def test_bad_client_cafile(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"not a certificate")
    with pytest.raises(ValueError, match="no usable PEM certificate in client_cafile"):
        pki.server("localhost", client_cafile=junk)
    with pytest.raises(ValueError, match="cannot be read"):
        pki.server("localhost", client_cafile=tmp_path / "missing.pem")


def test_unreadable_cafile_names_path_and_reason(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ValueError) as info:
        client_context(cafile=missing)
    assert str(missing) in str(info.value)
    assert "No such file or directory" in str(info.value)
    with pytest.raises(ValueError, match="cannot be read: Is a directory"):
        client_context(cafile=tmp_path)


def test_cafile_without_certificates(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("nothing here\n")
    with pytest.raises(ValueError, match="no PEM certificate found in cafile"):
        client_context(cafile=junk)


def test_capath_must_be_a_directory(pki: Pki) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        client_context(capath=pki.root_file)


def test_bad_cadata() -> None:
    with pytest.raises(ValueError, match="cadata"):
        client_context(cadata="-----BEGIN CERTIFICATE-----\nbad\n")
    with pytest.raises(ValueError, match="cadata is neither PEM nor a DER"):
        client_context(cadata=b"\x30\x03abc")
    with pytest.raises(TypeError, match="cadata must be str or bytes"):
        client_context(cadata=42)  # type: ignore[arg-type]


def test_client_key_needs_certfile(pki: Pki) -> None:
    with pytest.raises(ValueError, match="need a certfile"):
        client_context(keyfile=pki.key("client"))


def test_selfsigned_rejects_keyfile(pki: Pki) -> None:
    with pytest.raises(ValueError, match="keyfile must be None"):
        server_context(self_signed(), pki.key("localhost"))


# --------------------------------------------------------------------------
# Reuse and bookkeeping


def test_contexts_are_reusable(pki: Pki) -> None:
    client_ctx = client_context(cafile=pki.root_file, alpn=["x-app"])
    server_ctx = pki.server("localhost", alpn=["x-app"])
    for round_number in range(3):
        target = Target("localhost" if round_number != 1 else "127.0.0.1")
        outcome = handshake(client_ctx, server_ctx, client_data=target)
        assert outcome.ok, (round_number, target.verify_failure)
        assert outcome.client.get_alpn_proto_negotiated() == b"x-app"
    # A failure on one connection leaves nothing behind for the next.
    failed = Target("elsewhere.example")
    assert not handshake(client_ctx, server_ctx, client_data=failed).ok
    assert failed.verify_failure is not None
    assert handshake(client_ctx, server_ctx, client_data=Target("::1")).ok


def test_pinned_contexts_are_reusable() -> None:
    identity = self_signed()
    client_ctx = client_context(fingerprint=identity.fingerprint)
    server_ctx = server_context(identity)
    for _ in range(3):
        assert handshake(client_ctx, server_ctx, client_data=Target()).ok


def test_is_identity_checking(pki: Pki) -> None:
    assert is_identity_checking(client_context(cafile=pki.root_file))
    assert is_identity_checking(client_context(fingerprint="ab" * 32))
    assert not is_identity_checking(server_context(self_signed()))
    assert not is_identity_checking(SSL.Context(SSL.DTLS_METHOD))


# --------------------------------------------------------------------------
# Roles: a context made for one side is refused on the other


def _client_contexts(pki: Pki) -> list[SSL.Context]:
    return [
        client_context(cafile=pki.root_file),
        client_context(fingerprint=PINNED_IDENTITY.fingerprint),
        client_context(fingerprint="ab" * 32, certfile=self_signed(), alpn=["x"]),
    ]


def _server_contexts(pki: Pki) -> list[SSL.Context]:
    return [
        server_context(self_signed()),
        server_context(self_signed(), client_cafile=pki.root_file),
        server_context(self_signed(), srtp_profiles=["SRTP_AES128_CM_SHA1_80"]),
    ]


def test_server_context_is_refused_where_a_client_context_belongs(pki: Pki) -> None:
    for ctx in _server_contexts(pki):
        with pytest.raises(ValueError) as caught:
            check_context_role(ctx, "client", "connect()")
        assert str(caught.value) == (
            "connect() needs a client context, but this one was made by "
            "trio_dtlsmux.server_context(); build one with "
            "trio_dtlsmux.client_context(...)"
        )


def test_client_context_is_refused_where_a_server_context_belongs(pki: Pki) -> None:
    for ctx in _client_contexts(pki):
        with pytest.raises(ValueError) as caught:
            check_context_role(ctx, "server", "DtlsEndpoint(server_context=...)")
        assert str(caught.value) == (
            "DtlsEndpoint(server_context=...) needs a server context, but this "
            "one was made by trio_dtlsmux.client_context(); build one with "
            "trio_dtlsmux.server_context(...)"
        )


def test_contexts_pass_in_their_own_role(pki: Pki) -> None:
    for ctx in _client_contexts(pki):
        check_context_role(ctx, "client", "connect()")
    for ctx in _server_contexts(pki):
        check_context_role(ctx, "server", "server_context")


def test_hand_built_contexts_pass_in_either_role() -> None:
    for method in (SSL.DTLS_METHOD, SSL.DTLS_CLIENT_METHOD, SSL.DTLS_SERVER_METHOD):
        ctx = SSL.Context(method)
        check_context_role(ctx, "client", "connect()")
        check_context_role(ctx, "server", "server_context")
    # Not a context at all: the caller's type check speaks to that.
    check_context_role(None, "client", "connect()")  # type: ignore[arg-type]


def test_remembering_a_role_does_not_keep_the_context_alive() -> None:
    ctx = server_context(PINNED_IDENTITY)
    alive = weakref.ref(ctx)
    del ctx
    gc.collect()
    assert alive() is None


def test_public_names_report_the_public_module() -> None:
    # Some of these are defined in _identity or _verification; docs and
    # tracebacks should still send readers to trio_dtlsmux.contexts.
    for name in contexts.__all__:
        assert getattr(contexts, name).__module__ == "trio_dtlsmux.contexts", name
    assert trio_dtlsmux.SelfSigned is contexts.SelfSigned


# --------------------------------------------------------------------------
# check_peer_identity on its own


def test_check_peer_identity_messages(pki: Pki) -> None:
    localhost = pki.items["localhost"].certificate
    assert check_peer_identity(localhost, "localhost") is None
    assert check_peer_identity(localhost, "LOCALHOST") is None
    assert check_peer_identity(localhost, "127.0.0.1") is None
    assert check_peer_identity(localhost, "::1") is None
    assert check_peer_identity(localhost, "example.net") == (
        "certificate is for DNS:localhost, IP:127.0.0.1, IP:::1, not 'example.net'"
    )
    reason = check_peer_identity(pki.items["no_san"].certificate, "localhost")
    assert reason is not None
    assert reason.startswith("certificate has no subjectAltName")
    reason = check_peer_identity(localhost, "")
    assert reason is not None
    assert "cannot check the certificate against ''" in reason


# --------------------------------------------------------------------------
# self_signed


def test_self_signed_fingerprint_is_sha256_of_der() -> None:
    identity = self_signed()
    der = identity.certificate.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    assert identity.fingerprint.replace(":", "") == digest
    assert identity.fingerprint == identity.fingerprint.lower()
    assert len(identity.fingerprint.split(":")) == 32
    assert identity.cert_pem == identity.certificate.public_bytes(
        serialization.Encoding.PEM
    )


def test_self_signed_subject_alt_names() -> None:
    before = datetime.datetime.now(datetime.timezone.utc)
    identity = self_signed("peer", sans=["peer.example", "192.0.2.1", "2001:db8::1"])
    after = datetime.datetime.now(datetime.timezone.utc)
    sans = identity.certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value
    assert sans.get_values_for_type(x509.DNSName) == ["peer.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    cn = identity.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == "peer"
    # Certificate times have one-second resolution.
    second = datetime.timedelta(seconds=1)
    not_after = identity.certificate.not_valid_after_utc
    assert before + 30 * DAY - second <= not_after <= after + 30 * DAY
    assert identity.certificate.not_valid_before_utc <= before - second
    assert isinstance(identity.private_key, ec.EllipticCurvePrivateKey)
    assert isinstance(identity.private_key.curve, ec.SECP256R1)


def test_self_signed_argument_checks() -> None:
    with pytest.raises(ValueError, match="days must be at least 1"):
        self_signed(days=0)
    with pytest.raises(TypeError, match="not a single string"):
        self_signed(sans="localhost")
    with pytest.raises(ValueError, match="common_name must not be empty"):
        self_signed("")


def test_self_signed_repr_hides_key() -> None:
    identity = self_signed()
    assert "PRIVATE" not in repr(identity)
    assert identity.fingerprint in repr(identity)


def test_write_gives_private_key_file(tmp_path: Path) -> None:
    identity = self_signed()
    stale = tmp_path / "key.pem"
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    cert_path, key_path = identity.write(tmp_path)
    assert (cert_path, key_path) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert cert_path.read_bytes() == identity.cert_pem
    assert key_path.read_bytes() == identity.key_pem
    outcome = handshake(
        client_context(fingerprint=identity.fingerprint),
        server_context(cert_path, key_path),
        client_data=Target(),
    )
    assert outcome.ok


def test_self_signed_server_context_does_not_touch_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    identity = self_signed()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"disk access: {args!r}")

    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "open", forbidden)
    ctx = server_context(
        identity, alpn=["x-app"], srtp_profiles=["SRTP_AES128_CM_SHA1_80"]
    )
    monkeypatch.undo()
    assert handshake(
        client_context(fingerprint=identity.fingerprint), ctx, client_data=Target()
    ).ok


def test_selfsigned_is_frozen() -> None:
    identity = self_signed()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        identity.fingerprint = "00"  # type: ignore[misc]
    assert isinstance(identity, SelfSigned)
