"""What commands return, and reading the hub's publication and client objects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..hub.wire import ClientInfo, Publication

__all__ = [
    "HistoryResult",
    "PresenceStats",
    "PublishResult",
    "parse_client_info",
    "parse_publication",
]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """A publish's acknowledgement. ``offset`` is 0 and ``epoch`` "" in a channel without
    history; ``duplicate`` means the idempotency key was seen and nothing was delivered
    again (offset and epoch are then the first publish's)."""

    offset: int
    epoch: str = ""
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """A read of a channel's stream: publications oldest first, the stream's position
    now, and ``recovered``: false when the position asked for is no longer in the stream."""

    publications: list[Publication]
    epoch: str
    offset: int
    recovered: bool


@dataclass(frozen=True, slots=True)
class PresenceStats:
    """How many connections are subscribed to a channel, and how many distinct users."""

    clients: int
    users: int


def parse_client_info(obj: Any) -> ClientInfo:
    """A client object (docs/protocol.md) as a ClientInfo; tolerant of missing fields."""
    if not isinstance(obj, dict):
        return ClientInfo("", "")
    return ClientInfo(str(obj.get("client", "")), str(obj.get("user", "")), obj.get("info"))


def parse_publication(obj: dict[str, Any], channel: str = "") -> Publication:
    """A publication object (or push) as a Publication."""
    offset = obj.get("offset")
    epoch = obj.get("epoch")
    info = obj.get("info")
    return Publication(
        channel=obj.get("channel", channel) if isinstance(obj.get("channel"), str) else channel,
        data=obj.get("data"),
        offset=offset if type(offset) is int and offset > 0 else 0,
        epoch=epoch if isinstance(epoch, str) else "",
        publisher=parse_client_info(info) if isinstance(info, dict) else None,
    )
