"""The Server-Sent Events transport: the hub as an event stream, for clients whose
WebSocket upgrade does not get through but whose network passes a streamed response
(docs/protocol.md, "Server-Sent Events"). A browser reads it with ``EventSource``, no
client library needed.

All under one path (``/sse`` by default) on the server's port:

* ``GET /sse?frame=F`` opens a session and is answered with its stream. ``F`` is a wire
  frame (a connect command, then optionally subscribe commands), in the query since
  ``EventSource`` can neither POST nor set headers. The stream starts with
  ``retry: 2000`` (the browser's reconnect delay) and an ``event: session`` naming the
  session id, then carries every wire message as one event, ``data: <line>``; a
  publication, or a subscribe reply or push with a position, also carries
  ``id: {"<channel>":["<epoch>",<offset>],...}``, the session's recoverable positions.
  A comment (``:``) goes out every ``heartbeat`` seconds while nothing else does, under
  the 30 to 60 s after which proxies cut a quiet response. When the session ends, its
  disconnect push is the last event and the stream ends.
* Reconnecting with ``Last-Event-ID`` (the browser does it on its own after a dropped
  stream) runs the frame again, each of its subscribe commands whose channel the id
  names with ``recover`` from that position (unless the command names one itself): the
  missed publications come first. A malformed id is ignored.
* ``POST /sse?sid=S`` sends commands (answered at once ``{"sid": S}``; the replies come
  on the stream); ``DELETE /sse?sid=S`` ends the session. On a node that does not hold
  the session, both are relayed to the one that does (:mod:`.http`).

A session lives as long as its stream: the stream's end (the client went away, the
server closed) ends the session. A session whose stream never starts (the server gave
up on the answer before sending it) is freed after ``idle_timeout``. The stream is fed
from the session's bounded outbox, and the server asks for the next chunk only once the
client has read the last one (:class:`~backchannel.asyncio.Stream`): a client that does
not read makes its outbox overflow and gets the channel's slow-consumer policy; the hub
never waits for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Collection, Sequence
from functools import lru_cache
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from ...asyncio import Stream
from ...protocol.http11 import Headers, Request, Response
from ..codes import Disconnect
from ..hub import Hub
from .http import (
    Authenticate,
    HttpSessions,
    HttpTransport,
    SessionEndpoint,
    SessionRelay,
    sid_of,
)

__all__ = ["MAX_CHUNK", "ServerSentEvents", "SseTransport"]

logger = logging.getLogger("backchannel.hub")

#: Bytes of queued texts written as one chunk of the stream: a backlog costs few system
#: calls, and the server's write buffer (64 KiB high water) is not overshot by much.
MAX_CHUNK = 64 * 1024

#: Seconds a relayed POST or DELETE waits for the node holding its session.
RELAY_WAIT = 10.0

# Wire lines that may carry a position, by their first bytes (the hub's encoder writes
# the key first): only these are parsed.
_PUBLICATION = '{"push":"publication"'
_SUBSCRIBED = '{"push":"subscribe"'
_REPLY = '{"id":'

Position = tuple[str, int]


class SseTransport(HttpTransport):
    """A session's transport over an event stream: its outbox is drained into the
    stream each time the client has read what was sent."""

    name: ClassVar[str] = "sse"

    __slots__ = ("_waiter", "positions", "subscribing")

    endpoint: ServerSentEvents

    def __init__(self, endpoint: ServerSentEvents, sid: str) -> None:
        super().__init__(endpoint, sid)
        #: Channel -> the position of the last publication (or subscribe reply) sent:
        #: what an event's id carries.
        self.positions: dict[str, Position] = {}
        #: Subscribe commands not answered yet: command id -> channel, to read the
        #: position of their reply.
        self.subscribing: dict[int, str] = {}
        self._waiter: asyncio.Future[None] | None = None

    def deliver(self, text: str) -> bool:
        return False  # everything goes through the outbox into the stream

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, disconnect: Disconnect) -> None:
        # The disconnect push is already queued: the stream ends after it.
        self.closing = disconnect
        self.wake()
        session = self.session
        if session is not None:
            self.endpoint.table.end_session(session)

    def forgotten(self) -> None:
        self.wake()
        super().forgotten()

    @classmethod
    def deliver_many(cls, transports: Sequence[SseTransport], text: str) -> list[SseTransport]:
        return list(transports)  # the sessions queue it; each stream takes it

    def note_commands(self, frame: str) -> None:
        """Remember the subscribe commands of a client's frame, to read their replies'
        positions."""
        for line in frame.split("\n"):
            command = _loads(line)
            if isinstance(command, dict) and command.get("method") == "subscribe":
                cid, params = command.get("id"), command.get("params")
                if type(cid) is int and isinstance(params, dict):
                    channel = params.get("channel")
                    if isinstance(channel, str):
                        self.subscribing[cid] = channel

    def encode(self, texts: list[str]) -> bytes:
        """The events carrying ``texts`` (wire lines), with their ids."""
        out: list[str] = []
        for text in texts:
            for line in text.split("\n"):
                if self._track(line):
                    out.append(f"id: {self._event_id()}\n")
                out.append(f"data: {line}\n\n")
        return "".join(out).encode()

    def _track(self, line: str) -> bool:
        """Update the positions from ``line``; whether it carries one."""
        found: tuple[str, Position] | None = None
        if line.startswith(_PUBLICATION):
            found = _published(line)  # one parse per publication, not per subscriber
        elif line.startswith(_SUBSCRIBED):
            found = _published(line)  # the same shape: channel, epoch, offset
        elif line.startswith(_REPLY) and self.subscribing:
            reply = _loads(line)
            cid = reply.get("id") if isinstance(reply, dict) else None
            if type(cid) is int and cid in self.subscribing:
                channel = self.subscribing.pop(cid)
                result = reply.get("result")
                if isinstance(result, dict):
                    found = _position_of(channel, result)
        if found is None:
            return False
        channel, position = found
        self.positions[channel] = position
        return True

    def _event_id(self) -> str:
        session = self.session
        if session is not None:
            # Only what the session is still subscribed to is worth recovering.
            for channel in [c for c in self.positions if c not in session.subscriptions]:
                del self.positions[channel]
        positions = {channel: list(position) for channel, position in self.positions.items()}
        return json.dumps(positions, separators=(",", ":"))


class ServerSentEvents(SessionEndpoint[SseTransport, Response | Stream]):
    """The SSE endpoint; use it as (or from) ``serve(process_request=...)``, or call
    :meth:`handle` from another server (an ASGI adapter).

    ``sessions`` is the node's table of HTTP sessions, shared with long polling; without
    one, the endpoint makes its own from ``origins`` and ``relay``.
    """

    def __init__(
        self,
        hub: Hub,
        *,
        path: str = "/sse",
        heartbeat: float = 15.0,
        idle_timeout: float = 60.0,
        retry: int = 2000,
        origins: Collection[str] = (),
        relay: SessionRelay | None = None,
        sessions: HttpSessions | None = None,
    ) -> None:
        super().__init__(hub, SseTransport, path, origins=origins, relay=relay, sessions=sessions)
        #: Seconds between comments on a quiet stream: under the 30 to 60 s after which
        #: proxies commonly cut a response that sends nothing.
        self.heartbeat = heartbeat
        #: Seconds a session may wait for its stream to start; with several nodes, also
        #: the life of its claim, renewed while the stream lasts.
        self.idle_timeout = idle_timeout
        #: The browser's reconnect delay after a dropped stream, in milliseconds.
        self.retry = retry
        self.table.add(self)

    def streams(self) -> int:
        """Streams held on this node now (a metric)."""
        return len(self.sessions)

    def opens_session(self, request: Request) -> bool:
        """Whether ``request`` opens a new session (a GET to this path): the one rule,
        for a caller that counts opens (a rate limit)."""
        return urlsplit(request.path).path == self.path and request.method == "GET"

    async def _route(
        self, request: Request, query_string: str, authenticate: Authenticate | None
    ) -> Response | Stream:
        if request.method == "GET":
            return await self._open(request, query_string, authenticate)
        return await self._answer(request, query_string)

    async def _answer(
        self, request: Request, query_string: str, *, relayed: bool = False
    ) -> Response:
        if request.method not in ("POST", "DELETE"):
            return Response.json(
                405, {"error": "use GET to open the stream, POST to send, DELETE to leave"}
            )
        sid = sid_of(query_string)
        if sid is None:
            return Response.json(400, {"error": "sid is missing: GET opens a session"})
        transport = await self._find(request, sid, relayed=relayed, wait=RELAY_WAIT)
        if isinstance(transport, Response):
            return transport
        if request.method == "DELETE":
            # The client is leaving: free the session now; its stream ends.
            return self._leave(transport)
        return await self._send(transport, request)

    def _sending(self, transport: HttpTransport, body: bytes) -> None:
        if isinstance(transport, SseTransport):
            transport.note_commands(body.decode("utf-8", "replace"))

    async def _open(
        self, request: Request, query_string: str, authenticate: Authenticate | None = None
    ) -> Response | Stream:
        frames = parse_qs(query_string).get("frame")
        if not frames or not frames[0]:
            return Response.json(400, {"error": "frame is missing: GET /sse?frame=<connect>"})
        frame = _resume(frames[0], _last_positions(request.headers.get("Last-Event-ID")))
        connected = await authenticate() if authenticate is not None else None
        transport = SseTransport(self, self.table.new_sid())
        transport.session = session = self.hub.open_session(
            transport, request.headers, connected=connected
        )
        await self.table.register(transport)
        transport.note_commands(frame)
        await self.commands.handle(session, frame)
        headers = Headers(
            [
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Cache-Control", "no-store"),
                # nginx buffers a proxied response unless told not to.
                ("X-Accel-Buffering", "no"),
            ]
        )
        return Stream(200, headers, self._events(transport))

    async def _events(self, transport: SseTransport) -> AsyncIterator[bytes]:
        table = self.table
        loop = asyncio.get_running_loop()
        # A claim lives idle_timeout seconds and is renewed once a third of it passed:
        # a quiet stream wakes up that often too.
        quiet = min(self.heartbeat, self.idle_timeout / 3)
        try:
            if table.find(self, transport.sid) is not transport:
                return  # freed before its stream started (idle)
            table.disarm_idle(transport)
            sid = json.dumps({"sid": transport.sid}, separators=(",", ":"))
            yield f"retry: {self.retry}\n\nevent: session\ndata: {sid}\n\n".encode()
            while True:
                outbox = transport.outbox
                if outbox:
                    yield transport.encode(outbox.take(MAX_CHUNK))
                    continue
                if transport.closing is not None or transport.session is None:
                    return  # ended by the server (the disconnect push went last), or left
                await table.renew(transport)
                waiter = transport._waiter = loop.create_future()
                try:
                    async with asyncio.timeout(quiet):
                        await waiter
                except TimeoutError:
                    yield b":\n\n"
                finally:
                    transport._waiter = None
        finally:
            # The stream is over, whoever ended it: so is the session.
            table.forget(transport)


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _position_of(channel: str, obj: dict[str, Any]) -> tuple[str, Position] | None:
    epoch, offset = obj.get("epoch"), obj.get("offset")
    if isinstance(epoch, str) and type(offset) is int:
        return channel, (epoch, offset)
    return None


@lru_cache(maxsize=256)
def _published(line: str) -> tuple[str, Position] | None:
    """A publication's channel and position (None in a channel without history). Cached:
    fan-out puts the same text in every subscriber's outbox."""
    push = _loads(line)
    if not isinstance(push, dict) or not isinstance(push.get("channel"), str):
        return None
    return _position_of(push["channel"], push)


def _last_positions(value: str | None) -> dict[str, Position]:
    """The positions a Last-Event-ID names; nothing when it is not one of our ids (a
    malformed id is ignored: the subscriptions start fresh)."""
    if not value:
        return {}
    obj = _loads(value)
    if not isinstance(obj, dict):
        return {}
    positions: dict[str, Position] = {}
    for channel, position in obj.items():
        if (
            isinstance(position, list)
            and len(position) == 2
            and isinstance(position[0], str)
            and type(position[1]) is int
            and position[1] >= 0
        ):
            positions[channel] = (position[0], position[1])
    return positions


def _resume(frame: str, positions: dict[str, Position]) -> str:
    """``frame`` with each subscribe command to a channel of ``positions`` made to
    recover from there, unless it names a position of its own."""
    if not positions:
        return frame
    lines = frame.split("\n")
    for index, line in enumerate(lines):
        command = _loads(line)
        if not isinstance(command, dict) or command.get("method") != "subscribe":
            continue
        params = command.get("params")
        if not isinstance(params, dict):
            continue
        channel = params.get("channel")
        if not isinstance(channel, str) or channel not in positions:
            continue
        if any(key in params for key in ("recover", "epoch", "offset")):
            continue
        epoch, offset = positions[channel]
        params.update(recover=True, epoch=epoch, offset=offset)
        lines[index] = json.dumps(command, separators=(",", ":"))
    return "\n".join(lines)
