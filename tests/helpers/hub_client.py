"""A raw client of the hub for tests, on the Python client's own transport and connection
layer (:mod:`backchannel.client`): every frame goes through
:class:`~backchannel.client.connection.Connection` (numbered commands, matched replies,
pushes in arrival order) over :class:`~backchannel.client.websocket.WebSocketTransport`
or :class:`~backchannel.client.longpoll.LongPollTransport`, so the hub's end-to-end suite
tests the client on both transports too, and over Server-Sent Events with
:class:`backchannel.client.sse.SseTransport`. :class:`SseTransport` here is a raw SSE
transport written on httpx: it GETs the stream and POSTs commands (to another node if
asked), and keeps what the stream carried besides the wire lines (event ids, heartbeats)
for the tests of the SSE transport itself.

It stays raw where the suite needs it: commands are sent without the client's parameter
checks (the hub's own answers are under test), frames of any text can be sent, several
commands can share a frame, and nothing is retried or reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, ClassVar

import httpx

from backchannel.asyncio import ClientConnection
from backchannel.client.connection import Connection
from backchannel.client.longpoll import LongPollTransport
from backchannel.client.sse import SseTransport as ClientSseTransport
from backchannel.client.transport import CONNECTION_LOST, NORMAL_CLOSURE, Ending
from backchannel.client.websocket import WebSocketTransport
from backchannel.exceptions import CommandError, InvalidResponse

__all__ = ["HubClient", "LongPollClient", "ReplyError", "SseClient", "SseTransport"]

TIMEOUT = 10

#: An error reply: ``.code``, ``.message``, ``.temporary``.
ReplyError = CommandError


class HubClient:
    """Sends commands, matches replies by id, and queues pushes in arrival order.

    The transport opens with the first frame sent (as the client's transports do), so a
    client made by :meth:`raw` may send anything first.
    """

    def __init__(self, ws: ClientConnection | None = None, *, url: str = "") -> None:
        self.url = url
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        #: The connect command's result.
        self.info: dict[str, Any] = {}
        self.conn = Connection(self.pushes.put_nowait, self._ended)
        self.transport: (
            WebSocketTransport | LongPollTransport | SseTransport | ClientSseTransport | None
        ) = None
        self._opening = asyncio.Lock()
        if ws is not None:  # already open (a test that connects with options of its own)
            self._start(WebSocketTransport(ws))

    @classmethod
    async def open(cls, port: int, *, path: str = "/", **connect_params: Any) -> HubClient:
        client = cls(url=f"ws://127.0.0.1:{port}{path}")
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int, *, path: str = "/") -> HubClient:
        """A client that has not sent connect yet."""
        return cls(url=f"ws://127.0.0.1:{port}{path}")

    async def _open_transport(
        self, first_frame: str
    ) -> WebSocketTransport | LongPollTransport | SseTransport | ClientSseTransport:
        return await WebSocketTransport.open(self.url, first_frame, open_timeout=TIMEOUT)

    def _start(
        self,
        transport: WebSocketTransport | LongPollTransport | SseTransport | ClientSseTransport,
    ) -> None:
        self.transport = transport
        self.conn.start(transport)

    def _ended(self, conn: Connection) -> None:
        # The connection keeps the hub's disconnect push as its ending rather than passing
        # it on: queue it as the last push, as it came (nothing follows it).
        if conn.disconnect is not None:
            self.pushes.put_nowait(
                {
                    "push": "disconnect",
                    "code": conn.disconnect.code,
                    "reason": conn.disconnect.reason,
                    "reconnect": conn.disconnect.reconnect,
                }
            )

    async def _send_text(self, text: str) -> None:
        async with self._opening:
            if self.transport is None:
                self._start(await self._open_transport(text))
                return
        await self.transport.send(text)

    def send_raw(self, text: str) -> asyncio.Future[None]:
        """Send one frame as it is (the client's own numbering does not see it)."""
        return asyncio.ensure_future(self._send_text(text))

    async def call(self, method: str, /, **params: Any) -> dict[str, Any]:
        """Send a command (unchecked: the hub judges it) and return its result; raise
        :class:`ReplyError` for an error reply."""
        text, reply = self.conn.prepare(method, params, check=False)
        await self._send_text(text)
        async with asyncio.timeout(TIMEOUT):
            return await asyncio.shield(reply)

    async def batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Send several commands in one frame; their replies, in order, as on the wire
        (``{"id", "result"}`` or ``{"id", "error": {"code", "message", "temporary"}}``)."""
        prepared = [self.conn.prepare(method, params, check=False) for method, params in commands]
        await self._send_text("\n".join(text for text, _ in prepared))
        async with asyncio.timeout(TIMEOUT):
            outcomes = await asyncio.shield(
                asyncio.gather(*(reply for _, reply in prepared), return_exceptions=True)
            )
        replies = []
        for (text, _), outcome in zip(prepared, outcomes, strict=True):
            cid = json.loads(text)["id"]
            if isinstance(outcome, CommandError):
                error = {"code": outcome.code, "message": outcome.message}
                replies.append({"id": cid, "error": {**error, "temporary": outcome.temporary}})
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                replies.append({"id": cid, "result": outcome})
        return replies

    async def push(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            return await self.pushes.get()

    async def publications(self, n: int) -> list[dict[str, Any]]:
        out = []
        while len(out) < n:
            push = await self.push()
            if push["push"] == "publication":
                out.append(push)
        return out

    async def closed(self) -> tuple[int, str]:
        """Wait for the server to close the connection; its close code and reason (the
        WebSocket's close frame, as the transport reports it)."""
        async with asyncio.timeout(TIMEOUT):
            await asyncio.shield(self.conn.ended)
        assert self.transport is not None
        # After its end, a transport's receive() says again how it ended.
        ending = await self.transport.receive()
        assert not isinstance(ending, str)
        return ending.code, ending.reason

    async def close(self) -> None:
        """End the connection from this side and release its sockets."""
        if self.transport is not None:
            await self.conn.close()

    def drop(self) -> None:
        """Cut the connection without a goodbye (a TCP abort; for long polling, no more
        polls and no DELETE)."""
        assert self.transport is not None
        self.transport.abort()


class LongPollClient(HubClient):
    """The same client over long polling: commands by POST, replies and pushes by GET."""

    #: Every client made, with its event loop, so a test's fixture can release their
    #: sockets at the end.
    instances: ClassVar[list[tuple[asyncio.AbstractEventLoop, LongPollClient]]] = []

    def __init__(self, port: int, path: str = "/lp") -> None:
        super().__init__(url=f"http://127.0.0.1:{port}{path}")
        LongPollClient.instances.append((asyncio.get_running_loop(), self))

    @classmethod
    async def open(cls, port: int, **connect_params: Any) -> LongPollClient:  # type: ignore[override]
        client = cls(port)
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int) -> LongPollClient:  # type: ignore[override]
        return cls(port)

    async def _open_transport(self, first_frame: str) -> LongPollTransport:
        return await LongPollTransport.open(self.url, first_frame, open_timeout=TIMEOUT)

    async def closed(self) -> tuple[int, str]:
        """Wait for the server to end the session: the disconnect push's code and reason."""
        async with asyncio.timeout(TIMEOUT):
            await asyncio.shield(self.conn.ended)
        assert self.conn.disconnect is not None
        return self.conn.disconnect.code, self.conn.disconnect.reason

    @classmethod
    async def release_all(cls) -> None:
        """Close the sockets of every client of this test (ResourceWarning is an error in
        this suite). Clients of an earlier test, on a loop now closed, were that test's
        to close: they are forgotten, not closed again on a loop that is gone."""
        loop = asyncio.get_running_loop()
        clients, cls.instances = cls.instances, []
        for owner, client in clients:
            if owner is loop:
                await client.close()


class SseTransport:
    """The hub over Server-Sent Events, raw, on httpx: ``GET url?frame=F`` opens the
    session and its stream (each ``data:`` line a wire line), ``POST url?sid=S`` sends,
    ``DELETE url?sid=S`` leaves. ``post_url`` sends elsewhere (another node)."""

    def __init__(self, http: httpx.AsyncClient, response: httpx.Response, post_url: str) -> None:
        self._http = http
        self._response = response
        self._post_url = post_url
        self.sid = ""
        #: Every event, as (event type, data, id or None), and the heartbeat comments.
        self.events: list[tuple[str, str, str | None]] = []
        self.heartbeats = 0
        #: Set at each heartbeat comment.
        self.heartbeat = asyncio.Event()
        #: The last id the stream gave (what EventSource sends back as Last-Event-ID).
        self.last_id: str | None = None
        self.retry: int | None = None
        self._frames: asyncio.Queue[str | Ending] = asyncio.Queue()
        self._session = asyncio.get_running_loop().create_future()
        self._ending: Ending | None = None
        self._gone = False
        self._sending = asyncio.Lock()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def name(self) -> str:
        return "sse"

    @classmethod
    async def open(
        cls,
        url: str,
        first_frame: str,
        *,
        open_timeout: float = TIMEOUT,
        last_event_id: str | None = None,
        post_url: str | None = None,
    ) -> SseTransport:
        http = httpx.AsyncClient(timeout=httpx.Timeout(open_timeout, read=None))
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            request = http.build_request("GET", url, params={"frame": first_frame}, headers=headers)
            response = await http.send(request, stream=True)
            if response.status_code != 200:
                await response.aread()
                await response.aclose()
                raise InvalidResponse(f"SSE open answered HTTP {response.status_code}")
            assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
            transport = cls(http, response, post_url or url)
            async with asyncio.timeout(open_timeout):
                transport.sid = await asyncio.shield(transport._session)
        except BaseException:
            await http.aclose()
            raise
        return transport

    async def _read(self) -> None:
        ending = Ending(CONNECTION_LOST, "the stream ended", True)
        kind, data, event_id = "message", [], None
        try:
            async for line in self._response.aiter_lines():
                if line == "":
                    if data:
                        text = "\n".join(data)
                        self.events.append((kind, text, event_id))
                        if kind == "session":
                            self._session.set_result(json.loads(text)["sid"])
                        else:
                            self._frames.put_nowait(text)
                    kind, data, event_id = "message", [], None
                elif line.startswith(":"):
                    self.heartbeats += 1
                    self.heartbeat.set()
                else:
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "data":
                        data.append(value)
                    elif field == "event":
                        kind = value
                    elif field == "id":
                        event_id = self.last_id = value
                    elif field == "retry":
                        self.retry = int(value)
        except httpx.HTTPError as exc:
            ending = Ending(CONNECTION_LOST, f"the stream failed: {exc!r}", True)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await self._response.aclose()
            if not self._session.done():
                self._session.set_exception(ConnectionError("no session event"))
                self._session.exception()
            self._end(ending)

    async def send(self, frame: str) -> None:
        async with self._sending:
            if self._ending is not None:
                return
            response = await self._http.post(
                self._post_url, params={"sid": self.sid}, content=frame.encode()
            )
            if response.status_code != 200:
                self._gone = response.status_code in (404, 410)
                reason = f"SSE send answered HTTP {response.status_code}"
                self._end(Ending(CONNECTION_LOST, reason, True))

    async def receive(self) -> str | Ending:
        if self._ending is not None and self._frames.empty():
            return self._ending
        return await self._frames.get()

    def _end(self, ending: Ending) -> None:
        if self._ending is None:
            self._ending = ending
            self._frames.put_nowait(ending)

    def abort(self) -> None:
        """Drop the stream without a DELETE (a network cut)."""
        self._gone = True
        self._reader.cancel()

    async def close(self) -> None:
        self._end(Ending(NORMAL_CLOSURE, "closed by the client", False))
        if not self._gone:
            with contextlib.suppress(httpx.HTTPError):
                await self._http.delete(self._post_url, params={"sid": self.sid}, timeout=2)
            self._gone = True
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.aclose()


class SseClient(LongPollClient):
    """The same client over Server-Sent Events: the stream by GET, commands by POST, on
    the Python client's SSE transport; with ``post_port``, on the raw one here, which
    POSTs to that port (another node) while the stream stays on ``port``."""

    def __init__(self, port: int, path: str = "/sse", *, post_port: int | None = None) -> None:
        super().__init__(port, path)
        self.post_url = None if post_port is None else f"http://127.0.0.1:{post_port}{path}"

    @classmethod
    async def open(cls, port: int, **connect_params: Any) -> SseClient:  # type: ignore[override]
        client = cls(port)
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int) -> SseClient:  # type: ignore[override]
        return cls(port)

    async def _open_transport(  # type: ignore[override]
        self, first_frame: str
    ) -> SseTransport | ClientSseTransport:
        if self.post_url is None:
            return await ClientSseTransport.open(self.url, first_frame, open_timeout=TIMEOUT)
        return await SseTransport.open(self.url, first_frame, post_url=self.post_url)
