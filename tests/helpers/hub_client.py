"""A minimal client of the hub's wire format for tests, over a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, ClassVar

from backchannel.asyncio import ClientConnection, connect
from backchannel.exceptions import ConnectionClosed
from helpers.http import Http

TIMEOUT = 10


class ReplyError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["message"])
        self.code: int = error["code"]
        self.temporary: bool = error["temporary"]


class HubClient:
    """Sends commands, matches replies by id, and queues pushes in arrival order."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next = 0
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.pushes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        #: The connect command's result.
        self.info: dict[str, Any] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int, *, path: str = "/", **connect_params: Any) -> HubClient:
        ws = await connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None)
        client = cls(ws)
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int, *, path: str = "/") -> HubClient:
        """A client that has not sent connect yet."""
        return cls(await connect(f"ws://127.0.0.1:{port}{path}", ping_interval=None))

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                assert isinstance(message, str)
                for line in message.split("\n"):
                    obj = json.loads(line)
                    if "id" in obj:
                        future = self._replies.pop(obj["id"])
                        future.set_result(obj)
                    else:
                        self.pushes.put_nowait(obj)

    async def _send_text(self, text: str) -> None:
        await self.ws.send(text)

    def send_raw(self, text: str) -> asyncio.Future[None]:
        return asyncio.ensure_future(self._send_text(text))

    async def call(self, method: str, /, **params: Any) -> dict[str, Any]:
        self._next += 1
        cid = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[cid] = future
        await self._send_text(json.dumps({"id": cid, "method": method, "params": params}))
        async with asyncio.timeout(TIMEOUT):
            reply = await future
        if "error" in reply:
            raise ReplyError(reply["error"])
        result: dict[str, Any] = reply["result"]
        return result

    async def batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Send several commands in one frame; their raw replies, in order."""
        futures = []
        lines = []
        for method, params in commands:
            self._next += 1
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._replies[self._next] = future
            futures.append(future)
            lines.append(json.dumps({"id": self._next, "method": method, "params": params}))
        await self._send_text("\n".join(lines))
        async with asyncio.timeout(TIMEOUT):
            return [await future for future in futures]

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
        """Wait for the server to close the connection; its close code and reason."""
        async with asyncio.timeout(TIMEOUT):
            await self.ws.wait_closed()
            await self._reader
        assert self.ws.close_code is not None
        return self.ws.close_code, self.ws.close_reason or ""

    async def close(self) -> None:
        await self.ws.close()
        await self._reader

    def drop(self) -> None:
        """Cut the TCP connection without a closing handshake."""
        assert self.ws.transport is not None
        self.ws.transport.abort()


class LongPollClient(HubClient):
    """The same client over long polling: commands by POST, replies and pushes by GET."""

    #: Every client made, so a test's fixture can release their sockets at the end.
    instances: ClassVar[list[LongPollClient]] = []

    def __init__(self, port: int, path: str = "/lp") -> None:
        LongPollClient.instances.append(self)
        self.port = port
        self.path = path
        self._next = 0
        self._replies = {}
        self.pushes = asyncio.Queue()
        self.info = {}
        self.sid: str | None = None
        self.ack = 0
        self.disconnect: dict[str, Any] | None = None
        self._gone = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._streams: dict[str, Http] = {}

    @classmethod
    async def open(cls, port: int, **connect_params: Any) -> LongPollClient:  # type: ignore[override]
        client = cls(port)
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int) -> LongPollClient:  # type: ignore[override]
        return cls(port)

    async def _http(
        self, role: str, method: str, target: str, body: bytes = b""
    ) -> tuple[int, bytes]:
        """One request on a kept-alive connection of its own per role (poll, send)."""
        if role not in self._streams:
            self._streams[role] = await Http.open(self.port)
        # No timeout here: a poll is held by the server for as long as it likes.
        reply = await self._streams[role].exchange(method, target, body, wait=None)
        return reply.status, reply.body

    async def _send_text(self, text: str) -> None:
        if self.sid is None:
            status, body = await self._http("send", "POST", self.path, text.encode())
            assert status == 200, (status, body)
            self.sid = json.loads(body)["sid"]
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        else:
            status, body = await self._http(
                "send", "POST", f"{self.path}?sid={self.sid}", text.encode()
            )
            assert status in (200, 410), (status, body)

    async def _poll(self) -> None:
        try:
            while True:
                status, body = await self._http(
                    "poll", "GET", f"{self.path}?sid={self.sid}&ack={self.ack}"
                )
                if status != 200:
                    return
                first, _, rest = body.decode().partition("\n")
                batch = json.loads(first)["batch"]
                if batch <= self.ack:
                    continue  # an empty poll, or a batch already handled
                self.ack = batch
                for line in rest.split("\n") if rest else []:
                    obj = json.loads(line)
                    if "id" in obj:
                        self._replies.pop(obj["id"]).set_result(obj)
                    else:
                        if obj.get("push") == "disconnect":
                            self.disconnect = obj
                        self.pushes.put_nowait(obj)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._gone.set()

    async def closed(self) -> tuple[int, str]:
        """Wait for the server to end the session: the disconnect push's code and reason."""
        async with asyncio.timeout(TIMEOUT):
            await self._gone.wait()
        assert self.disconnect is not None
        return self.disconnect["code"], self.disconnect["reason"]

    async def close(self) -> None:
        if self.sid is not None and self.disconnect is None:
            status, _ = await self._http("send", "DELETE", f"{self.path}?sid={self.sid}")
            assert status in (200, 404)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for http in self._streams.values():
            http.writer.close()

    @classmethod
    async def release_all(cls) -> None:
        """Close every client's sockets (ResourceWarning is an error in this suite)."""
        clients, cls.instances = cls.instances, []
        for client in clients:
            if client._poller is not None:
                client._poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._poller
            for http in client._streams.values():
                with contextlib.suppress(ConnectionError):
                    await http.close()

    def drop(self) -> None:
        """Stop polling and forget the session, as a tab that navigated away."""
        if self._poller is not None:
            self._poller.cancel()
        for http in self._streams.values():
            http.writer.transport.abort()
