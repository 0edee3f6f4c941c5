"""The long-polling transport: the hub over plain HTTP requests, with httpx.

For networks where the WebSocket upgrade does not get through (docs/protocol.md, "Long
polling"): ``POST /lp`` opens a session with the connect frame, ``GET /lp?sid&ack``
polls for batches, ``POST /lp?sid`` sends commands, ``DELETE /lp?sid`` leaves.

httpx is an optional dependency (``pip install -e '.[client]'`` in a checkout); it is imported
only when a long-polling transport is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from typing import TYPE_CHECKING, Any

from ..exceptions import InvalidResponse
from ..hub.wire import MAX_BATCH
from .transport import CONNECTION_LOST, NORMAL_CLOSURE, Ending, TransportName

if TYPE_CHECKING:
    import httpx

__all__ = ["LongPollTransport"]

#: How long the hub holds a poll with nothing to deliver (its ``poll_timeout``), in
#: seconds; a poll unanswered for this plus POLL_MARGIN counts as failed.
POLL_TIMEOUT = 25.0
#: Slack on top of the hold time for the network and a busy server.
POLL_MARGIN = 10.0
#: Failed polls in a row retried before the session counts as lost: a proxy that drops
#: one answer should not cost a reconnection (the hub sends an unacknowledged batch again).
POLL_RETRIES = 2
#: Seconds given to the DELETE that frees the session on close: a courtesy, since the
#: hub frees it at its idle timeout anyway.
CLOSE_TIMEOUT = 2.0
#: Frames read but not yet taken by the client before polling pauses: the hub then keeps
#: them (up to its own limit), as a WebSocket server does when a reader is slow.
MAX_FRAMES = 16


def _import_httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("long polling needs httpx: pip install -e '.[client]'") from exc
    return httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, made once for the process: making it reads the CA
    bundle (a fifth of a second), which every long-poll or SSE open, and so every
    reconnection, would pay again."""
    httpx = _import_httpx()
    context: ssl.SSLContext = httpx.create_ssl_context()
    return context


class LongPollTransport:
    """The hub over long polling: one poll in flight, and one send at a time so that the
    hub runs commands in the order they were sent."""

    def __init__(self, http: httpx.AsyncClient, url: str, sid: str, ack: int) -> None:
        self._http = http
        self._url = url
        self._sid = sid
        #: The last batch number handled: the next poll's ack.
        self._handled = ack
        self._frames: asyncio.Queue[str | Ending] = asyncio.Queue()
        self._room = asyncio.Event()
        self._ending: Ending | None = None
        #: The hub said the session is gone: no DELETE on close.
        self._gone = False
        self._outbox: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    @property
    def name(self) -> TransportName:
        return "longpoll"

    @classmethod
    async def open(
        cls, url: str, first_frame: str, *, open_timeout: float, poll_timeout: float = POLL_TIMEOUT
    ) -> LongPollTransport:
        """Open a session with the connect frame. Raise ``ConnectionError`` when the hub
        cannot be reached or answers with a status worth trying again (5xx, 408, 429),
        ``InvalidResponse`` for another refusal, ``ImportError`` without httpx."""
        httpx = _import_httpx()
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(open_timeout, read=poll_timeout + POLL_MARGIN),
            headers={"Cache-Control": "no-store"},
            verify=tls_context(),
        )
        try:
            try:
                response = await http.post(url, content=first_frame.encode(), timeout=open_timeout)
            except httpx.TransportError as exc:
                raise ConnectionError(f"long-poll open failed: {exc!r}") from exc
            status = response.status_code
            if status != 200:
                message = f"long-poll open answered HTTP {status}"
                if status >= 500 or status in (408, 429):
                    raise ConnectionError(message)
                raise InvalidResponse(message)
            body = _json(response.text)
            sid = body.get("sid") if isinstance(body, dict) else None
            ack = body.get("ack", 0) if isinstance(body, dict) else 0
            if not isinstance(sid, str) or not sid or type(ack) is not int or ack < 0:
                raise InvalidResponse("bad answer to the long-poll open")
        except BaseException:
            await http.aclose()
            raise
        return cls(http, url, sid, ack)

    # Receiving.

    async def _poll(self) -> None:
        try:
            await self._poll_loop()
        except Exception as exc:  # a bug or an odd answer must end the session, not hang it
            self._end(Ending(CONNECTION_LOST, f"long poll failed: {exc!r}", True))

    async def _poll_loop(self) -> None:
        httpx = _import_httpx()
        errors = 0
        while self._ending is None:
            if self._frames.qsize() >= MAX_FRAMES:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                response = await self._http.get(
                    self._url, params={"sid": self._sid, "ack": str(self._handled)}
                )
            except httpx.TransportError as exc:
                # The answer may have been lost on the way: the hub sends it again.
                errors += 1
                if errors > POLL_RETRIES:
                    self._end(Ending(CONNECTION_LOST, f"long poll failed: {exc!r}", True))
                    return
                await asyncio.sleep(errors)
                continue
            errors = 0
            if response.status_code != 200:
                self._refused(response)
                return
            self._batch(response.text)

    def _batch(self, text: str) -> None:
        """A poll's answer: ``{"batch": K}``, then wire lines. A number already handled
        (sent again, or an empty answer) brings nothing new."""
        head, newline, rest = text.partition("\n")
        parsed = _json(head)
        batch = parsed.get("batch") if isinstance(parsed, dict) else None
        if type(batch) is not int or batch < 0:
            self._end(Ending(CONNECTION_LOST, "bad long-poll answer (no batch number)", True))
            return
        if batch > self._handled:
            self._handled = batch
            if newline and rest:
                self._frames.put_nowait(rest)

    def _refused(self, response: httpx.Response) -> None:
        status = response.status_code
        body = _json(response.text)
        if status in (404, 410):
            self._gone = True
        why = body.get("error") if isinstance(body, dict) else None
        reconnect = body.get("reconnect") if isinstance(body, dict) else None
        reason = f"long poll answered HTTP {status}: {why or 'refused'}"
        self._end(Ending(CONNECTION_LOST, reason, reconnect is not False))

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
        except Exception as exc:  # as in _poll: end, do not hang
            self._end(Ending(CONNECTION_LOST, f"long-poll send failed: {exc!r}", True))

    async def _flush_loop(self) -> None:
        httpx = _import_httpx()
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
                self._end(Ending(CONNECTION_LOST, f"long-poll send failed: {exc!r}", True))
                return
            if response.status_code != 200:
                self._refused(response)
                return

    # Ending.

    def _end(self, ending: Ending) -> None:
        if self._ending is None:
            self._ending = ending
            self._outbox.clear()
            self._frames.put_nowait(ending)

    def abort(self) -> None:
        """Stop polling and sending at once and leave the session to the hub, without a
        DELETE, as a page that navigated away would (for tests of how the hub handles a
        lost client: it keeps the session until its idle timeout). :meth:`receive` then
        reports a lost connection (1006); :meth:`close` must still be called to release
        the sockets."""
        self._gone = True
        self._end(Ending(CONNECTION_LOST, "aborted by the client", True))
        for task in (self._poller, self._sender):
            if task is not None and not task.done():
                task.cancel()

    async def close(self) -> None:
        self._end(Ending(NORMAL_CLOSURE, "closed by the client", False))
        current = asyncio.current_task()
        for task in (self._poller, self._sender):
            if task is not None and task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            if not self._gone:
                httpx = _import_httpx()
                # Free the session now rather than at the hub's idle timeout.
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
