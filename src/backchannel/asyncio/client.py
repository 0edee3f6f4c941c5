"""The asyncio WebSocket client: ``connect(uri, ...)``.

``await connect(uri)`` opens one connection; ``async with connect(uri) as ws`` closes it
at the end; ``async for ws in connect(uri)`` reconnects after each disconnection with
exponential backoff and full jitter.

The client follows HTTP redirects (up to ``max_redirects``, never from ``wss`` to
``ws``), and goes through an HTTP proxy with CONNECT when ``proxy`` names one or, by
default, when ``HTTPS_PROXY`` / ``HTTP_PROXY`` ask for one and ``NO_PROXY`` does not
exclude the host.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl as ssl_module
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Generator, Sequence
from types import TracebackType
from typing import Any, cast

from ..exceptions import (
    HandshakeTimeout,
    InvalidArgument,
    InvalidHandshake,
    InvalidResponse,
    InvalidStatus,
    ProxyError,
)
from ..protocol.deflate import DeflateOffer
from ..protocol.handshake import ClientHandshake, WebSocketURI, parse_uri
from ..protocol.http11 import Headers, Request, Response, parse_response_head
from ..protocol.limits import Limits
from .connection import Connection

__all__ = ["ClientConnection", "connect"]

logger = logging.getLogger("backchannel.client")

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: The largest error-response body a client keeps for :class:`InvalidStatus`: 64 KiB.
MAX_ERROR_BODY = 65536


class ClientConnection(Connection):
    """A connection opened by :func:`connect`."""

    __slots__ = (
        "_buffer",
        "_handshake",
        "_head",
        "_head_waiter",
        "limits",
    )

    def __init__(self, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(max_queue=limits.max_queue, **kwargs)
        self.limits = limits
        self._buffer = b""
        self._head: Response | None = None
        self._head_waiter: asyncio.Future[Response] = self._loop.create_future()
        self._handshake: ClientHandshake | None = None

    def _expect_response(self, handshake: ClientHandshake | None) -> asyncio.Future[Response]:
        """Wait for a response: the proxy's (``None``) or the upgrade's."""
        self._handshake = handshake
        self._head = None
        self._head_waiter = self._loop.create_future()
        if self._buffer:
            data, self._buffer = self._buffer, b""
            self._handshake_data(data)
        return self._head_waiter

    def _handshake_data(self, data: bytes) -> None:
        waiter = self._head_waiter
        if waiter.done():
            self._buffer += data
            return
        self._buffer += data
        if self._head is None:
            try:
                parsed = parse_response_head(self._buffer, self.limits)
            except InvalidResponse as exc:
                waiter.set_exception(exc)
                return
            if parsed is None:
                return
            self._head, self._buffer = parsed
            if self._handshake is None or self._head.status == 101:
                self._finish_head()
                return
        self._collect_body(eof=False)

    def _finish_head(self) -> None:
        response = self._head
        assert response is not None
        waiter = self._head_waiter
        if self._handshake is not None and response.status == 101:
            try:
                proto = self._handshake.accept(response)
            except InvalidHandshake as exc:
                waiter.set_exception(exc)
                return
            self.response = response
            leftover, self._buffer = self._buffer, b""
            waiter.set_result(response)
            self._open(proto, leftover)
        else:
            waiter.set_result(response)

    def _collect_body(self, *, eof: bool) -> None:
        """Read an error response's body (bounded) so the caller can show it."""
        response = self._head
        assert response is not None
        length = response.headers.get("Content-Length")
        limit = MAX_ERROR_BODY
        if length is not None and length.isdigit():
            limit = min(limit, int(length))
        if eof or len(self._buffer) >= limit:
            response.body = self._buffer[:limit]
            self._buffer = b""
            if not self._head_waiter.done():
                self._head_waiter.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._head_waiter.done():
            if self._head is not None:
                self._collect_body(eof=True)
            else:
                self._head_waiter.set_exception(
                    ConnectionError("connection closed during the opening handshake")
                )
        super().connection_lost(exc)


class _Redirect(Exception):
    def __init__(self, location: str) -> None:
        self.location = location


def _default_offers() -> list[DeflateOffer]:
    # One offer, letting the server pick our window size too (RFC 7692 section 7.1.2.2).
    return [DeflateOffer(client_max_window_bits=True)]


class connect:
    """Open a WebSocket connection; see the module docstring for the three ways to use it."""

    def __init__(
        self,
        uri: str,
        *,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = None,
        additional_headers: Headers | Sequence[tuple[str, str]] | dict[str, str] | None = None,
        user_agent: str | None = "backchannel",
        compression: str | Sequence[DeflateOffer] | None = "deflate",
        compress_threshold: int = 128,
        proxy: str | bool | None = True,
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float = 10,
        max_size: int | None = 2**20,
        max_queue: int = 16,
        limits: Limits | None = None,
        max_redirects: int = 10,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.uri = uri
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.origin = origin
        self.subprotocols = subprotocols
        self.additional_headers = additional_headers
        self.user_agent = user_agent
        if compression == "deflate":
            self.offers: list[DeflateOffer] = _default_offers()
        elif compression is None:
            self.offers = []
        elif isinstance(compression, str):
            raise InvalidArgument(f"unsupported compression: {compression!r}")
        else:
            self.offers = list(compression)
        self.compress_threshold = compress_threshold
        self.proxy = proxy
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.limits = limits or Limits(max_size=max_size, max_queue=max_queue)
        self.max_redirects = max_redirects
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connection: ClientConnection | None = None

    # The three ways in.

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        self.connection = await self._connect()
        return self.connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.connection is not None
        await self.connection.close()

    async def __aiter__(self) -> AsyncIterator[ClientConnection]:
        attempt = 0
        while True:
            try:
                connection = await self._connect()
            except Exception as exc:
                if not _retryable(exc):
                    raise
                # Full jitter (a uniform delay up to the exponential bound) spreads out a
                # crowd of clients that lost the same server at the same moment.
                bound = min(self.backoff_max, self.backoff_initial * 2**attempt)
                attempt += 1
                delay = random.uniform(0, bound)
                logger.info("connect failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            try:
                yield connection
            finally:
                await connection.close()

    # Opening.

    async def _connect(self) -> ClientConnection:
        uri = self.uri
        try:
            async with asyncio.timeout(self.open_timeout):
                for _ in range(self.max_redirects + 1):
                    try:
                        return await self._connect_once(uri)
                    except _Redirect as redirect:
                        uri = self._follow(uri, redirect.location)
                raise InvalidHandshake(f"more than {self.max_redirects} redirects")
        except TimeoutError as exc:
            raise HandshakeTimeout("the opening handshake timed out") from exc

    def _follow(self, uri: str, location: str) -> str:
        old = parse_uri(uri)
        base = ("https" if old.secure else "http") + uri[uri.index(":") :]
        target = urllib.parse.urljoin(base, location)
        scheme, rest = target.split(":", 1)
        scheme = {"http": "ws", "https": "wss"}.get(scheme, scheme)
        new_uri = f"{scheme}:{rest}"
        if old.secure and not parse_uri(new_uri).secure:
            raise InvalidHandshake("refusing a redirect from wss:// to ws://")
        return new_uri

    def _proxy_for(self, wsuri: WebSocketURI) -> str | None:
        if self.proxy is None or self.proxy is False:
            return None
        if isinstance(self.proxy, str):
            return self.proxy
        proxies = urllib.request.getproxies_environment()
        if urllib.request.proxy_bypass_environment(wsuri.host, proxies):  # type: ignore[attr-defined]
            return None
        key = "https" if wsuri.secure else "http"
        return proxies.get(key)

    async def _connect_once(self, uri: str) -> ClientConnection:
        loop = asyncio.get_running_loop()
        wsuri = parse_uri(uri)
        if self.ssl is not None and not wsuri.secure:
            raise InvalidArgument("ssl= was given for a ws:// URI; use wss://")
        ssl_context = None
        if wsuri.secure:
            ssl_context = self.ssl or ssl_module.create_default_context()
        server_hostname = self.server_hostname or wsuri.host

        def factory() -> ClientConnection:
            return ClientConnection(
                limits=self.limits,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=self.close_timeout,
            )

        proxy = self._proxy_for(wsuri)
        connection: ClientConnection
        if proxy is None:
            _, connection = await loop.create_connection(
                factory,
                wsuri.host,
                wsuri.port,
                ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None,
            )
        else:
            connection = await self._through_proxy(factory, proxy, wsuri)
            if ssl_context is not None:
                assert connection.transport is not None
                transport = await loop.start_tls(
                    connection.transport,
                    connection,
                    ssl_context,
                    server_hostname=server_hostname,
                )
                # uvloop's transports don't subclass asyncio.Transport; same interface.
                connection.transport = cast(asyncio.Transport, transport)
        try:
            return await self._handshake(connection, wsuri)
        except BaseException:
            if connection.transport is not None:
                connection.transport.abort()
            raise

    async def _through_proxy(
        self, factory: Any, proxy: str, wsuri: WebSocketURI
    ) -> ClientConnection:
        loop = asyncio.get_running_loop()
        parsed = urllib.parse.urlsplit(proxy)
        if parsed.scheme != "http" or not parsed.hostname:
            raise InvalidArgument(f"unsupported proxy (only http:// proxies): {proxy!r}")
        connection: ClientConnection
        _, connection = await loop.create_connection(factory, parsed.hostname, parsed.port or 8080)
        try:
            target = f"[{wsuri.host}]" if ":" in wsuri.host else wsuri.host
            target = f"{target}:{wsuri.port}"
            headers = Headers([("Host", target)])
            if parsed.username is not None:
                credentials = (
                    f"{urllib.parse.unquote(parsed.username)}:"
                    f"{urllib.parse.unquote(parsed.password or '')}"
                )
                token = base64.b64encode(credentials.encode()).decode()
                headers.add("Proxy-Authorization", f"Basic {token}")
            waiter = connection._expect_response(None)
            connection._write(Request("CONNECT", target, headers).serialize())
            response = await waiter
            if response.status != 200:
                raise ProxyError(
                    f"proxy refused CONNECT to {target}: {response.status} {response.reason}",
                    response.status,
                )
            return connection
        except BaseException:
            if connection.transport is not None:
                connection.transport.abort()
            raise

    async def _handshake(
        self, connection: ClientConnection, wsuri: WebSocketURI
    ) -> ClientConnection:
        handshake = ClientHandshake(
            wsuri,
            origin=self.origin,
            subprotocols=self.subprotocols,
            deflate_offers=self.offers,
            additional_headers=self.additional_headers,
            limits=self.limits,
            compress_threshold=self.compress_threshold,
            user_agent=self.user_agent,
        )
        request = handshake.request()
        connection.request = request
        waiter = connection._expect_response(handshake)
        connection._write(request.serialize())
        response = await waiter
        if response.status == 101:
            return connection
        location = response.headers.get("Location")
        if response.status in _REDIRECTS and location:
            assert connection.transport is not None
            connection.transport.close()
            raise _Redirect(location)
        raise InvalidStatus(response.status, response.reason, response.body)


def _retryable(exc: Exception) -> bool:
    """Whether ``async for ... in connect()`` should try again after ``exc``."""
    if isinstance(exc, InvalidStatus):
        # Server-side trouble and rate limiting pass; a 4xx means "don't come back".
        return exc.status >= 500 or exc.status in (408, 429)
    return isinstance(exc, OSError | TimeoutError | HandshakeTimeout | ProxyError)
