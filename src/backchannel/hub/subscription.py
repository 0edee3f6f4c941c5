"""One channel a session is subscribed to, and the position it has reached."""

from __future__ import annotations

from dataclasses import dataclass, field

from .options import ChannelOptions

__all__ = ["Subscription"]


@dataclass(slots=True)
class Subscription:
    """While ``live`` is false (a subscribe with recovery is reading history),
    publications wait in ``pending`` and are sent once the subscribe's reply is out."""

    channel: str
    options: ChannelOptions
    live: bool = False
    pending: list[tuple[int, str]] = field(default_factory=list)
    #: The offset of the last publication sent, to skip one seen twice during recovery.
    offset: int = 0

    def advance(self, offset: int) -> bool:
        """Whether a publication at ``offset`` is new to this subscriber (0: a channel
        without history, or a join/leave: always); moves the position on."""
        if offset:
            if offset <= self.offset:
                return False
            self.offset = offset
        return True
