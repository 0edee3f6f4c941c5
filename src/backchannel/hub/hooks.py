"""The application's say in the hub: authorize, observe, answer RPCs.

Subclass :class:`Hooks`, override what you need, and pass it as ``Hub(hooks=...)``
(docs/howto/hooks.md). Three kinds:

* **Authorize** (``authorize_connect``, ``authorize_subscribe``, ``authorize_publish``)
  are awaited by the command they decide: raise :class:`~backchannel.exceptions.CommandError`
  (an error reply, the connection stays) or
  :class:`~backchannel.exceptions.DisconnectRequest` (the connection ends) to refuse.
  A slow one delays only its own session.
* **Observe** (``on_connect``, ``on_disconnect``, ``on_subscribe``, ``on_unsubscribe``,
  ``on_publish``, ``on_channel_occupied``, ``on_channel_vacated``, ``on_slow_consumer``)
  run after the event, one at a time in event order, in a task of their own: they never
  delay the event or another session. Events wait in a bounded queue; past
  :data:`MAX_QUEUED` the newest are dropped and counted (a hook that cannot keep up
  must not grow memory).
* **RPC** handlers by method name: ``Hub(rpc={"orders.get": handler})``; a method
  without one goes to :meth:`Hooks.rpc` (104 unless overridden).

A hook that needs the client's HTTP request (a cookie, an ``Authorization`` header)
names the headers in :attr:`Hooks.request_headers`: the transports keep those, and only
those, on the session (``session.headers``) for its life.

Hooks run on the node where the event starts (the client's node; the node that accepted
a publish), once per event in a cluster. Anything but ``CommandError`` and
``DisconnectRequest`` raised by a hook is logged with its traceback; the command is then
answered with the temporary internal error (100).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import CommandError, DisconnectRequest
from . import codes
from .codes import Disconnect
from .session import Session
from .wire import Publication

__all__ = ["MAX_QUEUED", "ConnectRequest", "Connected", "Hooks", "Observers", "RpcHandler"]

logger = logging.getLogger("backchannel.hub")

#: Observer events waiting for a slow hook: past it, new events are dropped (counted in
#: ``Hub.statistics().hook_events_dropped``) so memory stays bounded.
MAX_QUEUED = 10_000

#: Seconds a closing hub waits for the observers to run what is queued: long enough for
#: a few quick hooks, short enough that a hook that hangs cannot stop a shutdown.
CLOSE_TIMEOUT = 5.0

#: An RPC handler: ``await handler(session, data)`` returns the reply's data.
RpcHandler = Callable[[Session, Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """A client's connect, for :meth:`Hooks.authorize_connect`.

    ``user``, ``info`` and ``expires`` come from the connection token when there is one
    (``user`` is None without a token); ``data`` is the connect command's ``data``
    (anything the client sends to prove who it is, such as a session id); ``headers``,
    the HTTP request's headers named in :attr:`Hooks.request_headers` (lowercase names)."""

    session: Session
    token: str | None
    user: str | None
    info: Any
    expires: int | None
    data: Any
    name: str | None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Connected:
    """What :meth:`Hooks.authorize_connect` decides: the connection is this user, with
    this info (shown in presence), until ``expires`` (Unix time; None: no expiry)."""

    user: str
    info: Any = None
    expires: int | None = None


class Hooks:
    """Override what the application needs; every method here does nothing."""

    #: Names of the HTTP request headers (of the WebSocket upgrade, of the long-poll
    #: open) that the hooks read from ``session.headers``, lowercase. Nothing is kept
    #: by default: a header kept costs memory for the session's whole life.
    request_headers: frozenset[str] = frozenset()

    async def authorize_connect(self, request: ConnectRequest) -> Connected | None:
        """Accept a connect as someone (return :class:`Connected`), accept it as the
        token says (return None), or refuse it (raise). Without a token and with
        anonymous connections off, None refuses it with 3500."""
        return None

    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        """Raise to refuse a client's subscribe; called after the hub's own checks."""

    async def authorize_publish(self, session: Session, channel: str, data: Any) -> Any:
        """Return the data to publish (the same, or changed); raise to refuse."""
        return data

    async def authorize_refresh(self, session: Session) -> int | None:
        """A connected session's expiry passed (``session.expires``): return a new one
        (Unix time; None: no expiry) to let it live on, or raise to end it. By default
        it ends with 3004 (a client with a token refreshes it before then)."""
        raise DisconnectRequest(codes.TOKEN_EXPIRED_DISCONNECT)

    async def rpc(self, session: Session, method: str, data: Any) -> Any:
        """An ``rpc`` whose method has no handler of its own: return the reply's data,
        or raise. By default: error 104."""
        raise CommandError(codes.METHOD_NOT_FOUND)

    async def on_connect(self, session: Session) -> None:
        """A session connected."""

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        """A connected session ended: why the server ended it, or None when the client
        left or its connection was lost."""

    async def on_subscribe(self, session: Session, channel: str) -> None:
        """A session subscribed (by its command or by the server)."""

    async def on_unsubscribe(self, session: Session, channel: str) -> None:
        """A session's subscription ended (by its command, the server, or its end)."""

    async def on_publish(self, publication: Publication, session: Session | None) -> None:
        """A publication was accepted on this node (``session``: the client that
        published it; None for the server)."""

    async def on_channel_occupied(self, channel: str) -> None:
        """A channel got its first subscriber in the cluster."""

    async def on_channel_vacated(self, channel: str) -> None:
        """A channel's last subscriber in the cluster left."""

    async def on_slow_consumer(self, session: Session, channel: str | None) -> None:
        """A session's outbox was full: its channel's policy applied (``channel`` None:
        a reply did not fit, and the session was disconnected)."""

    async def on_send(self, session: Session, data: Any) -> None:
        """The ``send`` command: a message from the client to the server. Awaited: its
        reply says whether this returned or raised."""
        raise NotImplementedError


#: The observer hooks, by name.
OBSERVERS = (
    "on_connect",
    "on_disconnect",
    "on_subscribe",
    "on_unsubscribe",
    "on_publish",
    "on_channel_occupied",
    "on_channel_vacated",
    "on_slow_consumer",
)


class Observers:
    """Runs the observers of one or more :class:`Hooks` in event order, in one task,
    from a bounded queue."""

    def __init__(self, hooks: Sequence[Hooks]) -> None:
        #: For each observer some of ``hooks`` override, those that do, in order: the
        #: others cost nothing.
        self.by_name: dict[str, list[Hooks]] = {}
        for each in hooks:
            for name in OBSERVERS:
                if getattr(type(each), name) is not getattr(Hooks, name):
                    self.by_name.setdefault(name, []).append(each)
        self.wanted = frozenset(self.by_name)
        self.dropped = 0
        self._queue: deque[tuple[str, tuple[Any, ...]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.wanted:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Run what is queued (for up to :data:`CLOSE_TIMEOUT` seconds), then stop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._queue.append(("", ()))  # the end
        assert self._wakeup is not None
        self._wakeup.set()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            logger.warning("hooks still running at shutdown: %d events not run", len(self._queue))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def emit(self, name: str, *args: Any) -> None:
        if name not in self.wanted or self._task is None:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning(
                    "hook %s dropped: %d events waiting for slow hooks (%d dropped so far)",
                    name,
                    len(self._queue),
                    self.dropped,
                )
            return
        self._queue.append((name, args))
        assert self._wakeup is not None
        self._wakeup.set()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            while self._queue:
                name, args = self._queue.popleft()
                if not name:
                    return
                for each in self.by_name[name]:
                    try:
                        await getattr(each, name)(*args)
                    except Exception:
                        logger.exception("hook %s failed", name)
            self._wakeup.clear()
            await self._wakeup.wait()
