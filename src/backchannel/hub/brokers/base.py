"""Brokers: how publications, joins and leaves reach every node, and where history and
presence are kept.

Local delivery is the hub's job; a broker only carries events between nodes, and a node
subscribes to a channel on the broker only while it has local subscribers. A broker also
owns each channel's history (an ordered stream with an offset and an epoch) and presence,
so that every node sees the same ones, and knows which nodes have local subscribers of a
channel, so that "channel occupied" and "channel vacated" happen once in the cluster
(:meth:`Broker.occupy`, :meth:`Broker.vacate`). :class:`MemoryBroker` is the single-node default;
the Redis broker is its own module. Every broker passes one contract suite
(``tests/hub/brokers/broker_contract.py``).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from ..wire import ClientInfo, Position, Publication
from .calls import BrokerCalls

__all__ = [
    "Broker",
    "BrokerHandler",
    "HistoryOptions",
    "HistoryResult",
    "PresencePage",
    "PublishResult",
    "select_history",
    "select_presence",
]


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

    def to_json(self) -> dict[str, Any]:
        """The result of a publish, for a client's command and the HTTP API alike
        (docs/protocol.md, "publish")."""
        out: dict[str, Any] = {"offset": self.publication.offset}
        if self.publication.offset:
            out["epoch"] = self.publication.epoch
        if self.duplicate:
            out["duplicate"] = True
        return out


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


@dataclass(frozen=True, slots=True)
class PresencePage:
    """A page of a channel's presence: the clients whose ids come after the cursor it
    was asked with, in code point order of the client id (the order of their UTF-8
    bytes, as Redis sorts them), at most the limit. ``next_cursor`` asks for the next
    page; None when this one ends the channel.

    The cursor is the last client id of the page, so pages cover every client present
    for the whole walk exactly once, whoever joins or leaves meanwhile (a client that
    joins behind the cursor is not in this walk)."""

    clients: dict[str, ClientInfo]
    next_cursor: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The result of a presence command (docs/protocol.md, "presence")."""
        out: dict[str, Any] = {
            "clients": {client: who.to_json() for client, who in self.clients.items()}
        }
        if self.next_cursor is not None:
            out["next_cursor"] = self.next_cursor
        return out


def select_presence(present: dict[str, ClientInfo], cursor: str | None, limit: int) -> PresencePage:
    """What :meth:`Broker.presence_page` answers from a channel's whole presence, for a
    broker that holds it in memory."""
    ids = sorted(present)
    start = 0 if cursor is None else bisect_right(ids, cursor)
    page = ids[start : start + limit]
    more = start + limit < len(ids)
    return PresencePage({c: present[c] for c in page}, page[-1] if more and page else None)


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

    #: Its round trips to a backing store, by operation (empty for one that has none).
    calls: BrokerCalls

    async def start(self, handler: BrokerHandler) -> None:
        """Begin delivering events to ``handler``."""

    async def close(self) -> None:
        """Stop delivering; release connections."""

    async def ping(self) -> None:
        """Return when the broker answers; :class:`BrokerUnavailable` when it cannot be
        reached (what a readiness probe asks)."""

    def describe(self) -> str | None:
        """What the broker found when it started (a Redis topology: "single server",
        "cluster with 3 masters"), for the server's banner; None when there is nothing
        to add to its configuration."""

    async def subscribe(self, channel: str) -> None:
        """Deliver this channel's events to this node."""

    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering this channel's events to this node."""

    async def occupy(self, channel: str) -> bool:
        """This node has its first local subscriber of ``channel``; True when no other
        node had one (the channel is now occupied in the cluster).

        Calls of :meth:`occupy` and :meth:`vacate` for one channel must not overlap on a
        node (the hub makes them in the order its local subscribers come and go)."""

    async def vacate(self, channel: str) -> bool:
        """This node's last local subscriber of ``channel`` left; True when no node has
        one any more (the channel is vacated)."""

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
        """Store (when ``history`` is given) and deliver a publication to every node
        subscribed to the channel. ``encoded``, when given, is ``data`` as wire JSON
        (the hub encodes it once to check its size): a broker uses it rather than
        encoding the data again. A second publish with the same idempotency key in the
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

    async def refresh_presence(self, entries: Sequence[tuple[str, ClientInfo]], ttl: float) -> None:
        """:meth:`add_presence` for every ``(channel, who)`` in ``entries`` (a node's
        periodic refresh of all its entries): in one round trip to a backing store,
        not one per entry."""

    async def remove_presence(self, channel: str, client: str) -> None:
        """Remove one client from the channel's presence."""

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is in the channel, by client id (expired entries left out)."""

    async def presence_page(
        self, channel: str, *, cursor: str | None = None, limit: int
    ) -> PresencePage:
        """At most ``limit`` (1 or more) clients of the channel, those after ``cursor``
        (None: from the start) in client id order (see :class:`PresencePage`)."""

    async def presence_count(self, channel: str) -> tuple[int, int]:
        """How many clients and how many distinct users are in the channel."""


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
