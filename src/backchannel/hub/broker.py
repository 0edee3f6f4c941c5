"""Brokers: how publications, joins and leaves reach every node, and where history and
presence are kept.

Local delivery is the hub's job; a broker only carries events between nodes, and a node
subscribes to a channel on the broker only while it has local subscribers. A broker also
owns each channel's history (an ordered stream with an offset and an epoch) and presence,
so that every node sees the same ones. :class:`MemoryBroker` is the single-node default;
the Redis broker is its own module. Every broker passes one contract suite
(``tests/hub/broker_contract.py``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from .wire import ClientInfo, Position, Publication

__all__ = [
    "Broker",
    "BrokerHandler",
    "HistoryOptions",
    "HistoryResult",
    "MemoryBroker",
    "PublishResult",
]

logger = logging.getLogger("backchannel.hub")


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a channel's stream to keep: the last ``size`` publications, and all of
    it for ``ttl`` seconds after the last publication (then the stream is dropped, and the
    next publication starts a new epoch)."""

    size: int
    ttl: float


@dataclass(frozen=True, slots=True)
class PublishResult:
    """The publication as stored (with its offset), and whether it was a duplicate of an
    earlier publish with the same idempotency key (then nothing was delivered)."""

    publication: Publication
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """Publications from a channel's stream, oldest first; ``position`` is the stream's
    current top (epoch and last offset). ``recovered`` is false when the position asked
    for is not in the stream any more (another epoch, or older than what is kept)."""

    publications: list[Publication]
    position: Position
    recovered: bool = True

    def to_json(self) -> dict[str, Any]:
        """The result of a history command (docs/protocol.md, "history")."""
        return {
            "publications": [p.to_json() for p in self.publications],
            "epoch": self.position.epoch,
            "offset": self.position.offset,
            "recovered": self.recovered,
        }


class BrokerHandler(Protocol):
    """What a broker calls when an event arrives for a channel this node subscribed to.

    Calls for one channel come in order (publications in offset order)."""

    def on_publication(self, publication: Publication) -> None: ...

    def on_join(self, channel: str, who: ClientInfo) -> None: ...

    def on_leave(self, channel: str, who: ClientInfo) -> None: ...

    def on_lost(self, channel: str) -> None:
        """Events of this channel may have been lost (the broker lost its connection
        and could not read them back): its subscribers should recover by themselves."""

    def on_control(self, message: dict[str, Any]) -> None:
        """A command for every node (disconnect a user, end subscriptions), from
        :meth:`Broker.publish_control` on any node, this one included."""


class Broker(Protocol):
    """The interface every broker implements (see the module docstring)."""

    async def start(self, handler: BrokerHandler) -> None:
        """Begin delivering events to ``handler``."""

    async def close(self) -> None:
        """Stop delivering; release connections."""

    async def subscribe(self, channel: str) -> None:
        """Deliver this channel's events to this node."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering this channel's events to this node."""

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | None = None,
        publisher: ClientInfo | None = None,
        idempotency_key: str | None = None,
        idempotency_window: float = 120.0,
    ) -> PublishResult:
        """Store (when ``history`` is given) and deliver a publication to every node
        subscribed to the channel. A second publish with the same idempotency key in the
        same channel within ``idempotency_window`` seconds returns the first one's result
        with ``duplicate=True`` and delivers nothing."""

    async def publish_join(self, channel: str, who: ClientInfo) -> None:
        """Deliver a join to every node subscribed to the channel."""

    async def publish_leave(self, channel: str, who: ClientInfo) -> None:
        """Deliver a leave to every node subscribed to the channel."""

    async def publish_control(self, message: dict[str, Any]) -> None:
        """Deliver a JSON object to every node's ``on_control``, this node's included."""

    async def history(
        self, channel: str, *, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Publications after ``since`` (all kept ones when ``since`` is None), oldest
        first, at most ``limit`` (None: no limit; with ``since=None`` and a limit, the
        latest ones)."""

    async def remove_history(self, channel: str) -> None:
        """Drop the channel's stream; the next publication starts a new epoch."""

    async def add_presence(self, channel: str, who: ClientInfo, ttl: float) -> None:
        """Record (or refresh) ``who`` in the channel; it expires after ``ttl`` seconds
        unless added again."""

    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove one client from the channel's presence."""

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in the channel, by client id (expired entries left out)."""

    async def presence_count(self, channel: str) -> tuple[int, int]:
        """How many clients and how many distinct users are in the channel."""


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

    async def start(self, handler: BrokerHandler) -> None:
        """Begin delivering events to ``handler``. A closed broker cannot start again."""
        if self._closed:
            raise RuntimeError("the broker is closed")
        self._handler = handler

    async def close(self) -> None:
        """Stop delivering. Stored history and presence stay usable."""
        self._closed = True
        self._handler = None

    async def subscribe(self, channel: str) -> None:
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._subscribed.discard(channel)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        history: HistoryOptions | None = None,
        publisher: ClientInfo | None = None,
        idempotency_key: str | None = None,
        idempotency_window: float = 120.0,
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
                _purge_front(keys, now)
                entry = keys.get(idempotency_key)
                if entry is not None and now <= entry[0]:
                    return PublishResult(entry[1].publication, duplicate=True)
        if history is None:
            publication = Publication(channel, data, publisher=publisher)
        else:
            stream = self._stream(channel, now)
            stream.top += 1
            publication = Publication(channel, data, stream.top, stream.epoch, publisher)
            stream.publications.append(publication)
            while len(stream.publications) > history.size:
                stream.publications.popleft()
            stream.expires_at = now + history.ttl
        result = PublishResult(publication)
        if idempotency_key is not None:
            if keys is None:
                keys = self._idempotency[channel] = OrderedDict()
            keys.pop(idempotency_key, None)  # an expired entry: re-insert at the back
            if len(keys) >= self.MAX_IDEMPOTENCY_KEYS:
                keys.popitem(last=False)
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

    async def remove_presence(self, channel: str, client: str) -> None:
        clients = self._presence.get(channel)
        if clients is not None:
            clients.pop(client, None)
            if not clients:
                del self._presence[channel]

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return {client: who for client, (_, who) in self._live_presence(channel).items()}

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


def select_history(
    kept: Sequence[Publication],
    epoch: str,
    top: int,
    since: Position | None,
    limit: int | None,
) -> HistoryResult:
    """What :meth:`Broker.history` answers from a stream's kept publications (oldest
    first, the last at offset ``top``), for any broker."""
    position = Position(epoch, top)
    if since is None:
        start = 0 if limit is None else max(0, len(kept) - limit)
        return HistoryResult(list(islice(kept, start, None)), position)
    # The offset just before the first kept publication is still a valid position:
    # everything after it is kept.
    oldest_position = top - len(kept)
    if since.epoch != epoch or since.offset < oldest_position or since.offset > top:
        return HistoryResult([], position, recovered=False)
    start = since.offset - oldest_position
    stop = None if limit is None else start + limit
    return HistoryResult(list(islice(kept, start, stop)), position)


def _purge_front(keys: OrderedDict[str, tuple[float, PublishResult]], now: float) -> None:
    """Forget expired idempotency keys from the oldest on. Windows may differ between
    publishes, so an expired key behind a live one can stay; lookups check expiry."""
    while keys:
        expiry, _ = next(iter(keys.values()))
        if now <= expiry:
            return
        keys.popitem(last=False)


def _purge_presence(clients: dict[str, tuple[float, ClientInfo]], now: float) -> None:
    for client in [c for c, (expiry, _) in clients.items() if now > expiry]:
        del clients[client]
