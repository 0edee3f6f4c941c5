"""The client's outbox: publishes not acknowledged yet, bounded in messages and bytes.

A publish stays here, with its idempotency key, from :meth:`Client.publish` until the hub
acknowledges or refuses it, or its deadline passes. Those made while disconnected, and
those whose connection was lost before the reply, are sent again on the next
connection with the same key: the hub's idempotency window makes each count once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import OutboxFull
from .connection import Connection
from .result import PublishResult

__all__ = [
    "MAX_BYTES",
    "MAX_IN_FLIGHT",
    "MAX_MESSAGES",
    "PUBLISH_TIMEOUT",
    "RETRY_PAUSE",
    "Outbox",
    "Pending",
]

#: Publishes waiting at most: a few seconds of a busy client's publishing while it
#: reconnects, bounded so that a client cut off for long cannot grow without limit.
MAX_MESSAGES = 1000
#: Bytes of publish commands waiting at most (their encoded size): 1 MiB.
MAX_BYTES = 2**20
#: Publishes sent and not answered yet on one connection. The hub disconnects (3505,
#: not to reconnect) a client past its command burst (500): a full outbox sent at once
#: after a reconnection would pass it, a few at a time does not, and the replies keep
#: coming as fast as the hub answers.
MAX_IN_FLIGHT = 10
#: Seconds the outbox pauses after the hub refused a publish for a while (too many
#: requests, 111): at its default rate (50/s) the hub's bucket refills more than
#: MAX_IN_FLIGHT publishes in that time, so the refusals cost at most MAX_IN_FLIGHT
#: commands a second, well inside its command rate (100/s, past which it disconnects).
RETRY_PAUSE = 1.0
#: Seconds a publish may wait for its acknowledgement, reconnections included. Below the
#: hub's idempotency window (120 s by default): a key sent again after the window is a new
#: publication, so a longer wait could deliver one twice.
PUBLISH_TIMEOUT = 60.0


@dataclass(eq=False)
class Pending:
    """One publish in the outbox."""

    channel: str
    data: Any
    key: str
    #: Its command's encoded size: what counts against the outbox's bytes.
    size: int
    #: When it is given up, on the loop's clock.
    deadline: float
    future: asyncio.Future[PublishResult]
    #: The connection its command is out on, while it waits for the reply there.
    sent_on: Connection | None = None
    #: Whether it was ever sent (then a publish given up may have been delivered).
    sent: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def params(self) -> dict[str, Any]:
        return {"channel": self.channel, "data": self.data, "idempotency_key": self.key}


class Outbox:
    """Publishes in the order they were made, bounded by ``max_messages`` and
    ``max_bytes``. A publish that does not fit is refused (:class:`OutboxFull`): the
    newest is the one the application can still act on, while the older ones may
    already be on their way."""

    def __init__(self, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the outbox needs room for one publish")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[int, Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Pending]:
        return iter(list(self._items.values()))

    def add(self, pending: Pending) -> None:
        """Queue a publish; :class:`OutboxFull` when it does not fit."""
        if len(self._items) >= self.max_messages:
            raise OutboxFull(f"the outbox holds {self.max_messages} publishes already")
        if self.bytes + pending.size > self.max_bytes:
            raise OutboxFull(
                f"the outbox holds {self.bytes} bytes; {pending.size} more pass {self.max_bytes}"
            )
        self._items[id(pending)] = pending
        self.bytes += pending.size

    def remove(self, pending: Pending) -> bool:
        """Take a publish out; False when it was not there (settled already)."""
        if self._items.pop(id(pending), None) is None:
            return False
        self.bytes -= pending.size
        return True

    def __contains__(self, pending: Pending) -> bool:
        return self._items.get(id(pending)) is pending
