"""Client commands: each frame a session receives, run through the hub's public door.

:class:`Commands` decodes a frame, checks the session's command rate (every command
counts; past it the session ends with 3505), runs each command with the
hub's methods (:meth:`Hub.connect_session`, :meth:`Hub.publish` with ``session=``, ...),
and answers each with a reply, in order. What is refused becomes an error reply
(``CommandError``: its code; a broker that cannot be reached: the temporary 116) or a
disconnect (``DisconnectRequest``); anything else raised, by the hub or by the
application's hooks, is logged with its traceback and answered with the temporary 100.
Transports hand frames here; the hub never imports this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ..exceptions import BrokerUnavailable, CommandError, DisconnectRequest
from . import codes, wire
from .codes import Disconnect, Error
from .hub import Hub
from .session import Session
from .wire import Position

__all__ = ["Commands"]

logger = logging.getLogger("backchannel.hub")

Handler = Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]


class Commands:
    """Runs the commands of the hub's wire protocol for one hub's sessions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._handlers: dict[str, Handler] = {
            "connect": self._connect,
            "refresh": self._refresh,
            "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe,
            "publish": self._publish,
            "presence": self._presence,
            "history": self._history,
            "rpc": self._rpc,
            "send": self._send,
            "ping": self._ping,
        }

    async def handle(self, session: Session, text: str | bytes) -> None:
        """Run the commands in one frame; every command gets a reply, in order."""
        if session.closed:
            return
        try:
            commands = wire.decode_commands(text)
        except wire.InvalidMessage as exc:
            logger.info("closing session %s: %s", session.client, exc)
            session.disconnect(codes.BAD_PROTOCOL)
            return
        options = self.hub.options
        for command in commands:
            if session.closed:
                return
            # Every command counts, whatever its result: an unknown method or a refused
            # subscribe costs the server as much work as a good one.
            if not session.take_command_token(options.command_rate, options.command_burst):
                logger.info("disconnecting session %s: too many commands", session.client)
                session.disconnect(codes.FLOOD)
                return
            await self._run(session, command)

    async def _run(self, session: Session, command: wire.Command) -> None:
        code = await self._answer(session, command)
        # Counted by method for statistics; a name the hub does not know is "other", so
        # a client cannot grow the set of names.
        method = command.method if command.method in self._handlers else "other"
        self.hub.count_command(method, code)

    async def _answer(self, session: Session, command: wire.Command) -> int:
        """Run one command and send its reply; the result code (0: success)."""
        hub = self.hub
        if command.error is not None:
            hub.send(session, wire.encode_error(command.id, command.error))
            return command.error.code
        if not session.connected and command.method != "connect":
            hub.send(session, wire.encode_error(command.id, codes.NOT_CONNECTED))
            return codes.NOT_CONNECTED.code
        try:
            result = await self._handlers[command.method](session, command.params)
            # Encoded here: a result the application made that is not JSON is its error.
            reply = wire.encode_result(command.id, result)
        except CommandError as exc:
            error = Error(exc.code, exc.message or "error", exc.temporary)
            hub.send(session, wire.encode_error(command.id, error))
            return exc.code
        except DisconnectRequest as exc:
            session.disconnect(Disconnect(exc.code, exc.reason))
            return exc.code
        except BrokerUnavailable:
            # Nothing was done; the client may retry later (116 is temporary).
            hub.send(session, wire.encode_error(command.id, codes.UNAVAILABLE))
            return codes.UNAVAILABLE.code
        except Exception:
            logger.exception("error in %s command", command.method)
            hub.send(session, wire.encode_error(command.id, codes.INTERNAL))
            return codes.INTERNAL.code
        if session.closed:
            return 0
        hub.send(session, reply)
        if command.method == "subscribe":
            hub.go_live(session, command.params["channel"])
        return 0

    async def _connect(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("v", wire.PROTOCOL_VERSION) != wire.PROTOCOL_VERSION:
            raise DisconnectRequest(codes.UNSUPPORTED_VERSION)
        await self.hub.connect_session(
            session, token=params.get("token"), data=params.get("data"), name=params.get("name")
        )
        result: dict[str, Any] = {
            "client": session.client,
            "user": session.user,
            "v": wire.PROTOCOL_VERSION,
        }
        return result | _expiry(session)

    async def _refresh(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        self.hub.refresh_session(session, params["token"])
        return _expiry(session)

    async def _subscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        since = None
        if params.get("recover"):
            epoch, offset = params.get("epoch"), params.get("offset")
            if not isinstance(epoch, str) or not isinstance(offset, int):
                raise CommandError(codes.BAD_REQUEST.with_message("recover needs epoch and offset"))
            since = Position(epoch, offset)
        result = await self.hub.subscribe_session(
            session, params["channel"], token=params.get("token"), since=since
        )
        return result.to_json()

    async def _unsubscribe(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.hub.unsubscribe_session(session, params["channel"])
        return {}

    async def _publish(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        result = await self.hub.publish(
            params["channel"],
            params["data"],
            idempotency_key=params.get("idempotency_key"),
            session=session,
        )
        return result.to_json()

    async def _presence(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        channel: str = params["channel"]
        hub = self.hub
        if params.get("count_only") or hub.counts_only(channel):
            stats = await hub.presence_stats(channel, session=session)
            return {"count": stats.clients, "users": stats.users}
        page = await hub.presence_page(
            channel, cursor=params.get("cursor"), limit=params.get("limit"), session=session
        )
        return page.to_json()

    async def _history(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        history = await self.hub.history(
            params["channel"],
            since=Position.from_params(params),
            limit=params.get("limit"),
            session=session,
        )
        return history.to_json()

    async def _rpc(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return {"data": await self.hub.rpc(session, params["method"], params.get("data"))}

    async def _send(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        await self.hub.message(session, params["data"])
        return {}

    async def _ping(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        return {}


def _expiry(session: Session) -> dict[str, int]:
    """When the token expires: absolute (``expires``), and in seconds from now (``ttl``),
    which a client with a wrong clock can still use."""
    if session.expires is None:
        return {}
    return {"expires": session.expires, "ttl": max(0, session.expires - int(time.time()))}
