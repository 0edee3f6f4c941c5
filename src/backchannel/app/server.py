"""``backchannel serve``: the hub on WebSocket and long polling, the browser client, the
HTTP API and the demo chat page, on one port.

Paths (docs/config.md):

* ``/ws``: the hub over WebSocket (``server.websocket = false`` refuses upgrades with
  403, leaving long polling).
* ``/lp``: the hub over long polling.
* ``/sse``: the hub over Server-Sent Events (``sse.enabled = false`` turns it off).
* ``/api/<method>``: the HTTP API for backends (docs/api.md).
* ``/js/backchannel.js``: the browser client (``/js/backchannel.d.ts``, its types), and
  the modules it imports, ``/js/lib/*.js``.
* ``/`` and ``POST /demo/token``: the demo chat page, when ``server.demo`` is on.
* ``/health``: 200 while the process runs (a liveness probe); ``/healthz``, the same with
  the node's name.
* ``/ready``: 200 while the node can serve (its broker answers), 503 otherwise and from
  the moment it starts shutting down (a readiness probe; docs/operations.md).
* ``/metrics``: Prometheus metrics, when ``metrics.enabled`` (docs/operations.md).
* ``/admin``: the live dashboard, when ``admin.password`` is set (app/admin.py).

``HEAD`` is answered wherever ``GET`` is, without the body. Every answer carries the
security headers of docs/config.md ("Security headers"): nosniff everywhere, no-store on
dynamic answers, a Content-Security-Policy and no framing on the page.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..asyncio import Server, ServerConnection, Stream, serve
from ..exceptions import BrokerUnavailable, InvalidArgument, InvalidRequest
from ..hub import Broker, Hub, LongPoll, MemoryBroker, TokenVerifier, codes, websocket_handler
from ..hub.token import make_token
from ..hub.transports.http import HttpSessions, SessionRelay
from ..hub.transports.sse import ServerSentEvents
from ..protocol.handshake import is_upgrade_request
from ..protocol.http11 import Headers, Request, Response
from ..protocol.limits import Limits
from . import logs
from .alerts import Alerts
from .api import HttpApi
from .config import Config
from .files import Files, resource
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .admin import Admin
    from .metrics import Metrics
    from .proxy import BackendProxy
    from .webhooks import Webhooks

__all__ = ["App"]

#: The content type of Prometheus' text format (the same as prometheus-client's; kept
#: here so that the module imports without the extra).
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

logger = logging.getLogger("backchannel.app")

#: How long a demo token lives: the client asks for a new one before it expires, which
#: shows token refresh at work.
DEMO_TOKEN_TTL = 3600

#: How long ``/ready`` waits for the broker's answer: a probe must answer quickly, and a
#: broker slower than this cannot serve clients well either.
READY_TIMEOUT = 1.0

#: A demo user name: short and plain, since it is shown to everyone in the room.
_DEMO_USER = re.compile(r"[A-Za-z0-9_.\-]{1,32}")

_DEMO_PAGE = ("index.html", "text/html; charset=utf-8")
# What the demo page loads besides itself (and the favicon browsers ask for at this path).
_DEMO_FILES = {
    "/demo.js": ("demo.js", "text/javascript; charset=utf-8"),
    "/demo.css": ("demo.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}


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
        #: The backend proxy, when ``[proxy]`` names a URL (the ``proxy`` extra).
        self.proxy = _proxy(config)
        #: Signed webhooks out, when ``webhooks.url`` is set (docs/operations.md).
        self.webhooks = _webhooks(config, self.node)
        #: The live dashboard at /admin, when ``admin.password`` is set.
        self.admin = _admin(self, config)
        self.hub = Hub(
            config.hub_options(),
            broker=broker,
            tokens=TokenVerifier(secret=self.secret, public_key=public_key),
            hooks=self.proxy,
            # Webhooks only watch: they run beside whatever decides (the proxy).
            observers=[
                *([self.webhooks] if self.webhooks is not None else []),
                *([self.admin.slow] if self.admin is not None else []),
                *([logs.AccessLog()] if config.log.access else []),
            ],
        )
        #: The HTTP transports' sessions on this node: one table, one relay.
        self.http_sessions = HttpSessions(
            self.hub,
            origins=config.server.origins,
            # With Redis, a poll or a send may reach any node: it is relayed to the
            # session's.
            relay=broker if isinstance(broker, SessionRelay) else None,
        )
        self.longpoll = LongPoll(
            self.hub,
            poll_timeout=config.longpoll.poll_timeout,
            idle_timeout=config.longpoll.idle_timeout,
            sessions=self.http_sessions,
        )
        #: Server-Sent Events at /sse, unless ``sse.enabled`` is off.
        self.sse = (
            ServerSentEvents(
                self.hub,
                heartbeat=config.sse.heartbeat,
                idle_timeout=config.sse.idle_timeout,
                retry=config.sse.retry,
                sessions=self.http_sessions,
            )
            if config.sse.enabled
            else None
        )
        self.api_key = config.api.key or secrets.token_urlsafe(24)
        self.api = HttpApi(self.hub, self.api_key, RateLimiter(config.api.rate, config.api.burst))
        self.opens = RateLimiter(config.server.open_rate, config.server.open_burst)
        #: Served files by path (the browser client, the demo page): read once, at start.
        self.files = Files.client()
        #: Set when shutdown begins: every request is then answered 503.
        self.closing = False
        if config.server.demo:
            page = resource(_DEMO_PAGE[0])
            self.files.add("/", page, _DEMO_PAGE[1])
            self.files.add("/index.html", page, _DEMO_PAGE[1])
            self.files.page_headers = _page_headers(page)
            for path, (name, kind) in _DEMO_FILES.items():
                self.files.add(path, resource(name), kind)
        #: Alert rules (docs/operations.md, "Alerts"); None when no rule is set.
        self.alerts = _alerts(config, self.hub, self.webhooks)
        #: Prometheus metrics, when enabled (the ``metrics`` extra).
        self.metrics = _metrics(
            config, self.hub, self.node, self.longpoll, self.webhooks, self.alerts
        )

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
        if self.webhooks is not None:
            await self.webhooks.start()
        if self.alerts is not None:
            await self.alerts.start()
        if self.admin is not None:
            await self.admin.start(self.hub)
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
                process_invalid=self.process_invalid,
                reuse_port=reuse_port,
            ) as server:
                try:
                    yield server
                finally:
                    # Newcomers first: the port is closed at once (a replacement can
                    # bind it), and a request on a connection already accepted is told
                    # 503, so nobody new joins a hub that is going away.
                    self.closing = True
                    server.stop_listening()
                    # Then the hub, while the server still writes: every client hears
                    # 3000 (come back later) rather than a bare close, and what waits on
                    # the broker is answered when it closes.
                    hub_closed = True
                    await self._stop_hub()
        finally:
            if not hub_closed:
                await self._stop_hub()

    async def _stop_hub(self) -> None:
        if self.alerts is not None:
            await self.alerts.close()
        if self.admin is not None:
            await self.admin.close()
        await self.hub.close()
        # After the hub, whose observers have queued the last events (the disconnects).
        if self.webhooks is not None:
            await self.webhooks.close()
        if self.proxy is not None:
            await self.proxy.aclose()

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | Stream | None:
        """Route one HTTP request; None lets a WebSocket upgrade through. Each request
        is one line of the access log (``log.access``)."""
        started = time.perf_counter()
        address = self._address(connection, request)
        # The path as LongPoll and the API parse it: one parser, so that no route sees
        # a different request than its handler does. Without its query, it is also what
        # the access log shows (session ids and tokens stay out of the logs).
        path = urlsplit(request.path).path
        response = await self._answer(connection, request, path, address)
        if self.config.log.access:
            if response is None:
                status, size = 101, 0
            elif isinstance(response, Stream):
                status, size = response.status, 0  # logged as it starts; its size is open
            else:
                status, size = response.status, len(response.body)
            logs.request(
                address,
                request.method,
                path,
                status,
                size,
                time.perf_counter() - started,
            )
        return response

    async def _answer(
        self, connection: ServerConnection, request: Request, path: str, address: str
    ) -> Response | Stream | None:
        if self.closing:
            return _secured(_shutting_down())
        if is_upgrade_request(request):
            if path != "/ws":
                return _secured(Response.text(404, "Not Found: the hub's WebSocket is at /ws\n"))
            if not self.config.server.websocket:
                return _secured(
                    Response.text(403, "WebSocket is disabled here: use long polling\n")
                )
            if not self.opens.allow(address):
                return _secured(_too_many())
            return None
        response = await self._route(connection, request, path, address)
        if isinstance(response, Stream):
            return response
        if request.method == "HEAD":
            # RFC 9110 section 9.3.2: the headers of a GET, without the content.
            if response.status >= 200 and response.status not in (204, 304):
                response.headers.set("Content-Length", str(len(response.body)))
            response.body = b""
        return response

    async def _route(
        self, connection: ServerConnection, request: Request, path: str, address: str
    ) -> Response | Stream:
        file = self.files.handle(request, path)
        if file is not None:
            return file
        response: Response | Stream | None = None
        if self.admin is not None and (path == "/admin" or path.startswith("/admin/")):
            response = await self.admin.handle(request, path, address)
        elif path == self.longpoll.path:
            # Counted as LongPoll decides what an open is: "?sid=" or "?x=1" must not
            # make an open look like a poll and skip the limit.
            if self.longpoll.opens_session(request) and not self.opens.allow(address):
                response = _too_many()
            else:
                response = await self.longpoll(connection, request)
        elif self.sse is not None and path == self.sse.path:
            # Opening a stream opens a session: counted like a long-poll open.
            if self.sse.opens_session(request) and not self.opens.allow(address):
                response = _too_many()
            else:
                response = await self.sse(connection, request)
        elif path.startswith(self.api.prefix):
            response = await self.api.handle(request, address)
            if self.metrics is not None:
                self.metrics.api_request(self.api.method_name(path), response.status)
        elif path == "/healthz":
            response = Response.json(200, {"status": "ok", "node": self.node})
        elif path == "/health":
            response = Response.json(200, {"status": "ok"})
        elif path == "/ready":
            response = await self._ready()
        elif path == "/metrics" and self.metrics is not None:
            headers = Headers([("Content-Type", METRICS_TYPE)])
            response = Response(200, headers, self.metrics.render())
        elif path == "/demo/token" and self.config.server.demo:
            response = self._demo_token(request, address)
        elif path == "/ws":
            response = Response.text(426, "Upgrade Required: this is the hub's WebSocket\n")
        if response is None:
            response = Response.text(404, "Not Found\n")
        return _secured(response)

    def process_invalid(self, connection: ServerConnection, error: InvalidRequest) -> Response:
        """The answer to a request the server could not read (a body over
        ``server.max_body_size``, a head too large): the API's JSON error, since every
        route that takes a body speaks JSON."""
        if error.status == 413:
            limit = self.config.server.max_body_size
            message = f"request body over server.max_body_size ({limit} bytes)"
            return _secured(HttpApi.error(413, codes.MESSAGE_TOO_LARGE.with_message(message)))
        return _secured(HttpApi.error(error.status, codes.BAD_REQUEST.with_message(str(error))))

    async def _ready(self) -> Response:
        # Once shutdown begins, every request (this one too) is answered 503 before it
        # gets here: see process_request.
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await self.hub.broker.ping()
        except (BrokerUnavailable, TimeoutError):
            return Response.json(503, {"status": "broker unreachable"})
        return Response.json(200, {"status": "ready"})

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
        paths = ["/ws"] if server_config.websocket else []
        if self.sse is not None:
            paths.append(self.sse.path)
        paths.append("/lp")
        listed = " and ".join([", ".join(paths[:-1]), paths[-1]]) if len(paths) > 1 else "/lp"
        what = f"{workers} workers" if workers > 1 else f"hub at {listed}"
        lines = [f"backchannel on {scheme}://{shown}:{server.port}/ ({what})"]
        websocket = "WebSocket at /ws" if server_config.websocket else "WebSocket off"
        sse = f", SSE at {self.sse.path}" if self.sse is not None else ""
        broker = self.config.broker.describe()
        # What the Redis broker found when it connected: one server, a cluster's
        # masters, the master Sentinel named.
        found = self.hub.broker.describe()
        if found is not None:
            broker += f" ({found})"
        lines.append(f"transports: {websocket}{sse}, long polling at /lp; broker: {broker}")
        if server_config.demo:
            lines.append(
                "demo mode: /demo/token gives anyone a token; never use --demo or "
                "server.demo = true in production"
            )
        if self.admin is not None:
            lines.append(f"dashboard at {scheme}://{shown}:{server.port}/admin")
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
            "broker.url needs the redis package: pip install -e '.[redis]'"
        ) from exc
    return RedisBroker(config.broker.url, prefix=config.broker.prefix)


def _webhooks(config: Config, node: str) -> Webhooks | None:
    if not config.webhooks.url:
        return None
    try:
        from .webhooks import Webhooks
    except ImportError as exc:
        raise InvalidArgument(
            "webhooks.url needs the httpx package: pip install -e '.[webhooks]'"
        ) from exc
    return Webhooks(config.webhooks, config.hub_options(), node=node)


def _alerts(config: Config, hub: Hub, webhooks: Webhooks | None) -> Alerts | None:
    if not config.alerts.enabled:
        return None
    return Alerts(config.alerts, hub, notify=webhooks.send_alert if webhooks else None)


def _admin(app: App, config: Config) -> Admin | None:
    if not config.admin.password:
        return None
    config.admin.check(config.channels)
    from .admin import Admin

    return Admin(
        config.admin,
        secret=app.secret,
        node=app.node,
        page_headers=_page_headers,
        secure=bool(config.server.tls_cert),
        # The alerts of this node, when rules are set, for the dashboard to show.
        alerts=lambda: app.alerts,
    )


def _metrics(
    config: Config,
    hub: Hub,
    node: str,
    longpoll: LongPoll,
    webhooks: Webhooks | None,
    alerts: Alerts | None = None,
) -> Metrics | None:
    if not config.metrics.enabled:
        return None
    try:
        from .metrics import Metrics
    except ImportError as exc:
        raise InvalidArgument(
            "metrics.enabled needs the prometheus-client package: pip install -e '.[metrics]'"
        ) from exc
    return Metrics(
        hub,
        node,
        long_polls=longpoll.held,
        webhooks=webhooks.stats if webhooks else None,
        alerts=alerts.states if alerts else None,
    )


def _proxy(config: Config) -> BackendProxy | None:
    if not config.proxy.enabled:
        return None
    try:
        from .proxy import BackendProxy
    except ImportError as exc:
        raise InvalidArgument("[proxy] needs the httpx package: pip install -e '.[proxy]'") from exc
    config.proxy.check(config.server.origins)
    return BackendProxy(config.proxy, origins=config.server.origins)


# Inline <script> and <style> elements of a page: the CSP allows exactly these by hash.
_INLINE = re.compile(rb"<(script|style)\b[^>]*>(.*?)</\1>", re.DOTALL | re.IGNORECASE)


def _page_headers(page: bytes) -> list[tuple[str, str]]:
    """Security headers of an HTML page we serve: scripts and styles only from this
    origin or inline ones whose hash is listed (computed here, so an edit of the page
    cannot silently break it), connections (fetch, WebSocket) to this origin only, no
    plugins, no framing (clickjacking), no Referer sent elsewhere."""
    hashes: dict[bytes, list[str]] = {b"script": [], b"style": []}
    for match in _INLINE.finditer(page):
        if not match.group(2).strip():
            continue  # a <script src=...> element: allowed by 'self', nothing to hash
        digest = base64.b64encode(hashlib.sha256(match.group(2)).digest()).decode()
        hashes[match.group(1).lower()].append(f"'sha256-{digest}'")
    policy = "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes[b"script"]]),
            " ".join(["style-src 'self'", *hashes[b"style"]]),
            "connect-src 'self'",
            "img-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return [
        ("Content-Security-Policy", policy),
        ("X-Frame-Options", "DENY"),
        ("Referrer-Policy", "no-referrer"),
    ]


#: A plain answer or a stream: both carry headers.
_Answer = TypeVar("_Answer", bound="Response | Stream")


def _secured(response: _Answer) -> _Answer:
    """Headers of every dynamic answer (API, long polling, errors): never stored by a
    cache on the way (tokens, session ids, private data), and never sniffed into
    another type than the one declared (a JSON answer run as a script)."""
    response.headers.set("Cache-Control", "no-store")
    response.headers.set("X-Content-Type-Options", "nosniff")
    return response


def _too_many() -> Response:
    error = {"code": 111, "message": "too many new connections from this address"}
    response = Response.json(429, {"error": error})
    response.headers.add("Retry-After", "1")
    return response


def _shutting_down() -> Response:
    # 503 with Retry-After: the client comes back later, as a 3000 disconnect says
    # (RFC 9110 section 15.6.4); through a load balancer, it reaches another node.
    response = Response.json(503, {"error": {"code": 116, "message": "server shutting down"}})
    response.headers.add("Retry-After", "1")
    response.headers.set("Connection", "close")
    return response
