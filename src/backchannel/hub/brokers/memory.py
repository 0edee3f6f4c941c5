"""The in-memory broker: one process is the whole hub (the default).

History, presence and idempotency keys live in this process and are lost with it; for
several processes use the Redis broker (docs/howto/cluster.md).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

from ..wire import ClientInfo, Position, Publication
from .base import (
    BrokerHandler,
    HistoryOptions,
    HistoryResult,
    PresencePage,
    PublishResult,
    select_history,
    select_presence,
)
from .calls import BrokerCalls

__all__ = ["MemoryBroker"]

logger = logging.getLogger("backchannel.hub")


class _Stream:
    """One channel's history: the kept publications (oldest first), the last offset given
    out, and when the stream expires (None until its first publication sets a TTL)."""

    __slots__ = ("epoch", "expires_at", "publications", "top")

    def __init__(self) -> None:
        # 64 random bits: a new epoch that equals the old one would let a stale position
        # "recover" from the wrong stream.
        self.epoch = secrets.token_hex(8)
        self.top = 0
        self.publications: deque[Publication] = deque()
        self.expires_at: float | None = None


class MemoryBroker:
    """The single-node broker: every event stays in this process.

    Delivery is synchronous: ``publish``, ``publish_join`` and ``publish_leave`` call the
    handler before they return, which keeps each channel's events in order without a
    queue. An exception from the handler is logged, not raised: the publication is
    already stored, and the publisher should not see a failure of local fan-out.

    Expiry (history TTL, idempotency windows, presence TTL) is measured with ``clock``,
    checked when a channel is accessed, and swept across all channels at most every
    :attr:`SWEEP_INTERVAL` seconds so that channels nobody touches again are freed too.
    """

    #: Idempotency keys remembered per channel; past it the oldest key is forgotten
    #: early, so a retry of that publish would be published again.
    MAX_IDEMPOTENCY_KEYS = 10_000
    #: Seconds (by ``clock``) between sweeps of expired state in all channels.
    SWEEP_INTERVAL = 10.0
    #: Seconds an empty stream lives (one made by reading a channel's position before any
    #: publication): without it, reading many channel names would grow memory for good.
    EMPTY_STREAM_TTL = 300.0

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        #: Nothing to measure: everything stays in this process.
        self.calls = BrokerCalls()
        self._clock = clock
        self._handler: BrokerHandler | None = None
        self._closed = False
        self._subscribed: set[str] = set()
        self._streams: dict[str, _Stream] = {}
        # channel -> key -> (expiry, result), in insertion order so that the oldest
        # entries are at the front for purging and for eviction past the bound.
        self._idempotency: dict[str, OrderedDict[str, tuple[float, PublishResult]]] = {}
        # channel -> client id -> (expiry, who)
        self._presence: dict[str, dict[str, tuple[float, ClientInfo]]] = {}
        self._next_sweep = clock() + self.SWEEP_INTERVAL
        #: Stored entries (history publications, idempotency keys) that publishes have
        #: looked at, trimmed or purged: a count, not a time, so that tests can show the
        #: work per publication does not grow with a channel's history or its keys.
        self.examined = 0

    async def start(self, handler: BrokerHandler) -> None:
        """Begin delivering events to ``handler``. A closed broker cannot start again."""
        if self._closed:
            raise RuntimeError("the broker is closed")
        self._handler = handler

    async def close(self) -> None:
        """Stop delivering. Stored history and presence stay usable."""
        self._closed = True
        self._handler = None

    def describe(self) -> str | None:
        return None  # nothing beyond "memory", which the configuration says

    async def ping(self) -> None:
        """Always answers: it lives in this process."""

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def occupy(self, channel: str) -> bool:
        """See :meth:`Broker.occupy`: this process is the only node, so no other node can
        hold the channel."""
        return True

    async def vacate(self, channel: str) -> bool:
        """See :meth:`Broker.vacate`: this process is the only node, so once its last
        subscriber left, no node holds the channel."""
        return True

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | None = None,
        publisher: ClientInfo | None = None,
        idempotency_key: str | None = None,
        idempotency_window: float = 120.0,
        encoded: str | None = None,
    ) -> PublishResult:
        """See :meth:`Broker.publish`; the handler is called before this returns."""
        if history is not None and (history.size < 0 or history.ttl < 0):
            raise ValueError("history size and ttl must not be negative")
        now = self._clock()
        self._maybe_sweep(now)
        keys: OrderedDict[str, tuple[float, PublishResult]] | None = None
        if idempotency_key is not None:
            keys = self._idempotency.get(channel)
            if keys is not None:
                self.examined += _purge_front(keys, now) + 1
                entry = keys.get(idempotency_key)
                if entry is not None and now <= entry[0]:
                    return PublishResult(entry[1].publication, duplicate=True)
        if history is None:
            publication = Publication(channel, data, publisher=publisher, encoded=encoded)
        else:
            stream = self._stream(channel, now)
            stream.top += 1
            publication = Publication(channel, data, stream.top, stream.epoch, publisher, encoded)
            # Appending and trimming from the front of a deque: O(1) each, and one
            # publication in trims one (more only after the size was lowered).
            stream.publications.append(publication)
            while len(stream.publications) > history.size:
                stream.publications.popleft()
                self.examined += 1
            stream.expires_at = now + history.ttl
        result = PublishResult(publication)
        if idempotency_key is not None:
            if keys is None:
                keys = self._idempotency[channel] = OrderedDict()
            keys.pop(idempotency_key, None)  # an expired entry: re-insert at the back
            if len(keys) >= self.MAX_IDEMPOTENCY_KEYS:
                keys.popitem(last=False)
                self.examined += 1
            keys[idempotency_key] = (now + idempotency_window, result)
        handler = self._deliverer(channel)
        if handler is not None:
            try:
                handler.on_publication(publication)
            except Exception:
                logger.exception("broker handler failed on a publication in %r", channel)
        return result

    async def publish_join(self, channel: str, who: ClientInfo) -> None:
        handler = self._deliverer(channel)
        if handler is not None:
            try:
                handler.on_join(channel, who)
            except Exception:
                logger.exception("broker handler failed on a join in %r", channel)

    async def publish_leave(self, channel: str, who: ClientInfo) -> None:
        handler = self._deliverer(channel)
        if handler is not None:
            try:
                handler.on_leave(channel, who)
            except Exception:
                logger.exception("broker handler failed on a leave in %r", channel)

    async def publish_control(self, message: dict[str, Any]) -> None:
        handler = self._handler
        if handler is not None:
            try:
                handler.on_control(message)
            except Exception:
                logger.exception("broker handler failed on a control message")

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        """See :meth:`Broker.history`. A channel without a stream gets an empty one, so
        that its position (offset 0) keeps its epoch through the first publication."""
        if limit is not None and limit < 0:
            raise ValueError("limit must not be negative")
        now = self._clock()
        self._maybe_sweep(now)
        stream = self._stream(channel, now)
        return select_history(stream.publications, stream.epoch, stream.top, since, limit)

    async def remove_history(self, channel: str) -> None:
        self._streams.pop(channel, None)

    async def add_presence(self, channel: str, who: ClientInfo, ttl: float) -> None:
        now = self._clock()
        self._maybe_sweep(now)
        self._presence.setdefault(channel, {})[who.client] = (now + ttl, who)

    async def refresh_presence(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> None:
        for channel, who in entries:
            await self.add_presence(channel, who, ttl)

    async def remove_presence(self, channel: str, client: str) -> None:
        clients = self._presence.get(channel)
        if clients is not None:
            clients.pop(client, None)
            if not clients:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {client: who for client, (_, who) in self._live_presence(channel).items()}

    async def presence_page(
        self, channel: str, *, cursor: str | None = None, limit: int
    ) -> PresencePage:
        return select_presence(await self.presence(channel), cursor, limit)

    async def presence_count(self, channel: str) -> tuple[int, int]:
        clients = self._live_presence(channel)
        return len(clients), len({who.user for _, who in clients.values()})

    def _deliverer(self, channel: str) -> BrokerHandler | None:
        """The handler, when this channel's events are to be delivered now."""
        if self._handler is None or channel not in self._subscribed:
            return None
        return self._handler

    def _stream(self, channel: str, now: float) -> _Stream:
        """The channel's stream, replaced by a new (empty) one when absent or expired."""
        stream = self._streams.get(channel)
        if stream is None or (stream.expires_at is not None and now > stream.expires_at):
            stream = self._streams[channel] = _Stream()
            stream.expires_at = now + self.EMPTY_STREAM_TTL
        return stream

    def _live_presence(self, channel: str) -> dict[str, tuple[float, ClientInfo]]:
        clients = self._presence.get(channel)
        if clients is None:
            return {}
        _purge_presence(clients, self._clock())
        if not clients:
            del self._presence[channel]
        return clients

    def _maybe_sweep(self, now: float) -> None:
        """Drop expired streams, idempotency keys and presence in every channel, at most
        once per :attr:`SWEEP_INTERVAL`, so memory does not grow with dead channels."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_INTERVAL
        for channel, stream in list(self._streams.items()):
            if stream.expires_at is not None and now > stream.expires_at:
                del self._streams[channel]
        for channel, keys in list(self._idempotency.items()):
            _purge_front(keys, now)
            if not keys:
                del self._idempotency[channel]
        for channel, clients in list(self._presence.items()):
            _purge_presence(clients, now)
            if not clients:
                del self._presence[channel]


def _purge_front(keys: OrderedDict[str, tuple[float, PublishResult]], now: float) -> int:
    """Forget expired idempotency keys from the oldest on; return how many were looked
    at. Each key is forgotten once, so the work is amortised O(1) per publish. Windows
    may differ between publishes, so an expired key behind a live one can stay; lookups
    check expiry."""
    examined = 0
    while keys:
        examined += 1
        expiry, _ = next(iter(keys.values()))
        if now <= expiry:
            return examined
        keys.popitem(last=False)
    return examined


def _purge_presence(clients: dict[str, tuple[float, ClientInfo]], now: float) -> None:
    for client in [c for c, (expiry, _) in clients.items() if now > expiry]:
        del clients[client]
