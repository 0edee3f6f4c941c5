"""An HTTP CONNECT proxy on loopback, for tests of clients that tunnel through one.

    async with ConnectProxy(auth=("user", "pass")) as proxy:
        ...  # point the client at proxy.url; afterwards check proxy.connects

It tunnels only to loopback targets, so a test can never reach outside this machine
through it, and it bounds what it reads before the tunnel opens.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

MAX_LINE = 8 * 1024  # longest request or header line accepted, CRLF included
MAX_HEADERS = 100
CHUNK = 64 * 1024
LINGER_SECONDS = 2.0  # after an error response, how long and how much to drain
LINGER_BYTES = 1024 * 1024

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


class _Reject(Exception):
    """Ends a request with an error response instead of a tunnel."""

    def __init__(self, status: int, reason: str, headers: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True)
class ConnectRequest:
    """One parsed CONNECT request, tunnelled or not (header names lower-cased)."""

    target: str
    headers: dict[str, str] = field(default_factory=dict)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # any other name: never resolved, so never reached
        return False


def _split_target(target: str) -> tuple[str, int]:
    """Split an authority-form target ("host:port", "[::1]:port")."""
    host, sep, port_text = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _Reject(400, "Bad Request")
    return host, int(port_text)


class ConnectProxy:
    """An asyncio HTTP/1.1 CONNECT proxy listening on 127.0.0.1 (a free port)."""

    def __init__(self, auth: tuple[str, str] | None = None, refuse: bool = False) -> None:
        self.auth = auth
        self.refuse = refuse
        self.connects: list[str] = []  # "host:port" of every tunnel opened, in order
        self.requests: list[ConnectRequest] = []  # every well-formed CONNECT request
        self._server: asyncio.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("ConnectProxy is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A handler that starts after this line sees _closing and drops its
        # connection, so the sets below are complete once we read them.
        self._closing = True
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # abort(), not close(): close() waits to flush to a peer that may never read.
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            target = await self._serve_request(reader, writer)
            if target is not None:
                await self._tunnel(reader, writer, target)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: nothing to answer
        except asyncio.CancelledError:
            # asyncio logs an error for a cancelled client_connected_cb task, so
            # a handler that __aexit__ cancelled ends normally; others propagate.
            if not self._closing:
                raise
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _serve_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[str, int] | None:
        """Read and check one CONNECT request; answer errors; return the target."""
        try:
            request = await self._read_request(reader)
            self.requests.append(request)
            self._check(request)
            host, port = _split_target(request.target)
            if not _is_loopback(host):
                raise _Reject(403, "Forbidden")
            return host, port
        except _Reject as reject:
            lines = [f"HTTP/1.1 {reject.status} {reject.reason}", *reject.headers]
            lines += ["Content-Length: 0", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1"))
            await _linger(reader, writer)
            return None

    async def _read_line(self, reader: asyncio.StreamReader, status: int, reason: str) -> str:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:  # longer than the stream's own 64 KiB limit
            raise _Reject(status, reason) from None
        if len(line) > MAX_LINE:
            raise _Reject(status, reason)
        return line.rstrip(b"\r\n").decode("latin-1")

    async def _read_request(self, reader: asyncio.StreamReader) -> ConnectRequest:
        request_line = await self._read_line(reader, 414, "URI Too Long")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Reject(400, "Bad Request")
        method, target, _version = parts
        if method != "CONNECT":
            raise _Reject(405, "Method Not Allowed", ("Allow: CONNECT",))
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS + 1):
            line = await self._read_line(reader, 431, "Request Header Fields Too Large")
            if not line:
                return ConnectRequest(target, headers)
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise _Reject(400, "Bad Request")
            headers.setdefault(name.lower(), value.strip())
        raise _Reject(431, "Request Header Fields Too Large")

    def _check(self, request: ConnectRequest) -> None:
        if self.auth is not None:
            expected = ":".join(self.auth)
            scheme, _, token = request.headers.get("proxy-authorization", "").partition(" ")
            try:
                given = base64.b64decode(token.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                given = None
            if scheme.lower() != "basic" or given != expected:
                challenge = 'Proxy-Authenticate: Basic realm="test"'
                raise _Reject(407, "Proxy Authentication Required", (challenge,))
        if self.refuse:
            raise _Reject(403, "Forbidden")

    async def _tunnel(
        self,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        target: tuple[str, int],
    ) -> None:
        host, port = target
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            client_writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await _linger(client_reader, client_writer)
            return
        self._writers.add(target_writer)
        try:
            self.connects.append(f"{host}:{port}")
            client_writer.write(ESTABLISHED)
            # Bytes the client sent right behind its request are still in
            # client_reader's buffer and go through the tunnel first.
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(_pipe(client_reader, target_writer))
                    group.create_task(_pipe(target_reader, client_writer))
            except* OSError:
                pass  # a reset on either side ends the tunnel; the finally closes both
        finally:
            target_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close) so the peer sees it too."""
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if not writer.is_closing() and writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send our FIN, then read what the client still sends, a bounded amount for a
    bounded time: closing with unread bytes makes the kernel send a RST, which can
    destroy the error response before the client has read it."""
    await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
    received = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while received <= LINGER_BYTES and (data := await reader.read(CHUNK)):
                received += len(data)
