"""A subscription to one channel: its position in the stream, its publications, its
handlers, and its renewal (with recovery) on each new connection."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol

from ..exceptions import CommandError, ConnectionClosed, InvalidState
from ..hub import codes
from ..hub.wire import ClientInfo, Publication
from .backoff import Backoff
from .connection import Connection
from .dispatch import Dispatcher
from .event import SubscribedEvent, UnsubscribedEvent
from .result import parse_client_info, parse_publication


class Owner(Protocol):
    """What a subscription needs of its client (:class:`~.client.Client` is one)."""

    @property
    def state(self) -> str: ...
    @property
    def error(self) -> BaseException | None: ...
    @property
    def timeout(self) -> float: ...

    def emit_error(self, exc: BaseException) -> None: ...
    def forget(self, sub: Subscription) -> None: ...
    def live_connection(self) -> Connection | None: ...
    def notify(self) -> None: ...
    def unsubscribe_later(self, channel: str) -> None: ...
    async def until(self, ready: Callable[[], bool]) -> None: ...


__all__ = ["MAX_QUEUE", "Subscription", "SubscriptionState"]

SubscriptionState = Literal["subscribing", "subscribed", "unsubscribed"]

#: Publications (or handler calls) waiting for the application, per subscription, before
#: the oldest is dropped: enough for a burst, bounded so that a consumer that stopped
#: reading cannot make the client grow without limit. Drops are counted in ``dropped``.
MAX_QUEUE = 1000


class Subscription:
    """A subscription made by :meth:`Client.subscribe`.

    Publications go to ``on_publication`` when it was given, else to a queue read with
    ``async for publication in sub``. Either way they come in order, once each, recovered
    ones included. The queue (and the handlers' queue) holds at most ``max_queue``
    events: past that, the oldest publication is dropped and ``dropped`` counts it, so
    a consumer that does not read loses old publications rather than making the client
    hold memory without bound or stalling the other channels (check ``dropped``, or
    reload with :meth:`Client.history`).

    After a reconnection the subscription is renewed with ``recover``: the publications
    missed meanwhile are delivered before the live ones. When history could not fill
    the gap, ``recovered`` is False and ``on_subscribed`` gets an event saying so.
    The same happens, without a reconnection, when the hub says (a ``dropped`` push, in
    a channel with the ``drop`` slow-consumer policy) that it did not send some
    publications because this client read too slowly, or when a publication's offset
    skips some after the last one seen in the same epoch: the missing ones are read from
    history and delivered before any newer one.

    Iteration ends when the subscription ends (``unsubscribe()``, or by the hub) or the
    client is closed; it raises the client's error when the client stopped on one.
    """

    def __init__(
        self,
        client: Owner,
        channel: str,
        *,
        token: str | None,
        recover: bool,
        on_publication: Callable[[Publication], Any] | None,
        on_join: Callable[[ClientInfo], Any] | None,
        on_leave: Callable[[ClientInfo], Any] | None,
        on_unsubscribed: Callable[[UnsubscribedEvent], Any] | None,
        on_subscribed: Callable[[SubscribedEvent], Any] | None,
        max_queue: int,
        backoff: Backoff,
    ) -> None:
        self.client = client
        self.channel = channel
        self.state: SubscriptionState = "subscribing"
        #: The epoch and offset of the last publication seen (or of the stream when
        #: subscribed): where recovery starts. None for a channel without history.
        self.epoch: str | None = None
        self.offset: int | None = None
        #: None until a renewal asked for recovery; then whether it filled the gap.
        self.recovered: bool | None = None
        #: Publications dropped because the application did not keep up.
        self.dropped = 0
        #: Why the subscription ended, when the hub ended or refused it.
        self.error: CommandError | None = None
        self._token = token
        self._recover = recover
        self._on_publication = on_publication
        self._on_join = on_join
        self._on_leave = on_leave
        self._on_unsubscribed = on_unsubscribed
        self._on_subscribed = on_subscribed
        self._max_queue = max_queue
        self._backoff = backoff
        self._queue: deque[Publication] = deque()
        self._wakeup = asyncio.Event()
        #: Live publications that came before the subscribe result was applied.
        self._early: list[dict[str, Any]] = []
        #: While publications the hub dropped are read from history: the live ones that
        #: came meanwhile (delivered after them), whether another read is needed (more
        #: were dropped, or too many live ones came to hold), and the read's task.
        self._catching_up = False
        self._held: list[dict[str, Any]] = []
        self._again = False
        self._catch_up_task: asyncio.Task[None] | None = None
        #: Bumped when a connection is lost or the subscription ends: work for an older
        #: value is stale.
        self._seq = 0
        self._handlers = Dispatcher(client.emit_error, max_queue)

    def __repr__(self) -> str:
        return f"<Subscription {self.channel!r} {self.state}>"

    # The application's side.

    def __aiter__(self) -> AsyncIterator[Publication]:
        return self

    async def __anext__(self) -> Publication:
        while True:
            if self._queue:
                return self._queue.popleft()
            if self.state == "unsubscribed" or self.client.state == "closed":
                if self.client.error is not None:
                    raise self.client.error
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def unsubscribe(self) -> None:
        """End the subscription (``on_unsubscribed`` is not called: it is for the hub's
        decisions). Publications already queued can still be read."""
        if self.state == "unsubscribed":
            return
        self.end(None)
        conn = self.client.live_connection()
        if conn is not None:
            # Not subscribed on the hub (the subscribe was still under way): fine.
            with contextlib.suppress(CommandError, ConnectionClosed):
                async with asyncio.timeout(self.client.timeout):
                    await conn.request("unsubscribe", {"channel": self.channel})

    # The client's side.

    async def subscribe_on(self, conn: Connection) -> None:
        """Subscribe (again) on a new connection, retrying temporary errors."""
        seq = self._seq
        while self._seq == seq and conn.ending is None:
            params: dict[str, Any] = {"channel": self.channel}
            if self._token is not None:
                params["token"] = self._token
            recovering = self._recover and self.epoch is not None and self.offset is not None
            if recovering:
                params.update(recover=True, epoch=self.epoch, offset=self.offset)
            try:
                await conn.request(
                    "subscribe", params, functools.partial(self._subscribed, seq, recovering)
                )
            except ConnectionClosed:
                return  # the next connection subscribes again
            except CommandError as exc:
                if self._seq != seq:
                    return
                self.client.emit_error(exc)
                if not exc.temporary:
                    self.end(exc)
                    return
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._backoff.reset()
            return

    def _subscribed(self, seq: int, recovering: bool, result: dict[str, Any]) -> None:
        """Apply a subscribe result; called by the reader, before later pushes."""
        if self._seq != seq or self.state != "subscribing":
            if self.state == "unsubscribed":
                self.client.unsubscribe_later(self.channel)
            return
        self.state = "subscribed"
        if recovering:
            publications = result.get("publications")
            self.recovered = result.get("recovered") is True and isinstance(publications, list)
            if self.recovered:
                assert isinstance(publications, list)
                for pub in publications:
                    if isinstance(pub, dict):
                        self._deliver(parse_publication(pub, self.channel))
        # The stream's position now: live publications come after it.
        epoch, offset = result.get("epoch"), result.get("offset")
        if isinstance(epoch, str) and type(offset) is int:
            self.epoch, self.offset = epoch, offset
        self._handlers.post(
            self._on_subscribed,
            SubscribedEvent(
                self.channel,
                self.recovered if recovering else None,
                self.epoch or "",
                self.offset or 0,
            ),
        )
        early, self._early = self._early, []
        for push in early:
            self.handle_push(push)
        self.client.notify()

    def subscribed_by_server(self, position: dict[str, Any]) -> None:
        """The hub subscribed the client (a ``subscribe`` push with the position)."""
        self._subscribed(self._seq, False, position)

    def handle_push(self, push: dict[str, Any]) -> None:
        kind = push["push"]
        if self.state == "subscribing" and kind in ("publication", "join", "leave", "dropped"):
            if len(self._early) < self._max_queue:
                self._early.append(push)
            return
        if kind == "publication":
            if self.state != "subscribed":
                return
            if not self._catching_up:
                if self._gap(push) and self._start_catch_up():
                    self._held.append(push)  # after the missing ones
                else:
                    self._deliver(parse_publication(push, self.channel))
            elif len(self._held) < self._max_queue:
                self._held.append(push)
            else:
                # Not held, but in history: the next read gets it.
                self._again = True
        elif kind == "dropped":
            self._dropped(push)
        elif kind == "join":
            self._handlers.post(self._on_join, parse_client_info(push.get("info")))
        elif kind == "leave":
            self._handlers.post(self._on_leave, parse_client_info(push.get("info")))
        elif kind == "unsubscribe":
            code = push.get("code")
            reason = push.get("reason")
            self.end(
                CommandError(
                    code if type(code) is int else codes.UNSUBSCRIBED.code,
                    reason if isinstance(reason, str) else codes.UNSUBSCRIBED.message,
                )
            )

    def _dropped(self, push: dict[str, Any]) -> None:
        """The hub did not send this client the publications up to the push's position:
        read them from history, and deliver them before any newer one."""
        epoch, offset = push.get("epoch"), push.get("offset")
        if self.state != "subscribed" or not self._recover:
            return
        if not isinstance(epoch, str) or type(offset) is not int:
            return  # a channel without history: nothing to read them from
        if epoch == self.epoch and self.offset is not None and offset <= self.offset:
            return  # delivered already
        if self._catching_up:
            self._again = True  # dropped after the read under way was answered, maybe
            return
        self._start_catch_up()

    def _gap(self, push: dict[str, Any]) -> bool:
        """Whether a live publication skips offsets after the last one seen, in the same
        epoch: some were lost on the way (a ``dropped`` push that has not come yet, a
        node's lost message), and history has them."""
        offset = push.get("offset")
        return (
            self._recover
            and self.offset is not None
            and push.get("epoch") == self.epoch
            and type(offset) is int
            and offset > self.offset + 1
        )

    def _start_catch_up(self) -> bool:
        """Read what is missing from history, holding live publications meanwhile; False
        without a live connection (the renewal on the next one recovers them)."""
        conn = self.client.live_connection()
        if conn is None:
            return False
        self._catching_up = True
        self._again = False
        self._catch_up_task = asyncio.get_running_loop().create_task(
            self._catch_up(conn, self._seq)
        )
        return True

    async def _catch_up(self, conn: Connection, seq: int) -> None:
        def current() -> bool:
            # Not after a reconnection or the end, and not once a newer read took over.
            return self._seq == seq and asyncio.current_task() is self._catch_up_task

        try:
            while current() and self._catching_up:
                self._again = False
                params: dict[str, Any] = {"channel": self.channel}
                if self.epoch is not None and self.offset is not None:
                    params.update(epoch=self.epoch, offset=self.offset)
                async with asyncio.timeout(self.client.timeout):
                    await conn.request("history", params, functools.partial(self._caught_up, seq))
                if not self._again:
                    return
        except ConnectionClosed:
            return  # connection_lost() reset this; the renewal recovers
        except (CommandError, TimeoutError) as exc:
            if current():
                self.client.emit_error(exc)
        finally:
            if current() and self._catching_up:
                # Given up: what was held still goes out, after the gap.
                self._release_held()

    def _caught_up(self, seq: int, result: dict[str, Any]) -> None:
        """Apply a history result; called by the reader, before later pushes."""
        if self._seq != seq or not self._catching_up:
            return
        publications = result.get("publications")
        if result.get("recovered") is False:
            # Older than what the channel keeps: what is missing is lost; say so, as a
            # renewal that could not recover does.
            self.recovered = False
            epoch, offset = result.get("epoch"), result.get("offset")
            event = SubscribedEvent(
                self.channel,
                False,
                epoch if isinstance(epoch, str) else "",
                offset if type(offset) is int else 0,
            )
            self._handlers.post(self._on_subscribed, event)
        if isinstance(publications, list):
            for pub in publications:
                if isinstance(pub, dict):
                    self._deliver(parse_publication(pub, self.channel))
        if not self._again:
            self._release_held()

    def _release_held(self) -> None:
        self._catching_up = False
        held, self._held = self._held, []
        for push in held:
            self._deliver(parse_publication(push, self.channel))

    def _deliver(self, pub: Publication) -> None:
        if pub.offset:
            if pub.epoch == self.epoch and self.offset is not None and pub.offset <= self.offset:
                return  # seen already (recovered, then live again)
            self.epoch, self.offset = pub.epoch, pub.offset
        if self._on_publication is not None:
            if not self._handlers.post(self._on_publication, pub, droppable=True):
                self.dropped += 1
            return
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(pub)
        self._wakeup.set()

    def connection_lost(self) -> None:
        if self.state == "unsubscribed":
            return
        self.state = "subscribing"
        self._seq += 1
        self._early = []
        self._stop_catching_up()

    def client_closed(self) -> None:
        self.connection_lost()
        self._wakeup.set()

    def end(self, error: CommandError | None) -> None:
        """The subscription ends for good: by the application (None) or the hub."""
        if self.state == "unsubscribed":
            return
        self.state = "unsubscribed"
        self.error = error
        self._seq += 1
        self._early = []
        self._stop_catching_up()
        self.client.forget(self)
        if error is not None:
            event = UnsubscribedEvent(self.channel, error.code, error.message)
            self._handlers.post(self._on_unsubscribed, event)
        self._wakeup.set()
        self.client.notify()

    async def wait_subscribed(self) -> None:
        await self.client.until(lambda: self.state != "subscribing")
        if self.state == "unsubscribed":
            raise self.error or InvalidState(f"unsubscribed from {self.channel!r}")

    def _stop_catching_up(self) -> None:
        self._catching_up = False
        self._held = []
        self._again = False
        # A read under way sees the new _seq and ends by itself.

    async def aclose(self) -> None:
        task, self._catch_up_task = self._catch_up_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._handlers.aclose()
