"""A hub transport whose client never reads: for tests of the outbox and its limits."""

from __future__ import annotations

from typing import Any

from backchannel.hub.outbox import Outbox


class Stalled:
    """A transport whose client never reads: nothing is ever written, all waits."""

    name = "stalled"

    def __init__(self) -> None:
        self.closed_with: Any = None
        self.wakes = 0

    def attach(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def deliver(self, text: str) -> bool:
        return False

    def wake(self) -> None:
        self.wakes += 1

    def close(self, disconnect: Any) -> None:
        self.closed_with = disconnect

    @classmethod
    def deliver_many(cls, transports: Any, text: str) -> list[Any]:
        return list(transports)
