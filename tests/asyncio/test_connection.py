"""The asyncio connection: messages, pings, keepalive, flow control, closing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from backchannel.asyncio import ClientConnection, ServerConnection, connect, serve
from backchannel.asyncio.connection import WRITE_HIGH_WATER
from backchannel.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from backchannel.protocol import OPEN


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_messages_both_types_and_fragmented() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            assert ws.state is OPEN
            await ws.send("text")
            assert await ws.recv() == "text"
            await ws.send(b"\x00\xff")
            assert await ws.recv() == b"\x00\xff"
            await ws.send(["frag", "ment", "ed"])
            assert await ws.recv() == "fragmented"

            async def parts():
                for part in (b"a", b"b"):
                    yield part

            await ws.send(parts())
            assert await ws.recv() == b"ab"
            with pytest.raises(TypeError):
                await ws.send(42)  # type: ignore[arg-type]


async def test_large_messages_written_apart_from_their_header_arrive_whole() -> None:
    """A server's large uncompressed messages go out as a header and the payload in one
    vectored write; back to back (the echoes are held and written together), with text
    and binary mixed and a small message between, each arrives whole and in order."""
    big = bytes(range(256)) * 4096
    messages: list[str | bytes] = [big, "é" * 50_000, b"small", bytearray(big[:70_000]), big]
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/", compression=None) as ws:
            for message in messages:
                await ws.send(message)
            for message in messages:
                expected = bytes(message) if isinstance(message, bytearray) else message
                assert await ws.recv() == expected


async def test_ping_resolves_with_round_trip_time() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            waiter = await ws.ping()
            rtt = await waiter
            assert rtt >= 0
            assert ws.latency == rtt


async def test_close_from_client_sets_code_and_reason_on_both_sides() -> None:
    seen: asyncio.Future[tuple[int | None, str | None]] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        # 4000 is an application's code, not a normal closure: ConnectionClosedError.
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
        seen.set_result((ws.close_code, ws.close_reason))

    async with serve(handler, "127.0.0.1", 0) as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}/")
        await ws.close(4000, "bye")
        assert (ws.close_code, ws.close_reason) == (4000, "bye")
        async with asyncio.timeout(5):
            assert await seen == (4000, "bye")
        with pytest.raises(ConnectionClosedError):
            await ws.send("too late")


async def test_two_concurrent_recv_are_refused() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            first = asyncio.create_task(ws.recv())
            await asyncio.sleep(0)  # let it start waiting
            with pytest.raises(InvalidState):
                await ws.recv()
            await ws.send("x")
            assert await first == "x"


async def test_keepalive_pings_again_after_each_pong(monkeypatch: pytest.MonkeyPatch) -> None:
    pongs: list[float] = []
    three = asyncio.Event()
    original = ClientConnection._keepalive_pong

    def spy(self: ClientConnection, waiter: asyncio.Future[float]) -> None:
        pongs.append(waiter.result())
        if len(pongs) == 3:
            three.set()
        original(self, waiter)

    monkeypatch.setattr(ClientConnection, "_keepalive_pong", spy)
    async with serve(echo, "127.0.0.1", 0, ping_interval=None) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/", ping_interval=0.01) as ws:
            async with asyncio.timeout(5):
                await three.wait()
            # The connection is still fine, and the latency was measured.
            await ws.send("still open")
            assert await ws.recv() == "still open"
            # (uvloop's clock ticks in milliseconds: a loopback round trip may read 0.)
            assert ws.latency >= 0 and all(rtt >= 0 for rtt in pongs)


async def test_keepalive_closes_with_1011_when_no_pong_comes() -> None:
    stalled = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        # Stop reading the socket: pings go unanswered.
        assert ws.transport is not None
        ws.transport.pause_reading()
        stalled.set()
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        ws = await connect(
            f"ws://127.0.0.1:{server.port}/",
            ping_interval=0.05,
            ping_timeout=0.1,
            close_timeout=0.5,
        )
        await stalled.wait()
        with pytest.raises(ConnectionClosedError):
            async with asyncio.timeout(5):
                await ws.recv()
        assert ws.protocol is not None
        assert ws.protocol.close_sent == (1011, "keepalive ping timeout")


async def test_send_waits_for_a_peer_that_does_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backpressure: send() returns only once the buffer is back under the high mark."""
    release = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        assert ws.transport is not None
        ws.transport.pause_reading()
        await release.wait()
        ws.transport.resume_reading()
        async for _ in ws:
            pass

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/", compression=None) as ws:
            # When the transport pauses us, let the server read again, so that a send
            # which waits for the buffer to drain can complete.
            original = ClientConnection.pause_writing
            pauses = 0

            # Connections have slots: spy on the class, for this connection only.
            def pause_writing(self: ClientConnection) -> None:
                nonlocal pauses
                if self is ws:
                    pauses += 1
                    release.set()
                original(self)

            monkeypatch.setattr(ClientConnection, "pause_writing", pause_writing)
            chunk = b"x" * 65536
            after_send = []
            # 64 MiB: far more than the kernel's socket buffers, so the transport must
            # pause us; without backpressure the buffer would grow to most of it.
            for _ in range(1024):
                await ws.send(chunk)
                after_send.append(ws.buffered_amount)
            assert pauses > 0
            assert max(after_send) <= WRITE_HIGH_WATER + len(chunk)


async def test_reading_pauses_when_max_queue_messages_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def burst(ws: ServerConnection) -> None:
        for i in range(100):
            await ws.send(str(i))
        await ws.wait_closed()

    async with serve(burst, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/", max_queue=4) as ws:
            pauses = []
            original = ClientConnection._pause_reading

            # Connections have slots: spy on the class, for this connection only.
            def spy(self: ClientConnection) -> None:
                if self is ws:
                    pauses.append(len(ws._messages))
                original(self)

            monkeypatch.setattr(ClientConnection, "_pause_reading", spy)
            received = [await ws.recv() for _ in range(100)]
            assert received == [str(i) for i in range(100)]
            # Reading paused with at least max_queue messages waiting, and resumed.
            assert pauses and min(pauses) >= 4
            assert not ws._reading_paused


def record_flushes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes, in bytes, of the batches of frames the server writes together."""
    sizes: list[int] = []
    original = ServerConnection._flush

    def spy(self: ServerConnection) -> None:
        if self._pending is not None:
            sizes.append(sum(map(len, self._pending)))
        original(self)

    monkeypatch.setattr(ServerConnection, "_flush", spy)
    return sizes


def burst(n: int, size: int = 32) -> bytes:
    """n masked text frames in one chunk, as a client would send them."""
    frame = b"\x81" + bytes([0x80 | size]) + b"\x00\x00\x00\x00" + b"m" * size
    return frame * n


async def raw_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await reader.readuntil(b"\r\n\r\n")
    return reader, writer


async def test_answers_to_a_burst_are_written_together(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = record_flushes(monkeypatch)
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        reader, writer = await raw_client(server.port)
        writer.write(burst(100))
        async with asyncio.timeout(5):
            echoed = await reader.readexactly(100 * 34)
        writer.close()
    assert echoed == (b"\x81\x20" + b"m" * 32) * 100
    # The messages arrived together (in one chunk, or a few), so their answers were
    # written in a handful of batches, not with one write each.
    assert sum(sizes) >= 99 * 34 and len(sizes) <= 3


async def test_the_answer_to_a_lone_message_is_not_held_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = record_flushes(monkeypatch)
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        reader, writer = await raw_client(server.port)
        for _ in range(5):
            writer.write(burst(1))
            async with asyncio.timeout(5):
                assert await reader.readexactly(34) == b"\x81\x20" + b"m" * 32
        writer.close()
    assert sizes == []


async def test_frames_held_back_stay_under_the_high_water_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes = record_flushes(monkeypatch)
    big = b"x" * 40_000

    async def answer_big(ws: ServerConnection) -> None:
        await ws.recv()
        # Four more messages are queued: these sends are held back, up to a bound.
        for _ in range(20):
            await ws.send(big)
        async for _ in ws:
            pass

    async with serve(answer_big, "127.0.0.1", 0, compression=None) as server:
        reader, writer = await raw_client(server.port)
        writer.write(burst(5))
        async with asyncio.timeout(5):
            await reader.readexactly(20 * (len(big) + 4))
        writer.close()
    assert sizes and max(sizes) <= WRITE_HIGH_WATER + len(big) + 4


async def test_send_nowait_and_close_nowait() -> None:
    arrived: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def park(ws: ServerConnection) -> None:
        await arrived.put(ws)
        await done.wait()

    async with serve(park, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            conn = await arrived.get()
            conn.send_nowait("one")
            conn.send_nowait(b"two")
            assert [await ws.recv(), await ws.recv()] == ["one", b"two"]
            conn.close_nowait(1000, "bye")
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1000, "bye")
            async with asyncio.timeout(5):
                await conn.wait_closed()
            with pytest.raises(ConnectionClosed):
                conn.send_nowait("too late")
        done.set()


async def test_send_nowait_refuses_to_cut_into_a_fragmented_message() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def fragments() -> AsyncIterator[str]:
        yield "a"
        started.set()
        await release.wait()
        yield "b"

    async def handler(ws: ServerConnection) -> None:
        sending = asyncio.create_task(ws.send(fragments()))
        await started.wait()
        with pytest.raises(InvalidState):
            ws.send_nowait("whole")
        release.set()
        await sending
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            assert await ws.recv() == "ab"
