"""HTTP/1.1 requests and responses for the opening handshake and plain HTTP.

Parsing is done by llhttp (through ``httptools``), a hardened parser; this module adds
the limits of :class:`~backchannel.protocol.limits.Limits` and turns its callbacks into
:class:`Request` and :class:`Response` objects.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

from ..exceptions import InvalidRequest, InvalidResponse
from .limits import Limits

__all__ = ["Headers", "Request", "RequestParser", "Response", "parse_response_head"]


class Headers:
    """HTTP header fields: ordered, repeatable, looked up without regard to case."""

    __slots__ = ("_items",)

    def __init__(
        self, items: Iterable[tuple[str, str]] | dict[str, str] | Headers | None = None
    ) -> None:
        if items is None:
            self._items: list[tuple[str, str]] = []
        elif isinstance(items, dict):
            self._items = list(items.items())
        elif isinstance(items, Headers):
            self._items = list(items._items)
        else:
            self._items = list(items)

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any with the same name."""
        self._items.append((name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field named ``name`` with one."""
        self.remove(name)
        self._items.append((name, value))

    def remove(self, name: str) -> None:
        """Remove every field named ``name``."""
        lower = name.lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != lower]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of ``name``; several fields are joined with ", " (RFC 9110 5.3)."""
        values = self.get_all(name)
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        lower = name.lower()
        size = len(lower)
        # Comparing lengths first skips most lower() calls: a handshake looks up about
        # eight names among as many fields.
        return [v for n, v in self._items if len(n) == size and n.lower() == lower]

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get_all(name))

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def serialize(self) -> bytes:
        """The fields as they go on the wire, each line ending in CRLF."""
        for name, value in self._items:
            # A CR or LF in a value would let a caller's data inject headers.
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"invalid character in header {name!r}")
        return "".join(f"{n}: {v}\r\n" for n, v in self._items).encode("latin-1")


@dataclass
class Request:
    """An HTTP request: the handshake, or a plain request on the same port."""

    method: str
    path: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    keep_alive: bool = True
    #: The request line's HTTP version, "1.1" or "1.0" (a WebSocket needs 1.1 or later).
    http_version: str = "1.1"

    def serialize(self) -> bytes:
        """The request as bytes (the client side of the handshake)."""
        head = f"{self.method} {self.path} HTTP/1.1\r\n".encode("latin-1")
        return head + self.headers.serialize() + b"\r\n" + self.body


@dataclass
class Response:
    """An HTTP response: 101 for the handshake, or any answer to a plain request."""

    status: int
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    reason: str = ""
    #: The status line's HTTP version, as received (a WebSocket needs 1.1 or later).
    http_version: str = "1.1"

    def __post_init__(self) -> None:
        if not self.reason:
            try:
                self.reason = HTTPStatus(self.status).phrase
            except ValueError:
                self.reason = "Unknown"

    @classmethod
    def text(cls, status: int, text: str, headers: Headers | None = None) -> Response:
        """A plain-text response with its length set."""
        body = text.encode()
        response = cls(status, Headers(headers), body)
        response.headers.set("Content-Type", "text/plain; charset=utf-8")
        return response

    @classmethod
    def json(cls, status: int, obj: Any, headers: Headers | None = None) -> Response:
        """A compact JSON response."""
        body = json.dumps(obj, separators=(",", ":")).encode()
        response = cls(status, Headers(headers), body)
        response.headers.set("Content-Type", "application/json")
        return response

    def serialize(self) -> bytes:
        """The response as bytes; Content-Length is added when the status allows a body."""
        headers = self.headers
        if self.status >= 200 and self.status not in (204, 304) and "Content-Length" not in headers:
            headers = Headers(headers)
            headers.add("Content-Length", str(len(self.body)))
        head = f"HTTP/1.1 {self.status} {self.reason}\r\n".encode("latin-1")
        return head + headers.serialize() + b"\r\n" + self.body


_HEAD_END = b"\r\n\r\n"


class _ChunkedBody:
    """Finds where a chunked body ends (RFC 9112 section 7.1).

    llhttp checks the syntax; this only counts, so that the parser is never given bytes
    past the end of a message and the next request's head is measured from its first
    byte. Lines (chunk sizes, trailer fields) are kept only until their LF, at most
    ``max_line`` bytes.
    """

    __slots__ = ("_left", "_line", "_max_line", "_state")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._state = self._SIZE
        self._left = 0
        self._line = b""

    def advance(self, data: bytes, pos: int) -> tuple[int, bool]:
        """How many bytes from ``pos`` belong to the body, and whether it ends there."""
        start = pos
        end = len(data)
        while pos < end:
            if self._state in (self._DATA, self._DATA_END):
                take = min(self._left, end - pos)
                pos += take
                self._left -= take
                if self._left == 0:
                    if self._state == self._DATA:
                        self._state, self._left = self._DATA_END, 2  # the CRLF after data
                    else:
                        self._state = self._SIZE
                continue
            # No further than a line may go: a line that never ends costs max_line.
            newline = data.find(b"\n", pos, pos + self._max_line + 3 - len(self._line))
            stop = (
                min(end, pos + self._max_line + 3 - len(self._line)) if newline < 0 else newline + 1
            )
            self._line += data[pos:stop]
            pos = stop
            if len(self._line) > self._max_line + 2:
                raise InvalidRequest("chunk header or trailer line too long", 431)
            if newline < 0:
                break
            line, self._line = self._line, b""
            if self._state == self._TRAILER:
                if line == b"\r\n":
                    return pos - start, True
                continue
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise InvalidRequest("malformed HTTP request: invalid chunk size", 400) from None
            if size < 0:
                raise InvalidRequest("malformed HTTP request: invalid chunk size", 400)
            if size == 0:
                self._state = self._TRAILER
            else:
                self._state, self._left = self._DATA, size
        return pos - start, False


class RequestParser:
    """Parses requests from a byte stream, enforcing the handshake limits.

    ``feed`` returns the requests completed by the new bytes. When a request asks to
    upgrade, it is the last one returned, :attr:`upgraded` is set and :attr:`rest` holds
    the bytes that followed it (the start of the WebSocket stream).

    The limits hold exactly whatever the reads: the parser is given a request's head up
    to its end (the first CRLF CRLF, as llhttp requires) and no further, and a body up to
    its end (Content-Length, or the chunked framing), so every head is measured from its
    own first byte, even when several requests arrive in one read.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[Request] = []
        self._reset_message()
        self._reset_framing()
        self.upgraded = False
        self.rest = b""

    def _reset_message(self) -> None:
        self._url = bytearray()
        self._headers = Headers()
        self._body = bytearray()
        self._method = ""
        self._version = "1.1"

    def _reset_framing(self) -> None:
        # Where the stream stands between messages: in a head (its size so far and its
        # last three bytes, to find a CRLF CRLF split across reads), or in a body.
        self._in_head = True
        self._head_size = 0
        self._head_tail = b""
        self._body_left = 0
        self._chunked: _ChunkedBody | None = None

    def feed(self, data: bytes) -> list[Request]:
        """Parse more bytes; raise :class:`InvalidRequest` with the status to answer."""
        if self.upgraded:
            raise InvalidRequest("no more requests after an upgrade")
        data = bytes(data)
        pos = 0
        while pos < len(data) and not self.upgraded:
            size = self._next_piece(data, pos)
            self._feed_parser(data, pos, size)
            pos += size
        done, self._done = self._done, []
        return done

    def _feed_parser(self, data: bytes, pos: int, size: int) -> None:
        try:
            self._parser.feed_data(data[pos : pos + size])
        except httptools.HttpParserUpgrade as exc:
            self.upgraded = True
            self.rest = data[pos + int(exc.args[0]) :]
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised; bring back our own error.
            if isinstance(exc.__context__, InvalidRequest):
                raise exc.__context__ from None
            raise InvalidRequest(f"malformed HTTP request: {exc}", 400) from exc

    def _next_piece(self, data: bytes, pos: int) -> int:
        """How many bytes from ``pos`` to give the parser: no further than this message."""
        available = len(data) - pos
        if self._in_head:
            budget = self._limits.max_head_size - self._head_size
            tail = self._head_tail
            # A terminator that starts in the last read's tail (at most 3 bytes) ends in
            # the first 3 of this one; else it is looked for within the budget only.
            found = (tail + data[pos : pos + 3]).find(_HEAD_END) if tail else -1
            if found >= 0:
                size = found + len(_HEAD_END) - len(tail)  # 1 to 3, never 0
            else:
                found = data.find(_HEAD_END, pos, pos + budget)
                size = found + len(_HEAD_END) - pos if found >= 0 else available
            if size > budget:
                # What fits is parsed first, so that a malformed head gets 400 whatever
                # the reads, and 431 only a well-formed one that is too large.
                self._feed_parser(data, pos, budget)
                raise InvalidRequest("request head too large", 431)
            self._head_size += size
            if size >= 3:
                self._head_tail = data[pos + size - 3 : pos + size]
            else:
                self._head_tail = (tail + data[pos : pos + size])[-3:]
            return size
        if self._chunked is not None:
            size, _ = self._chunked.advance(data, pos)
        else:
            size = min(self._body_left, available)
            self._body_left -= size
        if size == 0:
            # llhttp did not end the message where its framing says it ends: never feed
            # it nothing in a loop.
            raise InvalidRequest("malformed HTTP request: unexpected message framing", 400)
        return size

    # httptools callbacks.

    def on_message_begin(self) -> None:
        self._reset_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        # The whole request line, "METHOD SP target SP HTTP/1.1" (RFC 9112 section 3):
        # the version's 8 bytes are counted before they arrive, so the check is the same
        # whichever read the target ends in.
        line = len(self._parser.get_method()) + 1 + len(self._url) + 1 + 8
        if line > self._limits.max_line:
            raise InvalidRequest("request target too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > self._limits.max_line:
            raise InvalidRequest("header line too long", 431)
        if len(self._headers) >= self._limits.max_headers:
            raise InvalidRequest("too many header fields", 431)
        # RFC 9110 section 5.5: whitespace around a field value is not part of it.
        self._headers.add(name.decode("latin-1"), value.decode("latin-1").strip(" \t"))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._method = self._parser.get_method().decode("ascii")
        self._version = self._parser.get_http_version()
        # The body's framing (RFC 9112 section 6.3); llhttp has already refused a request
        # with both fields, or with a Transfer-Encoding that does not end in chunked.
        if "Transfer-Encoding" in self._headers:
            self._chunked = _ChunkedBody(self._limits.max_line)
        else:
            length = self._headers.get("Content-Length")
            try:
                self._body_left = int(length) if length is not None else 0
            except ValueError:
                raise InvalidRequest(
                    "malformed HTTP request: invalid Content-Length", 400
                ) from None
            if self._body_left > self._limits.max_body_size:
                raise InvalidRequest("request body too large", 413)

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > self._limits.max_body_size:
            raise InvalidRequest("request body too large", 413)

    def on_message_complete(self) -> None:
        self._done.append(
            Request(
                self._method,
                self._url.decode("latin-1"),
                self._headers,
                bytes(self._body),
                self._parser.should_keep_alive(),
                self._version,
            )
        )
        self._reset_message()
        # The next request's head is counted from its first byte.
        self._reset_framing()


class _ResponseHead:
    """Collects the status and headers of a response head from httptools."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.headers = Headers()
        self.reason = bytearray()
        self.complete = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) + 2 > self.limits.max_line:
            raise InvalidResponse("response header line too long")
        if len(self.headers) >= self.limits.max_headers:
            raise InvalidResponse("too many header fields in response")
        self.headers.add(name.decode("latin-1"), value.decode("latin-1").strip(" \t"))

    def on_headers_complete(self) -> None:
        self.complete = True


def parse_response_head(
    buffer: bytes | bytearray, limits: Limits | None = None
) -> tuple[Response, bytes] | None:
    """Parse a response head at the start of ``buffer``.

    Return the response (without body) and the bytes after the head, or ``None`` when
    the head is not complete yet. Raise :class:`InvalidResponse` when it is malformed or
    past the limits.
    """
    limits = limits or Limits()
    # The head, its final CRLF CRLF included, must fit in max_head_size bytes: the
    # terminator is looked for only there, whatever the buffer holds beyond.
    end = buffer.find(_HEAD_END, 0, limits.max_head_size)
    if end < 0:
        if len(buffer) >= limits.max_head_size:
            raise InvalidResponse("response head too large")
        return None
    head = bytes(buffer[: end + 4])
    collector = _ResponseHead(limits)
    parser = httptools.HttpResponseParser(collector)
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass  # a 101 response: the head is all we wanted
    except httptools.HttpParserError as exc:
        if isinstance(exc.__context__, InvalidResponse):
            raise exc.__context__ from None
        # After a complete head llhttp pauses on a 101 ("Pause on CONNECT/Upgrade"):
        # the head is all we wanted.
        if not collector.complete:
            raise InvalidResponse(f"malformed HTTP response: {exc}") from exc
    if not collector.complete:
        raise InvalidResponse("malformed HTTP response head")
    status = parser.get_status_code()
    reason = collector.reason.decode("latin-1")
    response = Response(status, collector.headers, b"", reason, parser.get_http_version())
    return response, bytes(buffer[end + 4 :])
