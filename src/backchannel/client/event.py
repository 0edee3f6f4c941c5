"""What the client and its subscriptions tell the application."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .result import PublishResult
from .transport import TransportName

__all__ = [
    "ConnectedEvent",
    "DisconnectedEvent",
    "PublishEvent",
    "PublishFate",
    "SubscribedEvent",
    "TokenRefusedEvent",
    "UnsubscribedEvent",
]

#: What became of a publish: the hub acknowledged it, refused it (with an error code),
#: or the client gave it up (its outbox was full, its deadline passed, it was closed).
PublishFate = Literal["acknowledged", "refused", "dropped"]


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


@dataclass(frozen=True, slots=True)
class PublishEvent:
    """The fate of one publish, once it is settled. ``result`` is the acknowledgement
    ("acknowledged"); ``error`` is the :class:`~backchannel.exceptions.CommandError` of a
    refusal ("refused", its ``code`` says why) or the
    :class:`~backchannel.exceptions.PublishDropped` of a publish given up ("dropped")."""

    channel: str
    data: Any
    idempotency_key: str
    fate: PublishFate
    result: PublishResult | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class TokenRefusedEvent:
    """The hub refused a connect for its token: ``code`` is 3500 (invalid token) or 109
    (token expired). ``retrying`` is True when the client asks the token callback for a
    new token and tries once more, False when it gives up (the client stops)."""

    code: int
    reason: str
    retrying: bool
