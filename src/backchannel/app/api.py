"""The HTTP API for backends: publish, broadcast, presence, history, unsubscribe and
disconnect, as ``POST /api/<method>`` with a JSON body (docs/api.md).

Every answer is JSON. A refusal is ``{"error": {"code", "message", "temporary"}}`` with
the hub's error code (docs/protocol.md, "Codes") and an HTTP status that names the
problem: 400 bad input, 401 no or wrong key, 404 no such method, 405 not POST, 413 too
large, 429 too many requests, 503 temporarily unavailable (try again).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from ..exceptions import BrokerUnavailable, CommandError
from ..hub import Hub, codes, wire
from ..hub.codes import Disconnect, Error
from ..protocol.http11 import Request, Response
from .ratelimit import RateLimiter

__all__ = ["HttpApi"]

logger = logging.getLogger("backchannel.app")

#: Channels in one broadcast: each is one broker publish, so a single request stays
#: bounded in time.
MAX_BROADCAST = 1000

# HTTP status for each hub error a method can give.
_STATUS = {
    codes.UNAUTHORIZED.code: 401,
    codes.UNKNOWN_CHANNEL.code: 400,
    codes.PERMISSION_DENIED.code: 403,
    codes.METHOD_NOT_FOUND.code: 404,
    codes.BAD_REQUEST.code: 400,
    codes.NOT_AVAILABLE.code: 400,
    codes.TOO_MANY_REQUESTS.code: 429,
    codes.MESSAGE_TOO_LARGE.code: 413,
    codes.UNAVAILABLE.code: 503,
}

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

# Parameters of each method: name -> (type, required), as the wire format checks them.
_PARAMS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "publish": {"channel": (str, True), "data": (object, True), "idempotency_key": (str, False)},
    "broadcast": {"channels": (list, True), "data": (object, True)},
    "presence": {
        "channel": (str, True),
        "limit": (int, False),
        "cursor": (str, False),
        "count_only": (bool, False),
    },
    "history": {
        "channel": (str, True),
        "limit": (int, False),
        "epoch": (str, False),
        "offset": (int, False),
    },
    "unsubscribe": {"channel": (str, True), "user": (str, False)},
    "disconnect": {"user": (str, True), "code": (int, False), "reason": (str, False)},
}


class HttpApi:
    """Answers ``POST {prefix}<method>`` requests for a hub."""

    def __init__(self, hub: Hub, key: str, limiter: RateLimiter, *, prefix: str = "/api/") -> None:
        if not key:
            raise ValueError("the HTTP API needs a key")
        self.hub = hub
        self._key = key.encode()
        self.limiter = limiter
        self.prefix = prefix
        self._methods: dict[str, Method] = {
            "publish": self._publish,
            "broadcast": self._broadcast,
            "presence": self._presence,
            "history": self._history,
            "unsubscribe": self._unsubscribe,
            "disconnect": self._disconnect,
        }

    def method_name(self, path: str) -> str:
        """The API method a path names, or ``other``: what metrics count requests by
        (a client cannot grow the set of names)."""
        name = path.partition("?")[0][len(self.prefix) :]
        return name if name in self._methods else "other"

    async def handle(self, request: Request, address: str) -> Response:
        name = urlsplit(request.path).path[len(self.prefix) :]
        method = self._methods.get(name)
        if method is None:
            return _error(404, codes.METHOD_NOT_FOUND.with_message(f"no API method {name!r}"))
        if request.method != "POST":
            response = _error(405, codes.BAD_REQUEST.with_message("use POST"))
            response.headers.set("Allow", "POST")
            return response
        # The rate is checked before the key: a wrong key costs a client its bucket too,
        # so guessing keys is rate-limited as well.
        if not self.limiter.allow(address):
            return _error(429, codes.TOO_MANY_REQUESTS)
        if not self._authorized(request.headers.get("Authorization")):
            return _error(401, codes.UNAUTHORIZED.with_message("missing or wrong API key"))
        try:
            params = _decode(request.body)
            problem = wire.check_params(params, _PARAMS[name])
            if problem:
                raise CommandError(codes.BAD_REQUEST.with_message(problem))
            result = await method(params)
        except CommandError as exc:
            error = Error(exc.code, exc.message, exc.temporary)
            return _error(_STATUS.get(error.code, 400), error)
        except BrokerUnavailable:
            # Redis is unreachable: nothing was published; the backend retries later.
            return _error(503, codes.UNAVAILABLE)
        except Exception:
            # The broker failing (e.g. Redis unreachable) must give the backend an answer
            # it can act on: retry later. Nothing was published.
            logger.exception("API %s failed", name)
            return _error(503, codes.UNAVAILABLE)
        return Response.json(200, result)

    @staticmethod
    def error(status: int, error: Error) -> Response:
        """An answer in the API's error shape, for what the server refuses before the API
        reads the request (a body over ``server.max_body_size``)."""
        return _error(status, error)

    def _authorized(self, header: str | None) -> bool:
        if header is None:
            return False
        scheme, _, key = header.partition(" ")
        if scheme.lower() not in ("apikey", "bearer"):
            return False
        return hmac.compare_digest(key.strip().encode(), self._key)

    async def _publish(self, params: dict[str, Any]) -> dict[str, Any]:
        result = await self.hub.publish(
            params["channel"], params["data"], idempotency_key=params.get("idempotency_key")
        )
        return result.to_json()

    async def _broadcast(self, params: dict[str, Any]) -> dict[str, Any]:
        channels = params["channels"]
        if not 0 < len(channels) <= MAX_BROADCAST or not all(isinstance(c, str) for c in channels):
            raise CommandError(
                codes.BAD_REQUEST.with_message(f"channels: 1 to {MAX_BROADCAST} names")
            )
        results: list[dict[str, Any]] = []
        for result in await self.hub.broadcast(channels, params["data"]):
            if isinstance(result, CommandError):
                error = Error(result.code, result.message, result.temporary)
                results.append({"error": _error_json(error)})
            else:
                results.append(result.to_json())
        return {"results": results}

    async def _presence(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params["channel"]
        if params.get("count_only"):
            stats = await self.hub.presence_stats(channel)
            return {"count": stats.clients, "users": stats.users}
        page = await self.hub.presence_page(
            channel, cursor=params.get("cursor"), limit=params.get("limit")
        )
        return page.to_json()

    async def _history(self, params: dict[str, Any]) -> dict[str, Any]:
        since = wire.Position.from_params(params)
        history = await self.hub.history(params["channel"], since=since, limit=params.get("limit"))
        return history.to_json()

    async def _unsubscribe(self, params: dict[str, Any]) -> dict[str, Any]:
        await self.hub.unsubscribe(params["channel"], user=params.get("user"))
        return {}

    async def _disconnect(self, params: dict[str, Any]) -> dict[str, Any]:
        disconnect = codes.FORCE_DISCONNECT
        if "code" in params:
            code = params["code"]
            # Only the application's ranges: the hub's own codes mean what the hub says.
            if not 4000 <= code < 5000:
                raise CommandError(codes.BAD_REQUEST.with_message("code must be 4000-4999"))
            disconnect = Disconnect(code, params.get("reason", ""))
        await self.hub.disconnect(params["user"], disconnect)
        return {}


def _decode(body: bytes) -> dict[str, Any]:
    try:
        params = json.loads(body, parse_constant=wire.refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise CommandError(codes.BAD_REQUEST.with_message("the body is not JSON")) from exc
    if not isinstance(params, dict):
        raise CommandError(codes.BAD_REQUEST.with_message("the body is a JSON object"))
    problem = wire.check_value(params)
    if problem:
        raise CommandError(codes.BAD_REQUEST.with_message(problem))
    return params


def _error_json(error: Error) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "temporary": error.temporary}


def _error(status: int, error: Error) -> Response:
    return Response.json(status, {"error": _error_json(error)})
