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

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import InvalidResponse
from .http import CLOSE_TIMEOUT, MAX_FRAMES, HttpTransport, check_open, parse_json, tls_context
from .transport import CONNECTION_LOST, Ending, TransportName

if TYPE_CHECKING:
    import httpx
    from httpx_sse import ServerSentEvent

__all__ = ["CLOSE_TIMEOUT", "MAX_FRAMES", "SseTransport"]

#: Seconds the stream may stay silent before it counts as lost: the hub sends a
#: heartbeat comment every 15 s by default (its ``heartbeat``), so this is three of them.
STREAM_TIMEOUT = 45.0


def _import_httpx() -> tuple[Any, Any]:
    try:
        import httpx
        import httpx_sse
    except ImportError as exc:
        raise ImportError("SSE needs httpx and httpx-sse: pip install -e '.[client]'") from exc
    return httpx, httpx_sse


class SseTransport(HttpTransport):
    """The hub over Server-Sent Events: one stream in, one POST at a time out (so that
    the hub runs commands in the order they were sent)."""

    transport_name: ClassVar[TransportName] = "sse"
    send_label: ClassVar[str] = "SSE send"
    refusal_label: ClassVar[str] = "SSE"

    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        sid: str,
        stream: contextlib.AsyncExitStack,
        events: AsyncGenerator[ServerSentEvent, None],
    ) -> None:
        self._stream = stream
        self._events = events
        super().__init__(http, url, sid)

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
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(open_timeout, read=stream_timeout), verify=tls_context()
        )
        stack = contextlib.AsyncExitStack()
        try:
            try:
                source = await stack.enter_async_context(
                    httpx_sse.aconnect_sse(http, "GET", url, params={"frame": first_frame})
                )
                check_open(source.response.status_code, "SSE")
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
            body = parse_json(event.data)
            sid = body.get("sid") if isinstance(body, dict) else None
            if not isinstance(sid, str) or not sid:
                raise InvalidResponse("bad session event on the SSE stream")
            return sid
        raise ConnectionError("the SSE stream ended before its session event")

    # Receiving.

    async def _receive_loop(self) -> None:
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

    async def _release(self) -> None:
        # The DELETE that follows frees the session now rather than when the hub notices
        # the stream closed.
        with contextlib.suppress(Exception):
            await self._events.aclose()
        await self._stream.aclose()
