"""The Server-Sent Events transport: the hub's pushes and replies on one event stream,
commands by HTTP POST, with httpx and httpx-sse.

For networks where the WebSocket upgrade does not get through but a streamed response
does (docs/protocol.md, "Server-Sent Events"): ``GET /sse?frame=`` opens a session with
the connect frame and streams ``data:`` events, one wire line each, after a ``session``
event that names the session; ``POST /sse?sid`` sends commands (the replies come on the
stream); ``DELETE /sse?sid`` leaves.

A dropped stream ends the session as on any transport: the client reconnects with its
backoff and resubscribes each channel with recovery from its position, so the stream's
``id:`` positions and ``Last-Event-ID`` (the browser's own EventSource reconnect) are
not needed here.

httpx and httpx-sse are optional dependencies (``pip install -e '.[client]'`` in a
checkout); they are imported only when an SSE transport is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

from ..exceptions import InvalidResponse
from ..hub.wire import MAX_BATCH
from .transport import CONNECTION_LOST, NORMAL_CLOSURE, Ending, TransportName

if TYPE_CHECKING:
    import httpx
    from httpx_sse import ServerSentEvent

__all__ = ["SseTransport"]

#: Seconds the stream may stay silent before it counts as lost: the hub sends a
#: heartbeat comment every 15 s by default (its ``heartbeat``), so this is three of them.
STREAM_TIMEOUT = 45.0
#: Seconds given to the DELETE that frees the session on close: a courtesy, since the
#: hub frees it when the stream closes or at its idle timeout anyway.
CLOSE_TIMEOUT = 2.0
#: Frames read but not yet taken by the client before reading the stream pauses: the
#: hub then keeps them in the session's outbox (and applies its slow-consumer policy when
#: that overflows), as with a WebSocket reader that falls behind.
MAX_FRAMES = 16


def _import_httpx() -> tuple[Any, Any]:
    try:
        import httpx
        import httpx_sse
    except ImportError as exc:
        raise ImportError("SSE needs httpx and httpx-sse: pip install -e '.[client]'") from exc
    return httpx, httpx_sse


class SseTransport:
    """The hub over Server-Sent Events: one stream in, one POST at a time out (so that
    the hub runs commands in the order they were sent)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        sid: str,
        stream: contextlib.AsyncExitStack,
        events: AsyncGenerator[ServerSentEvent, None],
    ) -> None:
        self._http = http
        self._url = url
        self._sid = sid
        self._stream = stream
        self._events = events
        self._frames: asyncio.Queue[str | Ending] = asyncio.Queue()
        self._room = asyncio.Event()
        self._ending: Ending | None = None
        #: The hub said the session is gone: no DELETE on close.
        self._gone = False
        self._outbox: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def name(self) -> TransportName:
        return "sse"

    @property
    def sid(self) -> str:
        """The hub's id of this session (as its ``session`` event said)."""
        return self._sid

    @classmethod
    async def open(
        cls,
        url: str,
        first_frame: str,
        *,
        open_timeout: float,
        stream_timeout: float = STREAM_TIMEOUT,
    ) -> SseTransport:
        """Open the stream with the connect frame and wait for its ``session`` event.
        Raise ``ConnectionError`` when the hub cannot be reached, the stream ends first,
        or the answer is a status worth trying again (5xx, 408, 429); ``InvalidResponse``
        for another refusal or an answer that is not an event stream (a server without
        SSE); ``ImportError`` without httpx and httpx-sse."""
        httpx, httpx_sse = _import_httpx()
        http = httpx.AsyncClient(timeout=httpx.Timeout(open_timeout, read=stream_timeout))
        stack = contextlib.AsyncExitStack()
        try:
            try:
                source = await stack.enter_async_context(
                    httpx_sse.aconnect_sse(http, "GET", url, params={"frame": first_frame})
                )
                status = source.response.status_code
                if status != 200:
                    message = f"SSE open answered HTTP {status}"
                    if status >= 500 or status in (408, 429):
                        raise ConnectionError(message)
                    raise InvalidResponse(message)
                events = source.aiter_sse()
                sid = await cls._session(events)
            except httpx.TransportError as exc:
                raise ConnectionError(f"SSE open failed: {exc!r}") from exc
            except httpx_sse.SSEError as exc:
                raise InvalidResponse(f"SSE open: {exc}") from exc
        except BaseException:
            await stack.aclose()
            await http.aclose()
            raise
        return cls(http, url, sid, stack, events)

    @staticmethod
    async def _session(events: AsyncIterator[ServerSentEvent]) -> str:
        """The sid of the stream's ``session`` event, its first (after ``retry``)."""
        async for event in events:
            if event.event != "session":
                if event.data:  # the retry field alone makes an event without data
                    raise InvalidResponse(f"SSE stream began with {event.event!r}, not session")
                continue
            body = _json(event.data)
            sid = body.get("sid") if isinstance(body, dict) else None
            if not isinstance(sid, str) or not sid:
                raise InvalidResponse("bad session event on the SSE stream")
            return sid
        raise ConnectionError("the SSE stream ended before its session event")

    # Receiving.

    async def _read(self) -> None:
        httpx, httpx_sse = _import_httpx()
        try:
            async for event in self._events:
                if event.event != "message" or not event.data:
                    continue  # no other event is defined after session
                while self._frames.qsize() >= MAX_FRAMES and self._ending is None:
                    self._room.clear()
                    await self._room.wait()
                if self._ending is not None:
                    return
                self._frames.put_nowait(event.data)
            # The hub ends the stream after the session's disconnect push (already read):
            # nothing to leave.
            self._gone = True
            self._end(Ending(CONNECTION_LOST, "event stream ended", True))
        except (httpx.TransportError, httpx_sse.SSEError) as exc:
            self._end(Ending(CONNECTION_LOST, f"event stream lost: {exc!r}", True))
        except Exception as exc:  # a bug or an odd stream must end the session, not hang it
            self._end(Ending(CONNECTION_LOST, f"event stream failed: {exc!r}", True))

    async def receive(self) -> str | Ending:
        if self._ending is not None and self._frames.empty():
            return self._ending
        item = await self._frames.get()
        self._room.set()
        return item

    # Sending.

    async def send(self, frame: str) -> None:
        if self._ending is not None:
            return
        self._outbox.append(frame)
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await self._flush_loop()
        except Exception as exc:  # as in _read: end, do not hang
            self._end(Ending(CONNECTION_LOST, f"SSE send failed: {exc!r}", True))

    async def _flush_loop(self) -> None:
        httpx, _ = _import_httpx()
        while self._outbox and self._ending is None:
            # Frames queued meanwhile travel together, at most MAX_BATCH commands a POST.
            parts: list[str] = []
            lines = 0
            while self._outbox:
                count = self._outbox[0].count("\n") + 1
                if parts and lines + count > MAX_BATCH:
                    break
                parts.append(self._outbox.pop(0))
                lines += count
            try:
                response = await self._http.post(
                    self._url, params={"sid": self._sid}, content="\n".join(parts).encode()
                )
            except httpx.TransportError as exc:
                self._end(Ending(CONNECTION_LOST, f"SSE send failed: {exc!r}", True))
                return
            if response.status_code != 200:
                self._refused(response)
                return

    def _refused(self, response: httpx.Response) -> None:
        status = response.status_code
        body = _json(response.text)
        if status in (404, 410):
            self._gone = True
        why = body.get("error") if isinstance(body, dict) else None
        reconnect = body.get("reconnect") if isinstance(body, dict) else None
        reason = f"SSE answered HTTP {status}: {why or 'refused'}"
        self._end(Ending(CONNECTION_LOST, reason, reconnect is not False))

    # Ending.

    def _end(self, ending: Ending) -> None:
        if self._ending is None:
            self._ending = ending
            self._outbox.clear()
            self._frames.put_nowait(ending)
            self._room.set()

    def abort(self) -> None:
        """Stop reading and sending at once and leave the session to the hub, without a
        DELETE, as a network failure would (for tests of how the hub handles a lost
        client). :meth:`receive` then reports a lost connection (1006); :meth:`close`
        must still be called to release the sockets."""
        self._gone = True
        self._end(Ending(CONNECTION_LOST, "aborted by the client", True))
        for task in (self._reader, self._sender):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        self._end(Ending(NORMAL_CLOSURE, "closed by the client", False))
        current = asyncio.current_task()
        for task in (self._reader, self._sender):
            if task is not None and task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            with contextlib.suppress(Exception):
                await self._events.aclose()
            await self._stream.aclose()
            if not self._gone:
                httpx, _ = _import_httpx()
                # Free the session now rather than when the hub notices the stream closed.
                with contextlib.suppress(httpx.HTTPError):
                    await self._http.delete(
                        self._url, params={"sid": self._sid}, timeout=CLOSE_TIMEOUT
                    )
                self._gone = True
        finally:
            await self._http.aclose()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
