"""A raw client of the hub for tests, on the Python client's own transport and connection
layer (:mod:`backchannel.client`): every frame goes through
:class:`~backchannel.client.connection.Connection` (numbered commands, matched replies,
pushes in arrival order) over :class:`~backchannel.client.websocket.WebSocketTransport`
or :class:`~backchannel.client.longpoll.LongPollTransport`, so the hub's end-to-end suite
tests the client on both transports too.

It stays raw where the suite needs it: commands are sent without the client's parameter
checks (the hub's own answers are under test), frames of any text can be sent, several
commands can share a frame, and nothing is retried or reconnected.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from backchannel.asyncio import ClientConnection
from backchannel.client.connection import Connection
from backchannel.client.longpoll import LongPollTransport
from backchannel.client.websocket import WebSocketTransport
from backchannel.exceptions import CommandError

__all__ = ["HubClient", "LongPollClient", "ReplyError"]

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
        self.transport: WebSocketTransport | LongPollTransport | None = None
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

    async def _open_transport(self, first_frame: str) -> WebSocketTransport | LongPollTransport:
        return await WebSocketTransport.open(self.url, first_frame, open_timeout=TIMEOUT)

    def _start(self, transport: WebSocketTransport | LongPollTransport) -> None:
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
