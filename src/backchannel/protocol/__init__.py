"""The WebSocket protocol (RFC 6455, RFC 7692) without I/O and without a clock."""

from __future__ import annotations

from .connection import CLIENT, CLOSED, CLOSING, CONNECTING, OPEN, SERVER, Connection, Side, State
from .deflate import DeflateConfig, DeflateOffer, DeflateParams, PerMessageDeflate
from .events import BinaryMessage, CloseReceived, Event, Ping, Pong, TextMessage
from .frames import CloseCode, Opcode
from .handshake import ClientHandshake, ServerHandshake, WebSocketURI, accept_key, parse_uri
from .http11 import Headers, Request, RequestParser, Response, parse_response_head
from .limits import Limits

__all__ = [
    "CLIENT",
    "CLOSED",
    "CLOSING",
    "CONNECTING",
    "OPEN",
    "SERVER",
    "BinaryMessage",
    "ClientHandshake",
    "CloseCode",
    "CloseReceived",
    "Connection",
    "DeflateConfig",
    "DeflateOffer",
    "DeflateParams",
    "Event",
    "Headers",
    "Limits",
    "Opcode",
    "PerMessageDeflate",
    "Ping",
    "Pong",
    "Request",
    "RequestParser",
    "Response",
    "ServerHandshake",
    "Side",
    "State",
    "TextMessage",
    "WebSocketURI",
    "accept_key",
    "parse_response_head",
    "parse_uri",
]
