"""The asyncio WebSocket server: ``serve(handler, host, port, ...)``.

Plain HTTP and WebSocket share the port. Each TCP connection starts as HTTP/1.1: a
request that asks to upgrade becomes a WebSocket connection handed to ``handler``; any
other request goes to ``process_request``, or is answered ``426 Upgrade Required``.
``process_request`` also sees upgrade requests first, so it can refuse them (401, 403).

``process_request`` may also return a :class:`~.stream.Stream`: a head sent at once and
a body sent as it is produced (Server-Sent Events). Its chunks go out with
``Transfer-Encoding: chunked`` (RFC 9112 section 7.1; an HTTP/1.0 client gets the body
delimited by the connection's end), and the next chunk is asked for only once the
socket's write buffer is below its high water mark, so a client that does not read holds
back the producer. A stream whose client reads nothing at all for ``ping_timeout``
seconds while the buffer is full is dropped, as a WebSocket whose pong does not come.
When the client goes away or the server closes, the body is closed (``aclose``).

A stream ends its connection: it is answered with ``Connection: close`` and the
connection closes after the last chunk. A stream usually lives as long as its client
stays (an event stream reconnects on a new connection anyway), and nothing can be
answered on the connection while it lasts, so keeping it alive would only delay
requests pipelined behind it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Collection, Generator, Sequence
from types import TracebackType
from typing import Any

from ..exceptions import ConnectionClosed, InvalidRequest
from ..protocol import connection as sansio
from ..protocol.deflate import DeflateConfig
from ..protocol.frames import CloseCode
from ..protocol.handshake import ServerHandshake, is_upgrade_request
from ..protocol.http11 import Headers, Request, RequestParser, Response
from ..protocol.limits import Limits
from .connection import Connection
from .stream import Stream

__all__ = ["Server", "ServerConnection", "serve"]

logger = logging.getLogger("backchannel.server")

Handler = Callable[["ServerConnection"], Awaitable[None]]
ProcessRequest = Callable[
    ["ServerConnection", Request],
    "Response | Stream | Awaitable[Response | Stream | None] | None",
]
ProcessInvalid = Callable[["ServerConnection", InvalidRequest], "Response | None"]


class ServerConnection(Connection):
    """A connection accepted by a :class:`Server`."""

    __slots__ = (
        "_early_data",
        "_http_task",
        "_open_timer",
        "_parser",
        "_pending_requests",
        "_streaming",
        "handler_task",
        "server",
    )

    def __init__(self, server: Server) -> None:
        super().__init__(
            ping_interval=server.ping_interval,
            ping_timeout=server.ping_timeout,
            close_timeout=server.close_timeout,
            max_queue=server.limits.max_queue,
        )
        self.server = server
        # Dropped once the connection is a WebSocket: an idle connection should not hold a
        # parser it will never use again.
        self._parser: RequestParser | None = RequestParser(server.limits)
        self._open_timer: asyncio.TimerHandle | None = None
        self._pending_requests: list[Request] = []
        self._http_task: asyncio.Task[None] | None = None
        self._early_data = b""
        #: Sending a stream: what the client sends meanwhile is dropped (nothing can be
        #: answered before the stream ends, and the connection closes after it).
        self._streaming = False
        self.handler_task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self._arm_open_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.server.connections.discard(self)
        if self._open_timer is not None:
            self._open_timer.cancel()
        if self._http_task is not None:
            # Nobody is left to answer: stop a process_request that is still waiting
            # (a held long poll, for one).
            self._http_task.cancel()

    def _arm_open_timer(self) -> None:
        if self._open_timer is not None:
            self._open_timer.cancel()
        timeout = self.server.open_timeout
        if timeout is not None:
            self._open_timer = self._loop.call_later(timeout, self._on_open_timeout)

    def _on_open_timeout(self) -> None:
        # A request (or the next one on a kept-alive connection) that never completes
        # would otherwise hold the socket forever.
        if self.protocol is None and self.transport is not None:
            logger.debug("opening handshake timed out")
            self.transport.abort()

    def _handshake_data(self, data: bytes) -> None:
        if self._streaming:
            return
        parser = self._parser
        assert parser is not None
        if parser.upgraded:
            # Bytes after an upgrade request that process_request is still looking at.
            self._early_data += data
            return
        try:
            requests = parser.feed(data)
        except InvalidRequest as exc:
            # The application may answer in its own format (an API's JSON error for a
            # body over the limit, say); the connection is closed either way, since the
            # rest of the stream cannot be parsed.
            response = None
            if self.server.process_invalid is not None:
                response = self.server.process_invalid(self, exc)
            self._refuse(exc.status, str(exc), response)
            return
        if not requests:
            return
        if parser.upgraded:
            self._early_data = parser.rest
        elif self._open_timer is not None:
            # A complete plain request: answering it may take as long as the application
            # needs (a long poll waits for news); open_timeout is for requests that never
            # complete. It is armed again after the response, for the next request.
            self._open_timer.cancel()
            self._open_timer = None
        if self.server.process_request is None and not self._pending_requests:
            for request in requests:
                self._handle(request, None)
        else:
            self._pending_requests.extend(requests)
            if self._http_task is None:
                self._http_task = self._loop.create_task(self._process_requests())

    async def _process_requests(self) -> None:
        process_request = self.server.process_request
        assert process_request is not None
        try:
            while self._pending_requests and self.transport is not None:
                request = self._pending_requests.pop(0)
                try:
                    result = process_request(self, request)
                    if inspect.isawaitable(result):
                        result = await result
                except Exception:
                    logger.exception("error in process_request")
                    result = Response.text(500, "Internal Server Error\n")
                    result.headers.set("Connection", "close")
                if isinstance(result, Stream):
                    # The stream ends the connection: what is pipelined behind it is
                    # never answered.
                    self._streaming = True
                    self._pending_requests.clear()
                    await self._stream(request, result)
                    return
                self._handle(request, result)
        finally:
            self._http_task = None

    async def _stream(self, request: Request, stream: Stream) -> None:
        """Send ``stream``'s head, then its body chunk by chunk, then close."""
        body = stream.body
        transport = self.transport
        try:
            if transport is None or transport.is_closing():
                return
            headers = Headers(stream.headers)
            headers.remove("Content-Length")
            headers.set("Connection", "close")
            # Chunked framing is HTTP/1.1's (RFC 9112 section 7.1); an HTTP/1.0 client
            # reads until the connection closes (section 6.3).
            chunked = request.http_version != "1.0"
            if chunked:
                headers.set("Transfer-Encoding", "chunked")
            head = Response(stream.status, headers)
            status_line = f"HTTP/1.1 {head.status} {head.reason}\r\n".encode("latin-1")
            self._write(status_line + headers.serialize() + b"\r\n")
            if body is None or request.method == "HEAD":
                if chunked and request.method != "HEAD":
                    self._write(b"0\r\n\r\n")
                return
            async for chunk in body:
                if not chunk:
                    continue  # an empty chunk would end a chunked body
                if transport.is_closing():
                    return
                self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                if self._writing_paused and not await self._drain_stream(transport):
                    return
            if chunked and not transport.is_closing():
                self._write(b"0\r\n\r\n")
        finally:
            if body is not None:
                # The producer's finally blocks run now (a session ends with its stream);
                # a body that already finished ignores this.
                aclose = getattr(body, "aclose", None)
                if aclose is not None:
                    await aclose()
            if transport is not None and not transport.is_closing():
                # After what is buffered, a FIN; what the client still sends is read and
                # dropped until it closes too (closing with unread input would reset the
                # connection over the stream's end), for at most close_timeout.
                self._close_lingering()

    async def _drain_stream(self, transport: asyncio.Transport) -> bool:
        """Wait until the write buffer is below its low water mark; False when the
        connection is gone, or was dropped because its client read nothing for
        ``ping_timeout`` seconds."""
        timeout = self.server.ping_timeout
        while self._writing_paused and not self._is_lost:
            if timeout is None:
                await self.drain()
                continue
            before = transport.get_write_buffer_size()
            try:
                async with asyncio.timeout(timeout):
                    await self.drain()
            except TimeoutError:
                if transport.get_write_buffer_size() >= before:
                    logger.info("a stream's client read nothing for %s s: dropping it", timeout)
                    transport.abort()
                    return False
        return not self._is_lost

    def _handle(self, request: Request, response: Response | None) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if response is not None:
            close = not request.keep_alive or is_upgrade_request(request)
            close = close or ((response.headers.get("Connection") or "").lower() == "close")
            self._send_response(response, close=close)
            return
        if not is_upgrade_request(request):
            self._refuse(426, "426 Upgrade Required: this is a WebSocket endpoint.")
            return
        try:
            response, proto = self.server.handshake.accept(request)
        except InvalidRequest as exc:
            self._refuse(exc.status, str(exc))
            return
        self.request = request
        self.response = response
        if self._open_timer is not None:
            self._open_timer.cancel()
            self._open_timer = None
        self._write(response.serialize())
        leftover, self._early_data = self._early_data, b""
        self._parser = None
        self._open(proto, leftover)
        self.handler_task = self._loop.create_task(self.server._run_handler(self))

    def _refuse(self, status: int, text: str, response: Response | None = None) -> None:
        """Answer a request we refuse, then close without losing the answer.

        The client may still be sending (the rest of a head past max_head_size, a body):
        closing at once would reset the connection over our response. Like a failed
        WebSocket, the connection stops writing and drops what arrives until the client
        closes, for at most close_timeout (RFC 9112 section 9.6 asks the same).
        """
        if response is None:
            response = ServerHandshake.reject(status, text)
        response.headers.set("Connection", "close")
        self._write(response.serialize())
        self._close_lingering()

    def _send_response(self, response: Response, *, close: bool) -> None:
        if close:
            response.headers.set("Connection", "close")
        self._write(response.serialize())
        if close and self.transport is not None:
            self.transport.close()
        else:
            self._arm_open_timer()


class Server:
    """A running WebSocket server; close it with :meth:`aclose` (or ``async with``)."""

    def __init__(
        self,
        handler: Handler,
        *,
        origins: Collection[str | None] | None = None,
        check_origin: Callable[[str | None], bool] | None = None,
        subprotocols: Sequence[str] | None = None,
        compression: str | DeflateConfig | None = "deflate",
        compress_threshold: int = 128,
        limits: Limits | None = None,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        open_timeout: float | None = 10,
        close_timeout: float = 10,
        process_request: ProcessRequest | None = None,
        process_invalid: ProcessInvalid | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.process_request = process_request
        #: Answers a request that cannot be parsed (400, 413, 414, 431): None keeps the
        #: plain-text default.
        self.process_invalid = process_invalid
        if compression == "deflate":
            deflate: DeflateConfig | None = DeflateConfig()
        elif compression is None or isinstance(compression, DeflateConfig):
            deflate = compression
        else:
            raise ValueError(f"unsupported compression: {compression!r}")
        self.handshake = ServerHandshake(
            subprotocols=subprotocols,
            deflate=deflate,
            origins=origins,
            check_origin=check_origin,
            limits=self.limits,
            compress_threshold=compress_threshold,
        )
        self.connections: set[ServerConnection] = set()
        self.server: asyncio.Server | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return () if self.server is None else tuple(self.server.sockets)

    @property
    def port(self) -> int:
        """The TCP port of the first listening socket (handy with ``port=0``)."""
        return int(self.sockets[0].getsockname()[1])

    async def _run_handler(self, connection: ServerConnection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handler_tasks.add(task)
        try:
            await self.handler(connection)
        except asyncio.CancelledError:
            connection._fail(CloseCode.GOING_AWAY, "")
            raise
        except ConnectionClosed:
            # The peer went away while the handler was reading or sending: not a bug.
            pass
        except Exception:
            logger.exception("error in connection handler")
            connection._fail(CloseCode.INTERNAL_ERROR, "")
        else:
            if connection.state is sansio.OPEN:
                await connection.close()
        finally:
            self._handler_tasks.discard(task)

    def stop_listening(self) -> None:
        """Close the listening sockets: new connections are refused at once (and the port
        is free for a replacement), while those already accepted go on. :meth:`aclose`
        does this first; call it earlier to refuse newcomers during a longer shutdown."""
        self._closing = True
        if self.server is not None:
            self.server.close()

    async def aclose(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop listening, close every connection with ``code`` (1001) and wait for them.

        Connections get ``close_timeout`` seconds to complete the closing handshake; then
        they are dropped and their handlers cancelled.
        """
        self.stop_listening()
        connections = list(self.connections)
        for connection in connections:
            proto = connection.protocol
            if proto is not None and proto.state is sansio.OPEN:
                connection._write(proto.send_close(code, reason))
            elif proto is None and connection.transport is not None:
                connection.transport.close()
        if connections:
            waits = [asyncio.shield(c._lost_waiter()) for c in connections]
            await asyncio.wait(waits, timeout=self.close_timeout)
            for connection in connections:
                if not connection._is_lost and connection.transport is not None:
                    connection.transport.abort()
        tasks = list(self._handler_tasks)
        if tasks:
            _, pending_tasks = await asyncio.wait(tasks, timeout=self.close_timeout)
            for task in pending_tasks:
                task.cancel()
            if pending_tasks:
                await asyncio.wait(pending_tasks)
        if self.server is not None:
            await self.server.wait_closed()

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        assert self.server is not None
        await self.server.serve_forever()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class serve:
    """Start a WebSocket server.

    ``async with serve(handler, "127.0.0.1", 8765) as server: ...`` or
    ``server = await serve(...)``. ``handler(connection)`` runs for each WebSocket; when it
    returns the connection is closed with 1000. Pass ``unix_path`` for a Unix socket.
    """

    def __init__(
        self,
        handler: Handler,
        host: str | None = None,
        port: int | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        origins: Collection[str | None] | None = None,
        check_origin: Callable[[str | None], bool] | None = None,
        subprotocols: Sequence[str] | None = None,
        compression: str | DeflateConfig | None = "deflate",
        compress_threshold: int = 128,
        max_size: int | None = 2**20,
        max_queue: int = 16,
        limits: Limits | None = None,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        open_timeout: float | None = 10,
        close_timeout: float = 10,
        process_request: ProcessRequest | None = None,
        process_invalid: ProcessInvalid | None = None,
        reuse_port: bool = False,
        unix_path: str | None = None,
        backlog: int = 511,
    ) -> None:
        if limits is None:
            limits = Limits(max_size=max_size, max_queue=max_queue)
        self._server = Server(
            handler,
            origins=origins,
            check_origin=check_origin,
            subprotocols=subprotocols,
            compression=compression,
            compress_threshold=compress_threshold,
            limits=limits,
            ping_interval=ping_interval,
            ping_timeout=ping_timeout,
            open_timeout=open_timeout,
            close_timeout=close_timeout,
            process_request=process_request,
            process_invalid=process_invalid,
        )
        self._host = host
        self._port = port
        self._ssl = ssl
        self._reuse_port = reuse_port
        self._unix_path = unix_path
        self._backlog = backlog

    async def _start(self) -> Server:
        loop = asyncio.get_running_loop()
        server = self._server

        def factory() -> ServerConnection:
            return ServerConnection(server)

        kwargs: dict[str, Any] = {"ssl": self._ssl, "backlog": self._backlog}
        if self._unix_path is not None:
            server.server = await loop.create_unix_server(factory, self._unix_path, **kwargs)
        else:
            server.server = await loop.create_server(
                factory,
                self._host,
                self._port,
                reuse_port=self._reuse_port or None,
                **kwargs,
            )
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._server.aclose()
