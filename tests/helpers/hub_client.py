"""A minimal client of the hub's wire format for tests, over a real WebSocket."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from backchannel.asyncio import ClientConnection, connect
from backchannel.exceptions import ConnectionClosed

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
    async def open(cls, port: int, **connect_params: Any) -> HubClient:
        ws = await connect(f"ws://127.0.0.1:{port}/", ping_interval=None)
        client = cls(ws)
        client.info = await client.call("connect", **connect_params)
        return client

    @classmethod
    async def raw(cls, port: int) -> HubClient:
        """A client that has not sent connect yet."""
        return cls(await connect(f"ws://127.0.0.1:{port}/", ping_interval=None))

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

    def send_raw(self, text: str) -> asyncio.Future[None]:
        return asyncio.ensure_future(self.ws.send(text))

    async def call(self, method: str, /, **params: Any) -> dict[str, Any]:
        self._next += 1
        cid = self._next
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[cid] = future
        await self.ws.send(json.dumps({"id": cid, "method": method, "params": params}))
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
        await self.ws.send("\n".join(lines))
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
