"""What the hub asks of a transport: take text now if it can, drain the outbox later."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar

from ..codes import Disconnect
from ..outbox import Outbox

__all__ = ["Transport"]

T = TypeVar("T", bound="Transport")


class Transport(Protocol):
    """Carries one session's replies and pushes to its client. Nothing here waits."""

    #: The transport's kind ("websocket", "longpoll", "sse"): sessions are counted by it.
    name: ClassVar[str]

    def attach(self, outbox: Outbox) -> None:
        """The outbox this transport drains (the session's)."""

    def deliver(self, text: str) -> bool:
        """Write one frame of wire text now if that needs no queueing; False when it
        must wait in the outbox (the session then queues it and calls :meth:`wake`)."""

    def wake(self) -> None:
        """The outbox was empty and has text now: drain it when the client can take it."""

    def close(self, disconnect: Disconnect) -> None:
        """End the connection with this code and reason, after what the outbox holds."""

    @classmethod
    def deliver_many(cls: type[T], transports: Sequence[T], text: str) -> list[T]:
        """Fan-out: write the same text to many transports, encoded once; return those
        that could not take it now (their sessions queue it)."""
