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

Session ids are 128 bits from the OS's CSPRNG; whoever holds one holds the session (it
was opened with a valid connect token, and refresh keeps to its user). A session that is
not polled for ``idle_timeout`` seconds is closed and freed. A held poll is a future: no
CPU while waiting; a publication wakes only the polls of its subscribers, and they share
the same encoded text.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from ...asyncio import ServerConnection
from ...protocol.http11 import Headers, Request, Response
from .. import codes
from ..codes import Disconnect
from ..commands import Commands
from ..hooks import Connected
from ..hub import Hub
from ..outbox import Outbox
from ..session import Session

__all__ = ["Answer", "Authenticate", "LongPoll", "LongPollTransport", "SessionRelay"]

logger = logging.getLogger("backchannel.hub")

#: Bytes of queued texts one batch carries: the outbox's own bound (1 MiB by default)
#: caps it too; this keeps one response small enough for any proxy's buffer.
MAX_BATCH = 256 * 1024


class LongPollTransport:
    """A session's transport over long polling: its outbox is drained into numbered
    batches, one held until the client acknowledges it."""

    name: ClassVar[str] = "longpoll"

    __slots__ = (
        "_idle",
        "_waiter",
        "batches",
        "claimed",
        "closing",
        "endpoint",
        "outbox",
        "seq",
        "session",
        "sid",
    )

    def __init__(self, endpoint: LongPoll, sid: str) -> None:
        self.endpoint = endpoint
        self.sid = sid
        self.session: Session | None = None
        self.outbox: Outbox | None = None
        #: Batches sent but not acknowledged: (number, body).
        self.batches: deque[tuple[int, bytes]] = deque()
        self.seq = 0
        #: When (loop time) the relay last recorded this node as the session's.
        self.claimed = 0.0
        self.closing: Disconnect | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

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
            self.endpoint.end_session(session)

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


#: What a relayed request gets back: status, content type, body.
Answer = tuple[int, str, bytes]

#: Who the client opening a session is, as the server that took the request knows it
#: (None: the connect's token and the hooks decide).
Authenticate = Callable[[], Awaitable[Connected | None]]


@runtime_checkable
class SessionRelay(Protocol):
    """Carries long-poll requests to the node that holds their session, so that a poll
    may land on any node behind a load balancer (the Redis broker is one)."""

    async def claim_session(self, sid: str, ttl: float) -> None:
        """Record that this node holds ``sid`` (for ``ttl`` seconds unless claimed again)."""

    async def release_session(self, sid: str) -> None:
        """``sid`` is gone from this node."""

    async def forward_session(
        self, sid: str, method: str, target: str, body: bytes, wait: float
    ) -> Answer | None:
        """Have the node holding ``sid`` answer this request; None when no live node
        holds it, or it did not answer within ``wait`` seconds."""

    def serve_sessions(self, handler: Callable[[str, str, bytes], Awaitable[Answer]]) -> None:
        """Answer requests forwarded to this node with ``handler(method, target, body)``."""


class LongPoll:
    """The long-polling endpoint; use it as (or from) ``serve(process_request=...)``."""

    def __init__(
        self,
        hub: Hub,
        *,
        path: str = "/lp",
        poll_timeout: float = 25.0,
        idle_timeout: float = 60.0,
        origins: Collection[str] = (),
        relay: SessionRelay | None = None,
    ) -> None:
        self.hub = hub
        self.commands = Commands(hub)
        self.path = path
        #: Seconds a poll is held when there is nothing to deliver: under the 30 to 60 s
        #: after which proxies commonly cut an idle request.
        self.poll_timeout = poll_timeout
        #: Seconds without a poll after which a session is closed and freed.
        self.idle_timeout = idle_timeout
        #: Origins of pages on other sites that may use this endpoint (CORS); "*" for
        #: any. Pages of the server's own origin need nothing.
        self.origins = frozenset(origins)
        self.sessions: dict[str, LongPollTransport] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: With several nodes, requests for sessions held elsewhere go through the relay.
        self.relay = relay
        if relay is not None:
            relay.serve_sessions(self._relayed)

    def held(self) -> int:
        """Polls held on this node now, waiting for something to answer (a metric)."""
        return sum(1 for transport in self.sessions.values() if transport.waiting)

    def opens_session(self, request: Request) -> bool:
        """Whether ``request`` opens a new session (a POST to this path without a
        ``sid``): the one rule, for a caller that counts opens (a rate limit)."""
        url = urlsplit(request.path)
        return url.path == self.path and request.method == "POST" and _sid(url.query) is None

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        """The adapter for ``serve(process_request=...)`` of backchannel's own server."""
        return await self.handle(request)

    async def handle(
        self, request: Request, *, authenticate: Authenticate | None = None
    ) -> Response | None:
        """Answer ``request`` (a request value from any server: backchannel's own, or an
        ASGI adapter); None when its path is not this endpoint's. ``authenticate``: asked
        only when the request opens a session, who its client is (None: its connect's
        token and the hooks decide), for a server that knows (``backchannel.asgi``)."""
        url = urlsplit(request.path)
        if url.path != self.path:
            return None
        origin = request.headers.get("Origin")
        allowed = origin is not None and ("*" in self.origins or origin in self.origins)
        if request.method == "OPTIONS":
            # A CORS preflight (DELETE, or a POST a browser does not count as simple).
            if not allowed:
                return Response.json(403, {"error": "origin not allowed"})
            response = Response(204)
            response.headers.add("Access-Control-Allow-Methods", "GET, POST, DELETE")
            response.headers.add("Access-Control-Allow-Headers", "Content-Type")
            response.headers.add("Access-Control-Max-Age", "600")
        else:
            response = await self._answer(request, url.query, authenticate=authenticate)
        if allowed:
            assert origin is not None
            response.headers.set("Access-Control-Allow-Origin", origin)
            response.headers.add("Vary", "Origin")
        return response

    async def _relayed(self, method: str, target: str, body: bytes) -> Answer:
        """Answer a request another node received for a session held here."""
        request = Request(method, target, Headers(), body)
        response = await self._answer(request, urlsplit(target).query, relayed=True)
        return response.status, response.headers.get("Content-Type") or "", response.body

    async def _answer(
        self,
        request: Request,
        query_string: str,
        *,
        relayed: bool = False,
        authenticate: Authenticate | None = None,
    ) -> Response:
        query = parse_qs(query_string)
        sid = _sid(query_string)
        if request.method == "POST" and sid is None:
            connected = await authenticate() if authenticate is not None else None
            return await self._open(request, connected)
        transport = self.sessions.get(sid) if sid is not None else None
        if transport is None:
            if sid is not None and self.relay is not None and not relayed:
                answer = await self.relay.forward_session(
                    sid, request.method, request.path, request.body, self.poll_timeout + 10
                )
                if answer is not None:
                    status, kind, body = answer
                    return Response(status, Headers([("Content-Type", kind)]), body)
            return Response.json(404, {"error": "unknown session", "reconnect": True})
        if request.method == "POST":
            return await self._send(transport, request)
        if request.method == "GET":
            try:
                ack = int(query.get("ack", ["0"])[0])
            except ValueError:
                return Response.json(400, {"error": "ack must be an integer"})
            return await self._poll(transport, ack)
        if request.method == "DELETE":
            # The client is leaving (a tab closing): free the session now, not at idle.
            transport._wake()
            self._forget(transport)
            return Response.json(200, {"sid": transport.sid})
        return Response.json(405, {"error": "use GET to poll, POST to send, DELETE to leave"})

    async def _open(self, request: Request, connected: Connected | None = None) -> Response:
        sid = secrets.token_urlsafe(16)
        transport = LongPollTransport(self, sid)
        session = self.hub.open_session(transport, request.headers, connected=connected)
        transport.session = session
        self.sessions[sid] = transport
        self._arm_idle(transport)
        if self.relay is not None:
            transport.claimed = asyncio.get_running_loop().time()
            await self.relay.claim_session(sid, self.idle_timeout)
        await self.commands.handle(session, request.body)
        return Response.json(200, {"sid": sid, "ack": 0})

    async def _send(self, transport: LongPollTransport, request: Request) -> Response:
        session = transport.session
        if session is None or transport.closing is not None:
            reconnect = transport.closing is None or transport.closing.reconnect
            return Response.json(410, {"error": "session closed", "reconnect": reconnect})
        await self.commands.handle(session, request.body)
        return Response.json(200, {"sid": transport.sid})

    async def _poll(self, transport: LongPollTransport, ack: int) -> Response:
        if not transport.acknowledge(ack):
            return Response.json(400, {"error": "ack names a batch that was not sent"})
        if transport._waiter is not None:
            # A newer poll replaces a held one (the client gave up on it).
            transport._wake()
        if transport._idle is not None:
            transport._idle.cancel()
            transport._idle = None
        now = asyncio.get_running_loop().time()
        if self.relay is not None and now - transport.claimed > self.idle_timeout / 3:
            # Still here: other nodes keep forwarding to this one. Renewed every third of
            # the claim's life, not on every poll: a poll is the hot path.
            transport.claimed = now
            await self.relay.claim_session(transport.sid, self.idle_timeout)
        try:
            batch = transport.next_batch()
            if batch is None and transport.closing is None:
                waiter = transport._waiter = asyncio.get_running_loop().create_future()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_timeout):
                        await waiter
                if transport._waiter is waiter:
                    transport._waiter = None
                batch = transport.next_batch()
        finally:
            self._arm_idle(transport)
        if batch is not None:
            _, body = batch
            headers = Headers([("Content-Type", "text/plain; charset=utf-8")])
            return Response(200, headers, body)
        if transport.closing is not None:
            # Everything was delivered, the disconnect push included: forget it. The
            # answer repeats the disconnect's advice, so a client cannot read it otherwise.
            reconnect = transport.closing.reconnect
            self._forget(transport)
            return Response.json(410, {"error": "session closed", "reconnect": reconnect})
        return Response.json(200, {"batch": transport.seq})

    def _arm_idle(self, transport: LongPollTransport) -> None:
        if transport._idle is not None:
            transport._idle.cancel()
        transport._idle = asyncio.get_running_loop().call_later(
            self.idle_timeout, self._expire, transport
        )

    def _expire(self, transport: LongPollTransport) -> None:
        transport._idle = None
        session = transport.session
        if session is not None and not session.closed:
            logger.info("long-poll session %s idle: closing", transport.sid)
            session.disconnect(codes.IDLE_TIMEOUT)
        self._forget(transport)

    def _forget(self, transport: LongPollTransport) -> None:
        if self.sessions.pop(transport.sid, None) is not None and self.relay is not None:
            self._spawn(self.relay.release_session(transport.sid))
        if transport._idle is not None:
            transport._idle.cancel()
            transport._idle = None
        session, transport.session = transport.session, None
        if session is not None:
            self._spawn(self.hub.close_session(session))
        # Free what was queued now, not at the next full garbage collection (the
        # session and its transport refer to each other).
        if transport.outbox is not None:
            transport.outbox.clear()
        transport.batches.clear()

    def end_session(self, session: Session) -> None:
        """A session ended by the server: free it in the hub now (its transport stays
        until the client has polled the disconnect push, or goes idle)."""
        self._spawn(self.hub.close_session(session))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _sid(query_string: str) -> str | None:
    """The session id a query names, if any (an empty ``sid=`` names none)."""
    return parse_qs(query_string).get("sid", [None])[0]
