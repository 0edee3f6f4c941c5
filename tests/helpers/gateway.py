"""A reverse proxy on loopback that misbehaves on purpose, as real middleboxes do.

    async with Gateway(server_port, refuse_upgrades=True) as gateway:
        ...  # point a browser at http://127.0.0.1:{gateway.port}/

It forwards HTTP/1.1 requests one at a time per connection (bodies framed by
Content-Length, as the hub's are; responses by Content-Length or chunked, a chunked one
passed on chunk by chunk as it comes, as an event stream needs) and tunnels a WebSocket
after a 101. It can:

* answer every WebSocket upgrade with 403 (a proxy that strips upgrades);
* ``buffer_streams``: hold a chunked response until it ends, then send it whole, as
  proxies that buffer responses do (an event stream then brings nothing while its
  session lives);
* drop the response to chosen long polls (``drop_poll``: called with the count of
  polls so far, true to drop): the client's connection is closed instead, as when a
  proxy loses an answer on the way;
* ``cut()`` every open connection, and ``blocked`` turn new ones away (a network
  outage);
* ``stall()`` what tunnelled WebSockets send to the client, holding it until ``resume()``
  (a connection gone quiet without closing).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from types import TracebackType
from typing import Self

MAX_HEAD = 64 * 1024
CHUNK = 64 * 1024


class Gateway:
    def __init__(
        self,
        upstream_port: int,
        *,
        refuse_upgrades: bool = False,
        buffer_streams: bool = False,
        drop_poll: Callable[[int], bool] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.refuse_upgrades = refuse_upgrades
        self.buffer_streams = buffer_streams
        self.drop_poll = drop_poll
        self.blocked = False
        self.port = 0
        #: What happened, for the test to check: counts by kind.
        self.polls = 0
        self.dropped = 0
        self.refused_upgrades = 0
        self.upgrades = 0
        #: Chunked responses begun (passed on, or held when buffering).
        self.streams = 0
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    def stall(self) -> None:
        """Hold what the server sends over tunnelled WebSockets (nothing is lost)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        """Abort every open connection, both sides."""
        for writer in list(self._writers):
            writer.transport.abort()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            if self.blocked:
                return
            up_reader, up_writer = upstream = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
            self._writers.add(up_writer)
            while True:
                head, body = await _read_message(reader)
                if head is None:
                    return
                first = head.split(b"\r\n", 1)[0]
                upgrade = b"\r\nupgrade: websocket" in head.lower()
                if upgrade and self.refuse_upgrades:
                    self.refused_upgrades += 1
                    writer.write(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    await writer.drain()
                    return
                up_writer.write(head + body)
                response_head, response_body = await _read_message(up_reader)
                if response_head is None:
                    return
                if _chunked(response_head):
                    self.streams += 1
                    if self.buffer_streams:
                        writer.write(response_head + await _read_chunks(up_reader))
                    else:
                        writer.write(response_head)
                        await _pass_chunks(up_reader, writer)
                    await writer.drain()
                    continue
                is_poll = first.startswith(b"GET /lp?")
                if is_poll:
                    self.polls += 1
                    if self.drop_poll is not None and self.drop_poll(self.polls):
                        self.dropped += 1
                        return  # the answer is lost: the client sees its connection end
                writer.write(response_head + response_body)
                await writer.drain()
                if response_head.startswith(b"HTTP/1.1 101"):
                    self.upgrades += 1
                    await _pipe_both(reader, writer, up_reader, up_writer, self._flowing)
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()


def _chunked(head: bytes) -> bool:
    return b"\r\ntransfer-encoding: chunked" in head.lower()


async def _next_chunk(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The next chunk of a chunked body as sent (RFC 9112 section 7.1), and whether it
    was the last (with the trailer section after it)."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    if size == 0:
        trailers = b""
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            trailers += line
        return size_line + trailers + b"\r\n", True
    return size_line + await reader.readexactly(size + 2), False


async def _pass_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Pass a chunked body on chunk by chunk, as it comes."""
    last = False
    while not last:
        chunk, last = await _next_chunk(reader)
        writer.write(chunk)
        await writer.drain()


async def _read_chunks(reader: asyncio.StreamReader) -> bytes:
    """A whole chunked body, as sent: read until its last chunk."""
    body = b""
    last = False
    while not last:
        chunk, last = await _next_chunk(reader)
        body += chunk
    return body


async def _read_message(reader: asyncio.StreamReader) -> tuple[bytes | None, bytes]:
    """One request or response: its head and its Content-Length body."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None, b""
    if len(head) > MAX_HEAD:
        return None, b""
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length) if length else b""


async def _pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    flowing: asyncio.Event,
) -> None:
    async def pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, gate: asyncio.Event | None
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(CHUNK):
                if gate is not None:
                    await gate.wait()
                sink.write(data)
                await sink.drain()
        sink.transport.abort()

    await asyncio.gather(pipe(reader, up_writer, None), pipe(up_reader, writer, flowing))
