"""Every error and disconnect code of the hub's wire format, in one registry.

Two kinds, never mixed (docs/protocol.md, "Codes"):

* An **error** answers one command and keeps the connection. It has a code (100-1999;
  applications use 1000-1999), a message, and ``temporary``: whether retrying the same
  command later may succeed.
* A **disconnect** ends the connection. Over WebSocket its code is the close code. It
  tells the client whether to reconnect: 3000-3499 reconnect (with backoff), 3500-3999
  do not (retrying cannot help); applications use 4000-4499 (reconnect) and 4500-4999
  (do not).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DISCONNECTS", "ERRORS", "Disconnect", "Error"]


@dataclass(frozen=True, slots=True)
class Error:
    """An error reply: the command failed, the connection stays."""

    code: int
    message: str
    temporary: bool = False

    def with_message(self, message: str) -> Error:
        """The same code, with a more precise message."""
        return Error(self.code, message, self.temporary)


@dataclass(frozen=True, slots=True)
class Disconnect:
    """The server ends the connection with this code and reason."""

    code: int
    reason: str

    @property
    def reconnect(self) -> bool:
        """Whether the client should reconnect (3000-3499; 4000-4999 by the application)."""
        return 3000 <= self.code < 3500 or 4000 <= self.code < 4500


# Errors.
INTERNAL = Error(100, "internal server error", temporary=True)
UNAUTHORIZED = Error(101, "unauthorized")
UNKNOWN_CHANNEL = Error(102, "unknown channel")
PERMISSION_DENIED = Error(103, "permission denied")
METHOD_NOT_FOUND = Error(104, "method not found")
ALREADY_SUBSCRIBED = Error(105, "already subscribed")
LIMIT_EXCEEDED = Error(106, "limit exceeded")
BAD_REQUEST = Error(107, "bad request")
NOT_AVAILABLE = Error(108, "not available")
TOKEN_EXPIRED = Error(109, "token expired")
NOT_SUBSCRIBED = Error(110, "not subscribed")
TOO_MANY_REQUESTS = Error(111, "too many requests", temporary=True)
UNRECOVERABLE_POSITION = Error(112, "unrecoverable position")
MESSAGE_TOO_LARGE = Error(113, "message too large")
NOT_CONNECTED = Error(114, "connect first")
ALREADY_CONNECTED = Error(115, "already connected")
UNAVAILABLE = Error(116, "service unavailable", temporary=True)
UNSUBSCRIBED = Error(117, "unsubscribed by the server")

ERRORS: dict[int, Error] = {
    e.code: e
    for e in (
        INTERNAL,
        UNAUTHORIZED,
        UNKNOWN_CHANNEL,
        PERMISSION_DENIED,
        METHOD_NOT_FOUND,
        ALREADY_SUBSCRIBED,
        LIMIT_EXCEEDED,
        BAD_REQUEST,
        NOT_AVAILABLE,
        TOKEN_EXPIRED,
        NOT_SUBSCRIBED,
        TOO_MANY_REQUESTS,
        UNRECOVERABLE_POSITION,
        MESSAGE_TOO_LARGE,
        NOT_CONNECTED,
        ALREADY_CONNECTED,
        UNAVAILABLE,
        UNSUBSCRIBED,
    )
}

# Disconnects: reconnect.
SHUTDOWN = Disconnect(3000, "server shutting down")
SERVER_ERROR = Disconnect(3001, "internal server error")
SLOW_CONSUMER = Disconnect(3002, "slow consumer")
IDLE_TIMEOUT = Disconnect(3003, "idle timeout")
TOKEN_EXPIRED_DISCONNECT = Disconnect(3004, "token expired")
CONNECT_TIMEOUT = Disconnect(3005, "no connect command in time")
FORCE_RECONNECT = Disconnect(3006, "reconnect")

# Disconnects: do not reconnect.
INVALID_TOKEN = Disconnect(3500, "invalid token")
BAD_PROTOCOL = Disconnect(3501, "bad protocol")
UNSUPPORTED_VERSION = Disconnect(3502, "unsupported protocol version")
FORCE_DISCONNECT = Disconnect(3503, "disconnected")
CONNECTION_LIMIT = Disconnect(3504, "too many connections for this user")
FLOOD = Disconnect(3505, "too many commands")

DISCONNECTS: dict[int, Disconnect] = {
    d.code: d
    for d in (
        SHUTDOWN,
        SERVER_ERROR,
        SLOW_CONSUMER,
        IDLE_TIMEOUT,
        TOKEN_EXPIRED_DISCONNECT,
        CONNECT_TIMEOUT,
        FORCE_RECONNECT,
        INVALID_TOKEN,
        BAD_PROTOCOL,
        UNSUPPORTED_VERSION,
        FORCE_DISCONNECT,
        CONNECTION_LIMIT,
        FLOOD,
    )
}
