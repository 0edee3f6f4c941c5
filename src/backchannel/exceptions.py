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
    ├── BrokerUnavailable          the hub's broker (Redis) cannot be reached
    ├── CommandError               a hub command is refused: an error reply (has .code)
    ├── PublishDropped             the Python client gave up a publish (never acknowledged)
    │   └── OutboxFull             its outbox had no room for a new publish
    ├── DisconnectRequest          the hub ends a connection with a disconnect code
    └── TokenError                 a token is malformed, forged or for something else
        └── TokenExpired           a valid token whose exp has passed

``CommandError`` and ``DisconnectRequest`` are raised by the hub and by the
application's hooks alike (an application uses codes 1000-1999 and 4000-4999). The
Python client (``backchannel.client``) raises ``CommandError`` for an error reply,
``DisconnectRequest`` once the hub ended its connection with a code that forbids
reconnecting, ``ConnectionClosedError`` for a command whose connection was lost before
the reply, and ``InvalidArgument`` for parameters the hub would refuse.

Peer faults never escape the protocol core's ``receive_data``: they become a close
frame with the mapped code, and the exception is kept on the connection.
"""

from __future__ import annotations

from typing import Protocol

__all__ = [
    "BackchannelError",
    "BrokerUnavailable",
    "CommandError",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "DisconnectRequest",
    "HandshakeTimeout",
    "InvalidArgument",
    "InvalidHandshake",
    "InvalidPayload",
    "InvalidRequest",
    "InvalidResponse",
    "InvalidState",
    "InvalidStatus",
    "NegotiationError",
    "OutboxFull",
    "PayloadTooBig",
    "PeerError",
    "ProtocolError",
    "ProxyError",
    "PublishDropped",
    "TokenError",
    "TokenExpired",
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


class PublishDropped(BackchannelError):
    """The Python client gave up a publish without an acknowledgement: its deadline
    passed, or the client was closed. ``sent`` says whether it had been sent: then it may
    have been delivered (the reply was lost), else it was not."""

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class OutboxFull(PublishDropped):
    """The Python client's outbox had no room for a new publish: it was not queued."""


class _Coded(Protocol):
    """An error of the hub's registry (``backchannel.hub.codes.Error``)."""

    @property
    def code(self) -> int: ...
    @property
    def message(self) -> str: ...
    @property
    def temporary(self) -> bool: ...


class _Reasoned(Protocol):
    """A disconnect of the hub's registry (``backchannel.hub.codes.Disconnect``)."""

    @property
    def code(self) -> int: ...
    @property
    def reason(self) -> str: ...


class CommandError(BackchannelError):
    """A hub command is refused with an error reply; the connection stays.

    ``CommandError(codes.PERMISSION_DENIED)`` with an error of the registry, or
    ``CommandError(1001, "out of stock")`` from an application (codes 1000-1999).
    ``temporary`` tells the client whether the same command may succeed later.
    """

    def __init__(self, error: int | _Coded, message: str = "", *, temporary: bool = False) -> None:
        if isinstance(error, int):
            code = error
        else:
            code, message, temporary = error.code, message or error.message, error.temporary
        super().__init__(message)
        self.code = code
        self.message = message
        self.temporary = temporary


class DisconnectRequest(BackchannelError):
    """End a hub connection with this code and reason (3000-3999 by the hub, 4000-4999 by
    an application; below 3500 and 4500 the client reconnects)."""

    def __init__(self, disconnect: int | _Reasoned, reason: str = "") -> None:
        if isinstance(disconnect, int):
            code = disconnect
        else:
            code, reason = disconnect.code, reason or disconnect.reason
        super().__init__(reason)
        self.code = code
        self.reason = reason


class TokenError(BackchannelError):
    """A token is malformed, forged, or for something else."""


class TokenExpired(TokenError):
    """A token was valid but its ``exp`` has passed."""
