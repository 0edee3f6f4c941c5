"""The hub's Python client: ``async with Client("ws://host/ws", token=...) as client``.

A layer above :mod:`backchannel.hub`'s wire format, beside :mod:`backchannel.app`: it
speaks docs/protocol.md over WebSocket (:mod:`backchannel.asyncio`) or, when WebSocket
does not get through, Server-Sent Events or HTTP long polling (httpx and httpx-sse:
``pip install -e '.[client]'`` in a checkout).
"""

from __future__ import annotations

from ..hub.wire import ClientInfo, Position, Publication
from .backoff import Backoff
from .client import Client, ClientState, TokenSource, default_longpoll_url, default_sse_url
from .event import (
    ConnectedEvent,
    DisconnectedEvent,
    PublishEvent,
    PublishFate,
    SubscribedEvent,
    TokenRefusedEvent,
    UnsubscribedEvent,
)
from .result import HistoryResult, PresenceStats, PublishResult
from .subscription import Subscription, SubscriptionState
from .transport import TransportName

__all__ = [
    "Backoff",
    "Client",
    "ClientInfo",
    "ClientState",
    "ConnectedEvent",
    "DisconnectedEvent",
    "HistoryResult",
    "Position",
    "PresenceStats",
    "Publication",
    "PublishEvent",
    "PublishFate",
    "PublishResult",
    "SubscribedEvent",
    "Subscription",
    "SubscriptionState",
    "TokenRefusedEvent",
    "TokenSource",
    "TransportName",
    "UnsubscribedEvent",
    "default_longpoll_url",
    "default_sse_url",
]
