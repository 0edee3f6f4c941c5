"""WebSocket server and client on asyncio."""

from __future__ import annotations

from .broadcast import broadcast
from .client import ClientConnection, connect
from .connection import Connection, Data
from .server import Server, ServerConnection, serve
from .stream import Stream

__all__ = [
    "ClientConnection",
    "Connection",
    "Data",
    "Server",
    "ServerConnection",
    "Stream",
    "broadcast",
    "connect",
    "serve",
]
