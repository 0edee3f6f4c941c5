"""The opening handshake, both roles (RFC 6455 section 4).

A server turns a parsed :class:`~backchannel.protocol.http11.Request` into a 101
response and a :class:`~backchannel.protocol.connection.Connection`, or into an HTTP error
that names the problem. A client builds the request and checks the response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import urllib.parse
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from ..exceptions import (
    InvalidArgument,
    InvalidRequest,
    InvalidResponse,
    InvalidStatus,
    NegotiationError,
)
from .connection import CLIENT, SERVER, Connection
from .deflate import (
    DeflateConfig,
    DeflateOffer,
    PerMessageDeflate,
    accept_client,
    format_offers,
    negotiate_server,
)
from .http11 import Headers, Request, Response
from .limits import Limits

__all__ = [
    "ClientHandshake",
    "ServerHandshake",
    "WebSocketURI",
    "accept_key",
    "is_upgrade_request",
    "parse_uri",
]

# Section 1.3: the GUID appended to the key before hashing.
_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SERVER_NAME = "backchannel"


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (section 4.2.2, step 5.4)."""
    digest = hashlib.sha1((key + _GUID).encode()).digest()
    return base64.b64encode(digest).decode()


def _tokens(headers: Headers, name: str) -> list[str]:
    """The comma-separated tokens of every ``name`` field, as sent."""
    return [t.strip() for v in headers.get_all(name) for t in v.split(",") if t.strip()]


def _lower_tokens(headers: Headers, name: str) -> list[str]:
    """The tokens of a field whose tokens are case-insensitive (Upgrade, Connection)."""
    return [token.lower() for token in _tokens(headers, name)]


def _at_least_http11(version: str) -> bool:
    major, _, minor = version.partition(".")
    return (int(major), int(minor or 0)) >= (1, 1)


def is_upgrade_request(request: Request) -> bool:
    """Whether ``request`` asks for a WebSocket (an Upgrade field naming websocket)."""
    return "websocket" in _lower_tokens(request.headers, "Upgrade")


@dataclass(frozen=True)
class WebSocketURI:
    """A parsed ``ws://`` or ``wss://`` URI (section 3)."""

    secure: bool
    host: str
    port: int
    resource: str
    user_info: tuple[str, str] | None = None

    @property
    def host_header(self) -> str:
        """The Host field: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_uri(uri: str) -> WebSocketURI:
    """Parse a WebSocket URI; raise :class:`InvalidArgument` for anything else."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("ws", "wss"):
        raise InvalidArgument(f"not a WebSocket URI (ws:// or wss://): {uri!r}")
    if "#" in uri:
        # Section 3: fragment identifiers are meaningless in WebSocket URIs.
        raise InvalidArgument(f"a WebSocket URI has no fragment: {uri!r}")
    if not parsed.hostname:
        raise InvalidArgument(f"no host in WebSocket URI: {uri!r}")
    secure = parsed.scheme == "wss"
    try:
        port = parsed.port if parsed.port is not None else (443 if secure else 80)
    except ValueError as exc:
        raise InvalidArgument(f"invalid port in WebSocket URI: {uri!r}") from exc
    resource = parsed.path or "/"
    if parsed.query:
        resource += "?" + parsed.query
    # The resource goes into the request line as it is: a space or a control character
    # would break (or inject into) it.
    if any(c <= " " or c == "\x7f" for c in resource):
        raise InvalidArgument(f"invalid character in WebSocket URI path: {uri!r}")
    user_info = None
    if parsed.username is not None:
        user_info = (
            urllib.parse.unquote(parsed.username),
            urllib.parse.unquote(parsed.password or ""),
        )
    return WebSocketURI(secure, parsed.hostname, port, resource, user_info)


class ServerHandshake:
    """Validates upgrade requests and answers them (section 4.2)."""

    def __init__(
        self,
        *,
        subprotocols: Sequence[str] | None = None,
        deflate: DeflateConfig | None = None,
        origins: Collection[str | None] | None = None,
        check_origin: Callable[[str | None], bool] | None = None,
        limits: Limits | None = None,
        compress_threshold: int = 128,
    ) -> None:
        self.subprotocols = list(subprotocols or [])
        self.deflate = deflate
        self.origins = origins
        self.check_origin = check_origin
        self.limits = limits or Limits()
        self.compress_threshold = compress_threshold

    def accept(self, request: Request) -> tuple[Response, Connection]:
        """Check ``request``; return the 101 response and the open connection.

        Raise :class:`InvalidRequest` (its ``status`` is the answer) when it is not valid;
        :meth:`reject` turns it into a response.
        """
        headers = request.headers
        # Section 4.2.1, in order.
        if request.method != "GET":
            raise InvalidRequest("the opening handshake must be a GET request", 405)
        if not _at_least_http11(request.http_version):
            # Section 4.1 (client requirement 1) and 4.2.1 (item 1): the handshake is an
            # HTTP/1.1 or later GET. 400, not 505: this server speaks HTTP/1.0 to plain
            # requests; it is only the upgrade that needs 1.1 (RFC 9110 section 7.8 also
            # has a server ignore Upgrade in an HTTP/1.0 request).
            raise InvalidRequest("the opening handshake needs HTTP/1.1 or later", 400)
        if len(headers.get_all("Host")) != 1:
            raise InvalidRequest("missing or repeated Host header", 400)
        if "websocket" not in _lower_tokens(headers, "Upgrade"):
            raise InvalidRequest("Upgrade header must include websocket", 426)
        if "upgrade" not in _lower_tokens(headers, "Connection"):
            raise InvalidRequest("Connection header must include Upgrade", 400)
        keys = headers.get_all("Sec-WebSocket-Key")
        if len(keys) != 1:
            raise InvalidRequest("missing or repeated Sec-WebSocket-Key header", 400)
        key = keys[0].strip()
        try:
            raw_key = base64.b64decode(key.encode(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest("Sec-WebSocket-Key is not base64", 400) from exc
        if len(raw_key) != 16:
            raise InvalidRequest("Sec-WebSocket-Key must decode to 16 bytes", 400)
        versions = headers.get_all("Sec-WebSocket-Version")
        if [v.strip() for v in versions] != ["13"]:
            # Section 4.4: answer 426 with the versions we support.
            raise InvalidRequest("unsupported WebSocket version; this server speaks 13", 426)
        # Section 10.2: the Origin check protects browsers' users from other sites.
        origin = headers.get("Origin")
        if self.origins is not None and origin not in self.origins:
            raise InvalidRequest(f"origin not allowed: {origin}", 403)
        if self.check_origin is not None and not self.check_origin(origin):
            raise InvalidRequest(f"origin not allowed: {origin}", 403)

        response_headers = Headers(
            [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(key)),
            ]
        )
        subprotocol = self.select_subprotocol(_tokens(headers, "Sec-WebSocket-Protocol"))
        if subprotocol is not None:
            response_headers.add("Sec-WebSocket-Protocol", subprotocol)
        deflate = None
        if self.deflate is not None:
            try:
                agreed = negotiate_server(headers.get_all("Sec-WebSocket-Extensions"), self.deflate)
            except NegotiationError as exc:
                raise InvalidRequest(f"invalid Sec-WebSocket-Extensions: {exc}", 400) from exc
            if agreed is not None:
                params, value = agreed
                response_headers.add("Sec-WebSocket-Extensions", value)
                deflate = PerMessageDeflate(
                    params,
                    is_client=False,
                    compress_level=self.deflate.compress_level,
                    mem_level=self.deflate.mem_level,
                )
        response_headers.add("Server", SERVER_NAME)
        response = Response(101, response_headers)
        connection = Connection(
            SERVER,
            limits=self.limits,
            deflate=deflate,
            compress_threshold=self.compress_threshold,
        )
        connection.subprotocol = subprotocol
        return response, connection

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """The first of our subprotocols the client offered, in our order of preference.

        Without a match the connection proceeds without a subprotocol (section 4.2.2,
        step 5.4 lets the server choose none); the application sees ``subprotocol`` None.
        """
        for candidate in self.subprotocols:
            if candidate in offered:
                return candidate
        return None

    @staticmethod
    def reject(status: int, text: str) -> Response:
        """An HTTP error response for a refused handshake."""
        headers = Headers([("Server", SERVER_NAME), ("Connection", "close")])
        if status == 426:
            headers.add("Upgrade", "websocket")
            headers.add("Sec-WebSocket-Version", "13")
        return Response.text(status, text + "\n", headers)


class ClientHandshake:
    """Builds the upgrade request and validates the server's answer (section 4.1)."""

    def __init__(
        self,
        uri: WebSocketURI,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = None,
        deflate_offers: Sequence[DeflateOffer] | None = None,
        additional_headers: Headers | Sequence[tuple[str, str]] | dict[str, str] | None = None,
        limits: Limits | None = None,
        compress_threshold: int = 128,
        user_agent: str | None = SERVER_NAME,
    ) -> None:
        self.uri = uri
        self.origin = origin
        self.subprotocols = list(subprotocols or [])
        self.deflate_offers = list(deflate_offers or [])
        self.additional_headers = Headers(additional_headers)
        self.limits = limits or Limits()
        self.compress_threshold = compress_threshold
        self.user_agent = user_agent
        # Section 4.1: a random 16-byte value, base64-encoded, new for each connection.
        self.key = base64.b64encode(os.urandom(16)).decode()

    def request(self) -> Request:
        """The upgrade request to send."""
        headers = Headers(
            [
                ("Host", self.uri.host_header),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Key", self.key),
                ("Sec-WebSocket-Version", "13"),
            ]
        )
        if self.uri.user_info is not None:
            user, password = self.uri.user_info
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            headers.add("Authorization", f"Basic {token}")
        if self.origin is not None:
            headers.add("Origin", self.origin)
        if self.subprotocols:
            headers.add("Sec-WebSocket-Protocol", ", ".join(self.subprotocols))
        if self.deflate_offers:
            headers.add("Sec-WebSocket-Extensions", format_offers(self.deflate_offers))
        if self.user_agent is not None and "User-Agent" not in self.additional_headers:
            headers.add("User-Agent", self.user_agent)
        for name, value in self.additional_headers:
            headers.add(name, value)
        return Request("GET", self.uri.resource, headers)

    def accept(self, response: Response) -> Connection:
        """Check the response (section 4.1, the client's checks); return the connection."""
        if response.status != 101:
            raise InvalidStatus(response.status, response.reason, response.body)
        if not _at_least_http11(response.http_version):
            # Section 4.1: the server's handshake is an HTTP/1.1 or later response; an
            # HTTP/1.0 server cannot switch protocols (RFC 9110 section 7.8).
            raise InvalidResponse(f"101 response with HTTP/{response.http_version}")
        headers = response.headers
        if "websocket" not in _lower_tokens(headers, "Upgrade"):
            raise InvalidResponse("response lacks Upgrade: websocket")
        if "upgrade" not in _lower_tokens(headers, "Connection"):
            raise InvalidResponse("response lacks Connection: Upgrade")
        accept = headers.get_all("Sec-WebSocket-Accept")
        if accept != [accept_key(self.key)]:
            raise InvalidResponse("Sec-WebSocket-Accept does not match the key")
        subprotocol = None
        protocols = _tokens(headers, "Sec-WebSocket-Protocol")
        if protocols:
            if len(protocols) > 1 or protocols[0] not in self.subprotocols:
                raise NegotiationError(f"server chose a subprotocol we did not offer: {protocols}")
            subprotocol = protocols[0]
        deflate = None
        extensions = headers.get_all("Sec-WebSocket-Extensions")
        if extensions:
            if not self.deflate_offers:
                raise NegotiationError("server chose an extension we did not offer")
            params = accept_client(", ".join(extensions), self.deflate_offers)
            deflate = PerMessageDeflate(params, is_client=True)
        connection = Connection(
            CLIENT,
            limits=self.limits,
            deflate=deflate,
            compress_threshold=self.compress_threshold,
        )
        connection.subprotocol = subprotocol
        return connection
