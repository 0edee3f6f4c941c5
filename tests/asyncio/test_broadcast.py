"""broadcast(): one encoding, many connections, no waiting for a slow one."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from backchannel.asyncio import ClientConnection, ServerConnection, broadcast, connect, serve
from backchannel.protocol import connection as sansio
from backchannel.protocol.deflate import DeflateConfig


class Hub:
    """A server whose handler parks every connection until the test is done."""

    def __init__(self) -> None:
        self.arrived: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        await self.arrived.put(ws)
        await self.done.wait()

    async def accept(self, n: int) -> list[ServerConnection]:
        async with asyncio.timeout(10):
            return [await self.arrived.get() for _ in range(n)]


@asynccontextmanager
async def hub_server(**kwargs: object) -> AsyncIterator[tuple[Hub, int]]:
    hub = Hub()
    async with serve(hub.handler, "127.0.0.1", 0, **kwargs) as server:  # type: ignore[arg-type]
        try:
            yield hub, server.port
        finally:
            hub.done.set()


def record_encodes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Spy on the servers' frame encoding (still encoding): every whole-message frame made."""
    frames: list[bytes] = []
    for name in ("send_text", "send_binary"):
        original = getattr(sansio.Connection, name)

        def spy(self: sansio.Connection, data: Any, original: Any = original) -> bytes:
            frame: bytes = original(self, data)
            if self.side is sansio.SERVER:
                frames.append(frame)
            return frame

        monkeypatch.setattr(sansio.Connection, name, spy)
    return frames


@pytest.mark.parametrize("message", ["héllo everyone", b"\x00\x01binary"], ids=["text", "binary"])
async def test_every_client_receives_a_frame_encoded_once(
    message: str | bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hub_server() as (hub, port):
        clients = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(5)]
        conns = await hub.accept(5)
        encoded = record_encodes(monkeypatch)
        assert broadcast(conns, message) == []
        assert len(encoded) == 1
        for client in clients:
            assert await client.recv() == message
            await client.close()


async def test_compression_without_context_takeover_is_shared_and_with_it_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = "compressible " * 100
    for config, shared in (
        (DeflateConfig(server_no_context_takeover=True), True),
        (DeflateConfig(), False),
    ):
        async with hub_server(compression=config) as (hub, port):
            clients = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
            conns = await hub.accept(3)
            assert all(conn.protocol and conn.protocol.deflate for conn in conns)
            encoded = record_encodes(monkeypatch)
            for _ in range(2):
                assert broadcast(conns, message) == []
            frames = list(encoded)
            for client in clients:
                assert [await client.recv(), await client.recv()] == [message, message]
                await client.close()
        # Compressed: the frame is far shorter than the message.
        assert all(len(frame) < 200 for frame in frames)
        # Shared: one frame per broadcast. Context takeover: one per connection each time.
        assert len(frames) == (2 if shared else 6), config


async def test_mixed_connections_get_the_encoding_each_negotiated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = "mixed " * 100
    async with hub_server(compression=DeflateConfig(server_no_context_takeover=True)) as (
        hub,
        port,
    ):
        compressed = await connect(f"ws://127.0.0.1:{port}/")
        plain = await connect(f"ws://127.0.0.1:{port}/", compression=None)
        conns = await hub.accept(2)
        encoded = record_encodes(monkeypatch)
        broadcast(conns, message)
        sizes = sorted(len(frame) for frame in encoded)
        assert await compressed.recv() == message
        assert await plain.recv() == message
        await compressed.close()
        await plain.close()
    assert sizes[0] < 100 and sizes[1] == len(message) + 4


async def test_closed_and_fragmenting_connections_are_skipped() -> None:
    async with hub_server() as (hub, port):
        clients = [await connect(f"ws://127.0.0.1:{port}/") for _ in range(3)]
        conns = await hub.accept(3)
        await clients[0].close()
        await conns[0].wait_closed()

        # conns[1] is in the middle of a fragmented message: a broadcast cannot cut in.
        release = asyncio.Event()
        started = asyncio.Event()

        async def fragments() -> AsyncIterator[str]:
            yield "part one, "
            started.set()
            await release.wait()
            yield "part two"

        sending = asyncio.create_task(conns[1].send(fragments()))
        async with asyncio.timeout(5):
            await started.wait()
        skipped = broadcast(conns, "news")
        release.set()
        await sending
        assert skipped == [conns[0], conns[1]]
        assert await clients[1].recv() == "part one, part two"
        assert await clients[2].recv() == "news"
        # Once the fragmented message is done, conns[1] takes broadcasts again.
        assert broadcast(conns[1:], "more") == []
        assert await clients[1].recv() == "more"
        for client in clients[1:]:
            await client.close()


async def test_a_reader_that_stalls_is_skipped_and_the_others_keep_receiving() -> None:
    async with hub_server() as (hub, port):
        fast = await connect(f"ws://127.0.0.1:{port}/")
        # A raw client that completes the handshake and then never reads.
        slow_sock = socket.create_connection(("127.0.0.1", port))
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow_sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        conns = await hub.accept(2)
        slow = next(conn for conn in conns if conn.remote_address[1] != fast.local_address[1])
        chunk = b"x" * 65536
        skipped: list[ServerConnection] = []
        # Bounded: the kernel buffers of a stalled socket fill within a few MiB.
        for _ in range(2000):
            skipped = broadcast(conns, chunk)
            assert await fast.recv() == chunk
            if skipped:
                break
        assert skipped == [slow]
        # The stalled peer's buffer is bounded by the high water mark plus one message.
        assert slow.buffered_amount <= 64 * 1024 + len(chunk) + 14
        # Everyone else still gets everything.
        assert broadcast(conns, b"after") == [slow]
        assert await fast.recv() == b"after"
        slow_sock.close()
        await fast.close()


async def test_client_connections_mask_each_frame_themselves() -> None:
    received: asyncio.Queue[str] = asyncio.Queue()

    async def collect(ws: ServerConnection) -> None:
        async for message in ws:
            await received.put(str(message))

    async with serve(collect, "127.0.0.1", 0) as server:
        clients: list[ClientConnection] = [
            await connect(f"ws://127.0.0.1:{server.port}/") for _ in range(3)
        ]
        assert broadcast(clients, "from clients") == []
        async with asyncio.timeout(5):
            got = [await received.get() for _ in range(3)]
        assert got == ["from clients"] * 3
        for client in clients:
            await client.close()


async def test_refuses_what_is_not_a_message() -> None:
    with pytest.raises(TypeError, match="cannot broadcast int"):
        broadcast([], 42)  # type: ignore[arg-type]
