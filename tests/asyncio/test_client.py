"""The asyncio client: redirects, timeouts, refusals and reconnection."""

from __future__ import annotations

import asyncio

import pytest

from backchannel.asyncio import ServerConnection, connect, serve
from backchannel.asyncio.client import _retryable
from backchannel.exceptions import (
    ConnectionClosed,
    HandshakeTimeout,
    InvalidArgument,
    InvalidHandshake,
    InvalidStatus,
)
from backchannel.protocol.handshake import accept_key
from backchannel.protocol.http11 import Headers, Request, Response


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def test_follows_redirects_up_to_the_limit() -> None:
    def redirect(ws: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/hop/"):
            n = int(request.path.rsplit("/", 1)[1])
            target = "/final" if n == 0 else f"/hop/{n - 1}"
            return Response(302, Headers([("Location", target)]))
        return None

    async with serve(echo, "127.0.0.1", 0, process_request=redirect) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/hop/3") as ws:
            assert ws.request is not None
            assert ws.request.path == "/final"
            await ws.send("arrived")
            assert await ws.recv() == "arrived"
        with pytest.raises(InvalidHandshake, match="redirects"):
            await connect(f"ws://127.0.0.1:{server.port}/hop/5", max_redirects=2)


async def test_refused_handshake_reports_status_and_body() -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response | None:
        return Response.text(403, "not you")

    async with serve(echo, "127.0.0.1", 0, process_request=refuse) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/")
    assert (info.value.status, info.value.body) == (403, b"not you")


async def test_handshake_times_out_against_a_silent_server() -> None:
    accepted = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(HandshakeTimeout):
            await connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)
        assert accepted
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_101_over_http10_is_refused() -> None:
    # RFC 6455 section 4.1: the server's handshake is an HTTP/1.1 or later response.
    writers = []

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        writer.write(
            b"HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key).encode()
            + b"\r\n\r\n"
        )
        await reader.read()

    server = await asyncio.start_server(old_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(5):
            with pytest.raises(InvalidHandshake, match=r"HTTP/1\.0"):
                await connect(f"ws://127.0.0.1:{port}/", proxy=None)
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_server_that_keeps_sending_gets_the_clients_close_frame_intact() -> None:
    # RFC 6455 section 7.1.1, client role: after failing the connection with 1009 the
    # client shuts down its sending side and reads (and drops) the rest of the oversized
    # message, so the server reads the close frame instead of a reset.
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def flooding_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(
                line.split(b":", 1)[1].strip().decode()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key:")
            )
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(key).encode()
                + b"\r\n\r\n"
            )
            # A 4 MiB binary message to a client whose limit is 64 KiB, sent whole.
            writer.write(bytes([0x82, 0x7F]) + (4 * 2**20).to_bytes(8, "big"))
            chunk = bytes(64 * 1024)
            for _ in range(64):
                writer.write(chunk)
                await writer.drain()
            data = bytearray()
            while part := await reader.read(65536):
                data += part
            received.set_result(bytes(data))
        except Exception as exc:
            received.set_exception(exc)
        finally:
            writer.close()

    server = await asyncio.start_server(flooding_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            ws = await connect(f"ws://127.0.0.1:{port}/", proxy=None, max_size=64 * 1024)
            with pytest.raises(ConnectionClosed) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1009
            data = await received
            await ws.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    # One masked close frame: FIN + close opcode, mask bit, then the code under the mask.
    assert data[0] == 0x88, data
    assert data[1] & 0x80
    length = data[1] & 0x7F
    assert len(data) == 2 + 4 + length
    mask, payload = data[2:6], data[6:]
    code = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))[:2]
    assert int.from_bytes(code, "big") == 1009


async def test_uri_errors_are_the_callers() -> None:
    with pytest.raises(InvalidArgument):
        await connect("http://127.0.0.1/")


async def test_async_for_reconnects_after_the_connection_drops() -> None:
    count = 0

    async def once(ws: ServerConnection) -> None:
        nonlocal count
        count += 1
        await ws.send(f"connection {count}")
        # Drop TCP without a close frame, as a crashed node would.
        assert ws.transport is not None
        ws.transport.abort()

    greetings = []
    async with serve(once, "127.0.0.1", 0) as server:
        async for ws in connect(f"ws://127.0.0.1:{server.port}/", backoff_initial=0.01):
            try:
                async for message in ws:
                    greetings.append(message)
            except ConnectionClosed:
                pass
            if len(greetings) == 3:
                break
    assert greetings == ["connection 1", "connection 2", "connection 3"]


def test_which_failures_are_retried() -> None:
    assert _retryable(ConnectionRefusedError())
    assert _retryable(InvalidStatus(503, "Service Unavailable"))
    assert _retryable(InvalidStatus(429, "Too Many Requests"))
    assert not _retryable(InvalidStatus(403, "Forbidden"))
    assert not _retryable(InvalidArgument("bad uri"))
