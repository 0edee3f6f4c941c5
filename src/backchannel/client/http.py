"""What the client's two HTTP transports share: long polling (:mod:`.longpoll`) and
Server-Sent Events (:mod:`.sse`) both send commands by ``POST ?sid``, leave by
``DELETE ?sid``, queue the frames they receive for :meth:`HttpTransport.receive` and
end the same way. Each transport's module keeps how it opens a session and receives.

httpx is an optional dependency (``pip install -e '.[client]'`` in a checkout); it is
imported only when an HTTP transport is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

from ..exceptions import InvalidResponse
from ..hub.wire import MAX_BATCH
from .transport import CONNECTION_LOST, NORMAL_CLOSURE, Ending, TransportName

if TYPE_CHECKING:
    import httpx

__all__ = ["CLOSE_TIMEOUT", "MAX_FRAMES", "HttpTransport", "check_open", "tls_context"]

#: Seconds given to the DELETE that frees the session on close: a courtesy, since the
#: hub frees it at its idle timeout (or, with SSE, when the stream closes) anyway.
CLOSE_TIMEOUT = 2.0
#: Frames read but not yet taken by the client before receiving pauses: the hub then
#: keeps them (up to its own limit, then its slow-consumer policy), as a WebSocket server
#: does when a reader is slow.
MAX_FRAMES = 16


def import_httpx(needs: str = "the HTTP transports need") -> Any:
    """httpx, or an ImportError that says who ``needs`` it and how to install it."""
    try:
        import httpx
    except ImportError as exc:
        raise ImportError(f"{needs} httpx: pip install -e '.[client]'") from exc
    return httpx


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, made once for the process: making it reads the CA
    bundle (a fifth of a second), which every long-poll or SSE open, and so every
    reconnection, would pay again."""
    httpx = import_httpx()
    context: ssl.SSLContext = httpx.create_ssl_context()
    return context


def check_open(status: int, label: str) -> None:
    """Raise for an open answered with another status than 200: ``ConnectionError``
    when it is worth trying again (5xx, 408, 429), ``InvalidResponse`` otherwise."""
    if status != 200:
        message = f"{label} open answered HTTP {status}"
        if status >= 500 or status in (408, 429):
            raise ConnectionError(message)
        raise InvalidResponse(message)


def parse_json(text: str) -> Any:
    """``text`` as JSON, or None when it is not."""
    try:
        return json.loads(text)
    except ValueError:
        return None


class HttpTransport:
    """A session on the hub over HTTP: one receiving task (the subclass's
    :meth:`_receive_loop`), and one POST at a time out so that the hub runs commands in
    the order they were sent."""

    #: The transport's name, as :attr:`name` reports it.
    transport_name: ClassVar[TransportName]
    #: How errors name the transport: "long-poll send failed", "SSE send failed".
    send_label: ClassVar[str]
    #: How refusals name it: "long poll answered HTTP 404", "SSE answered HTTP 404".
    refusal_label: ClassVar[str]

    def __init__(self, http: httpx.AsyncClient, url: str, sid: str) -> None:
        self._http = http
        self._url = url
        self._sid = sid
        self._frames: asyncio.Queue[str | Ending] = asyncio.Queue()
        self._room = asyncio.Event()
        self._ending: Ending | None = None
        #: The hub said the session is gone: no DELETE on close.
        self._gone = False
        self._outbox: list[str] = []
        self._sender: asyncio.Task[None] | None = None
        self._receiver = asyncio.get_running_loop().create_task(self._receive_loop())

    @property
    def name(self) -> TransportName:
        return self.transport_name

    async def _receive_loop(self) -> None:
        """Read what the hub sends into ``_frames`` until the session ends."""
        raise NotImplementedError

    # Receiving.

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
        except Exception as exc:  # as in receiving: end, do not hang
            self._end(Ending(CONNECTION_LOST, f"{self.send_label} failed: {exc!r}", True))

    async def _flush_loop(self) -> None:
        httpx = import_httpx()
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
                self._end(Ending(CONNECTION_LOST, f"{self.send_label} failed: {exc!r}", True))
                return
            if response.status_code != 200:
                self._refused(response)
                return

    def _refused(self, response: httpx.Response) -> None:
        status = response.status_code
        body = parse_json(response.text)
        if status in (404, 410):
            self._gone = True
        why = body.get("error") if isinstance(body, dict) else None
        reconnect = body.get("reconnect") if isinstance(body, dict) else None
        reason = f"{self.refusal_label} answered HTTP {status}: {why or 'refused'}"
        self._end(Ending(CONNECTION_LOST, reason, reconnect is not False))

    # Ending.

    def _end(self, ending: Ending) -> None:
        if self._ending is None:
            self._ending = ending
            self._outbox.clear()
            self._frames.put_nowait(ending)
            self._room.set()

    def abort(self) -> None:
        """Stop receiving and sending at once and leave the session to the hub, without a
        DELETE, as a page that navigated away or a network failure would (for tests of
        how the hub handles a lost client: it keeps the session until its idle timeout).
        :meth:`receive` then reports a lost connection (1006); :meth:`close` must still
        be called to release the sockets."""
        self._gone = True
        self._end(Ending(CONNECTION_LOST, "aborted by the client", True))
        for task in (self._receiver, self._sender):
            if task is not None and not task.done():
                task.cancel()

    async def _release(self) -> None:
        """Release what the transport holds besides the HTTP client (before the DELETE)."""

    async def close(self) -> None:
        self._end(Ending(NORMAL_CLOSURE, "closed by the client", False))
        current = asyncio.current_task()
        for task in (self._receiver, self._sender):
            if task is not None and task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        try:
            await self._release()
            if not self._gone:
                httpx = import_httpx()
                # Free the session now rather than at the hub's idle timeout.
                with contextlib.suppress(httpx.HTTPError):
                    await self._http.delete(
                        self._url, params={"sid": self._sid}, timeout=CLOSE_TIMEOUT
                    )
                self._gone = True
        finally:
            await self._http.aclose()
