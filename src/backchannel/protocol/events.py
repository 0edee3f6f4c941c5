"""Events the protocol core reports from ``Connection.receive_data``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BinaryMessage", "CloseReceived", "Event", "Ping", "Pong", "TextMessage"]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete text message."""

    data: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping; the core has already queued the pong (RFC 6455 section 5.5.2)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The peer's close frame. ``code`` is 1005 when the frame had no code (section 7.1.5)."""

    code: int
    reason: str


Event = TextMessage | BinaryMessage | Ping | Pong | CloseReceived
