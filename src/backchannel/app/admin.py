"""The live dashboard at ``/admin`` (docs/operations.md, "Dashboard").

Off unless ``[admin] password`` is set. A login (``POST /admin/login``, rate limited per
address, the password compared in constant time) gets a session cookie held here with
an expiry; the page then asks ``/admin/api/token`` for short-lived hub tokens and
subscribes, with the browser client, to the private channel ``$admin:live``. While that
channel has subscribers (its presence, counted across nodes by the broker), every node
publishes a snapshot of itself there each ``interval``: the dashboard updates live over
the hub itself. Actions (presence, history, publish, disconnect) go through the hub's
public methods, as the HTTP API's do.

Paths:

* ``GET /admin``: the page (and ``/admin/static/...``: its script, style and uPlot).
* ``POST /admin/login`` ``{"password": ...}``, ``POST /admin/logout``.
* ``GET /admin/api/token?client=ID``: a connection token and a channel token for
  ``$admin:live`` (bound to the connection's client id when given).
* ``POST /admin/api/presence|history|publish|disconnect``: JSON in, JSON out.

Every path but the page's files needs the session cookie; every POST needs an
``Origin`` of this server's own host (cross-site request forgery).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import importlib.resources
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..exceptions import BrokerUnavailable, CommandError
from ..hub import Hooks, Hub, Session, codes, wire
from ..hub.codes import Error
from ..hub.latency import Snapshot
from ..hub.token import make_token
from ..protocol.http11 import Headers, Request, Response
from .config import ADMIN_NAMESPACE, AdminConfig
from .ratelimit import RateLimiter

__all__ = ["LIVE_CHANNEL", "USER", "Admin"]

logger = logging.getLogger("backchannel.app")

#: The private channel each node publishes its snapshots in.
LIVE_CHANNEL = f"${ADMIN_NAMESPACE}:live"
#: The user of the dashboard's hub connections ("$": no user of the demo can be named so).
USER = "$admin"
#: The session cookie, sent only to /admin paths.
COOKIE = "backchannel_admin"
#: Seconds a hub token of the dashboard lives: the page asks for a new one with its
#: cookie before it expires, so a logout ends its hub connection within this long.
TOKEN_TTL = 300
#: Recent warnings and errors kept per node, slow consumers kept, and how many of
#: each (errors, alerts, alert events) a snapshot lists.
MAX_ERRORS = 50
MAX_SLOW = 20
MAX_LISTED = 20
#: Characters of a log message kept: a snapshot must stay well under max_data_size.
MAX_MESSAGE = 300
#: Publications a history lookup returns at most.
MAX_HISTORY = 100

# The page's files: path under /admin -> (package resource under static/, content type).
_FILES = {
    "/admin": ("admin.html", "text/html; charset=utf-8"),
    "/admin/": ("admin.html", "text/html; charset=utf-8"),
    "/admin/static/admin.js": ("admin.js", "text/javascript; charset=utf-8"),
    "/admin/static/admin.css": ("admin.css", "text/css; charset=utf-8"),
    "/admin/static/uPlot.iife.min.js": (
        "vendor/uplot/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
    ),
    "/admin/static/uPlot.min.css": ("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
}

# Parameters of each action, checked as the wire format checks a command's.
_ACTIONS: dict[str, dict[str, tuple[type | tuple[type, ...], bool]]] = {
    "presence": {"channel": (str, True)},
    "history": {"channel": (str, True), "limit": (int, False)},
    "publish": {"channel": (str, True), "data": (object, True)},
    "disconnect": {"user": (str, True)},
}

# HTTP status of the hub errors an action can give.
_STATUS = {
    codes.UNKNOWN_CHANNEL.code: 400,
    codes.PERMISSION_DENIED.code: 403,
    codes.NOT_AVAILABLE.code: 400,
    codes.MESSAGE_TOO_LARGE.code: 413,
    codes.UNAVAILABLE.code: 503,
}


class RecentErrors(logging.Handler):
    """The node's latest WARNING and ERROR records, bounded: what the dashboard lists as
    recent errors."""

    def __init__(self, size: int = MAX_ERRORS) -> None:
        super().__init__(logging.WARNING)
        self.records: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the logging call
            message = str(record.msg)
        self.records.append(
            {
                "time": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": message[:MAX_MESSAGE],
            }
        )


class SlowConsumers(Hooks):
    """Observes the hub's slow consumers (a ``Hub(observers=[...])``): the latest ones."""

    def __init__(self, size: int = MAX_SLOW) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=size)

    async def on_slow_consumer(self, session: Session, channel: str | None) -> None:
        self.recent.append(
            {
                "time": time.time(),
                "user": session.user,
                "client": session.client,
                "channel": channel,
            }
        )


class Admin:
    """The dashboard of one node: its logins, its snapshots, its actions."""

    def __init__(
        self,
        config: AdminConfig,
        *,
        secret: str,
        node: str,
        page_headers: Callable[[bytes], list[tuple[str, str]]],
        secure: bool = False,
        alerts: Callable[[], Any] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.node = node
        self._password = config.password.encode()
        self._secret = secret
        self._secure = secure
        self._alerts = alerts
        self._clock = clock
        self.logins = RateLimiter(config.login_rate, config.login_burst)
        #: Session id -> when it expires (monotonic), oldest login first.
        self._sessions: OrderedDict[str, float] = OrderedDict()
        self.errors = RecentErrors()
        self.slow = SlowConsumers()
        self._files: dict[str, tuple[bytes, str]] = {}
        for path, (name, kind) in _FILES.items():
            body = importlib.resources.files("backchannel").joinpath("static", name).read_bytes()
            self._files[path] = (body, kind)
        self._page_headers = page_headers(self._files["/admin"][0])
        self.hub: Hub | None = None
        #: Snapshots this node published, and an event set after each period of the
        #: publisher (whether it published or not): what a test or a tool can watch.
        self.published = 0
        self.period = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # Running.

    async def start(self, hub: Hub) -> None:
        """Publish snapshots of ``hub`` while a dashboard watches; collect warnings."""
        self.hub = hub
        logging.getLogger("backchannel").addHandler(self.errors)
        self._task = asyncio.get_running_loop().create_task(self._publish_snapshots(hub))

    async def close(self) -> None:
        logging.getLogger("backchannel").removeHandler(self.errors)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _publish_snapshots(self, hub: Hub) -> None:
        before = (self._clock(), hub.statistics(), hub.fanout_latency.snapshot())
        while True:
            # A period, not a synchronisation: each snapshot covers what happened since
            # the last one, however long this actually took.
            await asyncio.sleep(self.config.interval)
            now = (self._clock(), hub.statistics(), hub.fanout_latency.snapshot())
            try:
                watched = (await hub.presence_stats(LIVE_CHANNEL)).clients > 0
                if watched:
                    # Straight to the broker, not Hub.publish: the dashboard's own
                    # snapshots are not the application's publications (no webhook, no
                    # count in publications_in).
                    await hub.broker.publish(LIVE_CHANNEL, self.snapshot(hub, before, now))
                    self.published += 1
            except (BrokerUnavailable, CommandError) as exc:
                # The broker is away: /ready and the clients say so; no log line a second.
                logger.debug("dashboard snapshot not published: %s", exc)
            except Exception:
                # A bug here must not stop the dashboard for good: said, and tried again.
                logger.exception("dashboard snapshot failed")
            before = now
            self.period.set()

    def snapshot(
        self,
        hub: Hub,
        before: tuple[float, Any, Snapshot],
        now: tuple[float, Any, Snapshot],
    ) -> dict[str, Any]:
        """What this node shows on the dashboard: counts now, rates and fan-out
        quantiles since ``before``, the top channels, slow consumers, errors, alerts."""
        (then, old, old_latency), (at, stats, latency) = before, now
        seconds = max(at - then, 1e-6)
        interval = latency.since(old_latency)
        channels = sorted(hub.channels().items(), key=lambda item: (-item[1], item[0]))
        alerts = self._alerts()
        info = hub.info()

        def rate(name: str) -> float:
            return round(float(getattr(stats, name) - getattr(old, name)) / seconds, 2)

        def ms(q: float) -> float | None:
            value = interval.quantile(q)
            # Past the last bucket the bound is infinite: JSON has no infinity.
            return None if value is None else round(min(value, 10.0) * 1000, 3)

        return {
            "node": self.node,
            "time": time.time(),
            "started": info.started,
            "version": info.version,
            "broker": info.broker,
            "stats": dataclasses.asdict(stats),
            "rates": {
                "publications": rate("publications_in"),
                "fanouts": rate("publications_out"),
                "deliveries": rate("deliveries"),
            },
            "fanout_ms": {"p50": ms(0.5), "p99": ms(0.99), "count": interval.count},
            "channels": [list(item) for item in channels[: self.config.top_channels]],
            "slow_consumers": list(self.slow.recent),
            "errors": list(self.errors.records)[-MAX_LISTED:],
            "alerts": {
                "active": list(alerts.active())[-MAX_LISTED:] if alerts is not None else [],
                "events": list(alerts.events())[-MAX_LISTED:] if alerts is not None else [],
            },
        }

    # HTTP.

    async def handle(self, request: Request, path: str, address: str) -> Response:
        """Answer a request for ``/admin`` or a path under it."""
        file = self._files.get(path)
        if file is not None:
            if request.method not in ("GET", "HEAD"):
                return _error(405, "use GET")
            body, kind = file
            headers = Headers([("Content-Type", kind), ("Cache-Control", "no-cache")])
            if kind.startswith("text/html"):
                for name, value in self._page_headers:
                    headers.add(name, value)
            return Response(200, headers, body)
        if request.method == "POST" and not self._same_origin(request):
            return _error(403, "cross-origin request refused")
        if path == "/admin/login":
            return self._login(request, address)
        if path == "/admin/logout":
            if request.method != "POST":
                return _error(405, "use POST")
            self._sessions.pop(self._cookie(request) or "", None)
            return _with_cookie(Response.json(200, {}), self._cookie_header("", 0))
        if not path.startswith("/admin/api/"):
            return _error(404, "Not Found")
        if not self.logged_in(request):
            return _error(401, "log in first")
        name = path[len("/admin/api/") :]
        if name == "token":
            if request.method != "GET":
                return _error(405, "use GET")
            client = parse_qs(urlsplit(request.path).query).get("client", [""])[0]
            return Response.json(200, self.tokens(client or None))
        if name not in _ACTIONS:
            return _error(404, f"no action {name!r}")
        if request.method != "POST":
            return _error(405, "use POST")
        return await self._action(name, request.body)

    def _login(self, request: Request, address: str) -> Response:
        if request.method != "POST":
            return _error(405, "use POST")
        # The bucket is taken before the password is read: a wrong guess costs a token.
        if not self.logins.allow(address):
            response = _error(429, "too many login attempts; wait and try again")
            response.headers.add("Retry-After", str(max(1, round(1 / self.config.login_rate))))
            return response
        try:
            password = json.loads(request.body).get("password")
        except (ValueError, AttributeError):
            password = None
        if not isinstance(password, str) or not hmac.compare_digest(
            password.encode(), self._password
        ):
            logger.warning("dashboard: failed login from %s", address)
            return _error(403, "wrong password")
        session = secrets.token_urlsafe(32)
        self._sessions[session] = self._clock() + self.config.session_ttl
        while len(self._sessions) > self.config.max_sessions:
            self._sessions.popitem(last=False)
        response = Response.json(200, self.tokens(None))
        return _with_cookie(response, self._cookie_header(session, self.config.session_ttl))

    def logged_in(self, request: Request) -> bool:
        """Whether the request carries the cookie of a login that has not expired."""
        session = self._cookie(request)
        if not session:
            return False
        expires = self._sessions.get(session)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._sessions[session]
            return False
        return True

    def tokens(self, client: str | None) -> dict[str, Any]:
        """Short-lived hub tokens: to connect as the dashboard, and to subscribe to its
        live channel (bound to ``client`` when given)."""
        return {
            "user": USER,
            "channel": LIVE_CHANNEL,
            "token": make_token(self._secret, USER, ttl=TOKEN_TTL),
            "channel_token": make_token(
                self._secret, USER, ttl=TOKEN_TTL, channel=LIVE_CHANNEL, client=client
            ),
            "interval": self.config.interval,
        }

    async def _action(self, name: str, body: bytes) -> Response:
        hub = self.hub
        if hub is None:
            return _error(503, "not started")
        try:
            params = json.loads(body, parse_constant=wire.refuse_constant)
            if not isinstance(params, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            return _error(400, "the body is a JSON object")
        try:
            problem = wire.check_value(params) or wire.check_params(params, _ACTIONS[name])
            if problem:
                raise CommandError(codes.BAD_REQUEST.with_message(problem))
            result: dict[str, Any] = {}
            if name == "presence":
                # One page (hub.presence_page_size clients): a channel with tens of
                # thousands of clients is not listed whole in the dashboard. The counts
                # of the whole channel come with it, so the page says what it leaves out.
                result = (await hub.presence_page(params["channel"])).to_json()
                stats = await hub.presence_stats(params["channel"])
                result["count"], result["users"] = stats.clients, stats.users
            elif name == "history":
                limit = min(max(params.get("limit", 20), 1), MAX_HISTORY)
                result = (await hub.history(params["channel"], limit=limit)).to_json()
            elif name == "publish":
                result = (await hub.publish(params["channel"], params["data"])).to_json()
            else:
                await hub.disconnect(params["user"])
        except CommandError as exc:
            error = Error(exc.code, exc.message, exc.temporary)
            return Response.json(_STATUS.get(error.code, 400), {"error": _error_json(error)})
        except BrokerUnavailable:
            return Response.json(503, {"error": _error_json(codes.UNAVAILABLE)})
        logger.info("dashboard: %s %s", name, params.get("channel", params.get("user")))
        return Response.json(200, result)

    # Cookies and origins.

    def _same_origin(self, request: Request) -> bool:
        """Whether a POST comes from a page of this server: its Origin names the host
        the request was sent to. A browser always sends Origin with a POST; a page of
        another site cannot forge it."""
        origin = request.headers.get("Origin")
        host = request.headers.get("Host")
        if not origin or not host:
            return False
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower()

    @staticmethod
    def _cookie(request: Request) -> str | None:
        for header in request.headers.get_all("Cookie"):
            for part in header.split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE:
                    return value
        return None

    def _cookie_header(self, value: str, max_age: float) -> str:
        attributes = [
            f"{COOKIE}={value}",
            "Path=/admin",
            f"Max-Age={int(max_age)}",
            "HttpOnly",
            "SameSite=Strict",
        ]
        if self._secure:
            attributes.append("Secure")
        return "; ".join(attributes)


def _with_cookie(response: Response, cookie: str) -> Response:
    response.headers.add("Set-Cookie", cookie)
    return response


def _error_json(error: Error) -> dict[str, Any]:
    return {"code": error.code, "message": error.message, "temporary": error.temporary}


def _error(status: int, message: str) -> Response:
    return Response.json(status, {"error": {"message": message}})
