"""One session with the hub over one transport: numbered commands, matched replies."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from ..exceptions import CommandError, ConnectionClosedError, InvalidArgument
from ..hub import wire
from .transport import CONNECTION_LOST, Ending, Transport

__all__ = ["Connection", "encode_command"]

logger = logging.getLogger("backchannel.client")

OnResult = Callable[[dict[str, Any]], None]


def encode_command(cid: int, method: str, params: dict[str, Any], *, check: bool = True) -> str:
    """One command as wire text. Raise :class:`InvalidArgument` for what the hub would
    refuse: bad parameters (the hub answers 107) and values that are not JSON (NaN, a
    lone surrogate, nesting past MAX_DEPTH), which make the whole frame invalid and end
    the connection with 3501, a code that forbids reconnecting.

    ``check=False`` skips the parameter checks (a value JSON cannot encode is still
    refused): for tests of the hub's own answers to bad parameters."""
    if check:
        schema = wire.METHODS.get(method)
        problem = wire.check_params(params, schema) if schema is not None else ""
        problem = problem or wire.check_value(params)
        if problem:
            raise InvalidArgument(f"{method}: {problem}")
    command: dict[str, Any] = {"id": cid, "method": method}
    if params:
        command["params"] = params
    try:
        return json.dumps(command, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{method}: cannot encode as JSON: {exc}") from exc


class Connection:
    """Sends commands on a transport and reads its frames: replies resolve the command's
    future, pushes go to ``on_push``, and the transport's end fails what is pending."""

    def __init__(
        self,
        on_push: Callable[[dict[str, Any]], None],
        on_end: Callable[[Connection], None],
    ) -> None:
        self._on_push = on_push
        self._on_end = on_end
        self._next_id = 0
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], OnResult | None]] = {}
        self.transport: Transport | None = None
        #: Whether the server sent anything yet (a WebSocket that brings nothing is a
        #: reason to fall back to long polling).
        self.got_message = False
        #: The disconnect push, when the hub sent one.
        self.disconnect: Ending | None = None
        #: How the connection ended, once it has.
        self.ending: Ending | None = None
        self.ended: asyncio.Future[Ending] = asyncio.get_running_loop().create_future()
        self._reader: asyncio.Task[None] | None = None

    def prepare(
        self,
        method: str,
        params: dict[str, Any],
        on_result: OnResult | None = None,
        *,
        check: bool = True,
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Number a command and wait for its reply: its text, and the reply's future
        (a result, or :class:`CommandError`). The caller sends the text on
        :attr:`transport`, alone or joined by newlines with others in one frame.
        ``check`` is :func:`encode_command`'s."""
        self._next_id += 1
        cid = self._next_id
        text = encode_command(cid, method, params, check=check)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[cid] = (future, on_result)
        return text, future

    def start(self, transport: Transport) -> None:
        """Read the transport (opened with the first frame, from :meth:`prepare`)."""
        self.transport = transport
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def request(
        self, method: str, params: dict[str, Any], on_result: OnResult | None = None
    ) -> dict[str, Any]:
        """Send a command and return its result. Raise :class:`CommandError` for an error
        reply, :class:`ConnectionClosedError` when the connection ends first (the command
        may or may not have run). ``on_result`` is called by the reader itself, before
        any later push is handled: a subscribe's result must be applied before the live
        publications that follow it."""
        if self.ending is not None:
            raise ConnectionClosedError(self.ending.code, self.ending.reason)
        assert self.transport is not None
        text, future = self.prepare(method, params, on_result)
        await self.transport.send(text)
        return await future

    async def _read(self) -> None:
        assert self.transport is not None
        ending: Ending
        try:
            while True:
                item = await self.transport.receive()
                if isinstance(item, Ending):
                    ending = item
                    break
                self.got_message = True
                for line in item.split("\n"):
                    self._line(line)
        except Exception as exc:
            logger.exception("the connection's reader failed")
            ending = Ending(CONNECTION_LOST, f"reader failed: {exc!r}", True)
        self._finish(self.disconnect or ending)

    def _line(self, line: str) -> None:
        if not line.strip(" \t\r"):
            return
        try:
            obj = json.loads(line)
        except ValueError:
            logger.warning("ignoring a line that is not JSON from the hub: %.100r", line)
            return
        if not isinstance(obj, dict):
            return
        if "id" in obj:
            self._reply(obj)
        elif obj.get("push") == "disconnect":
            code = obj.get("code")
            if type(code) is int and self.disconnect is None:
                reason = obj.get("reason")
                reconnect = obj.get("reconnect")
                self.disconnect = Ending(
                    code,
                    reason if isinstance(reason, str) else "",
                    reconnect if isinstance(reconnect, bool) else True,
                )
        elif isinstance(obj.get("push"), str):
            self._on_push(obj)

    def _reply(self, obj: dict[str, Any]) -> None:
        entry = self._pending.pop(obj["id"], None) if type(obj["id"]) is int else None
        if entry is None:
            return  # a reply nobody waits for any more
        future, on_result = entry
        error = obj.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            message = error.get("message")
            exc = CommandError(
                code if type(code) is int else 0,
                message if isinstance(message, str) else "",
                temporary=error.get("temporary") is True,
            )
            if not future.done():
                future.set_exception(exc)
            return
        result = obj.get("result")
        if not isinstance(result, dict):
            result = {}
        if on_result is not None:
            on_result(result)
        if not future.done():
            future.set_result(result)

    def _finish(self, ending: Ending) -> None:
        if self.ending is not None:
            return
        self.ending = ending
        pending, self._pending = self._pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(ConnectionClosedError(ending.code, ending.reason))
                # Nobody may be waiting any more (a caller that timed out).
                future.exception()
        if not self.ended.done():
            self.ended.set_result(ending)
        self._on_end(self)

    async def close(self) -> None:
        """End the connection from this side (if it has not ended) and free its socket."""
        transport = self.transport
        if transport is not None:
            await transport.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            await self._reader
        self._finish(Ending(1000, "closed by the client", False))
