"""The backend proxy: client commands decided by the application's backend over HTTP.

:class:`BackendProxy` is the hub's :class:`~backchannel.hub.Hooks` for ``backchannel
serve`` with a ``[proxy]`` section (docs/operations.md, "Backend proxy"). Each kind of
command whose URL is set (connect, refresh, subscribe, publish, rpc) is POSTed to the
backend as JSON, with the client's id, user, transport and the command's params, and
with the client's own headers and cookies named in the config, so that a page logged in
to the backend is recognised by the backend's usual session handling, without a JWT.

The backend answers ``{"result": {...}}`` (allow), ``{"error": {"code", "message"}}``
(refuse: the client gets that error) or ``{"disconnect": {"code", "reason"}}`` (end
the connection). A backend that cannot be reached or does not answer within the
timeout gives the temporary error 116; one that answers otherwise than so (a status
other than 2xx, not JSON, too large) gives the temporary error 100. Either is logged in
one line: it is the backend's fault, not ours, and a traceback would say nothing more.

httpx (the ``proxy`` extra) is imported here only: the core install does not need it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any

import httpx

from ..exceptions import CommandError, DisconnectRequest
from ..hub import Connected, ConnectRequest, Hooks, Session, codes
from .config import ProxyConfig

__all__ = ["BackendProxy"]

logger = logging.getLogger("backchannel.proxy")


class BackendProxy(Hooks):
    """Forwards what ``config`` names to the backend; the rest is the hub's default."""

    def __init__(self, config: ProxyConfig, *, origins: Collection[str] | None = None) -> None:
        config.check(None if origins is None else list(origins))
        self.config = config
        self._urls = config.urls()
        self._headers = tuple(name.lower() for name in config.headers)
        self._cookies = frozenset(config.cookies)
        #: Origins whose pages' cookies are passed on (None: any). The WebSocket
        #: handshake refuses other origins already; a long-poll open does not.
        self._origins = None if origins is None else frozenset(origins)
        # The hub keeps these of each client's request on its session, and no others.
        self.request_headers = frozenset(self._headers) | (
            frozenset({"cookie", "origin"}) if config.cookies else frozenset()
        )
        # One client, so connections to the backend are kept alive and bounded in number.
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        self._http = httpx.AsyncClient(
            timeout=config.timeout, limits=limits, follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        """Close the connections to the backend (at the server's shutdown)."""
        await self._http.aclose()

    # The hooks.

    async def authorize_connect(self, request: ConnectRequest) -> Connected | None:
        # A client with a token is who its token says; the backend decides the others.
        if request.token is not None or not self._urls["connect"]:
            return None
        params = {"data": request.data, "name": request.name}
        result = await self._call("connect", request.session, params)
        user = result.get("user")
        if not isinstance(user, str):
            raise self._bad("connect", "result.user is not a string")
        return Connected(user, result.get("info"), self._expiry("connect", result))

    async def authorize_refresh(self, session: Session) -> int | None:
        if not self._urls["refresh"]:
            return await super().authorize_refresh(session)
        result = await self._call("refresh", session, {})
        if result.get("expired") is True:
            raise DisconnectRequest(codes.TOKEN_EXPIRED_DISCONNECT)
        expires = self._expiry("refresh", result)
        if expires is None:
            raise self._bad("refresh", "result has neither expire_at nor ttl")
        return expires

    async def authorize_subscribe(self, session: Session, channel: str) -> None:
        if self._urls["subscribe"]:
            await self._call("subscribe", session, {"channel": channel})

    async def authorize_publish(self, session: Session, channel: str, data: Any) -> Any:
        if not self._urls["publish"]:
            return data
        result = await self._call("publish", session, {"channel": channel, "data": data})
        # The backend may change what is published; without "data", it is published as is.
        return result["data"] if "data" in result else data

    async def rpc(self, session: Session, method: str, data: Any) -> Any:
        if not self._urls["rpc"]:
            return await super().rpc(session, method, data)
        result = await self._call("rpc", session, {"method": method, "data": data})
        return result.get("data")

    # The backend.

    async def _call(self, kind: str, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        """POST one command to the backend; its result, or the refusal it says, raised."""
        url = self._urls[kind]
        body: dict[str, Any] = {"client": session.client, "transport": session.transport_name}
        if session.connected:
            body["user"] = session.user
        body.update(params)
        try:
            # The client's timeout is per phase; this one bounds the whole exchange.
            async with asyncio.timeout(self.config.timeout):
                status, content = await self._post(url, body, self._pass_on(session.headers))
        except (TimeoutError, httpx.TimeoutException):
            raise self._unavailable(kind, f"no answer within {self.config.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise self._unavailable(kind, f"{type(exc).__name__}: {exc}") from None
        if content is None:
            raise self._bad(kind, f"answer larger than {self.config.max_response_size} bytes")
        if not 200 <= status < 300:
            raise self._bad(kind, f"HTTP {status}")
        try:
            answer = json.loads(content, parse_constant=_no_constant)
        except ValueError:
            raise self._bad(kind, "answer is not JSON") from None
        if not isinstance(answer, dict):
            raise self._bad(kind, "answer is not a JSON object")
        return self._outcome(kind, answer)

    async def _post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, bytes | None]:
        """Status and body (None when larger than allowed: not read past the limit)."""
        limit = self.config.max_response_size
        async with self._http.stream("POST", url, json=body, headers=headers) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    return response.status_code, None
                chunks.append(chunk)
            return response.status_code, b"".join(chunks)

    def _outcome(self, kind: str, answer: dict[str, Any]) -> dict[str, Any]:
        if "disconnect" in answer:
            value = answer["disconnect"]
            code = value.get("code") if isinstance(value, dict) else None
            if not isinstance(code, int) or isinstance(code, bool) or not 3000 <= code <= 4999:
                raise self._bad(kind, "disconnect.code is not a code of 3000-4999")
            reason = value.get("reason", "")
            raise DisconnectRequest(code, reason if isinstance(reason, str) else "")
        if "error" in answer:
            value = answer["error"]
            code = value.get("code") if isinstance(value, dict) else None
            if not isinstance(code, int) or isinstance(code, bool) or not 100 <= code <= 1999:
                raise self._bad(kind, "error.code is not a code of 100-1999")
            message = value.get("message", "")
            known = codes.ERRORS.get(code)
            if not isinstance(message, str) or not message:
                message = known.message if known is not None else "refused"
            temporary = value.get("temporary", known.temporary if known is not None else False)
            raise CommandError(code, message, temporary=temporary is True)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise self._bad(kind, "answer has no result, error or disconnect object")
        return result

    def _pass_on(self, kept: Mapping[str, str]) -> dict[str, str]:
        """The client's headers and cookies that the config names, as request headers."""
        headers = {name: kept[name] for name in self._headers if name in kept}
        cookie = kept.get("cookie")
        origin = kept.get("origin")
        if origin is not None and self._origins is not None and origin not in self._origins:
            # A page of another site: its visitor's cookies must not speak for it.
            cookie = None
        if cookie is not None and self._cookies:
            chosen = []
            for pair in cookie.split(";"):
                name, sep, _ = pair.strip().partition("=")
                if sep and name in self._cookies:
                    chosen.append(pair.strip())
            if chosen:
                headers["cookie"] = "; ".join(chosen)
        return headers

    def _expiry(self, kind: str, result: dict[str, Any]) -> int | None:
        """``expire_at`` (Unix time) or ``ttl`` (seconds from now: for a backend whose
        clock is not ours); None when neither is given."""
        expire_at, ttl = result.get("expire_at"), result.get("ttl")
        for name, value in (("expire_at", expire_at), ("ttl", ttl)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise self._bad(kind, f"result.{name} is not an integer")
        if expire_at is not None:
            return int(expire_at)
        if ttl is not None:
            return int(time.time()) + int(ttl)
        return None

    def _unavailable(self, kind: str, why: str) -> CommandError:
        logger.warning("proxy %s to %s failed: %s", kind, self._urls[kind], why)
        # The client learns that it may retry, not how the backend is reached.
        return CommandError(codes.UNAVAILABLE.with_message("backend unavailable"))

    def _bad(self, kind: str, why: str) -> CommandError:
        logger.warning("proxy %s to %s: bad answer: %s", kind, self._urls[kind], why)
        return CommandError(codes.INTERNAL.with_message("backend error"))


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: the hub could not send them on to a client.
    raise ValueError(f"{name} is not JSON")
