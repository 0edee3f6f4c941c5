"""The long-polling transport: the hub over plain HTTP, for clients whose WebSocket
upgrade does not get through (docs/protocol.md, "Long polling").

Three requests, all under one path (``/lp`` by default) on the server's port:

* ``POST /lp`` opens a session. The body is a wire frame that starts with a connect
  command; the answer is ``{"sid": ..., "ack": 0}``. The replies come by polling.
* ``GET /lp?sid=S&ack=N`` polls. It is held until there is something to deliver or
  ``poll_timeout`` passes, then answered with a batch: a first line ``{"batch": K}``
  followed by wire lines (replies and pushes). The next poll carries ``ack=K``. A batch
  that was not acknowledged is sent again, so a response lost on the way loses nothing.
* ``POST /lp?sid=S`` sends commands; it is answered at once with ``{"sid": S}`` and the
  replies come by polling.
* ``DELETE /lp?sid=S`` ends the session (a client that is leaving).

The session table, ids, idle expiry (a session not polled for ``idle_timeout`` seconds
is closed and freed), CORS and the relay between nodes are shared with the other HTTP
transports (:mod:`.http`). A held poll is a future: no CPU while waiting; a publication
wakes only the polls of its subscribers, and they share the same encoded text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Collection, Sequence
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

from ...protocol.http11 import Headers, Request, Response
from ..codes import Disconnect
from ..hooks import Connected
from ..hub import Hub
from .http import (
    Answer,
    Authenticate,
    HttpSessions,
    HttpTransport,
    SessionEndpoint,
    SessionRelay,
    session_closed,
    sid_of,
)

__all__ = ["Answer", "Authenticate", "LongPoll", "LongPollTransport", "SessionRelay"]

#: Bytes of queued texts one batch carries: the outbox's own bound (1 MiB by default)
#: caps it too; this keeps one response small enough for any proxy's buffer.
MAX_BATCH = 256 * 1024


class LongPollTransport(HttpTransport):
    """A session's transport over long polling: its outbox is drained into numbered
    batches, one held until the client acknowledges it."""

    name: ClassVar[str] = "longpoll"

    __slots__ = ("_waiter", "batches", "seq")

    endpoint: LongPoll

    def __init__(self, endpoint: LongPoll, sid: str) -> None:
        super().__init__(endpoint, sid)
        #: Batches sent but not acknowledged: (number, body).
        self.batches: deque[tuple[int, bytes]] = deque()
        self.seq = 0
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, text: str) -> bool:
        return False  # everything waits in the outbox for the next poll

    def wake(self) -> None:
        self._wake()

    def close(self, disconnect: Disconnect) -> None:
        # The disconnect push is already queued: the client learns why on its next poll.
        self.closing = disconnect
        self._wake()
        session = self.session
        if session is not None:
            self.endpoint.table.end_session(session)

    def forgotten(self) -> None:
        self._wake()
        super().forgotten()
        self.batches.clear()

    @classmethod
    def deliver_many(
        cls, transports: Sequence[LongPollTransport], text: str
    ) -> list[LongPollTransport]:
        return list(transports)  # the sessions queue it; a poll takes it

    @property
    def waiting(self) -> bool:
        """Whether a poll is held, waiting for something to answer."""
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def acknowledge(self, ack: int) -> bool:
        """Forget batches up to ``ack``; False if ``ack`` names a batch never sent."""
        if ack > self.seq:
            return False
        while self.batches and self.batches[0][0] <= ack:
            self.batches.popleft()
        return True

    def next_batch(self) -> tuple[int, bytes] | None:
        """The oldest unacknowledged batch, else a new one from the outbox."""
        if self.batches:
            return self.batches[0]
        if not self.outbox:
            return None
        self.seq += 1
        lines = self.outbox.take(MAX_BATCH)
        body = "\n".join([json.dumps({"batch": self.seq}), *lines]).encode()
        self.batches.append((self.seq, body))
        return self.seq, body


class LongPoll(SessionEndpoint[LongPollTransport, Response]):
    """The long-polling endpoint; use it as (or from) ``serve(process_request=...)``.

    ``sessions`` is the node's table of HTTP sessions, shared with the other HTTP
    transports; without one, the endpoint makes its own from ``origins`` and ``relay``.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        path: str = "/lp",
        poll_timeout: float = 25.0,
        idle_timeout: float = 60.0,
        origins: Collection[str] = (),
        relay: SessionRelay | None = None,
        sessions: HttpSessions | None = None,
    ) -> None:
        super().__init__(
            hub, LongPollTransport, path, origins=origins, relay=relay, sessions=sessions
        )
        #: Seconds a poll is held when there is nothing to deliver: under the 30 to 60 s
        #: after which proxies commonly cut an idle request.
        self.poll_timeout = poll_timeout
        #: Seconds without a poll after which a session is closed and freed.
        self.idle_timeout = idle_timeout
        self.table.add(self)

    def held(self) -> int:
        """Polls held on this node now, waiting for something to answer (a metric)."""
        return sum(1 for transport in self.sessions.values() if transport.waiting)

    def opens_session(self, request: Request) -> bool:
        """Whether ``request`` opens a new session (a POST to this path without a
        ``sid``): the one rule, for a caller that counts opens (a rate limit)."""
        url = urlsplit(request.path)
        return url.path == self.path and request.method == "POST" and sid_of(url.query) is None

    async def _route(
        self, request: Request, query_string: str, authenticate: Authenticate | None
    ) -> Response:
        return await self._answer(request, query_string, authenticate=authenticate)

    async def _answer(
        self,
        request: Request,
        query_string: str,
        *,
        relayed: bool = False,
        authenticate: Authenticate | None = None,
    ) -> Response:
        query = parse_qs(query_string)
        sid = sid_of(query_string)
        if request.method == "POST" and sid is None:
            connected = await authenticate() if authenticate is not None else None
            return await self._open(request, connected)
        transport = await self._find(request, sid, relayed=relayed, wait=self.poll_timeout + 10)
        if isinstance(transport, Response):
            return transport
        if request.method == "POST":
            return await self._send(transport, request)
        if request.method == "GET":
            try:
                ack = int(query.get("ack", ["0"])[0])
            except ValueError:
                return Response.json(400, {"error": "ack must be an integer"})
            return await self._poll(transport, ack)
        if request.method == "DELETE":
            return self._leave(transport)
        return Response.json(405, {"error": "use GET to poll, POST to send, DELETE to leave"})

    async def _open(self, request: Request, connected: Connected | None = None) -> Response:
        transport = LongPollTransport(self, self.table.new_sid())
        transport.session = self.hub.open_session(transport, request.headers, connected=connected)
        await self.table.register(transport)
        await self.commands.handle(transport.session, request.body)
        return Response.json(200, {"sid": transport.sid, "ack": 0})

    async def _poll(self, transport: LongPollTransport, ack: int) -> Response:
        if not transport.acknowledge(ack):
            return Response.json(400, {"error": "ack names a batch that was not sent"})
        if transport._waiter is not None:
            # A newer poll replaces a held one (the client gave up on it).
            transport._wake()
        self.table.disarm_idle(transport)
        await self.table.renew(transport)
        try:
            batch = transport.next_batch()
            if batch is None and transport.closing is None:
                waiter = transport._waiter = asyncio.get_running_loop().create_future()
                try:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_timeout):
                            await waiter
                finally:
                    # Also when the poll is cancelled (its client went away): the session
                    # then holds no poll, and what comes waits in the outbox for the next.
                    if transport._waiter is waiter:
                        transport._waiter = None
                batch = transport.next_batch()
        finally:
            if self.table.find(self, transport.sid) is transport:
                self.table.arm_idle(transport)
        if batch is not None:
            _, body = batch
            headers = Headers([("Content-Type", "text/plain; charset=utf-8")])
            return Response(200, headers, body)
        if transport.closing is not None:
            # Everything was delivered, the disconnect push included: forget it. The
            # answer repeats the disconnect's advice, so a client cannot read it otherwise.
            closing = transport.closing
            self.table.forget(transport)
            return session_closed(closing)
        return Response.json(200, {"batch": transport.seq})
