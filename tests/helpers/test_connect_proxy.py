"""The test CONNECT proxy, checked with plain asyncio streams and a TCP echo server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import pytest

from .connect_proxy import ESTABLISHED, ConnectProxy

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

Tunnel = tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]


class EchoServer:
    """A TCP server on 127.0.0.1 that echoes bytes back and closes after the client's EOF."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        for writer in self._writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await self._server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()


def connect_request(target: str, *headers: str) -> bytes:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Proxy-Authorization: Basic {token}"


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@contextlib.asynccontextmanager
async def through(proxy: ConnectProxy, request: bytes) -> AsyncIterator[Tunnel]:
    """Send a raw request to the proxy; yield its response head and the open streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        yield head, reader, writer
    finally:
        await close_quietly(writer)


async def close_quietly(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


async def test_tunnel_carries_bytes_both_ways_and_the_eof(echo: EchoServer) -> None:
    async with ConnectProxy() as proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        target = f"127.0.0.1:{echo.port}"
        async with through(proxy, connect_request(target)) as (head, reader, writer):
            assert head == ESTABLISHED
            writer.write(b"hello")
            assert await reader.readexactly(5) == b"hello"
            big = bytes(range(256)) * 1024  # more than one read chunk, either way
            writer.write(big)
            assert await reader.readexactly(len(big)) == big
            # Our EOF goes to the echo server, which closes; its EOF comes back.
            writer.write_eof()
            assert await reader.read() == b""
        assert proxy.connects == [target]
        assert proxy.requests[0].headers["host"] == target


async def test_bytes_sent_right_behind_the_request_are_tunnelled(echo: EchoServer) -> None:
    async with ConnectProxy() as proxy:
        request = connect_request(f"127.0.0.1:{echo.port}") + b"early bytes"
        async with through(proxy, request) as (head, reader, _writer):
            assert head == ESTABLISHED
            assert await reader.readexactly(11) == b"early bytes"


async def test_localhost_target_is_allowed(echo: EchoServer) -> None:
    async with ConnectProxy() as proxy:
        async with through(proxy, connect_request(f"localhost:{echo.port}")) as (head, r, w):
            assert head == ESTABLISHED
            w.write(b"ping")
            assert await r.readexactly(4) == b"ping"
        assert proxy.connects == [f"localhost:{echo.port}"]


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (basic("user", "wrong"),),
        (basic("other", "pass"),),
        ("Proxy-Authorization: Basic not*base64",),
        ("Proxy-Authorization: Bearer dXNlcjpwYXNz",),
    ],
    ids=["missing", "wrong-password", "wrong-user", "bad-base64", "not-basic"],
)
async def test_auth_required_gives_407(echo: EchoServer, headers: tuple[str, ...]) -> None:
    async with ConnectProxy(auth=("user", "pass")) as proxy:
        request = connect_request(f"127.0.0.1:{echo.port}", *headers)
        async with through(proxy, request) as (head, reader, _writer):
            assert status_of(head) == 407
            assert b'\r\nProxy-Authenticate: Basic realm="test"\r\n' in head
            assert await reader.read() == b""  # the proxy closes after answering
        assert proxy.connects == []


async def test_right_credentials_open_the_tunnel(echo: EchoServer) -> None:
    async with ConnectProxy(auth=("user", "pass")) as proxy:
        request = connect_request(f"127.0.0.1:{echo.port}", basic("user", "pass"))
        async with through(proxy, request) as (head, reader, writer):
            assert head == ESTABLISHED
            writer.write(b"authed")
            assert await reader.readexactly(6) == b"authed"
        assert proxy.connects == [f"127.0.0.1:{echo.port}"]


async def test_refuse_gives_403(echo: EchoServer) -> None:
    async with ConnectProxy(refuse=True) as proxy:
        async with through(proxy, connect_request(f"127.0.0.1:{echo.port}")) as (head, _r, _w):
            assert status_of(head) == 403
        assert proxy.connects == []


@pytest.mark.parametrize(
    "target",
    ["example.com:443", "10.0.0.1:80", "192.0.2.7:443", "[2001:db8::1]:443", "localhost.test:80"],
)
async def test_non_loopback_target_gives_403(target: str) -> None:
    async with ConnectProxy() as proxy:
        async with through(proxy, connect_request(target)) as (head, _r, _w):
            assert status_of(head) == 403
        assert proxy.connects == []
        assert [r.target for r in proxy.requests] == [target]


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", 400),  # no port
        (b"CONNECT 127.0.0.1:0 HTTP/1.1\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:80\r\n\r\n", 400),  # no version
        (b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"CONNECT " + b"a" * 9000 + b":80 HTTP/1.1\r\n\r\n", 414),
        (b"CONNECT " + b"a" * 70_000 + b":80 HTTP/1.1\r\n\r\n", 414),  # past the stream limit
        (connect_request("127.0.0.1:80", "X-Big: " + "b" * 8200), 431),
        (connect_request("127.0.0.1:80", *(f"X-{i}: v" for i in range(100))), 431),
    ],
    ids=[
        "not-connect",
        "no-port",
        "port-zero",
        "no-version",
        "bad-header",
        "long-request-line",
        "huge-request-line",
        "long-header-line",
        "too-many-headers",
    ],
)
async def test_malformed_or_oversized_requests_are_rejected(
    request_bytes: bytes, status: int
) -> None:
    async with ConnectProxy() as proxy:
        async with through(proxy, request_bytes) as (head, _r, _w):
            assert status_of(head) == status
        assert proxy.connects == []


async def test_one_hundred_headers_are_accepted(echo: EchoServer) -> None:
    # Host is one of them: 99 more make 100, the most allowed.
    request = connect_request(f"127.0.0.1:{echo.port}", *(f"X-{i}: v" for i in range(99)))
    async with ConnectProxy() as proxy, through(proxy, request) as (head, _r, _w):
        assert head == ESTABLISHED


async def test_unreachable_target_gives_502() -> None:
    with socket.socket() as sock:  # a port that was just free: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with ConnectProxy() as proxy:
        async with through(proxy, connect_request(f"127.0.0.1:{port}")) as (head, _r, _w):
            assert status_of(head) == 502
        assert proxy.connects == []


async def test_exit_closes_open_tunnels_and_stops_listening(echo: EchoServer) -> None:
    async with contextlib.AsyncExitStack() as client:
        async with ConnectProxy() as proxy:
            port = proxy.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            client.push_async_callback(close_quietly, writer)
            writer.write(connect_request(f"127.0.0.1:{echo.port}"))
            assert await reader.readuntil(b"\r\n\r\n") == ESTABLISHED
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
        # The proxy has exited with the tunnel still open: it must have cut it.
        with contextlib.suppress(ConnectionResetError):
            assert await reader.read() == b""
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
