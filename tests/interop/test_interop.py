"""Interop: backchannel against real peers, the `websockets` library and node's `ws`.

Our server echoes messages and understands three text commands, like ws_peer.mjs:
``close:CODE:REASON`` closes with that code and reason, ``ping:X`` pings with payload X
and answers ``pong:X`` once the pong arrived. Each server connection reports the close
code and reason it saw on ``EchoServer.closes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
import websockets.asyncio.server
import websockets.exceptions

from backchannel.asyncio import ServerConnection, connect, serve
from backchannel.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK

pytestmark = pytest.mark.interop

HERE = Path(__file__).parent
PEER = HERE / "ws_peer.mjs"
NODE = shutil.which("node")
# Outside CI a developer without node may skip these; in CI (CI=true) nothing is
# skipped: `make test` installs node and the `ws` package, and a missing one fails.
needs_node = pytest.mark.skipif(
    os.environ.get("CI") != "true"
    and (NODE is None or not (HERE / "node_modules" / "ws").is_dir()),
    reason="node or tests/interop/node_modules missing (run `make node-deps`)",
)

TIMEOUT = 10  # seconds: the bound on any single exchange with a peer
CLOSES = [(1000, ""), (1000, "done"), (1001, "going away"), (4000, "custom reason")]
BIG = "x" * 4096  # above every compress threshold, and compresses well


# Our server.


@dataclass
class PeerServer:
    """A server under test: its port, and the (code, reason) each connection closed with."""

    port: int
    closes: asyncio.Queue[tuple[int | None, str | None]] = field(default_factory=asyncio.Queue)

    async def next_close(self) -> tuple[int | None, str | None]:
        async with asyncio.timeout(TIMEOUT):
            return await self.closes.get()


@dataclass
class EchoServer(PeerServer):
    connections: list[ServerConnection] = field(default_factory=list)


@contextlib.asynccontextmanager
async def echo_server(**kwargs: Any) -> AsyncIterator[EchoServer]:
    state: EchoServer | None = None

    async def handler(ws: ServerConnection) -> None:
        assert state is not None
        state.connections.append(ws)
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(int(code), reason)
                    break
                if isinstance(message, str) and message.startswith("ping:"):
                    payload = message[5:]
                    await (await ws.ping(payload.encode()))
                    await ws.send(f"pong:{payload}")
                    continue
                await ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            state.closes.put_nowait((ws.close_code, ws.close_reason))

    async with serve(handler, "127.0.0.1", 0, **kwargs) as server:
        state = EchoServer(server.port)
        yield state


# The `websockets` server.


class WebsocketsServer(PeerServer):
    pass


@contextlib.asynccontextmanager
async def websockets_server(**kwargs: Any) -> AsyncIterator[WebsocketsServer]:
    state: WebsocketsServer | None = None

    async def handler(ws: websockets.asyncio.server.ServerConnection) -> None:
        assert state is not None
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith("close:"):
                    _, code, reason = message.split(":", 2)
                    await ws.close(int(code), reason)
                    break
                await ws.send(message)
        except websockets.exceptions.ConnectionClosed:
            pass
        finally:
            await ws.wait_closed()
            state.closes.put_nowait((ws.close_code, ws.close_reason))

    async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0, **kwargs) as server:
        state = WebsocketsServer(server.sockets[0].getsockname()[1])
        yield state


# Node's `ws`, through ws_peer.mjs.


class NodeServer:
    """``ws_peer.mjs server --report``; ``event(kind)`` returns its next report of a kind."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.port = 0
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> NodeServer:
        assert NODE is not None
        self.proc = await asyncio.create_subprocess_exec(
            NODE,
            str(PEER),
            "server",
            "--port",
            "0",
            "--report",
            *self.args,
            cwd=HERE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.port = (await self._line())["port"]
        return self

    async def _line(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(TIMEOUT):
            line = await self.proc.stdout.readline()
        assert line, "ws_peer.mjs server exited"
        result: dict[str, Any] = json.loads(line)
        return result

    async def event(self, kind: str) -> dict[str, Any]:
        while True:
            report = await self._line()
            if report.get("event") == kind:
                return report

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the peer shuts down when its stdin ends
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.proc.communicate()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


async def node_client(url: str, script: list[dict[str, Any]], *args: str) -> dict[str, Any]:
    """Run a ``ws_peer.mjs client`` script; return its result line."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(PEER),
        "client",
        "--url",
        url,
        "--timeout",
        "5",
        "--script",
        json.dumps(script),
        *args,
        cwd=HERE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(TIMEOUT + 5):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().splitlines()
    assert lines, f"ws_peer.mjs client printed nothing; stderr: {err.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# Our server, the `websockets` client.


async def test_websockets_client_text_and_binary() -> None:
    async with (
        echo_server() as server,
        websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}") as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\xfe\xff")
            assert await ws.recv() == b"\x00\x01\xfe\xff"
            await ws.send("")
            assert await ws.recv() == ""
            await ws.send(b"")
            assert await ws.recv() == b""


async def test_websockets_client_fragmented() -> None:
    async with (
        echo_server() as server,
        websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}") as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            await ws.send(["frag", "men", "ted ✓"])
            assert await ws.recv() == "fragmented ✓"
            await ws.send([b"\x01", b"\x02\x03", b""])
            assert await ws.recv() == b"\x01\x02\x03"


async def test_websockets_client_compressed() -> None:
    async with (
        echo_server() as server,
        websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}") as ws,
    ):
        assert ws.response is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
        assert "permessage-deflate" in extensions
        assert server.connections[0].protocol is not None
        assert server.connections[0].protocol.deflate is not None
        async with asyncio.timeout(TIMEOUT):
            await ws.send(BIG)
            assert await ws.recv() == BIG
            await ws.send(BIG.encode())
            assert await ws.recv() == BIG.encode()
            await ws.send([BIG, BIG])
            assert await ws.recv() == BIG + BIG


async def test_websockets_client_without_compression() -> None:
    async with (
        echo_server() as server,
        websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}", compression=None) as ws,
    ):
        assert ws.response is not None
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        async with asyncio.timeout(TIMEOUT):
            await ws.send(BIG)
            assert await ws.recv() == BIG


async def test_websockets_client_ping_pong() -> None:
    async with (
        echo_server() as server,
        websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}") as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            # The client pings, our server answers.
            latency = await (await ws.ping(b"client-ping"))
            assert latency >= 0
            # Our server pings, the client answers, our server reports it.
            await ws.send("ping:server-ping")
            assert await ws.recv() == "pong:server-ping"


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_websockets_client_closes(code: int, reason: str) -> None:
    async with echo_server() as server:
        ws = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.send("x")
            assert await ws.recv() == "x"
            await ws.close(code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        assert await server.next_close() == (code, reason)


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_our_server_closes_websockets_client(code: int, reason: str) -> None:
    async with echo_server() as server:
        ws = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.send(f"close:{code}:{reason}")
            with pytest.raises(websockets.exceptions.ConnectionClosed) as caught:
                await ws.recv()
            await ws.wait_closed()
        assert caught.value.rcvd is not None
        assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        assert await server.next_close() == (code, reason)


# Our server, the node client.


def _script_basics() -> list[dict[str, Any]]:
    return [
        {"send": "héllo"},
        {"expect": "héllo"},
        {"send_binary_hex": "0001feff"},
        {"expect_binary_hex": "0001feff"},
        {"send_fragmented": ["frag", "men", "ted"]},
        {"expect": "fragmented"},
        {"send": "y", "repeat": 10000},
        {"expect": "y", "repeat": 10000},
        {"ping": "node-ping"},
        {"expect_pong": "node-ping"},
        {"send": "ping:server-ping"},
        {"expect": "pong:server-ping"},
    ]


@needs_node
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_node_client(deflate: bool) -> None:
    args = ["--deflate"] if deflate else []
    async with echo_server() as server:
        result = await node_client(f"ws://127.0.0.1:{server.port}", _script_basics(), *args)
        assert result == {"ok": True, "close_code": 1000, "close_reason": ""}
        assert await server.next_close() == (1000, "")
        proto = server.connections[0].protocol
        assert proto is not None
        assert (proto.deflate is not None) is deflate


@needs_node
@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_node_client_closes(code: int, reason: str) -> None:
    script: list[dict[str, Any]] = [{"send": "x"}, {"expect": "x"}, {"close": [code, reason]}]
    script.append({"expect_close": [code, reason]})
    async with echo_server() as server:
        result = await node_client(f"ws://127.0.0.1:{server.port}", script)
        assert result["ok"], result
        assert await server.next_close() == (code, reason)


@needs_node
@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_our_server_closes_node_client(code: int, reason: str) -> None:
    script: list[dict[str, Any]] = [
        {"send": f"close:{code}:{reason}"},
        {"expect_close": [code, reason]},
    ]
    async with echo_server() as server:
        result = await node_client(f"ws://127.0.0.1:{server.port}", script)
        assert result == {"ok": True, "close_code": code, "close_reason": reason}
        assert await server.next_close() == (code, reason)


# Our client, the `websockets` server.


async def test_our_client_websockets_server_messages() -> None:
    async with (
        websockets_server() as server,
        connect(f"ws://127.0.0.1:{server.port}") as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            await ws.send("héllo")
            assert await ws.recv() == "héllo"
            await ws.send(b"\x00\x01\xfe\xff")
            assert await ws.recv() == b"\x00\x01\xfe\xff"
            await ws.send(["a", "b"])
            assert await ws.recv() == "ab"
            await ws.send([b"\x01", b"\x02"])
            assert await ws.recv() == b"\x01\x02"
            rtt = await (await ws.ping())
            assert rtt >= 0
        assert ws.state.name == "OPEN"
    assert (ws.close_code, ws.close_reason) == (1000, "")
    assert await server.next_close() == (1000, "")


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_our_client_websockets_server_compression(compression: str | None) -> None:
    async with (
        websockets_server() as server,
        connect(f"ws://127.0.0.1:{server.port}", compression=compression) as ws,
    ):
        assert ws.response is not None
        assert ws.protocol is not None
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions") or ""
        if compression:
            assert "permessage-deflate" in extensions
            assert ws.protocol.deflate is not None
        else:
            assert extensions == ""
            assert ws.protocol.deflate is None
        async with asyncio.timeout(TIMEOUT):
            for message in (BIG, BIG.encode(), "short"):
                await ws.send(message)
                assert await ws.recv() == message
            await ws.send([BIG, BIG])
            assert await ws.recv() == BIG + BIG


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_our_client_closes_websockets_server(code: int, reason: str) -> None:
    async with websockets_server() as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.close(code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        assert await server.next_close() == (code, reason)


@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_websockets_server_closes_our_client(code: int, reason: str) -> None:
    async with websockets_server() as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.send(f"close:{code}:{reason}")
            expected = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
            with pytest.raises(expected) as caught:
                await ws.recv()
            await ws.wait_closed()
        assert (caught.value.code, caught.value.reason) == (code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        assert await server.next_close() == (code, reason)


# Our client, the node server.


@needs_node
@pytest.mark.parametrize("deflate", [False, True], ids=["plain", "deflate"])
async def test_our_client_node_server(deflate: bool) -> None:
    args = ["--deflate"] if deflate else []
    async with NodeServer(*args) as node:
        async with connect(f"ws://127.0.0.1:{node.port}") as ws:
            opened = await node.event("connection")
            assert ("permessage-deflate" in opened["extensions"]) is deflate
            assert ws.protocol is not None
            assert (ws.protocol.deflate is not None) is deflate
            async with asyncio.timeout(TIMEOUT):
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                report = await node.event("message")
                assert (report["binary"], report["length"]) == (False, len("héllo".encode()))
                await ws.send(b"\x00\x01\xfe\xff")
                assert await ws.recv() == b"\x00\x01\xfe\xff"
                assert (await node.event("message"))["binary"] is True
                await ws.send(["a", "b"])
                assert await ws.recv() == "ab"
                assert (await node.event("message"))["length"] == 2
                await ws.send(BIG)
                assert await ws.recv() == BIG
                report = await node.event("message")
                assert report["length"] == len(BIG)
                if report["compressed"] is not None:
                    assert report["compressed"] is deflate
                rtt = await (await ws.ping())
                assert rtt >= 0
                # The node server pings us; we answer; it tells us.
                await ws.send("ping:node")
                assert await ws.recv() == "pong:node"
        assert (ws.close_code, ws.close_reason) == (1000, "")
        closed = await node.event("close")
        assert (closed["code"], closed["reason"]) == (1000, "")


@needs_node
@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_node_server_closes_our_client(code: int, reason: str) -> None:
    async with NodeServer() as node:
        ws = await connect(f"ws://127.0.0.1:{node.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.send(f"close:{code}:{reason}")
            with pytest.raises(ConnectionClosed) as caught:
                await ws.recv()
            await ws.wait_closed()
        assert caught.value.received
        assert (caught.value.code, caught.value.reason) == (code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        closed = await node.event("close")
        assert (closed["code"], closed["reason"]) == (code, reason)


@needs_node
@pytest.mark.parametrize(("code", "reason"), CLOSES)
async def test_our_client_closes_node_server(code: int, reason: str) -> None:
    async with NodeServer() as node:
        ws = await connect(f"ws://127.0.0.1:{node.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.close(code, reason)
        assert (ws.close_code, ws.close_reason) == (code, reason)
        closed = await node.event("close")
        assert (closed["code"], closed["reason"]) == (code, reason)


@needs_node
async def test_node_server_max_payload_closes_1009() -> None:
    async with NodeServer("--max-payload", "100") as node:
        ws = await connect(f"ws://127.0.0.1:{node.port}", compression=None)
        async with asyncio.timeout(TIMEOUT):
            await ws.send("z" * 100)  # at the limit: fine
            assert await ws.recv() == "z" * 100
            await ws.send("z" * 101)
            with pytest.raises(ConnectionClosedError) as caught:
                await ws.recv()
            await ws.wait_closed()
        assert caught.value.code == 1009
        assert ws.close_code == 1009


# TLS.


@needs_node
async def test_wss_our_server_node_client(
    server_ssl: ssl.SSLContext, tls_files: dict[str, Path]
) -> None:
    script: list[dict[str, Any]] = [
        {"send": "secret"},
        {"expect": "secret"},
        {"close": [4000, "tls bye"]},
    ]
    ca = str(tls_files["ca"])
    async with echo_server(ssl=server_ssl) as server:
        url = f"wss://localhost:{server.port}"
        result = await node_client(url, script, "--ca", ca, "--deflate")
        assert result == {"ok": True, "close_code": 4000, "close_reason": "tls bye"}
        assert await server.next_close() == (4000, "tls bye")


@needs_node
async def test_wss_node_client_rejects_unknown_ca(server_ssl: ssl.SSLContext) -> None:
    async with echo_server(ssl=server_ssl) as server:
        result = await node_client(f"wss://localhost:{server.port}", [{"send": "x"}])
        assert result["ok"] is False
        assert result["close_code"] == 1006


@needs_node
async def test_wss_our_client_node_server(
    client_ssl: ssl.SSLContext, tls_files: dict[str, Path]
) -> None:
    tls = ["--tls-cert", str(tls_files["cert"]), "--tls-key", str(tls_files["key"])]
    async with NodeServer(*tls, "--deflate") as node:
        async with connect(f"wss://localhost:{node.port}", ssl=client_ssl) as ws:
            async with asyncio.timeout(TIMEOUT):
                await ws.send(BIG)
                assert await ws.recv() == BIG
                await ws.send(b"\xff")
                assert await ws.recv() == b"\xff"
        assert ws.close_code == 1000
        closed = await node.event("close")
        assert closed["code"] == 1000


async def test_wss_our_server_websockets_client(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with (
        echo_server(ssl=server_ssl) as server,
        websockets.asyncio.client.connect(f"wss://localhost:{server.port}", ssl=client_ssl) as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            await ws.send("secret")
            assert await ws.recv() == "secret"


async def test_wss_our_client_websockets_server(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    async with (
        websockets_server(ssl=server_ssl) as server,
        connect(f"wss://localhost:{server.port}", ssl=client_ssl) as ws,
    ):
        async with asyncio.timeout(TIMEOUT):
            await ws.send("secret")
            assert await ws.recv() == "secret"


# Size limits, enforced by us.


async def test_our_server_max_size_closes_websockets_client_1009() -> None:
    async with echo_server(max_size=1000) as server:
        ws = await websockets.asyncio.client.connect(f"ws://127.0.0.1:{server.port}")
        async with asyncio.timeout(TIMEOUT):
            await ws.send("a" * 1000)  # at the limit: fine
            assert await ws.recv() == "a" * 1000
            await ws.send("a" * 1001)
            with pytest.raises(websockets.exceptions.ConnectionClosedError):
                await ws.recv()
            await ws.wait_closed()
        assert ws.close_code == 1009
        code, _ = await server.next_close()
        assert code == 1009


async def test_our_client_max_size_closes_websockets_server_1009() -> None:
    async with websockets_server() as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}", max_size=1000)
        async with asyncio.timeout(TIMEOUT):
            await ws.send(b"b" * 1000)
            assert await ws.recv() == b"b" * 1000
            await ws.send(b"b" * 1001)  # the server echoes it: too big for us
            with pytest.raises(ConnectionClosedError) as caught:
                await ws.recv()
            await ws.wait_closed()
        assert caught.value.code == 1009
        assert ws.close_code == 1009
        code, _ = await server.next_close()
        assert code == 1009
