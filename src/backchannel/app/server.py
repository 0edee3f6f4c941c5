"""``backchannel serve``: the hub on WebSocket and long polling, the browser client, the
HTTP API and the demo chat page, on one port.

Paths (docs/config.md):

* ``/ws``: the hub over WebSocket (``server.websocket = false`` refuses upgrades with
  403, leaving long polling).
* ``/lp``: the hub over long polling.
* ``/api/<method>``: the HTTP API for backends (docs/api.md).
* ``/js/backchannel.js``: the browser client (``/js/backchannel.d.ts``, its types).
* ``/`` and ``POST /demo/token``: the demo chat page, when ``server.demo`` is on.
* ``/healthz``: 200 while the server runs.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import re
import secrets
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ..asyncio import Server, ServerConnection, serve
from ..exceptions import InvalidArgument
from ..hub import Broker, Hub, LongPoll, MemoryBroker, TokenVerifier, websocket_handler
from ..hub.token import make_token
from ..hub.transports.longpoll import SessionRelay
from ..protocol.handshake import is_upgrade_request
from ..protocol.http11 import Headers, Request, Response
from ..protocol.limits import Limits
from .api import HttpApi
from .config import Config
from .ratelimit import RateLimiter

__all__ = ["App"]

logger = logging.getLogger("backchannel.app")

#: How long a demo token lives: the client asks for a new one before it expires, which
#: shows token refresh at work.
DEMO_TOKEN_TTL = 3600

#: A demo user name: short and plain, since it is shown to everyone in the room.
_DEMO_USER = re.compile(r"[A-Za-z0-9_.\-]{1,32}")

# Files served as they are: (package resource, content type).
_STATIC = {
    "/js/backchannel.js": ("backchannel.js", "text/javascript; charset=utf-8"),
    "/js/backchannel.d.ts": ("backchannel.d.ts", "text/plain; charset=utf-8"),
}
_DEMO_PAGE = ("index.html", "text/html; charset=utf-8")


def _resource(name: str) -> bytes:
    """A file of ``backchannel/static`` (the browser client is a link to ``js/`` in a
    checkout, and a copy in a built package)."""
    return importlib.resources.files("backchannel").joinpath("static", name).read_bytes()


class App:
    """The standalone server, from a :class:`Config`; ``async with app.run()`` serves."""

    def __init__(self, config: Config) -> None:
        self.config = config
        auth = config.auth
        #: Without a configured secret, tokens are signed with one made for this process.
        self.secret = auth.secret or secrets.token_urlsafe(32)
        public_key = Path(auth.public_key_file).read_bytes() if auth.public_key_file else None
        #: This process's name in a cluster (in /healthz and the logs).
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        broker = _broker(config)
        self.hub = Hub(
            config.hub_options(),
            broker=broker,
            tokens=TokenVerifier(secret=self.secret, public_key=public_key),
        )
        self.longpoll = LongPoll(
            self.hub,
            poll_timeout=config.longpoll.poll_timeout,
            idle_timeout=config.longpoll.idle_timeout,
            origins=config.server.origins,
            # With Redis, a poll may reach any node: it is relayed to the session's.
            relay=broker if isinstance(broker, SessionRelay) else None,
        )
        self.api_key = config.api.key or secrets.token_urlsafe(24)
        self.api = HttpApi(self.hub, self.api_key, RateLimiter(config.api.rate, config.api.burst))
        self.opens = RateLimiter(config.server.open_rate, config.server.open_burst)
        #: Served files by path: read once, at start.
        self._files: dict[str, tuple[bytes, str]] = {
            path: (_resource(name), kind) for path, (name, kind) in _STATIC.items()
        }
        if config.server.demo:
            page = (_resource(_DEMO_PAGE[0]), _DEMO_PAGE[1])
            self._files["/"] = self._files["/index.html"] = page

    @asynccontextmanager
    async def run(self, *, reuse_port: bool = False) -> AsyncIterator[Server]:
        """Start the hub and serve until the block exits."""
        server_config = self.config.server
        context = None
        if server_config.tls_cert:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(server_config.tls_cert, server_config.tls_key or None)
        origins = server_config.origins
        await self.hub.start()
        hub_closed = False
        try:
            async with serve(
                websocket_handler(self.hub),
                server_config.host,
                server_config.port,
                ssl=context,
                origins=None if not origins or "*" in origins else [*origins, None],
                limits=Limits(max_body_size=server_config.max_body_size),
                process_request=self.process_request,
                reuse_port=reuse_port,
            ) as server:
                try:
                    yield server
                finally:
                    # The hub first, while the server still writes: every client hears
                    # 3000 (come back later) rather than a bare close.
                    hub_closed = True
                    await self.hub.close()
        finally:
            if not hub_closed:
                await self.hub.close()

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        """Route one HTTP request; None lets a WebSocket upgrade through."""
        path = request.path.partition("?")[0]
        address = self._address(connection, request)
        if is_upgrade_request(request):
            if path != "/ws":
                return Response.text(404, "Not Found: the hub's WebSocket is at /ws\n")
            if not self.config.server.websocket:
                return Response.text(403, "WebSocket is disabled here: use long polling\n")
            if not self.opens.allow(address):
                return _too_many()
            return None
        if path == self.longpoll.path:
            if request.method == "POST" and "sid=" not in request.path:
                if not self.opens.allow(address):
                    return _too_many()
            return await self.longpoll(connection, request)
        if path.startswith(self.api.prefix):
            return await self.api.handle(request, address)
        if path == "/healthz":
            return Response.json(200, {"status": "ok", "node": self.node})
        if path == "/demo/token" and self.config.server.demo:
            return self._demo_token(request, address)
        file = self._files.get(path)
        if file is not None and request.method == "GET":
            body, kind = file
            headers = Headers([("Content-Type", kind), ("Cache-Control", "no-cache")])
            return Response(200, headers, body)
        if path == "/ws":
            return Response.text(426, "Upgrade Required: this is the hub's WebSocket\n")
        return Response.text(404, "Not Found\n")

    def _demo_token(self, request: Request, address: str) -> Response:
        if request.method != "POST":
            return Response.json(405, {"error": {"code": 107, "message": "use POST"}})
        if not self.opens.allow(address):
            return _too_many()
        try:
            user = json.loads(request.body).get("user")
        except (ValueError, AttributeError):
            user = None
        if not isinstance(user, str) or not _DEMO_USER.fullmatch(user):
            message = "user: 1 to 32 letters, digits, '_', '-' or '.'"
            return Response.json(400, {"error": {"code": 107, "message": message}})
        token = make_token(self.secret, user, ttl=DEMO_TOKEN_TTL, info={"name": user})
        return Response.json(200, {"token": token, "user": user})

    def _address(self, connection: ServerConnection, request: Request) -> str:
        """The client's address: the peer's, or behind a trusted proxy, the last address
        in X-Forwarded-For that is not one of the proxies (earlier entries are whatever
        the client chose to send)."""
        peer: Any = connection.remote_address
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        trusted = self.config.server.trusted_proxies
        if address not in trusted:
            return address
        forwarded = ",".join(request.headers.get_all("X-Forwarded-For"))
        for hop in reversed([part.strip() for part in forwarded.split(",") if part.strip()]):
            if hop not in trusted:
                return hop
        return address

    def banner(self, server: Server, *, workers: int = 1) -> list[str]:
        """What ``backchannel serve`` prints at start: where it listens, the transports
        that are on, the broker, the demo warning, and the API key if one was made up.

        With ``workers`` above 1 the first line names them instead of the paths: the
        parent of ``--workers`` prints this once, for all of them."""
        server_config = self.config.server
        scheme = "https" if server_config.tls_cert else "http"
        host = server_config.host
        shown = f"[{host}]" if ":" in host else host
        paths = "/ws and /lp" if server_config.websocket else "/lp"
        what = f"{workers} workers" if workers > 1 else f"hub at {paths}"
        lines = [f"backchannel on {scheme}://{shown}:{server.port}/ ({what})"]
        websocket = "WebSocket at /ws" if server_config.websocket else "WebSocket off"
        lines.append(
            f"transports: {websocket}, long polling at /lp; broker: {self.config.broker.describe()}"
        )
        if server_config.demo:
            lines.append(
                "demo mode: /demo/token gives anyone a token; never use --demo or "
                "server.demo = true in production"
            )
        # Last, so that the parent of --workers, which made the key, can add it.
        if not self.config.api.key:
            lines.append(f"HTTP API key (made for this run; set api.key): {self.api_key}")
        return lines


def _broker(config: Config) -> Broker:
    if not config.broker.url:
        return MemoryBroker()
    try:
        from ..hub.brokers.redis import RedisBroker
    except ImportError as exc:
        raise InvalidArgument(
            "broker.url needs the redis package: pip install 'backchannel[redis]'"
        ) from exc
    return RedisBroker(config.broker.url, prefix=config.broker.prefix)


def _too_many() -> Response:
    error = {"code": 111, "message": "too many new connections from this address"}
    response = Response.json(429, {"error": error})
    response.headers.add("Retry-After", "1")
    return response
