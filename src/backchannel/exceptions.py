"""The one exception hierarchy of backchannel.

Whose fault it is decides where an exception sits::

    BackchannelError
    ├── PeerError                  the other side broke a rule
    │   ├── ProtocolError          RFC 6455 violation           -> close 1002
    │   ├── InvalidPayload         e.g. invalid UTF-8 in text   -> close 1007
    │   ├── PayloadTooBig          past a size limit            -> close 1009
    │   └── InvalidHandshake       the opening handshake failed
    │       ├── InvalidRequest     a server refuses a request   (has .status)
    │       ├── InvalidResponse    a client refuses a response
    │       │   └── InvalidStatus  the response was not 101     (has .status)
    │       └── NegotiationError   extension / subprotocol negotiation failed
    ├── UsageError                 the caller misused the API
    │   ├── InvalidState           e.g. sending after close
    │   └── InvalidArgument        e.g. a close code one may not send
    ├── ConnectionClosed           raised by I/O after the connection closed
    │   ├── ConnectionClosedOK     closed with 1000 or 1001
    │   └── ConnectionClosedError  any other way
    ├── HandshakeTimeout           the opening handshake did not complete in time
    ├── ProxyError                 an HTTP proxy refused or broke the tunnel
    └── BrokerUnavailable          the hub's broker (Redis) cannot be reached

Peer faults never escape the protocol core's ``receive_data``: they become a close
frame with the mapped code, and the exception is kept on the connection.
"""

from __future__ import annotations

__all__ = [
    "BackchannelError",
    "BrokerUnavailable",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "HandshakeTimeout",
    "InvalidArgument",
    "InvalidHandshake",
    "InvalidPayload",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidState",
    "InvalidStatus",
    "NegotiationError",
    "PayloadTooBig",
    "PeerError",
    "ProtocolError",
    "ProxyError",
    "UsageError",
]


class BackchannelError(Exception):
    """Base class of every exception raised by backchannel."""


class PeerError(BackchannelError):
    """The peer sent something the protocol does not allow."""


class ProtocolError(PeerError):
    """The peer violated RFC 6455 or RFC 7692 (close code 1002)."""

    close_code = 1002


class InvalidPayload(PeerError):
    """A payload is inconsistent with its type, e.g. invalid UTF-8 (close code 1007)."""

    close_code = 1007


class PayloadTooBig(PeerError):
    """A frame or message exceeds a configured limit (close code 1009)."""

    close_code = 1009


class InvalidHandshake(PeerError):
    """The opening handshake failed."""


class InvalidRequest(InvalidHandshake):
    """A server refuses an HTTP request; ``status`` is the answer to send."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class InvalidResponse(InvalidHandshake):
    """A client refuses the server's handshake response."""


class InvalidStatus(InvalidResponse):
    """The server answered the upgrade with another status than 101."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status} {reason}")
        self.status = status
        self.reason = reason
        self.body = body


class NegotiationError(InvalidHandshake):
    """Extension or subprotocol negotiation failed."""


class UsageError(BackchannelError):
    """The caller used the API in a way it does not allow."""


class InvalidState(UsageError):
    """The operation is not possible in the connection's current state."""


class InvalidArgument(UsageError, ValueError):
    """An argument is outside what the protocol allows."""


class ConnectionClosed(BackchannelError):
    """The WebSocket connection is closed; ``code`` and ``reason`` say how."""

    def __init__(self, code: int, reason: str, *, received: bool = True) -> None:
        super().__init__(f"connection closed: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason
        #: Whether ``code`` and ``reason`` came from the peer's close frame.
        self.received = received


class ConnectionClosedOK(ConnectionClosed):
    """The connection closed normally (1000 or 1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection closed with an error code or without a close handshake."""


class HandshakeTimeout(BackchannelError, TimeoutError):
    """The opening handshake did not complete within ``open_timeout``."""


class ProxyError(BackchannelError):
    """The HTTP proxy refused the CONNECT request or closed the tunnel."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class BrokerUnavailable(BackchannelError):
    """The broker cannot be reached (Redis is down): nothing was published or read.

    Temporary: clients get error 116 and the HTTP API 503; retrying later may succeed."""
