"""Tests of the opening handshake, both roles (RFC 6455 section 4), and of parse_uri."""

from __future__ import annotations

import base64

import pytest

from backchannel.exceptions import (
    InvalidArgument,
    InvalidRequest,
    InvalidResponse,
    InvalidStatus,
    NegotiationError,
)
from backchannel.protocol.connection import CLIENT, OPEN, SERVER, Connection
from backchannel.protocol.deflate import DeflateConfig, DeflateOffer
from backchannel.protocol.events import BinaryMessage, TextMessage
from backchannel.protocol.handshake import (
    ClientHandshake,
    ServerHandshake,
    WebSocketURI,
    accept_key,
    is_upgrade_request,
    parse_uri,
)
from backchannel.protocol.http11 import (
    Headers,
    Request,
    RequestParser,
    Response,
    parse_response_head,
)
from backchannel.protocol.limits import Limits

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_request(
    *,
    method: str = "GET",
    drop: tuple[str, ...] = (),
    **fields: str,
) -> Request:
    """A valid upgrade request; ``fields`` (underscores for dashes) replace or add fields."""
    headers = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in fields.items():
        headers[name.replace("_", "-")] = value
    items = [(n, v) for n, v in headers.items() if n not in drop]
    return Request(method, "/chat", Headers(items))


def refused(handshake: ServerHandshake, request: Request) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as exc_info:
        handshake.accept(request)
    return exc_info.value


# ---------------------------------------------------------------------------------------
# accept_key


def test_accept_key_rfc_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key(KEY) == ACCEPT


def test_accept_key_is_base64_sha1() -> None:
    value = accept_key("x3JJHMbDL1EzLkh9GBhXDw==")
    assert value == "HSmrc0sMlYUkAGmm5OPpG2HaGWk="  # RFC 6455 section 4.1's other example
    assert len(base64.b64decode(value)) == 20


# ---------------------------------------------------------------------------------------
# ServerHandshake


def test_server_accepts_valid_request() -> None:
    response, conn = ServerHandshake().accept(upgrade_request())
    assert response.status == 101
    assert response.headers["Upgrade"] == "websocket"
    assert response.headers["Connection"] == "Upgrade"
    assert response.headers["Sec-WebSocket-Accept"] == ACCEPT
    assert "Sec-WebSocket-Protocol" not in response.headers
    assert "Sec-WebSocket-Extensions" not in response.headers
    assert isinstance(conn, Connection)
    assert conn.side is SERVER
    assert conn.state is OPEN
    assert conn.subprotocol is None
    assert conn.deflate is None
    data = response.serialize()
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Content-Length" not in data


def test_server_passes_limits_and_threshold_to_connection() -> None:
    limits = Limits(max_size=1234)
    _, conn = ServerHandshake(limits=limits, compress_threshold=7).accept(upgrade_request())
    assert conn.limits is limits
    assert conn.compress_threshold == 7


@pytest.mark.parametrize(
    "fields",
    [
        {"Connection": "keep-alive, Upgrade"},
        {"Connection": "UPGRADE"},
        {"Upgrade": "WebSocket"},
        {"Upgrade": "foo/1, websocket"},
        {"Sec-WebSocket-Key": f"  {KEY} "},
    ],
)
def test_server_accepts_token_lists_and_case(fields: dict[str, str]) -> None:
    request = upgrade_request()
    for name, value in fields.items():
        request.headers.set(name, value)
    response, _ = ServerHandshake().accept(request)
    assert response.status == 101
    assert response.headers["Sec-WebSocket-Accept"] == ACCEPT


def test_server_accepts_multiple_connection_fields() -> None:
    request = upgrade_request()
    request.headers.set("Connection", "keep-alive")
    request.headers.add("Connection", "Upgrade")
    assert ServerHandshake().accept(request)[0].status == 101


def test_non_get_is_405() -> None:
    assert refused(ServerHandshake(), upgrade_request(method="POST")).status == 405


def test_http10_upgrade_is_400() -> None:
    # RFC 6455 section 4.1 and 4.2.1: the opening handshake is HTTP/1.1 or later.
    raw = bytes(upgrade_request().serialize()).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    parser = RequestParser()
    (request,) = parser.feed(raw)
    assert request.http_version == "1.0"
    error = refused(ServerHandshake(), request)
    assert error.status == 400
    assert "HTTP/1.1" in str(error)


def test_http11_upgrade_from_parser_is_accepted() -> None:
    (request,) = RequestParser().feed(upgrade_request().serialize())
    assert request.http_version == "1.1"
    assert ServerHandshake().accept(request)[0].status == 101


def test_missing_host_is_400() -> None:
    assert refused(ServerHandshake(), upgrade_request(drop=("Host",))).status == 400


def test_repeated_host_is_400() -> None:
    request = upgrade_request()
    request.headers.add("Host", "other.example.com")
    assert refused(ServerHandshake(), request).status == 400


@pytest.mark.parametrize("upgrade", [None, "h2c", "websocket2", ""])
def test_upgrade_without_websocket_is_426(upgrade: str | None) -> None:
    if upgrade is None:
        request = upgrade_request(drop=("Upgrade",))
    else:
        request = upgrade_request(Upgrade=upgrade)
    assert refused(ServerHandshake(), request).status == 426


@pytest.mark.parametrize("connection", [None, "keep-alive", "close", "upgrades"])
def test_connection_without_upgrade_is_400(connection: str | None) -> None:
    if connection is None:
        request = upgrade_request(drop=("Connection",))
    else:
        request = upgrade_request(Connection=connection)
    assert refused(ServerHandshake(), request).status == 400


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(None, id="missing"),
        pytest.param("not base64!!", id="not-base64"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ", id="no-padding"),
        pytest.param(base64.b64encode(bytes(15)).decode(), id="15-bytes"),
        pytest.param(base64.b64encode(bytes(17)).decode(), id="17-bytes"),
        pytest.param("", id="empty"),
        pytest.param("dGhlIHNhbXBsZSBub25jZQ==é", id="non-ascii"),
    ],
)
def test_bad_key_is_400(key: str | None) -> None:
    if key is None:
        request = upgrade_request(drop=("Sec-WebSocket-Key",))
    else:
        request = upgrade_request(Sec_WebSocket_Key=key)
    assert refused(ServerHandshake(), request).status == 400


def test_repeated_key_is_400() -> None:
    request = upgrade_request()
    request.headers.add("Sec-WebSocket-Key", KEY)
    assert refused(ServerHandshake(), request).status == 400


@pytest.mark.parametrize("version", [None, "8", "12", "14", "13, 8", "thirteen"])
def test_unsupported_version_is_426_with_supported_version(version: str | None) -> None:
    if version is None:
        request = upgrade_request(drop=("Sec-WebSocket-Version",))
    else:
        request = upgrade_request(Sec_WebSocket_Version=version)
    error = refused(ServerHandshake(), request)
    assert error.status == 426
    response = ServerHandshake.reject(error.status, str(error))
    assert response.status == 426
    # Section 4.4: the answer lists the versions the server speaks.
    assert response.headers.get_all("Sec-WebSocket-Version") == ["13"]
    assert response.headers["Upgrade"] == "websocket"
    parsed = parse_response_head(response.serialize())
    assert parsed is not None
    assert parsed[0].headers["sec-websocket-version"] == "13"


def test_reject_response() -> None:
    response = ServerHandshake.reject(403, "origin not allowed")
    assert response.status == 403
    assert response.body == b"origin not allowed\n"
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "Sec-WebSocket-Version" not in response.headers
    data = response.serialize()
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert data.endswith(b"\r\n\r\norigin not allowed\n")
    assert b"Content-Length: 19\r\n" in data


def test_origin_allow_list() -> None:
    handshake = ServerHandshake(origins=["https://good.example", "https://also.example"])
    response, _ = handshake.accept(upgrade_request(Origin="https://good.example"))
    assert response.status == 101
    error = refused(handshake, upgrade_request(Origin="https://evil.example"))
    assert error.status == 403
    # Without an Origin (not a browser) the list must name None to allow it.
    assert refused(handshake, upgrade_request()).status == 403
    # Origins are compared exactly.
    assert refused(handshake, upgrade_request(Origin="https://GOOD.example")).status == 403


def test_origin_allow_list_with_none() -> None:
    handshake = ServerHandshake(origins=[None, "https://good.example"])
    assert handshake.accept(upgrade_request())[0].status == 101
    assert handshake.accept(upgrade_request(Origin="https://good.example"))[0].status == 101
    assert refused(handshake, upgrade_request(Origin="null")).status == 403


def test_empty_origin_allow_list_refuses_everything() -> None:
    handshake = ServerHandshake(origins=[])
    assert refused(handshake, upgrade_request()).status == 403
    assert refused(handshake, upgrade_request(Origin="https://a.example")).status == 403


def test_check_origin_hook() -> None:
    seen: list[str | None] = []

    def check(origin: str | None) -> bool:
        seen.append(origin)
        return origin is not None and origin.endswith(".trusted.example")

    handshake = ServerHandshake(check_origin=check)
    assert handshake.accept(upgrade_request(Origin="https://app.trusted.example"))[0].status == 101
    assert refused(handshake, upgrade_request(Origin="https://other.example")).status == 403
    assert refused(handshake, upgrade_request()).status == 403
    assert seen == ["https://app.trusted.example", "https://other.example", None]


def test_check_origin_hook_not_called_for_invalid_request() -> None:
    calls: list[str | None] = []

    def check(origin: str | None) -> bool:
        calls.append(origin)
        return True

    handshake = ServerHandshake(check_origin=check)
    refused(handshake, upgrade_request(Sec_WebSocket_Version="8"))
    assert calls == []


@pytest.mark.parametrize(
    ("ours", "offered", "chosen"),
    [
        (["chat.v2", "chat.v1"], "chat.v1, chat.v2", "chat.v2"),  # our preference wins
        (["chat.v1", "chat.v2"], "chat.v2, chat.v1", "chat.v1"),
        (["chat.v1"], "chat.v2", None),
        ([], "chat.v1", None),
        (["chat.v1"], None, None),
        (["Chat"], "chat", None),  # subprotocol names are case-sensitive
        (["b"], "a,b", "b"),
    ],
)
def test_subprotocol_selection(ours: list[str], offered: str | None, chosen: str | None) -> None:
    request = (
        upgrade_request() if offered is None else upgrade_request(Sec_WebSocket_Protocol=offered)
    )
    response, conn = ServerHandshake(subprotocols=ours).accept(request)
    assert response.status == 101
    assert conn.subprotocol == chosen
    if chosen is None:
        assert "Sec-WebSocket-Protocol" not in response.headers
    else:
        assert response.headers.get_all("Sec-WebSocket-Protocol") == [chosen]


def test_subprotocol_offered_in_several_fields() -> None:
    request = upgrade_request(Sec_WebSocket_Protocol="a")
    request.headers.add("Sec-WebSocket-Protocol", "b, c")
    _, conn = ServerHandshake(subprotocols=["c"]).accept(request)
    assert conn.subprotocol == "c"


def test_server_deflate_negotiated() -> None:
    request = upgrade_request(Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits")
    response, conn = ServerHandshake(deflate=DeflateConfig()).accept(request)
    assert response.headers.get_all("Sec-WebSocket-Extensions") == ["permessage-deflate"]
    assert conn.deflate is not None
    assert conn.deflate.is_client is False


def test_server_without_deflate_config_ignores_offer() -> None:
    request = upgrade_request(Sec_WebSocket_Extensions="permessage-deflate")
    response, conn = ServerHandshake().accept(request)
    assert "Sec-WebSocket-Extensions" not in response.headers
    assert conn.deflate is None


def test_server_deflate_without_offer() -> None:
    response, conn = ServerHandshake(deflate=DeflateConfig()).accept(upgrade_request())
    assert "Sec-WebSocket-Extensions" not in response.headers
    assert conn.deflate is None


def test_server_malformed_extensions_is_400() -> None:
    request = upgrade_request(Sec_WebSocket_Extensions="permessage-deflate;;")
    assert refused(ServerHandshake(deflate=DeflateConfig()), request).status == 400


def test_is_upgrade_request() -> None:
    assert is_upgrade_request(upgrade_request())
    assert is_upgrade_request(upgrade_request(Upgrade="WebSocket"))
    assert not is_upgrade_request(upgrade_request(drop=("Upgrade",)))
    assert not is_upgrade_request(upgrade_request(Upgrade="h2c"))


# ---------------------------------------------------------------------------------------
# ClientHandshake: the request


def test_client_request_fields() -> None:
    client = ClientHandshake(parse_uri("ws://example.com/chat?room=1"))
    request = client.request()
    assert request.method == "GET"
    assert request.path == "/chat?room=1"
    headers = request.headers
    assert headers.get_all("Host") == ["example.com"]
    assert headers["Upgrade"] == "websocket"
    assert headers["Connection"] == "Upgrade"
    assert headers["Sec-WebSocket-Version"] == "13"
    assert headers["Sec-WebSocket-Key"] == client.key
    assert len(base64.b64decode(client.key, validate=True)) == 16
    assert headers["User-Agent"] == "backchannel"
    for name in ("Origin", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions", "Authorization"):
        assert name not in headers


def test_client_key_is_fresh_per_handshake() -> None:
    uri = parse_uri("ws://example.com/")
    keys = {ClientHandshake(uri).key for _ in range(20)}
    assert len(keys) == 20


@pytest.mark.parametrize(
    ("uri", "host"),
    [
        ("ws://example.com/", "example.com"),
        ("ws://example.com:80/", "example.com"),
        ("ws://example.com:8080/", "example.com:8080"),
        ("ws://example.com:443/", "example.com:443"),
        ("wss://example.com/", "example.com"),
        ("wss://example.com:443/", "example.com"),
        ("wss://example.com:80/", "example.com:80"),
        ("ws://[::1]/", "[::1]"),
        ("ws://[::1]:9000/", "[::1]:9000"),
        ("wss://[2001:db8::1]:443/", "[2001:db8::1]"),
        ("ws://127.0.0.1:8765/", "127.0.0.1:8765"),
    ],
)
def test_client_host_header(uri: str, host: str) -> None:
    assert ClientHandshake(parse_uri(uri)).request().headers.get_all("Host") == [host]


def test_client_optional_fields() -> None:
    client = ClientHandshake(
        parse_uri("wss://example.com/"),
        origin="https://app.example.com",
        subprotocols=["chat.v2", "chat.v1"],
        deflate_offers=[DeflateOffer(), DeflateOffer(client_no_context_takeover=True)],
        additional_headers={"X-Token": "abc"},
        user_agent=None,
    )
    headers = client.request().headers
    assert headers["Origin"] == "https://app.example.com"
    assert headers["Sec-WebSocket-Protocol"] == "chat.v2, chat.v1"
    assert headers.get_all("Sec-WebSocket-Extensions") == [
        "permessage-deflate; client_max_window_bits, "
        "permessage-deflate; client_no_context_takeover; client_max_window_bits"
    ]
    assert headers["X-Token"] == "abc"
    assert "User-Agent" not in headers


def test_client_user_agent_overridden_by_additional_headers() -> None:
    client = ClientHandshake(
        parse_uri("ws://example.com/"), additional_headers=[("user-agent", "custom/1.0")]
    )
    assert client.request().headers.get_all("User-Agent") == ["custom/1.0"]


def test_client_authorization_from_user_info() -> None:
    client = ClientHandshake(parse_uri("ws://alice:s3cr%3At@example.com/"))
    authorization = client.request().headers["Authorization"]
    scheme, token = authorization.split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(token) == b"alice:s3cr:t"
    assert client.request().headers["Host"] == "example.com"


def test_client_authorization_user_without_password() -> None:
    headers = ClientHandshake(parse_uri("ws://bob@example.com/")).request().headers
    assert base64.b64decode(headers["Authorization"].split(" ")[1]) == b"bob:"


def test_client_request_is_accepted_by_server_parser() -> None:
    client = ClientHandshake(parse_uri("ws://example.com:8080/x?y=z"), subprotocols=["p"])
    parser = RequestParser()
    (request,) = parser.feed(client.request().serialize())
    assert parser.upgraded
    response, conn = ServerHandshake(subprotocols=["p"]).accept(request)
    assert response.headers["Sec-WebSocket-Accept"] == accept_key(client.key)
    assert conn.subprotocol == "p"


# ---------------------------------------------------------------------------------------
# ClientHandshake: checking the response


def good_response(client: ClientHandshake, **fields: str) -> Response:
    headers = Headers(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(client.key)),
        ]
    )
    for name, value in fields.items():
        headers.set(name.replace("_", "-"), value)
    return Response(101, headers)


def make_client(**kwargs: object) -> ClientHandshake:
    return ClientHandshake(parse_uri("ws://example.com/"), **kwargs)  # type: ignore[arg-type]


def test_client_accepts_good_response() -> None:
    client = make_client()
    conn = client.accept(good_response(client))
    assert conn.side is CLIENT
    assert conn.state is OPEN
    assert conn.subprotocol is None
    assert conn.deflate is None


def test_client_refuses_101_over_http10() -> None:
    client = make_client()
    head = good_response(client).serialize().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    parsed = parse_response_head(head)
    assert parsed is not None
    response, _ = parsed
    assert response.http_version == "1.0"
    with pytest.raises(InvalidResponse, match=r"HTTP/1\.0"):
        client.accept(response)


def test_client_accepts_case_and_token_lists() -> None:
    client = make_client()
    response = good_response(client, Upgrade="WebSocket", Connection="keep-alive, upgrade")
    assert client.accept(response).state is OPEN


def test_client_wrong_accept_key() -> None:
    client = make_client()
    with pytest.raises(InvalidResponse):
        client.accept(good_response(client, Sec_WebSocket_Accept=ACCEPT))
    response = good_response(client)
    response.headers.remove("Sec-WebSocket-Accept")
    with pytest.raises(InvalidResponse):
        client.accept(response)
    response = good_response(client)
    response.headers.add("Sec-WebSocket-Accept", accept_key(client.key))
    with pytest.raises(InvalidResponse):
        client.accept(response)


@pytest.mark.parametrize("name", ["Upgrade", "Connection"])
def test_client_missing_upgrade_or_connection(name: str) -> None:
    client = make_client()
    response = good_response(client)
    response.headers.remove(name)
    with pytest.raises(InvalidResponse):
        client.accept(response)
    wrong = good_response(client, **{name: "h2c" if name == "Upgrade" else "keep-alive"})
    with pytest.raises(InvalidResponse):
        client.accept(wrong)


def test_client_subprotocol_checks() -> None:
    client = make_client(subprotocols=["chat.v1", "chat.v2"])
    conn = client.accept(good_response(client, Sec_WebSocket_Protocol="chat.v2"))
    assert conn.subprotocol == "chat.v2"
    with pytest.raises(NegotiationError):
        client.accept(good_response(client, Sec_WebSocket_Protocol="chat.v3"))
    with pytest.raises(NegotiationError):
        client.accept(good_response(client, Sec_WebSocket_Protocol="chat.v1, chat.v2"))
    plain = make_client()
    with pytest.raises(NegotiationError):
        plain.accept(good_response(plain, Sec_WebSocket_Protocol="chat.v1"))


def test_client_no_subprotocol_chosen_is_fine() -> None:
    client = make_client(subprotocols=["chat.v1"])
    assert client.accept(good_response(client)).subprotocol is None


def test_client_extension_not_offered() -> None:
    client = make_client()
    with pytest.raises(NegotiationError):
        client.accept(good_response(client, Sec_WebSocket_Extensions="permessage-deflate"))


def test_client_unknown_extension_refused() -> None:
    client = make_client(deflate_offers=[DeflateOffer()])
    with pytest.raises(NegotiationError):
        client.accept(good_response(client, Sec_WebSocket_Extensions="x-webkit-deflate-frame"))


def test_client_accepts_offered_deflate() -> None:
    client = make_client(deflate_offers=[DeflateOffer()])
    conn = client.accept(good_response(client, Sec_WebSocket_Extensions="permessage-deflate"))
    assert conn.deflate is not None
    assert conn.deflate.is_client is True


@pytest.mark.parametrize("status", [200, 302, 400, 403, 404, 426, 500, 503])
def test_client_non_101_is_invalid_status(status: int) -> None:
    client = make_client()
    response = Response(status, Headers([("Content-Type", "text/plain")]), b"go away")
    with pytest.raises(InvalidStatus) as exc_info:
        client.accept(response)
    error = exc_info.value
    assert isinstance(error, InvalidResponse)
    assert error.status == status
    assert error.reason == response.reason
    assert error.body == b"go away"
    assert str(status) in str(error)


# ---------------------------------------------------------------------------------------
# Both roles end to end


def test_full_handshake_with_deflate_and_subprotocol() -> None:
    client = ClientHandshake(
        parse_uri("ws://example.com/live"),
        subprotocols=["v1"],
        deflate_offers=[DeflateOffer()],
    )
    server = ServerHandshake(subprotocols=["v1"], deflate=DeflateConfig())
    parser = RequestParser()
    (request,) = parser.feed(client.request().serialize())
    response, server_conn = server.accept(request)
    parsed = parse_response_head(response.serialize() + b"\x81\x02hi")
    assert parsed is not None
    client_response, rest = parsed
    client_conn = client.accept(client_response)
    assert client_conn.subprotocol == server_conn.subprotocol == "v1"
    assert client_conn.deflate is not None and server_conn.deflate is not None
    assert client_conn.receive_data(rest) == [TextMessage("hi")]

    text = "compressible " * 100
    wire = client_conn.send_text(text)
    assert wire[0] & 0x40  # RSV1: compressed
    assert len(wire) < len(text)
    assert server_conn.receive_data(wire) == [TextMessage(text)]
    wire = server_conn.send_binary(bytes(4000))
    assert wire[0] & 0x40
    assert client_conn.receive_data(wire) == [BinaryMessage(bytes(4000))]


def test_full_handshake_refused_by_server() -> None:
    client = ClientHandshake(parse_uri("ws://example.com/"), origin="https://evil.example")
    server = ServerHandshake(origins=["https://good.example"])
    (request,) = RequestParser().feed(client.request().serialize())
    with pytest.raises(InvalidRequest) as exc_info:
        server.accept(request)
    rejection = ServerHandshake.reject(exc_info.value.status, "forbidden")
    parsed = parse_response_head(rejection.serialize())
    assert parsed is not None
    response, rest = parsed
    response.body = rest
    with pytest.raises(InvalidStatus) as status_info:
        client.accept(response)
    assert status_info.value.status == 403
    assert status_info.value.body == b"forbidden\n"


# ---------------------------------------------------------------------------------------
# parse_uri


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("ws://example.com", WebSocketURI(False, "example.com", 80, "/")),
        ("ws://example.com/", WebSocketURI(False, "example.com", 80, "/")),
        ("wss://example.com", WebSocketURI(True, "example.com", 443, "/")),
        ("ws://example.com:8080/chat", WebSocketURI(False, "example.com", 8080, "/chat")),
        ("wss://example.com:443/a/b", WebSocketURI(True, "example.com", 443, "/a/b")),
        (
            "ws://example.com/chat?room=1&x=2",
            WebSocketURI(False, "example.com", 80, "/chat?room=1&x=2"),
        ),
        ("ws://example.com?q", WebSocketURI(False, "example.com", 80, "/?q")),
        ("ws://[::1]:9000/", WebSocketURI(False, "::1", 9000, "/")),
        ("WS://Example.COM/Path", WebSocketURI(False, "example.com", 80, "/Path")),
        (
            "wss://user:p%40ss@example.com/",
            WebSocketURI(True, "example.com", 443, "/", ("user", "p@ss")),
        ),
    ],
)
def test_parse_uri(uri: str, expected: WebSocketURI) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("ws://example.com/#frag", id="fragment"),
        pytest.param("ws://example.com/chat?x=1#frag", id="fragment-after-query"),
        pytest.param("http://example.com/", id="http"),
        pytest.param("https://example.com/", id="https"),
        pytest.param("ftp://example.com/", id="ftp"),
        pytest.param("example.com/chat", id="no-scheme"),
        pytest.param("ws:///chat", id="no-host"),
        pytest.param("ws://example.com:99999/", id="port-out-of-range"),
        pytest.param("ws://example.com:abc/", id="port-not-a-number"),
    ],
)
def test_parse_uri_refuses(uri: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_uri(uri)


def test_parse_uri_does_not_replace_explicit_port_zero() -> None:
    try:
        uri = parse_uri("ws://example.com:0/")
    except InvalidArgument:
        return
    assert uri.port == 0


def test_websocket_uri_host_header() -> None:
    assert WebSocketURI(False, "h", 80, "/").host_header == "h"
    assert WebSocketURI(False, "h", 81, "/").host_header == "h:81"
    assert WebSocketURI(True, "h", 443, "/").host_header == "h"
    assert WebSocketURI(True, "::1", 443, "/").host_header == "[::1]"
    assert WebSocketURI(True, "::1", 8443, "/").host_header == "[::1]:8443"


@pytest.mark.parametrize("uri", ["ws://h/#", "ws://h/a b", "ws://h/a\r\nX: y", "ws://h/?q=\x00"])
def test_parse_uri_refuses_fragments_and_characters_that_break_the_request_line(
    uri: str,
) -> None:
    with pytest.raises(InvalidArgument):
        parse_uri(uri)
