"""The hub: channels, sessions, presence, history, brokers, the wire format, transports.

``Hub`` holds who is connected to this node and what they subscribe to, and fans
publications out; ``websocket_handler(hub)`` serves it over ``backchannel.asyncio.serve``
and ``LongPoll(hub)`` (as ``process_request``) over HTTP long polling; the wire format is
in :mod:`.wire` and docs/protocol.md.
"""

from __future__ import annotations

from .brokers import Broker, BrokerHandler, HistoryOptions, MemoryBroker
from .codes import Disconnect, Error
from .hub import Hub
from .options import ChannelOptions, HubOptions
from .session import Session, Transport
from .token import TokenVerifier
from .transports.longpoll import LongPoll, LongPollTransport
from .transports.websocket import WebSocketTransport, websocket_handler

__all__ = [
    "Broker",
    "BrokerHandler",
    "ChannelOptions",
    "Disconnect",
    "Error",
    "HistoryOptions",
    "Hub",
    "HubOptions",
    "LongPoll",
    "LongPollTransport",
    "MemoryBroker",
    "Session",
    "TokenVerifier",
    "Transport",
    "WebSocketTransport",
    "websocket_handler",
]
