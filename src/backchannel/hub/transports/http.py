"""What every HTTP transport of the hub shares: the session table of a node, idle expiry,
CORS, and the relay that carries a request to the node holding its session.

Long polling (:mod:`.longpoll`) and Server-Sent Events (:mod:`.sse`) both name a session
by an id in the query (``?sid=S``) and may see its requests land on any node behind a
load balancer. One :class:`HttpSessions` per node holds the sessions of all of them:

* **the table**: session id -> the transport that carries it. Ids are 128 bits from the
  OS's CSPRNG; whoever holds one holds the session (it was opened with a valid connect
  token, and refresh keeps to its user). An id is only ever answered by the endpoint
  (path) that opened it.
* **idle expiry**: a session that nothing keeps alive for its endpoint's
  ``idle_timeout`` seconds (no poll; no stream attached) is closed with 3003 and freed.
* **CORS**: pages of the origins listed may use the endpoints from another site.
* **the relay** (:class:`SessionRelay`, the Redis broker is one): this node claims the
  sessions it holds, forwards a request for a session it does not hold to the node that
  does, and answers the requests other nodes forward to it. The relay has one handler
  per node, so the table serves it and hands each forwarded request to the endpoint
  that owns its path.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable
from urllib.parse import parse_qs, urlsplit

from ...asyncio import ServerConnection, Stream
from ...protocol.http11 import Headers, Request, Response
from .. import codes
from ..codes import Disconnect
from ..commands import Commands
from ..hooks import Connected
from ..hub import Hub
from ..outbox import Outbox
from ..session import Session

__all__ = [
    "Answer",
    "Authenticate",
    "HttpEndpoint",
    "HttpSessions",
    "HttpTransport",
    "SessionRelay",
    "sid_of",
]

logger = logging.getLogger("backchannel.hub")

#: What a relayed request gets back: status, content type, body.
Answer = tuple[int, str, bytes]

#: Who the client opening a session is, as the server that took the request knows it
#: (the host application's login, ``backchannel.asgi``); None: the connect's token and
#: the hooks decide. Asked only by a request that opens a session.
Authenticate = Callable[[], Awaitable[Connected | None]]


@runtime_checkable
class SessionRelay(Protocol):
    """Carries HTTP transports' requests to the node that holds their session, so that a
    request may land on any node behind a load balancer (the Redis broker is one)."""

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


class HttpEndpoint(Protocol):
    """An HTTP transport's endpoint, as the table sees it."""

    #: The path it answers (``/lp``, ``/sse``).
    path: str
    #: Seconds a session of this endpoint may go without being kept alive.
    idle_timeout: float

    async def answer_relayed(self, request: Request) -> Response:
        """Answer a request that another node received for a session held here."""


class HttpTransport:
    """What the table keeps of one session: its id, its endpoint, its hub session, and
    the state of its expiry and of its claim."""

    name: ClassVar[str] = "http"

    __slots__ = ("_idle", "claimed", "closing", "endpoint", "outbox", "session", "sid")

    def __init__(self, endpoint: HttpEndpoint, sid: str) -> None:
        self.endpoint = endpoint
        self.sid = sid
        self.session: Session | None = None
        self.outbox: Outbox | None = None
        #: When (loop time) the relay last recorded this node as the session's.
        self.claimed = 0.0
        #: Why the server ended the session, once it did.
        self.closing: Disconnect | None = None
        self._idle: asyncio.TimerHandle | None = None

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def forgotten(self) -> None:
        """The table dropped this session: free what is held (the session and its
        transport refer to each other, so nothing would be freed before the next full
        garbage collection)."""
        if self.outbox is not None:
            self.outbox.clear()


class HttpSessions:
    """The HTTP transports' sessions of one node (see the module docstring)."""

    def __init__(
        self,
        hub: Hub,
        *,
        origins: Collection[str] = (),
        relay: SessionRelay | None = None,
    ) -> None:
        self.hub = hub
        #: Origins of pages on other sites that may use these endpoints (CORS); "*" for
        #: any. Pages of the server's own origin need nothing.
        self.origins = frozenset(origins)
        self.sessions: dict[str, HttpTransport] = {}
        self.endpoints: dict[str, HttpEndpoint] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: With several nodes, requests for sessions held elsewhere go through the relay.
        self.relay = relay
        if relay is not None:
            relay.serve_sessions(self._relayed)

    def add(self, endpoint: HttpEndpoint) -> None:
        """Serve ``endpoint``'s relayed requests (one endpoint per path)."""
        if self.endpoints.get(endpoint.path, endpoint) is not endpoint:
            raise ValueError(f"two HTTP endpoints at {endpoint.path}")
        self.endpoints[endpoint.path] = endpoint

    # CORS.

    def allowed(self, request: Request) -> str | None:
        """The request's Origin when it may use the endpoints (CORS), else None."""
        origin = request.headers.get("Origin")
        if origin is not None and ("*" in self.origins or origin in self.origins):
            return origin
        return None

    def preflight(self, request: Request) -> Response:
        """The answer to a CORS preflight (DELETE, or a POST a browser does not count as
        simple)."""
        if self.allowed(request) is None:
            return Response.json(403, {"error": "origin not allowed"})
        response = Response(204)
        response.headers.add("Access-Control-Allow-Methods", "GET, POST, DELETE")
        response.headers.add("Access-Control-Allow-Headers", "Content-Type, Last-Event-ID")
        response.headers.add("Access-Control-Max-Age", "600")
        return response

    def cors(self, request: Request, headers: Headers) -> None:
        """Add the CORS headers an answer to ``request`` needs."""
        origin = self.allowed(request)
        if origin is not None:
            headers.set("Access-Control-Allow-Origin", origin)
            headers.add("Vary", "Origin")

    # The table.

    def new_sid(self) -> str:
        """A fresh session id: 128 bits from the CSPRNG, URL-safe."""
        return secrets.token_urlsafe(16)

    def find(self, endpoint: HttpEndpoint, sid: str | None) -> HttpTransport | None:
        """The session ``sid`` of ``endpoint`` held on this node."""
        transport = self.sessions.get(sid) if sid is not None else None
        if transport is None or transport.endpoint is not endpoint:
            return None
        return transport

    def of(self, endpoint: HttpEndpoint) -> dict[str, HttpTransport]:
        """The sessions of ``endpoint`` on this node."""
        return {sid: t for sid, t in self.sessions.items() if t.endpoint is endpoint}

    async def register(self, transport: HttpTransport) -> None:
        """Add a new session (its hub session already open) to the table, expiring
        unless kept alive, and claim it."""
        self.sessions[transport.sid] = transport
        self.arm_idle(transport)
        if self.relay is not None:
            transport.claimed = asyncio.get_running_loop().time()
            await self.relay.claim_session(transport.sid, transport.endpoint.idle_timeout)

    async def renew(self, transport: HttpTransport) -> None:
        """Claim the session again if a third of the claim's life has passed: other nodes
        keep forwarding to this one. Not on every request: that is the hot path."""
        if self.relay is None:
            return
        now = asyncio.get_running_loop().time()
        ttl = transport.endpoint.idle_timeout
        if now - transport.claimed > ttl / 3:
            transport.claimed = now
            await self.relay.claim_session(transport.sid, ttl)

    def arm_idle(self, transport: HttpTransport) -> None:
        """Expire the session after its endpoint's idle timeout, unless kept alive."""
        if transport._idle is not None:
            transport._idle.cancel()
        transport._idle = asyncio.get_running_loop().call_later(
            transport.endpoint.idle_timeout, self._expire, transport
        )

    def disarm_idle(self, transport: HttpTransport) -> None:
        """The session is in use (a poll held, a stream attached): no expiry meanwhile."""
        if transport._idle is not None:
            transport._idle.cancel()
            transport._idle = None

    def _expire(self, transport: HttpTransport) -> None:
        transport._idle = None
        session = transport.session
        if session is not None and not session.closed:
            logger.info("%s session %s idle: closing", transport.name, transport.sid)
            session.disconnect(codes.IDLE_TIMEOUT)
        self.forget(transport)

    def forget(self, transport: HttpTransport) -> None:
        """Drop the session from the table, end it in the hub, free what it holds."""
        if self.sessions.get(transport.sid) is transport:
            del self.sessions[transport.sid]
            if self.relay is not None:
                self.spawn(self.relay.release_session(transport.sid))
        self.disarm_idle(transport)
        session, transport.session = transport.session, None
        if session is not None:
            self.spawn(self.hub.close_session(session))
        transport.forgotten()

    def end_session(self, session: Session) -> None:
        """A session ended by the server: free it in the hub now (its transport stays
        until the client has read the disconnect push, or goes idle)."""
        self.spawn(self.hub.close_session(session))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # The relay.

    async def forward(self, request: Request, sid: str, wait: float) -> Response | None:
        """Have the node that holds ``sid`` answer ``request``; None when no live node
        does (or there is no relay)."""
        if self.relay is None:
            return None
        answer = await self.relay.forward_session(
            sid, request.method, request.path, request.body, wait
        )
        if answer is None:
            return None
        status, kind, body = answer
        return Response(status, Headers([("Content-Type", kind)]), body)

    async def _relayed(self, method: str, target: str, body: bytes) -> Answer:
        """A request another node received for a session held here: answered by the
        endpoint that owns its path."""
        endpoint = self.endpoints.get(urlsplit(target).path)
        if endpoint is None:
            response = unknown_session()
        else:
            response = await endpoint.answer_relayed(Request(method, target, Headers(), body))
        return response.status, response.headers.get("Content-Type") or "", response.body


def sid_of(query_string: str) -> str | None:
    """The session id a query names, if any (an empty ``sid=`` names none)."""
    return parse_qs(query_string).get("sid", [None])[0]


def unknown_session() -> Response:
    """The answer for a session id no live node holds: the client connects again."""
    return Response.json(404, {"error": "unknown session", "reconnect": True})


def session_closed(closing: Disconnect | None) -> Response:
    """The answer for a session the server ended, with the disconnect's advice."""
    reconnect = closing is None or closing.reconnect
    return Response.json(410, {"error": "session closed", "reconnect": reconnect})


#: An endpoint's kind of session transport.
T = TypeVar("T", bound=HttpTransport)
#: What an endpoint answers a request with besides a plain response (SSE: a stream).
A = TypeVar("A", bound=Response | Stream)


class SessionEndpoint(Generic[T, A]):
    """What the HTTP transports' endpoints (long polling, SSE) share: the node's session
    table, dispatch and CORS, the commands that a POST carries, and the answers to a
    request that names a session (found here, forwarded to the node that holds it, or
    unknown), to its commands and to its leaving. ``kind`` is the endpoint's transport
    class."""

    #: Seconds a session may go without being kept alive (set by each endpoint).
    idle_timeout: float

    def __init__(
        self,
        hub: Hub,
        kind: type[T],
        path: str,
        *,
        origins: Collection[str],
        relay: SessionRelay | None,
        sessions: HttpSessions | None,
    ) -> None:
        self.hub = hub
        self.kind = kind
        self.commands = Commands(hub)
        self.path = path
        if sessions is None:
            sessions = HttpSessions(hub, origins=origins, relay=relay)
        #: The node's HTTP sessions (shared with the other HTTP transports).
        self.table = sessions

    @property
    def sessions(self) -> dict[str, T]:
        """This endpoint's sessions on this node, by id."""
        return {sid: t for sid, t in self.table.of(self).items() if isinstance(t, self.kind)}

    async def __call__(self, connection: ServerConnection, request: Request) -> A | Response | None:
        """The adapter for ``serve(process_request=...)`` of backchannel's own server."""
        return await self.handle(request)

    async def handle(
        self, request: Request, *, authenticate: Authenticate | None = None
    ) -> A | Response | None:
        """Answer ``request`` (a request value from any server: backchannel's own, or an
        ASGI adapter); None when its path is not this endpoint's. ``authenticate``: asked
        only when the request opens a session, who its client is (None: its connect's
        token and the hooks decide), for a server that knows (``backchannel.asgi``)."""
        url = urlsplit(request.path)
        if url.path != self.path:
            return None
        answer: A | Response
        if request.method == "OPTIONS":
            answer = self.table.preflight(request)
        else:
            answer = await self._route(request, url.query, authenticate)
        self.table.cors(request, answer.headers)
        return answer

    async def answer_relayed(self, request: Request) -> Response:
        """Answer a request another node received for a session held here."""
        return await self._answer(request, urlsplit(request.path).query, relayed=True)

    async def _route(
        self, request: Request, query_string: str, authenticate: Authenticate | None
    ) -> A | Response:
        """Answer a request to this path other than a CORS preflight."""
        raise NotImplementedError

    async def _answer(
        self, request: Request, query_string: str, *, relayed: bool = False
    ) -> Response:
        """Answer a request that names a session (here, or relayed from another node)."""
        raise NotImplementedError

    async def _find(
        self, request: Request, sid: str | None, *, relayed: bool, wait: float
    ) -> T | Response:
        """The session that ``sid`` names on this node; else the answer of the node that
        holds it (waiting up to ``wait`` seconds), or :func:`unknown_session`."""
        transport = self.table.find(self, sid)
        if isinstance(transport, self.kind):
            return transport
        if sid is not None and not relayed:
            forwarded = await self.table.forward(request, sid, wait)
            if forwarded is not None:
                return forwarded
        return unknown_session()

    def _leave(self, transport: HttpTransport) -> Response:
        # The client is leaving (a tab closing): free the session now, not at idle.
        self.table.forget(transport)
        return Response.json(200, {"sid": transport.sid})

    async def _send(self, transport: HttpTransport, request: Request) -> Response:
        """Run the commands a POST carries; the replies come the transport's way."""
        session = transport.session
        if session is None or transport.closing is not None:
            return session_closed(transport.closing)
        self._sending(transport, request.body)
        await self.commands.handle(session, request.body)
        return Response.json(200, {"sid": transport.sid})

    def _sending(self, transport: HttpTransport, body: bytes) -> None:
        """Note the commands of a POST before they run (SSE tracks subscribes)."""
