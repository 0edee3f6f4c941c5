"""The hub's Python client: a connection that stays up.

``Client`` connects over WebSocket (or Server-Sent Events or long polling when WebSocket
does not get through), reconnects with backoff after a disconnect that allows it, renews every
subscription with recovery of the publications missed meanwhile, and refreshes its
token before it expires. It mirrors the browser client (js/backchannel.js).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Literal

from .. import __version__
from ..exceptions import (
    CommandError,
    ConnectionClosed,
    DisconnectRequest,
    HandshakeTimeout,
    InvalidArgument,
    InvalidHandshake,
    InvalidState,
    InvalidStatus,
    OutboxFull,
    PublishDropped,
    TokenError,
)
from ..hub import codes, wire
from ..hub.wire import PROTOCOL_VERSION, ClientInfo, Position, Publication
from .backoff import MAX_DELAY, MIN_DELAY, Backoff
from .connection import Connection, encode_command
from .dispatch import Dispatcher, log_handler_error
from .event import (
    ConnectedEvent,
    DisconnectedEvent,
    PublishEvent,
    PublishFate,
    SubscribedEvent,
    TokenRefusedEvent,
    UnsubscribedEvent,
)
from .longpoll import LongPollTransport
from .outbox import (
    MAX_BYTES,
    MAX_IN_FLIGHT,
    MAX_MESSAGES,
    PUBLISH_TIMEOUT,
    RETRY_PAUSE,
    Outbox,
    Pending,
)
from .result import (
    HistoryResult,
    PresenceStats,
    PublishResult,
    parse_client_info,
    parse_publication,
)
from .sse import SseTransport
from .subscription import MAX_QUEUE, Subscription
from .transport import NORMAL_CLOSURE, TRANSPORTS, Ending, Transport, TransportName
from .websocket import WebSocketTransport

__all__ = ["Client", "ClientState", "TokenSource", "default_longpoll_url", "default_sse_url"]

logger = logging.getLogger("backchannel.client")

ClientState = Literal["disconnected", "connecting", "connected", "closed"]
#: A token, or an async callable returning one (called again when it expires).
TokenSource = str | Callable[[], Awaitable[str]] | None

#: Seconds a command waits for its reply, and for a connection when there is none: a
#: hub answers in milliseconds, so this only bounds a network that has gone silent.
TIMEOUT = 10.0
#: Seconds a transport that has another after it in ``transports`` has to bring the
#: connect reply before the client tries the next: a proxy that accepts the upgrade and
#: then holds every frame, or buffers a stream, is caught without making a user wait much.
FALLBACK_TIMEOUT = 3.0
#: Refresh the token when this share of its remaining lifetime has passed: early enough
#: for a slow token source, late enough not to refresh all the time.
REFRESH_AT = 0.9
#: On a fallback transport, try the first again every this many connection attempts, or
#: after this many seconds: the network that refused it may have changed.
WS_RETRY_EVERY = 5
WS_RETRY_AFTER = 300.0


def _http_url(url: str, endpoint: str) -> str:
    """The URL of an HTTP transport's ``endpoint`` ("lp", "sse") beside a WebSocket URL:
    http(s), same host; a path ending in the segment ``/ws`` has it replaced (under a
    mount, ``/realtime/ws`` gives ``/realtime/lp``, as ``backchannel.asgi`` serves them),
    any other path is replaced whole (``/lp``)."""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    prefix = parts.path.removesuffix("/ws") if parts.path.endswith("/ws") else ""
    return urllib.parse.urlunsplit((scheme, parts.netloc, f"{prefix}/{endpoint}", "", ""))


def default_longpoll_url(url: str) -> str:
    """The long-polling URL for a WebSocket URL: same host, http(s), its path's last
    segment ``/ws`` replaced by ``/lp`` (``ws://h/realtime/ws`` gives
    ``http://h/realtime/lp``); a path that does not end in ``/ws`` gives ``/lp``."""
    return _http_url(url, "lp")


def default_sse_url(url: str) -> str:
    """The Server-Sent Events URL for a WebSocket URL: as :func:`default_longpoll_url`,
    with ``/sse`` (``ws://h/realtime/ws`` gives ``http://h/realtime/sse``)."""
    return _http_url(url, "sse")


class _Retry(Exception):
    """An attempt failed in a way worth another (the cause is reported as an error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Client:
    """A client of the hub; see the module docstring.

    ``url`` is the hub's WebSocket URL (``ws://host:port/ws``), or a list of them (the
    nodes of a cluster): a failed attempt moves on to the next one. ``token`` is a
    connection token, or an async callable that returns one: it is called before
    connecting, again when the hub says the token expired, and to refresh it before it
    expires (the connect result's ``ttl``, counted on the local monotonic clock).
    ``data`` goes with every connect, for the application's ``authorize_connect`` hook
    (a session id, for example, instead of a token).

    ``transports`` lists what may be used, in order of preference: "websocket", "sse"
    (``sse_url``, by default the url with http(s) and its last path segment ``/ws``
    replaced by ``/sse``: ``ws://h/realtime/ws`` gives ``http://h/realtime/sse``; a path
    not ending in ``/ws`` gives ``/sse``) and "longpoll" (``longpoll_url``, the same with
    ``/lp``). When one does not get through (its upgrade or
    stream is refused, or it brings nothing within ``fallback_timeout``) the next is
    tried, and the client keeps starting with the one that worked, trying the first
    again every few reconnects.

    Reconnection waits are full-jitter exponential backoff between ``min_delay`` and
    ``max_delay`` seconds. A disconnect whose code forbids reconnecting stops the client:
    ``state`` becomes "closed", ``error`` holds a :class:`DisconnectRequest`, and
    waiting calls raise it. A connect refused for its token (3500 invalid, 109 expired)
    asks the token callback for a new token once and tries again before giving up; each
    refusal goes to ``on_token_refused(TokenRefusedEvent)``.

    Publishes go through a bounded outbox (``max_outbox`` publishes, ``max_outbox_bytes``
    bytes of commands): made while disconnected, or unanswered when a connection drops,
    they are sent again on the next connection with the same idempotency key, so the hub
    counts each once. See :meth:`publish`; every publish's fate also goes to
    ``on_publish(PublishEvent)``.

    Handlers (plain or async functions, run in order in a task of their own):
    ``on_connected(ConnectedEvent)``, ``on_disconnected(DisconnectedEvent)``,
    ``on_error(exception)`` for failures that do not stop the client (a refused
    attempt, a failed refresh, an exception in another handler),
    ``on_subscription(Subscription)`` when the hub subscribes this client itself (the
    subscription is then also in :meth:`subscription`).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        token: TokenSource = None,
        data: Any = None,
        longpoll_url: str | None = None,
        sse_url: str | None = None,
        transports: Sequence[TransportName] = ("websocket", "longpoll"),
        name: str | None = None,
        version: str | None = None,
        timeout: float = TIMEOUT,
        fallback_timeout: float = FALLBACK_TIMEOUT,
        min_delay: float = MIN_DELAY,
        max_delay: float = MAX_DELAY,
        max_queue: int = MAX_QUEUE,
        max_outbox: int = MAX_MESSAGES,
        max_outbox_bytes: int = MAX_BYTES,
        publish_timeout: float = PUBLISH_TIMEOUT,
        on_connected: Callable[[ConnectedEvent], Any] | None = None,
        on_disconnected: Callable[[DisconnectedEvent], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        on_subscription: Callable[[Subscription], Any] | None = None,
        on_publish: Callable[[PublishEvent], Any] | None = None,
        on_token_refused: Callable[[TokenRefusedEvent], Any] | None = None,
    ) -> None:
        if not transports or any(t not in TRANSPORTS for t in transports):
            raise InvalidArgument(f"transports: some of {', '.join(map(repr, TRANSPORTS))}")
        if len(set(transports)) != len(transports):
            raise InvalidArgument("transports: each at most once")
        if isinstance(token, str) or token is None:
            self._token: str | None = token
            self._token_source: Callable[[], Awaitable[str]] | None = None
        else:
            self._token = None
            self._token_source = token
        #: Sent with every connect, for the application's ``authorize_connect`` hook (a
        #: session id, for instance): JSON, checked now so a bad value fails here.
        self.data = data
        if data is not None:
            problem = wire.check_value(data)
            if problem:
                raise InvalidArgument(f"data: {problem}")
        self.urls: tuple[str, ...] = (url,) if isinstance(url, str) else tuple(url)
        if not self.urls:
            raise InvalidArgument("url: give at least one")
        #: The URL of the current (or next) attempt.
        self.url = self.urls[0]
        self._longpoll_given = longpoll_url
        self.longpoll_url = longpoll_url or default_longpoll_url(self.url)
        self._sse_given = sse_url
        self.sse_url = sse_url or default_sse_url(self.url)
        self.transports: tuple[TransportName, ...] = tuple(transports)
        #: The name sent with connect, for the server's logs.
        self.name = f"{name or 'backchannel-python'}/{version or __version__}"
        self.timeout = timeout
        self.fallback_timeout = fallback_timeout
        self.max_queue = max_queue
        if publish_timeout <= 0:
            raise InvalidArgument("publish_timeout must be positive")
        self.publish_timeout = publish_timeout
        self._outbox = Outbox(max_outbox, max_outbox_bytes)
        # When the outbox may send again after a temporary refusal (too many requests):
        # the next ones sent at once would be refused too, and count as commands.
        self._outbox_resume_at = 0.0
        self._backoff = Backoff(min_delay, max_delay)
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected
        self._on_error = on_error
        self._on_subscription = on_subscription
        self._on_publish = on_publish
        self._on_token_refused = on_token_refused
        # Whether the token callback was asked again after a refused connect: once only.
        self._token_retried = False

        self.state: ClientState = "disconnected"
        #: The hub's id for the current connection, and the token's user.
        self.client_id: str | None = None
        self.user: str | None = None
        #: The transport of the current connection.
        self.transport: TransportName | None = None
        #: When the token expires, in Unix seconds, as the hub said (None: no expiry).
        self.expires: int | None = None
        #: Why the client stopped, when it stopped on an error (not by close()).
        self.error: BaseException | None = None

        self._expires_at: float | None = None  # on the loop's monotonic clock
        self._token_stale = False
        self._conn: Connection | None = None
        self._subs: dict[str, Subscription] = {}
        self._runner: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None
        self._events: Dispatcher | None = None
        #: The transport this client starts with since its first did not get through
        #: (None: the first), since when (loop time), and attempts since then.
        self._fallback: TransportName | None = None
        self._fallback_since = 0.0
        self._fallback_attempts = 0

    def __repr__(self) -> str:
        return f"<Client {self.url} {self.state}>"

    # Lifecycle.

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect, and keep connected until :meth:`close`. Return once connected;
        failures worth another attempt are retried with backoff (and reported to
        ``on_error``), so bound this with ``asyncio.timeout`` if the hub may be down.
        Raise what stopped the client (a refused token, a do-not-reconnect code)."""
        if self.state == "closed":
            raise self._closed_error()
        if self._runner is None:
            self._changed = asyncio.Event()
            self._events = Dispatcher(self.emit_error, self.max_queue)
            self._runner = asyncio.get_running_loop().create_task(self._run())
        await self.until(self._connected)

    async def close(self) -> None:
        """Close the connection and stop. Subscriptions end (their iterators stop);
        commands waiting raise :class:`InvalidState`. The client cannot connect again."""
        if self.state == "closed" and self._runner is None:
            return
        runner, self._runner = self._runner, None
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        conn = self._conn
        if conn is not None:
            self._lost(conn, Ending(NORMAL_CLOSURE, "closed by the client", False))
            await conn.close()
        await self._cancel_tasks()
        self._stop(None)
        self._drop_outbox("the client was closed")
        for sub in list(self._subs.values()):
            await sub.aclose()
        if self._events is not None:
            await self._events.aclose()

    async def wait_closed(self) -> None:
        """Wait until the client stops: by :meth:`close`, or on an error (not raised
        here: read ``error``)."""
        with contextlib.suppress(Exception):
            await self.until(lambda: False)

    # The connection loop.

    async def _run(self) -> None:
        try:
            while True:
                self._set_state("connecting")
                try:
                    conn, result = await self._attempt()
                except _Retry as retry:
                    self.emit_error(retry.cause)
                except Exception as exc:
                    refused = _token_refusal(exc)
                    if refused is not None:
                        if not self._token_refused(exc, *refused):
                            return
                    elif not self._retryable(exc):
                        self._stop(exc)
                        return
                    else:
                        self.emit_error(exc)
                    self._next_url()
                else:
                    self._backoff.reset()
                    self._connected_on(conn, result)
                    ending = await conn.ended
                    self._lost(conn, ending)
                    await conn.close()
                    if not ending.reconnect:
                        self._stop(DisconnectRequest(ending.code, ending.reason))
                        return
                self._set_state("disconnected")
                await asyncio.sleep(self._backoff.next_delay())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug: stop visibly rather than hang
            logger.exception("the client's connection loop failed")
            self._stop(exc)

    def _token_refused(self, exc: BaseException, code: int, reason: str) -> bool:
        """A connect refused for its token: True to try once more with a new token from
        the callback, False when the client stopped."""
        retrying = self._token_source is not None and not self._token_retried
        self._post(self._on_token_refused, TokenRefusedEvent(code, reason, retrying))
        if not retrying:
            self._stop(exc)
            return False
        self._token_retried = True
        self._token_stale = True
        self.emit_error(exc)
        return True

    def _next_url(self) -> None:
        """After a failed attempt: the next URL (another node may be up)."""
        i = self.urls.index(self.url) if self.url in self.urls else -1
        self.url = self.urls[(i + 1) % len(self.urls)]
        self.longpoll_url = self._longpoll_given or default_longpoll_url(self.url)
        self.sse_url = self._sse_given or default_sse_url(self.url)

    def _retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, CommandError):
            # (A refused token is _token_refused's: one more attempt with a new one.)
            return exc.temporary
        if isinstance(exc, InvalidStatus):
            return exc.status >= 500 or exc.status in (408, 429)
        if isinstance(exc, DisconnectRequest | InvalidHandshake | TokenError | ImportError):
            return False
        return isinstance(exc, OSError | TimeoutError | HandshakeTimeout | ConnectionClosed)

    def _choose_transport(self) -> TransportName:
        """The first transport, or the one that got through when it did not (with the
        first tried again every WS_RETRY_EVERY attempts or after WS_RETRY_AFTER)."""
        if self._fallback is None:
            return self.transports[0]
        self._fallback_attempts += 1
        elapsed = asyncio.get_running_loop().time() - self._fallback_since
        if self._fallback_attempts % WS_RETRY_EVERY == 0 or elapsed >= WS_RETRY_AFTER:
            return self.transports[0]
        return self._fallback

    def _next_transport(self, name: TransportName) -> TransportName | None:
        """The transport to try when this one does not get through: the next; or, when
        the first was tried again and still fails, the one that worked before."""
        i = self.transports.index(name)
        if i == len(self.transports) - 1:
            return None
        if i == 0 and self._fallback is not None:
            return self._fallback
        return self.transports[i + 1]

    async def _attempt(self) -> tuple[Connection, dict[str, Any]]:
        if self._needs_token():
            await self._fetch_token()
        name = self._choose_transport()
        while True:
            try:
                opened = await self._open(name)
            except Exception as exc:
                after = self._next_transport(name)
                if after is None or not _transport_blocked(exc):
                    raise
                logger.info("%s did not get through (%r): trying %s", name, exc, after)
                self._fallback = after
                self._fallback_since = asyncio.get_running_loop().time()
                self._fallback_attempts = 0
                name = after
                continue
            if name == self.transports[0]:
                self._fallback = None  # the first gets through (again)
            return opened

    async def _open(self, name: TransportName) -> tuple[Connection, dict[str, Any]]:
        """Open a transport and connect on it; the connection and the connect result."""
        conn = Connection(self._on_push, lambda _: self.notify())
        frame, reply = conn.prepare("connect", self._connect_params())
        first_timeout = self.timeout
        if name != self.transports[-1]:
            first_timeout = min(self.timeout, self.fallback_timeout)
        try:
            transport: Transport
            async with asyncio.timeout(first_timeout):
                if name == "websocket":
                    transport = await WebSocketTransport.open(
                        self.url, frame, open_timeout=first_timeout
                    )
                elif name == "sse":
                    transport = await SseTransport.open(
                        self.sse_url, frame, open_timeout=first_timeout
                    )
                else:
                    transport = await LongPollTransport.open(
                        self.longpoll_url, frame, open_timeout=first_timeout
                    )
                conn.start(transport)
                expired: CommandError | None = None
                try:
                    result = await reply
                except CommandError as exc:
                    if exc.code != codes.TOKEN_EXPIRED.code or self._token_source is None:
                        raise
                    self._token_stale = True
                    self._token_retried = True  # the one new token asked for
                    self._post(
                        self._on_token_refused, TokenRefusedEvent(exc.code, exc.message, True)
                    )
                    expired = exc
            if expired is not None:
                # "Get a new token and connect again on the same connection."
                async with asyncio.timeout(self.timeout):
                    await self._fetch_token()
                    result = await conn.request("connect", self._connect_params())
        except ConnectionClosed as exc:
            await conn.close()
            ending = conn.disconnect or conn.ending
            if ending is not None and not ending.reconnect:
                raise DisconnectRequest(ending.code, ending.reason) from exc
            raise
        except BaseException:
            await conn.close()
            raise
        return conn, result

    def _connect_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {"v": PROTOCOL_VERSION, "name": self.name}
        if self._token is not None:
            params["token"] = self._token
        if self.data is not None:
            params["data"] = self.data
        return params

    def _connected_on(self, conn: Connection, result: dict[str, Any]) -> None:
        assert conn.transport is not None
        self._conn = conn
        self.client_id = str(result.get("client", ""))
        self.user = str(result.get("user", ""))
        self.transport = conn.transport.name
        self._set_expiry(result)
        self._set_state("connected")
        self._token_retried = False
        self._post(self._on_connected, ConnectedEvent(self.client_id, self.user, self.transport))
        if self._token_source is not None and self._expires_at is not None:
            self._refresher = self._spawn(self._refresh(conn))
        for sub in list(self._subs.values()):
            self._spawn(sub.subscribe_on(conn))
        self._spawn(self._flush(conn))

    def _lost(self, conn: Connection, ending: Ending) -> None:
        if self._conn is not conn:
            return
        self._conn = None
        self.transport = None
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if ending.code == codes.TOKEN_EXPIRED_DISCONNECT.code:
            self._token_stale = True
        for sub in self._subs.values():
            sub.connection_lost()
        self._post(
            self._on_disconnected, DisconnectedEvent(ending.code, ending.reason, ending.reconnect)
        )
        self.notify()

    def _stop(self, error: BaseException | None) -> None:
        """The client stops for good: on an error, or by close() (None)."""
        if self.state == "closed":
            return
        if error is not None:
            self.error = error
            self.emit_error(error)
        self._set_state("closed")
        for sub in self._subs.values():
            sub.client_closed()
        if error is not None:
            self._drop_outbox(f"the client stopped: {error}")

    def _closed_error(self) -> BaseException:
        return self.error or InvalidState("the client is closed")

    # Tokens.

    def _needs_token(self) -> bool:
        if self._token_source is None:
            return False
        if self._token is None or self._token_stale:
            return True
        now = asyncio.get_running_loop().time()
        return self._expires_at is not None and now >= self._expires_at

    async def _fetch_token(self) -> str:
        assert self._token_source is not None
        try:
            token = await self._token_source()
        except Exception as exc:
            raise _Retry(exc) from exc
        if not isinstance(token, str) or not token:
            raise TokenError("the token callback returned no token")
        self._token = token
        self._token_stale = False
        return token

    def _set_expiry(self, result: dict[str, Any]) -> None:
        """Take the token's expiry from a connect or refresh result. The hub's ``ttl``
        is counted on this machine's monotonic clock, so a wrong wall clock does not
        matter. It is whole seconds from the hub's current whole second: the token may
        expire up to a second sooner, so that second is taken off."""
        expires, ttl = result.get("expires"), result.get("ttl")
        self.expires = expires if type(expires) is int else None
        if type(ttl) is int:
            self._expires_at = asyncio.get_running_loop().time() + ttl - 1
        else:
            self._expires_at = None

    async def _refresh(self, conn: Connection) -> None:
        """Refresh the token before it expires, for as long as the connection lasts."""
        loop = asyncio.get_running_loop()
        # Retries after a failed refresh: a second, doubling up to the reconnection bound.
        failures = Backoff(min(1.0, self._backoff.max_delay), self._backoff.max_delay)
        while self._expires_at is not None and conn.ending is None:
            remaining = self._expires_at - loop.time()
            # Already expired by our clock, or about to: back off rather than loop.
            delay = remaining * REFRESH_AT if remaining > 0 else failures.next_delay()
            await asyncio.sleep(delay)
            try:
                async with asyncio.timeout(self.timeout):
                    token = await self._fetch_token()
                    result = await conn.request("refresh", {"token": token})
            except ConnectionClosed:
                return
            except _Retry as retry:
                self.emit_error(retry.cause)
                continue
            except Exception as exc:
                self.emit_error(exc)
                continue
            failures.reset()
            self._set_expiry(result)

    # Events.

    def _post(self, handler: Callable[[Any], Any] | None, arg: Any) -> None:
        if self._events is not None:
            self._events.post(handler, arg)

    def emit_error(self, exc: BaseException) -> None:
        logger.debug("client error: %r", exc)
        if self._on_error is None or self._events is None:
            return
        on_error = self._on_error

        async def report(arg: BaseException) -> None:
            try:
                result = on_error(arg)
                if asyncio.iscoroutine(result):
                    await result
            except Exception as error:
                log_handler_error(error)

        self._events.post(report, exc)

    def _set_state(self, state: ClientState) -> None:
        if self.state != state:
            self.state = state
            self.notify()

    def notify(self) -> None:
        """Wake whoever waits for a change of state (client or subscription)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def until(self, ready: Callable[[], bool]) -> None:
        while True:
            changed = self._changed
            if ready():
                return
            if self.state == "closed":
                raise self._closed_error()
            if changed is None:
                raise InvalidState("call connect() first")
            await changed.wait()

    def _connected(self) -> bool:
        return self.state == "connected" and self.live_connection() is not None

    def live_connection(self) -> Connection | None:
        conn = self._conn
        return conn if conn is not None and conn.ending is None else None

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A bug: say so rather than lose it with the task.
            logger.error("a client task failed", exc_info=task.exception())
            self.emit_error(task.exception())  # type: ignore[arg-type]

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # Pushes and subscriptions.

    def _on_push(self, push: dict[str, Any]) -> None:
        channel = push.get("channel")
        if not isinstance(channel, str):
            return
        sub = self._subs.get(channel)
        if push["push"] == "subscribe":
            if sub is None:
                self._server_subscribed(channel, push)
        elif sub is not None:
            sub.handle_push(push)

    def _server_subscribed(self, channel: str, position: dict[str, Any]) -> None:
        """The hub subscribed this client (an application's server-side subscribe): a
        subscription like the client's own from now on (renewed with recovery after a
        reconnection), handed to ``on_subscription``."""
        sub = Subscription(
            self,
            channel,
            token=None,
            recover=True,
            on_publication=None,
            on_join=None,
            on_leave=None,
            on_unsubscribed=None,
            on_subscribed=None,
            max_queue=self.max_queue,
            backoff=Backoff(self._backoff.min_delay, self._backoff.max_delay),
        )
        self._subs[channel] = sub
        sub.subscribed_by_server(position)
        self._post(self._on_subscription, sub)

    def forget(self, sub: Subscription) -> None:
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]

    def unsubscribe_later(self, channel: str) -> None:
        """A subscribe the application gave up on succeeded after all: undo it."""
        conn = self.live_connection()
        if conn is not None and channel not in self._subs:
            self._spawn(self._quiet(conn.request("unsubscribe", {"channel": channel})))

    @staticmethod
    async def _quiet(coro: Awaitable[Any]) -> None:
        with contextlib.suppress(CommandError, ConnectionClosed):
            await coro

    async def subscribe(
        self,
        channel: str,
        *,
        token: str | None = None,
        recover: bool = True,
        on_publication: Callable[[Publication], Any] | None = None,
        on_join: Callable[[ClientInfo], Any] | None = None,
        on_leave: Callable[[ClientInfo], Any] | None = None,
        on_unsubscribed: Callable[[UnsubscribedEvent], Any] | None = None,
        on_subscribed: Callable[[SubscribedEvent], Any] | None = None,
    ) -> Subscription:
        """Subscribe to a channel and return once the hub said yes (waiting for a
        connection first if there is none). ``token`` is a channel token, for channels
        that need one. With ``recover`` (the default), a renewal after a reconnection
        asks for the publications missed. Raise :class:`CommandError` when refused."""
        if channel in self._subs:
            raise InvalidState(f"already subscribed to {channel!r}")
        if self.state == "closed":
            raise self._closed_error()
        sub = Subscription(
            self,
            channel,
            token=token,
            recover=recover,
            on_publication=on_publication,
            on_join=on_join,
            on_leave=on_leave,
            on_unsubscribed=on_unsubscribed,
            on_subscribed=on_subscribed,
            max_queue=self.max_queue,
            backoff=Backoff(self._backoff.min_delay, self._backoff.max_delay),
        )
        self._subs[channel] = sub
        conn = self.live_connection()
        if conn is not None and self.state == "connected":
            self._spawn(sub.subscribe_on(conn))
        try:
            async with asyncio.timeout(self.timeout):
                await sub.wait_subscribed()
        except BaseException:
            if sub.state != "unsubscribed":
                sub.end(None)
                self.unsubscribe_later(channel)
            await sub.aclose()
            raise
        return sub

    def subscription(self, channel: str) -> Subscription | None:
        """The active subscription to a channel, if any."""
        return self._subs.get(channel)

    # Commands.

    async def _ready_for(self, channel: str | None) -> Connection:
        """A live connection, on which the channel's subscription (if any) is renewed."""

        def ready() -> bool:
            if not self._connected():
                return False
            sub = self._subs.get(channel) if channel is not None else None
            return sub is None or sub.state != "subscribing"

        await self.until(ready)
        conn = self.live_connection()
        assert conn is not None
        return conn

    async def call(self, method: str, /, **params: Any) -> dict[str, Any]:
        """Send any command and return its raw result. Wait for a connection (at most
        ``timeout`` in all). Raise :class:`CommandError` for an error reply,
        :class:`ConnectionClosedError` if the connection is lost before the reply (the
        command may have run), ``TimeoutError``."""
        encode_command(1, method, params)  # refuse bad parameters before waiting
        channel = params.get("channel")
        async with asyncio.timeout(self.timeout):
            conn = await self._ready_for(channel if isinstance(channel, str) else None)
            return await conn.request(method, params)

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Publish in a channel (the hub requires a subscription to it) and return its
        acknowledgement.

        The publish goes into the outbox first, with an idempotency key (a random one
        when none is given), and stays there until the hub answers: made while
        disconnected, or unanswered when the connection drops, it is sent on the next
        connection (after the channel's subscription is renewed) with the same key, so
        the hub counts it once. Raise :class:`OutboxFull` at once when the outbox has no
        room (the publish is not queued), :class:`CommandError` when the hub refuses it,
        :class:`PublishDropped` when it is not acknowledged within ``publish_timeout``
        or the client stops. Cancelling the caller does not withdraw the publish: its
        fate still goes to ``on_publish``. Do not change ``data`` afterwards: a resend
        takes it as it is then."""
        if self.state == "closed":
            raise self._closed_error()
        if self._changed is None:
            raise InvalidState("call connect() first")
        key = idempotency_key if idempotency_key is not None else secrets.token_urlsafe(16)
        params = {"channel": channel, "data": data, "idempotency_key": key}
        size = len(encode_command(1, "publish", params).encode())
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PublishResult] = loop.create_future()
        # Read here so that a caller that went away leaves no "never retrieved" warning.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        entry = Pending(channel, data, key, size, loop.time() + self.publish_timeout, future)
        try:
            self._outbox.add(entry)
        except OutboxFull as exc:
            self._post(self._on_publish, PublishEvent(channel, data, key, "dropped", error=exc))
            raise
        entry.timer = loop.call_at(entry.deadline, self._expire, entry)
        self.notify()
        return await asyncio.shield(future)

    @property
    def outbox_size(self) -> int:
        """Publishes in the outbox: not acknowledged (nor refused, nor given up) yet."""
        return len(self._outbox)

    async def _flush(self, conn: Connection) -> None:
        """Send the outbox on a connection, oldest first, a few at a time, for as long as
        it lasts."""
        loop = asyncio.get_running_loop()
        in_flight = 0
        # What ready() found to send (a list: set from inside the predicate).
        found: list[Pending] = []

        def ready() -> bool:
            if conn.ending is not None or self._conn is not conn:
                return True
            entry = self._next_unsent() if in_flight < MAX_IN_FLIGHT else None
            if entry is not None:
                found.append(entry)
            return entry is not None

        async def send(entry: Pending) -> None:
            nonlocal in_flight
            try:
                await self._send_publish(conn, entry)
            finally:
                in_flight -= 1
                self.notify()

        try:
            while True:
                found.clear()
                await self.until(ready)
                if not found:
                    return  # the connection ended: the next one takes over
                entry = found[-1]
                pause = self._outbox_resume_at - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                    continue  # things may have changed meanwhile
                entry.sent_on = conn
                entry.sent = True
                in_flight += 1
                self._spawn(send(entry))
        except Exception:
            if self.state != "closed":
                raise
            # Stopped: close() or _stop() settled the outbox.

    def _next_unsent(self) -> Pending | None:
        """The oldest publish not out on a connection whose channel is ready: its
        subscription (if any) renewed, as the hub requires for a publish."""
        for entry in self._outbox:
            if entry.sent_on is not None:
                continue
            sub = self._subs.get(entry.channel)
            if sub is None or sub.state != "subscribing":
                return entry
        return None

    async def _send_publish(self, conn: Connection, entry: Pending) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                result = await conn.request("publish", entry.params())
        except (ConnectionClosed, TimeoutError):
            # Maybe published, maybe not: again on a connection, with the same key.
            self._requeue(conn, entry)
        except CommandError as exc:
            if exc.temporary:
                self._outbox_resume_at = asyncio.get_running_loop().time() + RETRY_PAUSE
                self._requeue(conn, entry)
            else:
                self._settle(entry, "refused", error=exc)
        else:
            offset, epoch = result.get("offset"), result.get("epoch")
            ack = PublishResult(
                offset if type(offset) is int else 0,
                epoch if isinstance(epoch, str) else "",
                result.get("duplicate") is True,
            )
            self._settle(entry, "acknowledged", result=ack)

    def _requeue(self, conn: Connection, entry: Pending) -> None:
        if entry.sent_on is not conn:
            return
        entry.sent_on = None
        if asyncio.get_running_loop().time() >= entry.deadline:
            self._expire(entry)
        self.notify()

    def _expire(self, entry: Pending) -> None:
        """The publish's deadline passed: give it up unless its command is out on a live
        connection (then its reply decides, and a lost one gives it up)."""
        conn = entry.sent_on
        if conn is not None and conn.ending is None:
            return
        message = f"not acknowledged within {self.publish_timeout:g} s"
        if entry.sent:
            message += ": it was sent, and may have been delivered"
        self._settle(entry, "dropped", error=PublishDropped(message, sent=entry.sent))

    def _settle(
        self,
        entry: Pending,
        fate: PublishFate,
        *,
        result: PublishResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        if not self._outbox.remove(entry):
            return  # settled already
        if entry.timer is not None:
            entry.timer.cancel()
        if not entry.future.done():
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.future.set_result(result or PublishResult(0))
        self._post(
            self._on_publish,
            PublishEvent(entry.channel, entry.data, entry.key, fate, result, error),
        )
        self.notify()

    def _drop_outbox(self, why: str) -> None:
        for entry in self._outbox:
            error = PublishDropped(
                why + (": it was sent, and may have been delivered" if entry.sent else ""),
                sent=entry.sent,
            )
            self._settle(entry, "dropped", error=error)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to a channel: one entry per connection, by client id.
        Channels in count-only mode have no list: use :meth:`presence_stats` (this raises
        :class:`CommandError` NOT_AVAILABLE for them). The server answers a page at a
        time; this follows ``next_cursor`` to the last page."""
        present: dict[str, ClientInfo] = {}
        params: dict[str, Any] = {"channel": channel}
        while True:
            result = await self.call("presence", **params)
            clients = result.get("clients")
            if not isinstance(clients, dict):
                raise CommandError(codes.NOT_AVAILABLE.with_message("presence is count-only here"))
            present.update((str(cid), parse_client_info(info)) for cid, info in clients.items())
            cursor = result.get("next_cursor")
            # A cursor that does not move on would loop forever: stop at it.
            if not isinstance(cursor, str) or cursor == params.get("cursor"):
                return present
            params["cursor"] = cursor

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many connections and distinct users are subscribed to a channel (counted
        by the server: no list crosses the network)."""
        result = await self.call("presence", channel=channel, count_only=True)
        clients = result.get("clients")
        if isinstance(clients, dict):
            users = {parse_client_info(info).user for info in clients.values()}
            return PresenceStats(len(clients), len(users))
        count, users_count = result.get("count"), result.get("users")
        return PresenceStats(
            count if type(count) is int else 0, users_count if type(users_count) is int else 0
        )

    async def history(
        self, channel: str, since: Position | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Read a channel's stream: every publication kept (the latest ``limit``), or
        those after ``since`` (the first ``limit``); oldest first either way."""
        params: dict[str, Any] = {"channel": channel}
        if since is not None:
            params.update(epoch=since.epoch, offset=since.offset)
        if limit is not None:
            params["limit"] = limit
        result = await self.call("history", **params)
        pubs = result.get("publications")
        epoch, offset = result.get("epoch"), result.get("offset")
        return HistoryResult(
            [parse_publication(p, channel) for p in pubs if isinstance(p, dict)]
            if isinstance(pubs, list)
            else [],
            epoch if isinstance(epoch, str) else "",
            offset if type(offset) is int else 0,
            result.get("recovered") is not False,
        )

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call a procedure the application defines on the server; return its result."""
        result = await self.call("rpc", method=method, data=data)
        return result.get("data")

    async def send(self, data: Any) -> None:
        """Send data to the application on the server (acknowledged, nothing returned)."""
        await self.call("send", data=data)


def _token_refusal(exc: BaseException) -> tuple[int, str] | None:
    """The code and reason when a connect was refused for its token."""
    if isinstance(exc, DisconnectRequest) and exc.code == codes.INVALID_TOKEN.code:
        return exc.code, exc.reason
    if isinstance(exc, CommandError) and exc.code == codes.TOKEN_EXPIRED.code:
        return exc.code, exc.message
    return None


def _transport_blocked(exc: BaseException) -> bool:
    """Whether a failed attempt suggests that its transport does not get through (so
    the next may: a refused upgrade, a server or proxy without SSE, a stream held back),
    rather than a refusal by the hub itself."""
    if isinstance(exc, DisconnectRequest | CommandError | TokenError | _Retry):
        return False
    return isinstance(
        exc, InvalidHandshake | OSError | TimeoutError | HandshakeTimeout | ConnectionClosed
    )
