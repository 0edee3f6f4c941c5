"""The hub: channels, sessions, presence, history, brokers, the wire format, transports.

:class:`Hub` is the application's door (publish, presence, history, users, statistics)
and the sessions' door; :class:`Hooks` is the application's say in it. The hub is served
over WebSocket by ``websocket_handler(hub)`` (for ``backchannel.asyncio.serve``), over
HTTP long polling by ``LongPoll(hub)`` and over Server-Sent Events by
``ServerSentEvents(hub)`` (as ``process_request``, sharing an ``HttpSessions`` table);
the wire format is in
:mod:`.wire` and docs/protocol.md. docs/design.md draws which module owns what.
"""

from __future__ import annotations

from .brokers import Broker, BrokerHandler, HistoryOptions, MemoryBroker, PublishResult
from .codes import Disconnect, Error
from .commands import Commands
from .hooks import Connected, ConnectRequest, Hooks
from .hub import Hub, NodeInfo, PresenceStats, Statistics, SubscribeResult
from .options import ChannelOptions, HubOptions
from .session import Session
from .token import TokenVerifier
from .transports.base import Transport
from .transports.http import HttpSessions
from .transports.longpoll import LongPoll, LongPollTransport
from .transports.sse import ServerSentEvents, SseTransport
from .transports.websocket import WebSocketTransport, websocket_handler

__all__ = [
    "Broker",
    "BrokerHandler",
    "ChannelOptions",
    "Commands",
    "ConnectRequest",
    "Connected",
    "Disconnect",
    "Error",
    "HistoryOptions",
    "Hooks",
    "HttpSessions",
    "Hub",
    "HubOptions",
    "LongPoll",
    "LongPollTransport",
    "MemoryBroker",
    "NodeInfo",
    "PresenceStats",
    "PublishResult",
    "ServerSentEvents",
    "Session",
    "SseTransport",
    "Statistics",
    "SubscribeResult",
    "TokenVerifier",
    "Transport",
    "WebSocketTransport",
    "websocket_handler",
]
