"""How-to: a CoAPs server (CoAP over DTLS with pre-shared keys, RFC 7252).

Needs ``pip install aiocoap``, for its message codec only: the datagrams
come from a DtlsEndpoint, not from aiocoap's transports. Run
``python coaps_server.py`` and ask it with libcoap's client::

    coap-client-openssl -u sensor-1 -k sensor-1-secret coaps://127.0.0.1/hello

It answers GET requests for a few resources; the CoAP message layer is
reduced to what a server of idempotent resources needs.
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Callable

import trio
from aiocoap import Code, ContentFormat, Message, Type
from aiocoap.error import UnparsableMessage
from OpenSSL import SSL

import trio_dtlsmux

PORT = int(os.environ.get("PORT", "5684"))  # the CoAPs port (RFC 7252, 12.7)

# Each device's identity and key. Real keys are random bytes that a
# provisioning system hands to the device and to the server (see the
# how-to); these are text because libcoap's client takes its key as text.
DEVICE_KEYS = {
    b"sensor-1": b"sensor-1-secret",
    b"sensor-2": b"sensor-2-secret",
}


def hello(conn: trio_dtlsmux.DtlsConnection) -> bytes:
    return b"Hello over CoAPs"


def whoami(conn: trio_dtlsmux.DtlsConnection) -> bytes:
    # The identity whose key the device proved it holds.
    return conn.psk_identity or b""


RESOURCES: dict[tuple[str, ...], Callable[[trio_dtlsmux.DtlsConnection], bytes]] = {
    ("hello",): hello,
    ("whoami",): whoami,
}


def decode_untrusted(datagram: bytes) -> Message | None:
    """A CoAP message, or None for bytes that are not one."""
    try:
        return Message.decode(datagram)
    except (UnparsableMessage, ValueError):  # ValueError: bad UTF-8 in an option
        return None


def answer(request: Message, conn: trio_dtlsmux.DtlsConnection) -> Message | None:
    """The reply to one message from the peer, or None for no reply."""
    if not request.code.is_request():
        # A CoAP ping (an empty Confirmable message) or a response we never
        # asked for: a Confirmable one is rejected with a Reset (4.2, 4.3).
        if request.mtype == Type.CON:
            return reply_to(request, Message(code=Code.EMPTY), reset=True)
        return None
    if request.code != Code.GET:
        response = Message(code=Code.METHOD_NOT_ALLOWED)
    elif (resource := RESOURCES.get(tuple(request.opt.uri_path))) is None:
        response = Message(code=Code.NOT_FOUND)
    else:
        response = Message(
            code=Code.CONTENT,
            payload=resource(conn),
            content_format=ContentFormat.TEXT,
        )
    return reply_to(request, response)


def reply_to(request: Message, response: Message, *, reset: bool = False) -> Message:
    """Address ``response`` to ``request`` (RFC 7252, 4.2 to 4.4, and 5.3.2)."""
    if request.mtype == Type.CON:
        # Piggybacked on the acknowledgement, with the request's message ID.
        # A retransmitted request gets the same answer again, which is
        # allowed because every resource here is idempotent (4.5).
        response.mtype = Type.RST if reset else Type.ACK
        response.mid = request.mid
    else:
        response.mtype = Type.NON
        response.mid = secrets.randbits(16)
    # A Reset is an empty message, so it has no token.
    response.token = b"" if reset else request.token
    return response


async def coap(conn: trio_dtlsmux.DtlsConnection) -> None:
    # One DTLS record carries one CoAP message (RFC 7252, 9.1.1).
    async for datagram in conn:
        request = decode_untrusted(datagram)
        if request is None or request.mtype in (Type.ACK, Type.RST):
            continue  # not CoAP, or an answer to nothing we sent
        response = answer(request, conn)
        if response is not None:
            await conn.send(response.encode())


async def main(
    sock: trio.socket.SocketType,
    keys: dict[bytes, bytes] = DEVICE_KEYS,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    # No certificate: every client proves itself with its key. psk_ccm8 is
    # on by default, so devices that only have the suite CoAP requires
    # (TLS_PSK_WITH_AES_128_CCM_8) can connect too.
    context = trio_dtlsmux.server_context(psk=keys)
    async with trio_dtlsmux.DtlsEndpoint(sock, server_context=context) as endpoint:
        print(f"CoAPs on {sock.getsockname()}")
        await endpoint.serve(coap, task_status=task_status)


def device_context(identity: bytes, key: bytes) -> SSL.Context:
    # A device's side: its identity and key, and no certificate to check,
    # since only a server that knows the key can finish the handshake.
    return trio_dtlsmux.client_context(psk=(identity, key))


async def run() -> None:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind(("127.0.0.1", PORT))
    await main(sock)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        trio.run(run)
    except KeyboardInterrupt:
        pass
