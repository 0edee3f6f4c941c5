"""What the client and its subscriptions tell the application."""

from __future__ import annotations

from dataclasses import dataclass

from .transport import TransportName

__all__ = ["ConnectedEvent", "DisconnectedEvent", "SubscribedEvent", "UnsubscribedEvent"]


@dataclass(frozen=True, slots=True)
class ConnectedEvent:
    """A connection is up: the hub's id for it, the token's user, the transport used."""

    client: str
    user: str
    transport: TransportName


@dataclass(frozen=True, slots=True)
class DisconnectedEvent:
    """A connection ended. ``code`` is the hub's disconnect code, 1006 for a lost
    connection, or 1000 when the application closed the client; ``reconnect`` says
    whether the client is trying again."""

    code: int
    reason: str
    reconnect: bool


@dataclass(frozen=True, slots=True)
class SubscribedEvent:
    """A subscription is active (again). ``recovered`` is None on a first subscribe
    (nothing to recover); after a reconnection, True when every missed publication was
    delivered, False when history could not fill the gap: reload the state by other
    means (publications were lost)."""

    channel: str
    recovered: bool | None
    epoch: str
    offset: int


@dataclass(frozen=True, slots=True)
class UnsubscribedEvent:
    """The hub ended a subscription (an ``unsubscribe`` push), or refused to renew it
    after a reconnection; ``code`` is an error code."""

    channel: str
    code: int
    reason: str
