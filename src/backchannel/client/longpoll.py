"""The long-polling transport: the hub over plain HTTP requests, with httpx.

For networks where the WebSocket upgrade does not get through (docs/protocol.md, "Long
polling"): ``POST /lp`` opens a session with the connect frame, ``GET /lp?sid&ack``
polls for batches, ``POST /lp?sid`` sends commands, ``DELETE /lp?sid`` leaves.

httpx is an optional dependency (``pip install -e '.[client]'`` in a checkout); it is imported
only when a long-polling transport is opened.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from ..exceptions import InvalidResponse
from .http import (
    CLOSE_TIMEOUT,
    MAX_FRAMES,
    HttpTransport,
    check_open,
    import_httpx,
    parse_json,
    tls_context,
)
from .transport import CONNECTION_LOST, Ending, TransportName

if TYPE_CHECKING:
    import httpx

__all__ = ["CLOSE_TIMEOUT", "MAX_FRAMES", "LongPollTransport", "tls_context"]

#: How long the hub holds a poll with nothing to deliver (its ``poll_timeout``), in
#: seconds; a poll unanswered for this plus POLL_MARGIN counts as failed.
POLL_TIMEOUT = 25.0
#: Slack on top of the hold time for the network and a busy server.
POLL_MARGIN = 10.0
#: Failed polls in a row retried before the session counts as lost: a proxy that drops
#: one answer should not cost a reconnection (the hub sends an unacknowledged batch again).
POLL_RETRIES = 2


class LongPollTransport(HttpTransport):
    """The hub over long polling: one poll in flight, and one send at a time so that the
    hub runs commands in the order they were sent."""

    transport_name: ClassVar[TransportName] = "longpoll"
    send_label: ClassVar[str] = "long-poll send"
    refusal_label: ClassVar[str] = "long poll"

    def __init__(self, http: httpx.AsyncClient, url: str, sid: str, ack: int) -> None:
        #: The last batch number handled: the next poll's ack.
        self._handled = ack
        super().__init__(http, url, sid)

    @classmethod
    async def open(
        cls, url: str, first_frame: str, *, open_timeout: float, poll_timeout: float = POLL_TIMEOUT
    ) -> LongPollTransport:
        """Open a session with the connect frame. Raise ``ConnectionError`` when the hub
        cannot be reached or answers with a status worth trying again (5xx, 408, 429),
        ``InvalidResponse`` for another refusal, ``ImportError`` without httpx."""
        httpx = import_httpx("long polling needs")
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
            check_open(response.status_code, "long-poll")
            body = parse_json(response.text)
            sid = body.get("sid") if isinstance(body, dict) else None
            ack = body.get("ack", 0) if isinstance(body, dict) else 0
            if not isinstance(sid, str) or not sid or type(ack) is not int or ack < 0:
                raise InvalidResponse("bad answer to the long-poll open")
        except BaseException:
            await http.aclose()
            raise
        return cls(http, url, sid, ack)

    # Receiving.

    async def _receive_loop(self) -> None:
        try:
            await self._poll_loop()
        except Exception as exc:  # a bug or an odd answer must end the session, not hang it
            self._end(Ending(CONNECTION_LOST, f"long poll failed: {exc!r}", True))

    async def _poll_loop(self) -> None:
        httpx = import_httpx()
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
        parsed = parse_json(head)
        batch = parsed.get("batch") if isinstance(parsed, dict) else None
        if type(batch) is not int or batch < 0:
            self._end(Ending(CONNECTION_LOST, "bad long-poll answer (no batch number)", True))
            return
        if batch > self._handled:
            self._handled = batch
            if newline and rest:
                self._frames.put_nowait(rest)
