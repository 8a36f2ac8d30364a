"""The documentation's code, run.

Every Python block in the docs is a file in ``docs/examples`` pulled in with
``literalinclude``, and every one of those files is exercised here, so the
tutorial and the how-to guides cannot drift away from the library. Most run on
:class:`trio_dtlsmux.testing.FakeNetwork` under the autojump clock (virtual
time, no waiting); the tutorial's echo pair also runs once over real loopback.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import signal
import stat
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

import trio_dtlsmux
from trio_dtlsmux.testing import FakeNetwork, FakeSocket

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS / "examples"
LOCAL = "127.0.0.1"


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` (the folder is not a package)."""
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"docs_examples_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def fake_udp(net: FakeNetwork, host: str = LOCAL, port: int = 0) -> FakeSocket:
    sock = net.socket()
    await sock.bind((host, port))
    return sock


async def real_udp() -> trio.socket.SocketType:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await sock.bind((LOCAL, 0))
    return sock


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str]:
    certfile, keyfile = load("make_cert").main(tmp_path)
    return str(certfile), str(keyfile)


@pytest.fixture
def net() -> FakeNetwork:
    return FakeNetwork(seed=1)


async def script(*steps: tuple[float, str]) -> AsyncIterator[str]:
    """Lines typed at given (virtual) times, for the chat client."""
    for delay, line in steps:
        await trio.sleep(delay)
        if line:
            yield line


# -- the structure of the docs -------------------------------------------------

INCLUDE = re.compile(r"^\s*\.\. literalinclude:: (\S+)((?:\n\s+:[^\n]*)*)", re.M)


def includes() -> list[tuple[Path, Path, str]]:
    """(page, included file, options) for every literalinclude in the docs."""
    found = []
    for page in sorted(DOCS.rglob("*.rst")):
        if "_build" in page.parts:
            continue
        for match in INCLUDE.finditer(page.read_text()):
            target = (page.parent / match.group(1)).resolve()
            found.append((page, target, match.group(2)))
    return found


def test_every_include_exists_and_names_real_objects() -> None:
    assert includes(), "no literalinclude found: did the docs move?"
    for page, target, options in includes():
        assert target.is_file(), f"{page.name} includes missing {target}"
        wanted = re.search(r":pyobject:\s*(\S+)", options)
        if wanted:
            tree = ast.parse(target.read_text())
            names = {
                node.name
                for node in tree.body
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            }
            assert wanted.group(1).split(".")[0] in names, (page.name, wanted.group(1))


def test_every_example_is_shown_and_tested() -> None:
    shown = {target.name for _, target, _ in includes()}
    examples = {path.name for path in EXAMPLES.glob("*.py")}
    assert examples - shown == set(), "examples that no page shows"
    tested = {name + ".py" for name in TESTED}
    assert examples - tested == set(), "examples that no test here runs"


def test_tutorial_and_howtos_only_show_tested_python() -> None:
    pages = [DOCS / "index.rst", DOCS / "tutorial.rst", *sorted((DOCS / "howto").glob("*.rst"))]
    for page in pages:
        text = page.read_text()
        blocks = re.findall(r"\.\. (?:code-block|code|sourcecode):: *(\w*)", text)
        assert all(lang not in ("", "python", "python3", "py") for lang in blocks), (
            f"{page.name} has an untested Python block; put it in docs/examples"
        )


# -- index and tutorial ---------------------------------------------------------

TESTED = {
    "make_cert",
    "quickstart",
    "echo_server",
    "echo_client",
    "chat_server",
    "chat_client",
    "ping_all",
    "request_reply",
    "idle_server",
    "howto_verify",
    "howto_client_certs",
    "howto_alpn",
    "howto_webrtc",
    "howto_tuning",
    "howto_metrics",
    "howto_keylog",
    "howto_testing",
    "howto_nat",
    "coaps_server",  # run in test_psk.py, on FakeNetwork and with libcoap's client
    "howto_deploy",
    "howto_resumption",
}


def test_make_cert_writes_a_private_key(tmp_path: Path) -> None:
    certfile, keyfile = load("make_cert").main(tmp_path)
    assert b"BEGIN CERTIFICATE" in certfile.read_bytes()
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600


async def test_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    with trio.fail_after(10):
        await load("quickstart").main()
    assert "b'hello, DTLS'" in capsys.readouterr().out


async def test_echo_over_real_loopback(certs: tuple[str, str]) -> None:
    echo_server, echo_client = load("echo_server"), load("echo_client")
    server_sock = await real_udp()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(echo_server.main, server_sock, *certs)
            replies = await echo_client.main(
                await real_udp(), server_sock.getsockname(), certs[0]
            )
            nursery.cancel_scope.cancel()
    assert replies == [b"hello", b"over", b"DTLS"]


async def test_echo_says_goodbye(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    echo_server, echo_client = load("echo_server"), load("echo_client")
    server_sock = await fake_udp(net, port=4433)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(echo_server.main, server_sock, *certs)
            client_sock = await fake_udp(net)
            replies = await echo_client.main(client_sock, (LOCAL, 4433), certs[0])
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert replies == [b"hello", b"over", b"DTLS"]
    out = capsys.readouterr().out
    assert "connected: DTLSv1.2" in out
    assert "connected" in out and "said goodbye" in out


async def test_chat_room(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    chat_server, chat_client = load("chat_server"), load("chat_client")
    heard: dict[str, list[bytes]] = {}

    async def person(name: str, *steps: tuple[float, str]) -> None:
        sock = await fake_udp(net)
        heard[name] = await chat_client.main(
            sock, (LOCAL, 4433), certs[0], name, script(*steps)
        )

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(chat_server.main, await fake_udp(net, port=4433), *certs)
            async with trio.open_nursery() as people:
                people.start_soon(person, "alice", (5, "hi bob"), (10, ""))
                people.start_soon(person, "bob", (6, "hello alice"), (9, ""))
                people.start_soon(person, "carol", (15, ""))
            nursery.cancel_scope.cancel()
    assert [m.split(b": ", 1)[1] for m in heard["alice"]] == [b"bob: hello alice"]
    assert [m.split(b": ", 1)[1] for m in heard["bob"]] == [b"alice: hi bob"]
    assert sorted(m.split(b": ", 1)[1] for m in heard["carol"]) == [
        b"alice: hi bob",
        b"bob: hello alice",
    ]
    assert "3 peers, 3 handshakes" in capsys.readouterr().out


async def test_ping_all_from_one_socket(
    autojump_clock: trio.testing.MockClock, net: FakeNetwork, certs: tuple[str, str]
) -> None:
    echo_server, ping_all = load("echo_server"), load("ping_all")
    servers = [(LOCAL, port) for port in (4433, 4434, 4435)]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _, port in servers:
                sock = await fake_udp(net, port=port)
                await nursery.start(echo_server.main, sock, *certs)
            results = await ping_all.main(await fake_udp(net), servers, certs[0])
            nursery.cancel_scope.cancel()
    assert sorted(results) == servers


async def test_requests_idle_reaping_and_handshake_timeout(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    idle_server, request_reply = load("idle_server"), load("request_reply")
    with trio.fail_after(300):
        async with trio.open_nursery() as nursery:
            server_sock = await fake_udp(net, port=4433)
            await nursery.start(
                lambda task_status: idle_server.main(
                    server_sock, *certs, idle_timeout=30, task_status=task_status
                )
            )
            # The happy path: three answers, then a polite close.
            answers = await request_reply.main(await fake_udp(net), (LOCAL, 4433), certs[0])
            assert answers == [b"one", b"two", b"three"]
            await trio.testing.wait_all_tasks_blocked()
            assert "closed the connection" in capsys.readouterr().out

            # A client that goes quiet is reaped after idle_timeout, and its
            # requests go unanswered afterwards.
            context = trio_dtlsmux.client_context(cafile=certs[0])
            async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net)) as client:
                conn = await client.connect((LOCAL, 4433), context)
                assert await request_reply.request(conn, 7, b"x") == b"x"
                await trio.sleep(31)
                assert "went quiet and was dropped" in capsys.readouterr().out
                with pytest.raises(TimeoutError, match="request 8"):
                    await request_reply.request(conn, 8, b"y", attempts=2)

            # Nobody at the address: the handshake times out after 10 s.
            started = trio.current_time()
            assert await request_reply.main(await fake_udp(net), (LOCAL, 9), certs[0]) == []
            assert trio.current_time() - started == pytest.approx(10, abs=1)
            assert "no answer from" in capsys.readouterr().out
            nursery.cancel_scope.cancel()


# -- how-to guides --------------------------------------------------------------


async def serving(
    nursery: trio.Nursery,
    net: FakeNetwork,
    context: Any,
    handler: Callable[..., Any],
    port: int = 4433,
    **options: Any,
) -> trio_dtlsmux.DtlsEndpoint:
    """Start a server endpoint on the fake network; it lives as long as ``nursery``."""

    async def run(task_status: trio.TaskStatus[trio_dtlsmux.DtlsEndpoint]) -> None:
        sock = await fake_udp(net, port=port)
        async with (
            trio_dtlsmux.DtlsEndpoint(sock, server_context=context, **options) as ep,
            trio.open_nursery() as inner,
        ):
            await inner.start(ep.serve, handler)
            task_status.started(ep)

    endpoint: trio_dtlsmux.DtlsEndpoint = await nursery.start(run)
    return endpoint


async def test_howto_verify(certs: tuple[str, str]) -> None:
    # Real loopback: connecting to "localhost" resolves the name in a thread,
    # which the autojump clock would not wait for.
    howto = load("howto_verify")
    contexts = howto.contexts(certs[0], trio_dtlsmux.self_signed().fingerprint)
    assert set(contexts) == {"system", "private CA", "pinned"}
    echo = load("echo_server").echo
    server_sock = await real_udp()
    server_context = trio_dtlsmux.server_context(*certs)
    with trio.fail_after(20):
        async with (
            trio_dtlsmux.DtlsEndpoint(server_sock, server_context=server_context) as ep,
            trio_dtlsmux.DtlsEndpoint(await real_udp()) as client,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(ep.serve, echo)
            port = server_sock.getsockname()[1]
            checked = await howto.connect_four_ways(client, port, contexts["private CA"])
            assert checked == ["localhost", "127.0.0.1", "localhost", None]
            server = (LOCAL, port)
            assert await howto.explain_failure(client, server, contexts["private CA"]) is None
            wrong_pin = await howto.explain_failure(client, server, contexts["pinned"])
            assert wrong_pin is not None and "does not match the pinned" in wrong_pin
            untrusted = await howto.explain_failure(client, server, contexts["system"])
            assert untrusted is not None and "not trusted" in untrusted
            wrong_name = await howto.explain_failure(
                client, server, contexts["private CA"], server_hostname="example.com"
            )
            assert wrong_name is not None
            assert wrong_name.endswith("IP:127.0.0.1, IP:::1, not 'example.com'")
            nursery.cancel_scope.cancel()


async def test_howto_client_certs(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    howto = load("howto_client_certs")
    (tmp_path / "client").mkdir()
    client_id = trio_dtlsmux.self_signed("client-1", sans=())
    client_cert, client_key = (str(p) for p in client_id.write(tmp_path / "client"))
    server_ctx = howto.server_side(*certs, clients_ca=client_cert)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await serving(nursery, net, server_ctx, howto.handler)
            async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net)) as client:
                conn = await client.connect(
                    (LOCAL, 4433), howto.client_side(certs[0], client_cert, client_key)
                )
                await conn.send(b"hello")
                assert await conn.receive() == b"client-1 said hello"
                await conn.aclose()
                anonymous = trio_dtlsmux.client_context(cafile=certs[0])
                with pytest.raises(trio_dtlsmux.HandshakeError):
                    await client.connect((LOCAL, 4433), anonymous)
            nursery.cancel_scope.cancel()
    assert f"is client-1 ({client_id.fingerprint})" in capsys.readouterr().out


async def test_howto_alpn(autojump_clock: trio.testing.MockClock, net: FakeNetwork) -> None:
    howto = load("howto_alpn")
    identity = trio_dtlsmux.self_signed()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await serving(nursery, net, howto.server_side(identity), howto.handler)
            async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net)) as client:
                conn = await client.connect((LOCAL, 4433), howto.client_side(identity.fingerprint))
                assert conn.alpn_protocol == b"myproto/2"
                await conn.send(b"hi")
                assert await conn.receive() == b"v2:hi"
                await conn.aclose()
                stranger = trio_dtlsmux.client_context(
                    fingerprint=identity.fingerprint, alpn=["other"]
                )
                conn = await client.connect((LOCAL, 4433), stranger)
                assert conn.alpn_protocol is None
                with pytest.raises(trio.EndOfChannel):
                    await conn.receive()
            nursery.cancel_scope.cancel()


async def test_howto_webrtc(autojump_clock: trio.testing.MockClock, net: FakeNetwork) -> None:
    howto = load("howto_webrtc")
    offerer, answerer = trio_dtlsmux.self_signed("a"), trio_dtlsmux.self_signed("b")
    server_keys: list[Any] = []

    async def dtls_server_handler(conn: trio_dtlsmux.DtlsConnection) -> None:
        # The offerer's fingerprint came with its SDP.
        if not howto.fingerprint_matches(conn, offerer.fingerprint.upper()):
            await conn.aclose()
            return
        server_keys.append(howto.srtp_keys(conn, dtls_client=False))
        async for _ in conn:
            pass

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await serving(nursery, net, howto.dtls_server_context(answerer), dtls_server_handler)
            async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net)) as client:
                context = howto.dtls_client_context(offerer, answerer.fingerprint.upper())
                conn = await client.connect((LOCAL, 4433), context)
                keys = howto.srtp_keys(conn, dtls_client=True)
                await trio.testing.wait_all_tasks_blocked()
                # A DTLS client with another certificate than the SDP said.
                impostor = howto.dtls_client_context(
                    trio_dtlsmux.self_signed("x"), answerer.fingerprint
                )
                conn2_endpoint = trio_dtlsmux.DtlsEndpoint(await fake_udp(net))
                async with conn2_endpoint:
                    conn2 = await conn2_endpoint.connect((LOCAL, 4433), impostor)
                    with pytest.raises(trio.EndOfChannel):
                        await conn2.receive()
            nursery.cancel_scope.cancel()
    assert len(server_keys) == 1
    theirs = server_keys[0]
    assert keys.profile == theirs.profile == b"SRTP_AES128_CM_SHA1_80"
    assert (keys.local_key, keys.local_salt) == (theirs.remote_key, theirs.remote_salt)
    assert (keys.remote_key, keys.remote_salt) == (theirs.local_key, theirs.local_salt)
    assert len(keys.local_key) == 16 and len(keys.local_salt) == 14
    assert keys.local_key != keys.remote_key


async def test_howto_webrtc_media_on_the_same_socket(
    autojump_clock: trio.testing.MockClock, net: FakeNetwork
) -> None:
    # Two peers, each one DtlsEndpoint: STUN, DTLS and SRTP on one socket.
    howto = load("howto_webrtc")
    offerer, answerer = trio_dtlsmux.self_signed("a"), trio_dtlsmux.self_signed("b")
    a, b = (LOCAL, 5000), ("127.0.0.2", 6000)
    sent = {
        name: [howto.rtp_packet(ssrc, n, n * 960, b"%s %d" % (name, n)) for n in range(50)]
        for name, ssrc in ((b"a", 0xA), (b"b", 0xB))
    }
    reports: dict[bytes, Any] = {}

    async def side(name: bytes, sock: FakeSocket, *args: Any) -> None:
        reports[name] = await howto.one_side(sock, *args, sent[name])

    sock_a, sock_b = await fake_udp(net, *a), await fake_udp(net, *b)
    net.tracing = True
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            # The answer said a=setup:active: the answerer is the DTLS client.
            nursery.start_soon(
                side, b"a", sock_a, offerer, howto.Remote(b, answerer.fingerprint, False)
            )
            nursery.start_soon(
                side, b"b", sock_b, answerer, howto.Remote(a, offerer.fingerprint, True)
            )
    assert reports[b"a"].received == sent[b"b"]
    assert reports[b"b"].received == sent[b"a"]
    assert (reports[b"a"].seen_as, reports[b"b"].seen_as) == (a, b)
    for report in reports.values():
        assert report.dtls_messages == [b"keys ready", b"bye"]
        assert report.dropped == {}
    # On the wire: SRTP, never the RTP that was sent; 10 bytes longer (the tag).
    media = [p.payload for p in net.trace if howto.kind_of(p.payload) == "rtp"]
    assert len(media) == 100
    assert not set(media) & set(sent[b"a"] + sent[b"b"])
    assert {len(p) for p in media} == {len(p) + 10 for p in sent[b"a"] + sent[b"b"]}


async def test_howto_tuning(net: FakeNetwork) -> None:
    howto = load("howto_tuning")
    context = trio_dtlsmux.server_context(trio_dtlsmux.self_signed())
    endpoint = howto.tuned_endpoint(await fake_udp(net), context)
    config = endpoint.config
    assert (config.mtu, config.idle_timeout, config.max_connections) == (1200, 90.0, 50_000)
    async with endpoint:
        assert endpoint.statistics().peers == 0
    with pytest.raises(TypeError, match="unknown DtlsEndpoint option"):
        trio_dtlsmux.DtlsEndpoint(await fake_udp(net), idle_timout=5)


async def test_howto_metrics(certs: tuple[str, str]) -> None:
    # Real loopback and real HTTP: scrapes are answered by a thread.
    from prometheus_client.parser import text_string_to_metric_families

    howto = load("howto_metrics")
    server_sock = await real_udp()
    name = f"{LOCAL}:{server_sock.getsockname()[1]}"

    def scrape(url: str) -> dict[str, float]:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels.get("dtls_endpoint") == name
        }

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            server_context = trio_dtlsmux.server_context(*certs)
            host, port = await nursery.start(howto.main, server_sock, server_context, 0)
            assert host == LOCAL
            async with trio_dtlsmux.DtlsEndpoint(await real_udp()) as client:
                context = trio_dtlsmux.client_context(cafile=certs[0])
                conn = await client.connect((LOCAL, server_sock.getsockname()[1]), context)
                await conn.send(b"ping")
                assert await conn.receive() == b"ping"
                samples = await trio.to_thread.run_sync(scrape, f"http://{host}:{port}/metrics")
            assert samples["trio_dtlsmux_handshakes_completed_total"] == 1
            assert samples["trio_dtlsmux_peers"] == 1
            nursery.cancel_scope.cancel()


async def test_howto_keylog(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    howto = load("howto_keylog")
    keylog = tmp_path / "keys.txt"
    monkeypatch.setenv("SSLKEYLOGFILE", str(keylog))
    echo = load("echo_server").echo
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await serving(nursery, net, trio_dtlsmux.server_context(*certs), echo)
            await howto.main(await fake_udp(net), (LOCAL, 4433), certs[0])
            nursery.cancel_scope.cancel()
    lines = keylog.read_text().splitlines()
    assert lines and all(line.startswith("CLIENT_RANDOM ") for line in lines)


async def test_howto_testing(autojump_clock: trio.testing.MockClock) -> None:
    await load("howto_testing").test_shout_over_a_bad_network(autojump_clock)


async def test_howto_nat(autojump_clock: trio.testing.MockClock, net: FakeNetwork) -> None:
    howto = load("howto_nat")
    identity = trio_dtlsmux.self_signed()
    context = trio_dtlsmux.client_context(fingerprint=identity.fingerprint)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            server = await serving(
                nursery,
                net,
                trio_dtlsmux.server_context(identity),
                howto.server_handler,
                idle_timeout=30,
            )
            async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net), idle_timeout=30) as client:
                # With keepalives every 10 s, 5 minutes of silence is fine.
                conn = await client.connect((LOCAL, 4433), context)
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(howto.keep_alive, conn, 10)
                    await trio.sleep(300)
                    await conn.send(b"still there?")
                    assert await howto.receive(conn) == b"still there?"
                    tasks.cancel_scope.cancel()
                assert server.statistics().peers_reaped == 0
                assert conn.established
                await conn.aclose()

                # Without them the server forgets the client after 30 s.
                conn = await client.connect((LOCAL, 4433), context)
                await trio.sleep(31)
                assert server.statistics().peers_reaped == 1
                assert client.statistics().peers_reaped == 1
            nursery.cancel_scope.cancel()


_DEPLOY = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("howto_deploy", sys.argv[1])
howto = importlib.util.module_from_spec(spec)
spec.loader.exec_module(howto)
howto.main(
    "127.0.0.1",
    0,
    sys.argv[2],
    started=lambda address, pids: print(address[1], *pids, flush=True),
)
print("stopped", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux")
async def test_howto_deploy(certs: tuple[str, str], tmp_path: Path) -> None:
    # serve_workers forks, so it runs in a child process of its own, in the
    # directory where make_cert wrote cert.pem and key.pem.
    secret = tmp_path / "cookie.key"
    secret.write_text("# newest first\n" + "ab" * 32 + "\n" + "cd" * 32 + "\n")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", _DEPLOY, str(EXAMPLES / "howto_deploy.py"), str(secret)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            line = b""
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
            port, *pids = map(int, line.split())
            assert len(pids) == len(os.sched_getaffinity(0))
            async with trio_dtlsmux.DtlsEndpoint(await real_udp()) as client:
                context = trio_dtlsmux.client_context(cafile=certs[0])
                conn = await client.connect((LOCAL, port), context)
                await conn.send(b"on some core")
                assert await conn.receive() == b"on some core"
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(trio.EndOfChannel):
                    await conn.receive()
            assert await proc.wait() == 0
            rest = b""
            while chunk := await proc.stdout.receive_some(1024):
                rest += chunk
            assert rest == b"stopped\n"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
async def test_howto_resumption(
    autojump_clock: trio.testing.MockClock,
    net: FakeNetwork,
    certs: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    howto = load("howto_resumption")
    echo = load("echo_server").echo
    saved = tmp_path / "session"
    context = trio_dtlsmux.server_context(*certs)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            sockets = [await fake_udp(net, port=4433), await fake_udp(net, port=4434)]
            await nursery.start(howto.serve_on, sockets, context, echo)
            # A client runs three times; its first run finds no session.
            for port in (4433, 4433, 4434):
                async with trio_dtlsmux.DtlsEndpoint(await fake_udp(net)) as client:
                    conn = await howto.connect_resuming(client, (LOCAL, port), certs[0], saved)
                    await conn.send(b"hi")
                    assert await conn.receive() == b"hi"
                    await conn.aclose()
                assert stat.S_IMODE(saved.stat().st_mode) == 0o600
            nursery.cancel_scope.cancel()
    # The third run went to the other endpoint: same context, same session.
    said = capsys.readouterr().out.splitlines()
    assert [line for line in said if line in ("full handshake", "resumed")] == [
        "full handshake",
        "resumed",
        "resumed",
    ]
