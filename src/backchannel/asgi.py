"""The hub inside an ASGI application (Starlette, FastAPI, Django, ...): :class:`HubApp`.

``HubApp(hub)`` is an ASGI 3 application that serves, under whatever prefix it is
mounted at (``root_path``), the same endpoints as ``backchannel serve``:

* ``/ws``: the hub over WebSocket (the ``websocket`` scope);
* ``/lp``: long polling (docs/protocol.md, "Long polling");
* ``/sse``: Server-Sent Events (docs/protocol.md);
* ``/api/<method>``: the HTTP API (docs/api.md), when an ``api_key`` is given;
* ``/js/backchannel.js``, its types and modules: the browser client.

The host application's own login can decide who a connection is: ``authenticate``
receives the ASGI scope of the WebSocket or of the request that opens a long-poll
session or an SSE stream (cookies, headers, ``scope["session"]``, ``scope["user"]``) and returns a
:class:`~backchannel.hub.Connected`, or None to let the connect's token and the hooks
decide.

The hub starts and stops with the application: through the ``lifespan`` scope when
``HubApp`` is the application the server runs (or is routed to by :func:`route`), or
through :meth:`HubApp.lifespan` in the host application's own lifespan (Starlette and
FastAPI do not pass the lifespan scope to mounted applications).

Backpressure: an ASGI ``send`` is a coroutine that waits while the client does not
read. The hub never awaits it: what a session sends goes into its bounded outbox, and
one task per WebSocket session drains it into ``send``; a client that does not read
makes its outbox overflow and gets its channel's slow-consumer policy (3002, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, MutableMapping, Sequence
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

from .app.api import HttpApi
from .app.files import Files
from .app.ratelimit import RateLimiter
from .asyncio.stream import Stream
from .hub import Connected, Hub, codes
from .hub.codes import Disconnect
from .hub.commands import Commands
from .hub.outbox import Outbox, text_size
from .hub.transports.http import Authenticate, SessionRelay
from .hub.transports.longpoll import LongPoll
from .hub.transports.sse import ServerSentEvents
from .hub.transports.websocket import MAX_FRAME
from .protocol.http11 import Headers, Request, Response

__all__ = [
    "AsgiWebSocketTransport",
    "AuthenticateScope",
    "HttpEndpoint",
    "HubApp",
    "Receive",
    "Scope",
    "Send",
    "route",
]

logger = logging.getLogger("backchannel.asgi")

#: An ASGI connection scope, and the two channels of an ASGI application (ASGI 3).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The host application's say on who a connection is: ``await authenticate(scope)``.
AuthenticateScope = Callable[[Scope], Awaitable[Connected | None]]

#: The path of the hub's WebSocket, under the application's prefix (as on ``serve``).
WEBSOCKET_PATH = "/ws"


class HttpEndpoint(Protocol):
    """An HTTP transport of the hub (long polling, Server-Sent Events): a handler of a
    request value that answers with a response, a stream, or None (not its path)."""

    path: str

    def opens_session(self, request: Request) -> bool:
        """Whether ``request`` opens a new session (counted by the open rate)."""
        ...

    async def handle(
        self, request: Request, *, authenticate: Authenticate | None = None
    ) -> Response | Stream | None: ...


class AsgiWebSocketTransport:
    """A session's transport over an ASGI WebSocket: its outbox is drained by one task
    that awaits ``send``, several wire messages joined by newlines in a text frame up to
    :data:`~backchannel.hub.transports.websocket.MAX_FRAME` bytes."""

    name: ClassVar[str] = "websocket"

    __slots__ = ("_closer", "_drainer", "_send", "closed", "closing", "linger", "outbox")

    def __init__(self, send: Send, *, linger: float = 30.0) -> None:
        self._send = send
        #: Seconds a closing connection waits for its client to read what was sent
        #: before the close goes out anyway.
        self.linger = linger
        self.outbox: Outbox | None = None
        #: Why the session ended, once it has: the close frame follows the outbox.
        self.closing: Disconnect | None = None
        #: The connection is gone, or its close was sent: nothing more goes out.
        self.closed = False
        self._drainer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def deliver(self, text: str) -> bool:
        # ``send`` must be awaited: everything goes through the outbox, which bounds what
        # a client that does not read can hold.
        return False

    def wake(self) -> None:
        if self._drainer is None and not self.closed:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def close(self, disconnect: Disconnect) -> None:
        if self.closing is not None:
            return
        self.closing = disconnect
        self.wake()
        if self.linger > 0 and not self.closed:
            self._closer = asyncio.get_running_loop().create_task(self._close_in_time())

    @classmethod
    def deliver_many(
        cls, transports: Sequence[AsgiWebSocketTransport], text: str
    ) -> list[AsgiWebSocketTransport]:
        return list(transports)  # each session queues it; its drain task sends it

    async def _drain(self) -> None:
        outbox = self.outbox
        assert outbox is not None
        try:
            while outbox and not self.closed:
                text = "\n".join(outbox.take(MAX_FRAME))
                await self._send({"type": "websocket.send", "text": text})
            if self.closing is not None and not self.closed:
                await self._send_close(self.closing)
        except Exception as exc:
            # The server refuses to send: the connection is gone (each server says so
            # with an exception of its own). The handler's receive loop ends the session.
            logger.debug("ASGI WebSocket send failed: %r", exc)
            self.closed = True
            outbox.clear()
        finally:
            self._drainer = None

    async def _close_in_time(self) -> None:
        """A client that does not read holds the drain task in ``send``: after
        ``linger`` seconds, stop waiting for it and close."""
        drainer = self._drainer
        if drainer is not None:
            done, _ = await asyncio.wait({drainer}, timeout=self.linger)
            if not done:
                logger.info("closing a connection whose client read nothing for %s s", self.linger)
                drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drainer
        disconnect = self.closing
        if disconnect is not None and not self.closed:
            with contextlib.suppress(Exception):
                await self._send_close(disconnect)

    async def _send_close(self, disconnect: Disconnect) -> None:
        self.closed = True
        if self.outbox is not None:
            self.outbox.clear()
        await self._send(
            {"type": "websocket.close", "code": disconnect.code, "reason": disconnect.reason}
        )

    def gone(self) -> None:
        """The connection ended: stop sending."""
        self.closed = True
        for task in (self._drainer, self._closer):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self.outbox is not None:
            self.outbox.clear()


class HubApp:
    """An ASGI 3 application for a hub; see the module's docstring.

    ``authenticate``: ``async def (scope) -> Connected | None``, asked once per
    WebSocket and per long-poll (or SSE) open. ``api_key``: turns the HTTP API on, with
    ``api_rate`` requests per second per address (bursts of ``api_burst``).
    ``origins``: origins of pages on other sites that may use the hub (CORS for the HTTP
    transports, and the WebSocket's Origin check); pages of the application's own origin
    need nothing. ``max_body_size``: bytes of a request body (413 past it).
    ``max_message_size``: bytes of a WebSocket message (closed with 1009 past it).
    ``open_rate``, ``open_burst``: new sessions per second per client address (the
    ASGI scope's ``client``), in bursts: 429 past it.
    ``longpoll``: the long-poll endpoint, by default ``LongPoll(hub, origins=origins)``
    (relayed across nodes when the hub's broker can); ``sse``: the Server-Sent Events
    endpoint: True for ``ServerSentEvents(hub)`` sharing long polling's session table,
    False for none, or an endpoint of your own (any :class:`HttpEndpoint`).
    ``client``: whether the browser client's files are served.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        authenticate: AuthenticateScope | None = None,
        api_key: str | None = None,
        api_rate: float = 200.0,
        api_burst: int = 400,
        origins: Collection[str] = (),
        max_body_size: int = 2**20,
        max_message_size: int = 2**20,
        open_rate: float = 20.0,
        open_burst: int = 100,
        longpoll: LongPoll | None = None,
        sse: HttpEndpoint | bool = True,
        client: bool = True,
    ) -> None:
        self.hub = hub
        self.authenticate = authenticate
        self.origins = frozenset(origins)
        self.max_body_size = max_body_size
        self.max_message_size = max_message_size
        if longpoll is None:
            # With several nodes (the Redis broker), a request for a session held on
            # another node is relayed there: no sticky sessions needed.
            relay = hub.broker if isinstance(hub.broker, SessionRelay) else None
            longpoll = LongPoll(hub, origins=origins, relay=relay)
        self.longpoll = longpoll
        if sse is True:
            # One session table for both HTTP transports, as on ``backchannel serve``.
            sse = ServerSentEvents(hub, sessions=longpoll.table)
        #: The SSE endpoint (None when turned off).
        self.sse: HttpEndpoint | None = sse or None
        self.endpoints: list[HttpEndpoint] = [longpoll, *([sse] if sse else [])]
        self.api = HttpApi(hub, api_key, RateLimiter(api_rate, api_burst)) if api_key else None
        #: New sessions (WebSockets, long-poll and SSE opens) per client address.
        self.opens = RateLimiter(open_rate, open_burst)
        self.files = Files.client() if client else Files()
        self.commands = Commands(hub)
        #: Whether this application started the hub (lifespan): it then stops it too.
        self.running = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        else:
            raise RuntimeError(f"backchannel.asgi does not serve {kind!r} scopes")

    # The hub's life.

    async def startup(self) -> None:
        """Start the hub (once: a second call does nothing)."""
        if not self.running:
            await self.hub.start()
            self.running = True

    async def shutdown(self) -> None:
        """Stop the hub, if :meth:`startup` started it: every client hears 3000."""
        if self.running:
            self.running = False
            await self.hub.close()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """The hub's life as a context manager, for the host application's lifespan:
        ``Starlette(lifespan=realtime.lifespan)`` (``app``: the host, unused)."""
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    logger.exception("the hub did not start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # WebSocket.

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        headers = _headers(scope)
        if _path(scope) != WEBSOCKET_PATH or not self._origin_allowed(headers):
            # Closed before accepted: the server answers the handshake with 403.
            await send({"type": "websocket.close", "code": 1008})
            return
        if not self.opens.allow(_address(scope)):
            await _refuse_websocket(scope, send, _too_many())
            return
        connected = await self.authenticate(scope) if self.authenticate else None
        await send({"type": "websocket.accept"})
        transport = AsgiWebSocketTransport(send, linger=self.hub.options.close_linger)
        session = self.hub.open_session(transport, headers, connected=connected)
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.disconnect":
                    break
                if kind != "websocket.receive":
                    continue
                text = message.get("text")
                if text is None:
                    # Version 1 of the wire format is text only.
                    session.disconnect(codes.BAD_PROTOCOL)
                    continue
                if text_size(text) > self.max_message_size:
                    # RFC 6455 section 7.4.1: 1009, a message too big to process.
                    transport.gone()
                    await send({"type": "websocket.close", "code": 1009})
                    break
                await self.commands.handle(session, text)
        finally:
            transport.gone()
            await self.hub.close_session(session)

    def _origin_allowed(self, headers: Headers) -> bool:
        """A browser's WebSocket carries the page's origin, and its cookies whatever the
        page: one of another site may connect only if listed (cross-site WebSocket
        hijacking, when ``authenticate`` reads cookies). Clients that are not browsers
        send no Origin."""
        origin = headers.get("Origin")
        if origin is None or "*" in self.origins or origin in self.origins:
            return True
        return urlsplit(origin).netloc.lower() == (headers.get("Host") or "").lower()

    # HTTP.

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = _path(scope)
        query = scope.get("query_string", b"").decode("latin-1")
        headers = _headers(scope)
        body = await _read_body(headers, receive, self.max_body_size)
        if body is None:
            message = f"request body over max_body_size ({self.max_body_size} bytes)"
            refused = HttpApi.error(413, codes.MESSAGE_TOO_LARGE.with_message(message))
            refused.headers.set("Connection", "close")
            await _send_response(_secured(refused), send, scope["method"])
            return
        request = Request(scope["method"], f"{path}?{query}" if query else path, headers, body)
        # While the answer is pending (a long poll is held up to its poll timeout), the
        # client may go away: a server's graceful shutdown waits for every pending answer,
        # so one that no one will read must not hold it.
        answering = asyncio.ensure_future(self._answer(scope, request, path))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({answering, watching}, return_when=asyncio.FIRST_COMPLETED)
            if not answering.done():
                await self._abandon(request, answering)
                return
            answer = answering.result()
        except BaseException:
            # This request's own task was cancelled, or the answer failed.
            for task in (answering, watching):
                task.cancel()
            raise
        if isinstance(answer, Stream):
            await _send_stream(answer, watching, send)
        else:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
            await _send_response(answer, send, request.method)

    async def _abandon(
        self, request: Request, answering: asyncio.Future[Response | Stream]
    ) -> None:
        """The client of a pending answer went away. A safe request (RFC 9110 section
        9.2.1: GET, HEAD) changes nothing, so its answer is cancelled: a held poll ends at
        once, and the batch it may have taken stays unacknowledged, sent again on the
        session's next poll. Any other request, and one that opens a session (an SSE
        stream's GET), runs to its end, so that no command is applied halfway and no
        session is left half open; a stream it returns is closed unsent."""
        if request.method in ("GET", "HEAD") and not any(
            endpoint.opens_session(request) for endpoint in self.endpoints
        ):
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
            return
        answer = await answering
        aclose = getattr(answer.body, "aclose", None) if isinstance(answer, Stream) else None
        if aclose is not None:
            await aclose()

    async def _answer(self, scope: Scope, request: Request, path: str) -> Response | Stream:
        response = self.files.handle(request, path)
        if response is not None:
            return response
        for endpoint in self.endpoints:
            if path == endpoint.path:
                if endpoint.opens_session(request) and not self.opens.allow(_address(scope)):
                    return _secured(_too_many())
                answer = await endpoint.handle(request, authenticate=self._identify(scope))
                if isinstance(answer, Stream):
                    return answer
                if answer is not None:
                    return _secured(answer)
        if self.api is not None and path.startswith(self.api.prefix):
            return _secured(await self.api.handle(request, _address(scope)))
        if path == WEBSOCKET_PATH:
            return _secured(Response.text(426, "Upgrade Required: this is the hub's WebSocket\n"))
        return _secured(Response.text(404, "Not Found\n"))

    def _identify(self, scope: Scope) -> Authenticate | None:
        authenticate = self.authenticate
        if authenticate is None:
            return None

        async def identify() -> Connected | None:
            return await authenticate(scope)

        return identify


def route(prefix: str, hub_app: ASGIApp, app: ASGIApp) -> ASGIApp:
    """An ASGI application that sends requests under ``prefix`` (``"/realtime"``) to
    ``hub_app`` and every other one to ``app``: for a framework without mounts of its
    own (Django's ``get_asgi_application()``). The lifespan scope goes to ``hub_app``
    (Django answers none)."""
    prefix = prefix.rstrip("/")

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await hub_app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = _path(scope)
        if path == prefix or path.startswith(prefix + "/"):
            scope = dict(scope)
            scope["root_path"] = root + prefix
            if not scope["path"].startswith(scope["root_path"]):
                # A server that gives the path without the root path (older ASGI
                # servers): the mounted application sees it the same way.
                scope["path"] = path[len(prefix) :] or "/"
            await hub_app(scope, receive, send)
        else:
            await app(scope, receive, send)

    return router


def _path(scope: Scope) -> str:
    """The path under the application's prefix: ASGI's ``path`` holds ``root_path``
    (the prefix it is mounted at) in front (servers before that rule give it without)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def _address(scope: Scope) -> str:
    """The client's address, as the server says (behind a proxy, the server's own
    setting makes it the forwarded one: uvicorn's ``--proxy-headers``)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _too_many() -> Response:
    error = {"code": 111, "message": "too many new connections from this address"}
    response = Response.json(429, {"error": error})
    response.headers.add("Retry-After", "1")
    return response


async def _refuse_websocket(scope: Scope, send: Send, response: Response) -> None:
    """Answer a WebSocket handshake with ``response``, where the server can (the ASGI
    "WebSocket Denial Response" extension), else with the server's 403."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    response.headers.set("Content-Length", str(len(response.body)))
    start = _head(response.status, response.headers)
    start["type"] = "websocket.http.response.start"
    await send(start)
    await send({"type": "websocket.http.response.body", "body": response.body})


def _headers(scope: Scope) -> Headers:
    return Headers(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"]]
    )


async def _read_body(headers: Headers, receive: Receive, limit: int) -> bytes | None:
    """The request's body; None when it is over ``limit`` bytes (refused as soon as its
    Content-Length says so, else once that much has come)."""
    length = headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _head(status: int, headers: Headers) -> Message:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers],
    }


async def _send_response(response: Response, send: Send, method: str) -> None:
    body = response.body
    headers = response.headers
    if (
        "Content-Length" not in headers
        and response.status >= 200
        and response.status
        not in (
            204,
            304,
        )
    ):
        headers.set("Content-Length", str(len(body)))
    if method == "HEAD":
        # RFC 9110 section 9.3.2: the headers of a GET, without the content.
        body = b""
    await send(_head(response.status, headers))
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone away (``http.disconnect``)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_stream(stream: Stream, gone: asyncio.Future[None], send: Send) -> None:
    """Send the head, then each chunk as it comes, each ``send`` awaited (a client that
    does not read holds the producer back). When the client goes away (``gone``, which
    watches for ``http.disconnect``), the body is closed: its ``finally`` blocks run."""
    body = stream.body

    async def pump() -> None:
        await send(_head(stream.status, stream.headers))
        if body is not None:
            async for chunk in body:
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    pumping = asyncio.ensure_future(pump())
    try:
        await asyncio.wait({pumping, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (pumping, gone):
            task.cancel()
        for task in (pumping, gone):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


def _secured(response: Response) -> Response:
    """As on ``backchannel serve``: dynamic answers are never stored by a cache on the
    way (tokens, session ids) nor sniffed into another type than the one declared."""
    response.headers.set("Cache-Control", "no-store")
    response.headers.set("X-Content-Type-Options", "nosniff")
    return response
