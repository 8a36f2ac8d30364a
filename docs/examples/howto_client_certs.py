"""How-to: servers that want to know who the client is."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

import trio_dtlsmux


def server_side(certfile: str, keyfile: str, clients_ca: str) -> Any:
    return trio_dtlsmux.server_context(
        certfile,
        keyfile,
        client_cafile=clients_ca,  # CAs whose client certificates we accept
        require_client_cert=True,  # no certificate, no handshake
    )


def client_side(cafile: str, certfile: str, keyfile: str) -> Any:
    return trio_dtlsmux.client_context(
        cafile=cafile, certfile=certfile, keyfile=keyfile
    )


def who_is_it(conn: trio_dtlsmux.DtlsConnection) -> tuple[str, str]:
    """The client's common name and its certificate's SHA-256 fingerprint."""
    cert = conn.peer_certificate
    if cert is None:  # cannot happen with require_client_cert=True
        raise PermissionError("the client sent no certificate")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else "(no common name)"
    return name, cert.fingerprint(hashes.SHA256()).hex(":")


async def handler(conn: trio_dtlsmux.DtlsConnection) -> None:
    name, fingerprint = who_is_it(conn)
    print(f"{conn.peer_address} is {name} ({fingerprint})")
    async for message in conn:
        await conn.send(f"{name} said ".encode() + message)
