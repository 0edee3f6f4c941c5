"""The asyncio server: plain HTTP on the WebSocket port, shutdown, handlers, sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from backchannel.asyncio import ServerConnection, Stream, connect, serve
from backchannel.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from backchannel.protocol.http11 import Headers, Request, Response, parse_response_head


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def http_get(port: int, path: str = "/", extra: str = "") -> Response:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n".encode())
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    parsed = parse_response_head(data)
    assert parsed is not None
    response, body = parsed
    response.body = body
    return response


async def test_plain_request_without_process_request_gets_426() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        response = await http_get(server.port)
    assert response.status == 426
    assert response.headers.get("Sec-WebSocket-Version") == "13"


async def test_process_request_answers_plain_http_and_lets_upgrades_through() -> None:
    def process(ws: ServerConnection, request: Request) -> Response | None:
        if request.path == "/health":
            return Response.text(200, "ok")
        return None

    async with serve(echo, "127.0.0.1", 0, process_request=process) as server:
        response = await http_get(server.port, "/health")
        async with connect(f"ws://127.0.0.1:{server.port}/ws") as ws:
            await ws.send("still a websocket")
            assert await ws.recv() == "still a websocket"
    assert response.status == 200
    assert response.body == b"ok"


async def test_async_process_request_can_refuse_an_upgrade() -> None:
    async def process(ws: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Authorization") != "Bearer good":
            return Response.text(401, "who are you?")
        return None

    async with serve(echo, "127.0.0.1", 0, process_request=process) as server:
        with pytest.raises(InvalidStatus) as info:
            await connect(f"ws://127.0.0.1:{server.port}/")
        ws = await connect(
            f"ws://127.0.0.1:{server.port}/", additional_headers={"Authorization": "Bearer good"}
        )
        await ws.send("in")
        assert await ws.recv() == "in"
        await ws.close()
    assert info.value.status == 401
    assert info.value.body == b"who are you?"


async def test_graceful_shutdown_closes_every_connection_with_1001() -> None:
    async with serve(echo, "127.0.0.1", 0) as server:
        clients = [await connect(f"ws://127.0.0.1:{server.port}/") for _ in range(3)]
        for ws in clients:
            await ws.send("hi")
            assert await ws.recv() == "hi"
    for ws in clients:
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()
        assert ws.close_code == 1001


async def test_stop_listening_refuses_newcomers_and_keeps_open_connections() -> None:
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        port = server.port
        async with connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            server.stop_listening()
            # Nobody listens: the kernel refuses at once, and the port is free.
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", port)
            replacement = await serve(echo, "127.0.0.1", port)
            await replacement.aclose()
            # The connection accepted before goes on until the server closes it.
            await ws.send("still here")
            assert await ws.recv() == "still here"


async def test_handler_return_closes_with_1000_and_exception_with_1011() -> None:
    async def greet(ws: ServerConnection) -> None:
        await ws.send("hello")

    async def crash(ws: ServerConnection) -> None:
        raise RuntimeError("boom")

    async with serve(greet, "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            assert await ws.recv() == "hello"
            with pytest.raises(ConnectionClosedOK):
                await ws.recv()
            assert ws.close_code == 1000
    async with serve(crash, "127.0.0.1", 0) as server:
        ws = await connect(f"ws://127.0.0.1:{server.port}/")
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
        assert ws.close_code == 1011


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.sock")
    async with serve(echo, unix_path=path):
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        transport, _ = await loop.create_unix_connection(
            lambda: asyncio.StreamReaderProtocol(reader), path
        )
        transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            data = await reader.read()
        transport.close()
    assert data.startswith(b"HTTP/1.1 426 ")


async def test_subprotocol_negotiation() -> None:
    async def report(ws: ServerConnection) -> None:
        await ws.send(str(ws.subprotocol))

    async with serve(report, "127.0.0.1", 0, subprotocols=["chat.v2", "chat.v1"]) as server:
        async with connect(
            f"ws://127.0.0.1:{server.port}/", subprotocols=["chat.v1", "chat.v2"]
        ) as ws:
            assert await ws.recv() == "chat.v2"
            assert ws.subprotocol == "chat.v2"
        async with connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["other"]) as ws:
            assert await ws.recv() == "None"


def test_runs_on_uvloop() -> None:
    """The same server and client on uvloop's event loop (the `uvloop` extra)."""
    import uvloop

    async def main() -> tuple[object, str | bytes]:
        async with serve(echo, "127.0.0.1", 0) as server:
            async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
                await ws.send("on uvloop")
                reply = await ws.recv()
                waiter = await ws.ping()
                await waiter
        return type(asyncio.get_running_loop()), reply

    loop_type, reply = uvloop.run(main())
    assert loop_type is uvloop.Loop
    assert reply == "on uvloop"


async def test_an_idle_connection_holds_only_what_it_needs() -> None:
    # Most connections of a server are idle: no instance dictionaries, no HTTP parser
    # after the upgrade, and no task but the handler's (keepalive runs on timers).
    arrived: asyncio.Queue[ServerConnection] = asyncio.Queue()
    done = asyncio.Event()

    async def park(ws: ServerConnection) -> None:
        await arrived.put(ws)
        await done.wait()

    async with serve(park, "127.0.0.1", 0, ping_interval=30) as server:
        tasks_before = len(asyncio.all_tasks())
        clients = [await connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None)]
        clients.append(await connect(f"ws://127.0.0.1:{server.port}/", ping_interval=None))
        conns = [await arrived.get(), await arrived.get()]
        for conn in conns:
            assert not hasattr(conn, "__dict__")
            assert conn.protocol is not None and not hasattr(conn.protocol, "__dict__")
            assert conn._parser is None
            assert conn._keepalive_timer is not None
            assert conn._send_lock is None and conn._lost_future is None
        assert len(asyncio.all_tasks()) == tasks_before + 2
        done.set()
        for client in clients:
            await client.close()


async def test_process_request_may_take_longer_than_open_timeout() -> None:
    # A long poll is a complete request whose answer waits for news: open_timeout, which
    # is for requests that never complete, must not cut it.
    async def slow(ws: ServerConnection, request: Request) -> Response:
        await asyncio.sleep(0.3)  # the application's own wait, longer than open_timeout
        return Response.text(200, "news")

    async with serve(echo, "127.0.0.1", 0, process_request=slow, open_timeout=0.1) as server:
        response = await http_get(server.port, "/poll")
    assert response.status == 200 and response.body == b"news"


async def test_a_client_that_goes_away_cancels_its_pending_request() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hold(ws: ServerConnection, request: Request) -> Response:
        started.set()
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("not reached")

    async with serve(echo, "127.0.0.1", 0, process_request=hold) as server:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /poll HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            await started.wait()
        writer.close()
        await writer.wait_closed()
        async with asyncio.timeout(5):
            await cancelled.wait()


# Streamed answers (Stream): what Server-Sent Events are built on.


async def test_a_stream_is_sent_chunked_and_read_whole_by_an_http_client() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"data: one\n\n", b"", b"data: two\n\n", b"x" * 100_000):
            yield part

    async def stream(ws: ServerConnection, request: Request) -> Stream:
        headers = Headers([("Content-Type", "text/event-stream")])
        return Stream(200, headers, chunks())

    async with serve(echo, "127.0.0.1", 0, process_request=stream) as server:
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{server.port}/events", timeout=5)
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    assert response.headers["connection"] == "close"
    assert "content-length" not in response.headers
    assert response.content == b"data: one\n\ndata: two\n\n" + b"x" * 100_000


async def test_a_client_that_goes_away_closes_the_stream_body() -> None:
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            yield b"first"
            await asyncio.Future()  # nothing more, ever
        finally:
            closed.set()

    async def stream(ws: ServerConnection, request: Request) -> Stream:
        return Stream(200, Headers(), chunks())

    async with serve(echo, "127.0.0.1", 0, process_request=stream) as server:
        async with httpx.AsyncClient() as http:
            url = f"http://127.0.0.1:{server.port}/events"
            async with http.stream("GET", url, timeout=5) as response:
                async for chunk in response.aiter_raw():
                    assert chunk == b"first"
                    break
        async with asyncio.timeout(5):
            await closed.wait()


async def test_closing_the_server_closes_a_stream_body() -> None:
    started = asyncio.Event()
    closed = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        try:
            started.set()
            yield b"first"
            await asyncio.Future()
        finally:
            closed.set()

    async def stream(ws: ServerConnection, request: Request) -> Stream:
        return Stream(200, Headers(), chunks())

    server = await serve(echo, "127.0.0.1", 0, process_request=stream)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    async with asyncio.timeout(5):
        await started.wait()
        await server.aclose()
        await closed.wait()
        # The client read the head and the first chunk, then the end of the connection.
        data = await reader.read()
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"5\r\nfirst\r\n")
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_never_reads_holds_back_the_producer() -> None:
    # Chunks of 64 KiB, up to 128 MiB: a server that did not wait for the socket to drain
    # would buffer them all. It asks for the next chunk only below the high water mark,
    # and drops the client once it has read nothing for ping_timeout.
    produced: list[int] = []
    closed = asyncio.Event()
    chunk = b"x" * 65536

    async def chunks(connection: ServerConnection) -> AsyncIterator[bytes]:
        try:
            for _ in range(2000):
                produced.append(connection.buffered_amount)
                yield chunk
        finally:
            closed.set()

    async def stream(ws: ServerConnection, request: Request) -> Stream:
        return Stream(200, Headers(), chunks(ws))

    async with serve(echo, "127.0.0.1", 0, process_request=stream, ping_timeout=0.5) as server:
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(10):
            await closed.wait()
        sock.close()
    # What the kernel's buffers took, then the server's own buffer: far from 2000
    # chunks, and never more than one chunk past the high water mark in user space.
    assert len(produced) < 200
    assert max(produced) <= 64 * 1024 + len(chunk) + 100


async def test_requests_sent_behind_a_stream_are_dropped_and_the_connection_closes() -> None:
    calls = 0
    release = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await release.wait()
        yield b"last"

    async def stream(ws: ServerConnection, request: Request) -> Stream:
        nonlocal calls
        calls += 1
        return Stream(200, Headers(), chunks())

    async with serve(echo, "127.0.0.1", 0, process_request=stream) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(5):
            assert (await reader.readuntil(b"5\r\nfirst\r\n")).startswith(b"HTTP/1.1 200 ")
            # Pipelined behind the stream: never answered, never queued.
            writer.write(b"GET /more HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
            await writer.drain()
            release.set()
            rest = await reader.read()
        assert rest == b"4\r\nlast\r\n0\r\n\r\n" and calls == 1
        writer.close()
        await writer.wait_closed()
