"""The client tunnels through an HTTP CONNECT proxy: explicit, from the environment,
bypassed by NO_PROXY, with basic auth, and fails with ProxyError when refused."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
from helpers.connect_proxy import ConnectProxy

from backchannel.asyncio import Server, ServerConnection, connect, serve
from backchannel.exceptions import ProxyError

TIMEOUT = 10
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "REQUEST_METHOD",
)


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with serve(echo, "127.0.0.1", 0) as server:
        yield server


@pytest.fixture
async def tls_server(server_ssl: ssl.SSLContext) -> AsyncIterator[Server]:
    async with serve(echo, "127.0.0.1", 0, ssl=server_ssl) as server:
        yield server


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy() as proxy:
        yield proxy


async def _roundtrip(uri: str, **kwargs: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with connect(uri, **kwargs) as ws:
            await ws.send("through")
            assert await ws.recv() == "through"
            await ws.send(b"\x00" * 1000)
            assert await ws.recv() == b"\x00" * 1000
        assert ws.close_code == 1000


# Explicit proxy=.


async def test_explicit_proxy_ws(server: Server, proxy: ConnectProxy) -> None:
    await _roundtrip(f"ws://127.0.0.1:{server.port}", proxy=proxy.url)
    assert proxy.connects == [f"127.0.0.1:{server.port}"]
    assert proxy.requests[0].target == f"127.0.0.1:{server.port}"
    assert proxy.requests[0].headers["host"] == f"127.0.0.1:{server.port}"
    assert "proxy-authorization" not in proxy.requests[0].headers


async def test_explicit_proxy_wss(
    tls_server: Server, proxy: ConnectProxy, client_ssl: ssl.SSLContext
) -> None:
    # TLS runs end to end through the tunnel, with the hostname checked against "localhost".
    await _roundtrip(f"wss://localhost:{tls_server.port}", proxy=proxy.url, ssl=client_ssl)
    assert proxy.connects == [f"localhost:{tls_server.port}"]


async def test_explicit_proxy_wss_untrusted_certificate(
    tls_server: Server, proxy: ConnectProxy
) -> None:
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://localhost:{tls_server.port}", proxy=proxy.url)
    assert proxy.connects == [f"localhost:{tls_server.port}"]


async def test_explicit_proxy_wins_over_no_proxy(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "*")
    await _roundtrip(f"ws://127.0.0.1:{server.port}", proxy=proxy.url)
    assert proxy.connects == [f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize("disabled", [None, False])
async def test_proxy_disabled_ignores_environment(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch, disabled: bool | None
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await _roundtrip(f"ws://127.0.0.1:{server.port}", proxy=disabled)
    assert proxy.connects == []
    assert proxy.requests == []


# Proxy from the environment.


async def test_http_proxy_environment_ws(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await _roundtrip(f"ws://127.0.0.1:{server.port}")
    assert proxy.connects == [f"127.0.0.1:{server.port}"]


async def test_https_proxy_environment_wss(
    tls_server: Server,
    proxy: ConnectProxy,
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    await _roundtrip(f"wss://localhost:{tls_server.port}", ssl=client_ssl)
    assert proxy.connects == [f"localhost:{tls_server.port}"]


async def test_https_proxy_not_used_for_ws(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    await _roundtrip(f"ws://127.0.0.1:{server.port}")
    assert proxy.requests == []


async def test_http_proxy_not_used_for_wss(
    tls_server: Server,
    proxy: ConnectProxy,
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    await _roundtrip(f"wss://localhost:{tls_server.port}", ssl=client_ssl)
    assert proxy.requests == []


async def test_lowercase_proxy_environment(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url)
    await _roundtrip(f"ws://127.0.0.1:{server.port}")
    assert proxy.connects == [f"127.0.0.1:{server.port}"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "*", "example.com,127.0.0.1"])
async def test_no_proxy_bypass(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", no_proxy)
    await _roundtrip(f"ws://127.0.0.1:{server.port}")
    assert proxy.connects == []
    assert proxy.requests == []


async def test_no_proxy_other_host_still_proxied(
    server: Server, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "example.com,localhost")
    await _roundtrip(f"ws://127.0.0.1:{server.port}")
    assert proxy.connects == [f"127.0.0.1:{server.port}"]


async def test_no_proxy_bypass_wss(
    tls_server: Server,
    proxy: ConnectProxy,
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    await _roundtrip(f"wss://localhost:{tls_server.port}", ssl=client_ssl)
    assert proxy.requests == []


# Authentication.


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_basic_auth_explicit(server: Server) -> None:
    async with ConnectProxy(auth=("user", "secret")) as proxy:
        url = f"http://user:secret@127.0.0.1:{proxy.port}"
        await _roundtrip(f"ws://127.0.0.1:{server.port}", proxy=url)
        assert proxy.connects == [f"127.0.0.1:{server.port}"]
        assert proxy.requests[0].headers["proxy-authorization"] == _basic("user", "secret")


async def test_basic_auth_percent_encoded(server: Server) -> None:
    async with ConnectProxy(auth=("us er", "p@ss:wörd")) as proxy:
        url = f"http://us%20er:p%40ss%3Aw%C3%B6rd@127.0.0.1:{proxy.port}"
        await _roundtrip(f"ws://127.0.0.1:{server.port}", proxy=url)
        assert proxy.connects == [f"127.0.0.1:{server.port}"]


async def test_basic_auth_from_environment_wss(
    tls_server: Server, client_ssl: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ConnectProxy(auth=("user", "secret")) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", f"http://user:secret@127.0.0.1:{proxy.port}")
        await _roundtrip(f"wss://localhost:{tls_server.port}", ssl=client_ssl)
        assert proxy.connects == [f"localhost:{tls_server.port}"]


@pytest.mark.parametrize(
    "credentials", ["", "user:wrong@", "other:secret@"], ids=["none", "password", "user"]
)
async def test_missing_or_wrong_credentials_407(server: Server, credentials: str) -> None:
    async with ConnectProxy(auth=("user", "secret")) as proxy:
        url = f"http://{credentials}127.0.0.1:{proxy.port}"
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ProxyError) as caught:
                await connect(f"ws://127.0.0.1:{server.port}", proxy=url)
        assert caught.value.status == 407
        assert "407" in str(caught.value)
        assert proxy.connects == []
        assert len(proxy.requests) == 1


# Refusals.


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_refusing_proxy_403(server: Server, scheme: str) -> None:
    async with ConnectProxy(refuse=True) as proxy:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ProxyError) as caught:
                await connect(f"{scheme}://127.0.0.1:{server.port}", proxy=proxy.url)
        assert caught.value.status == 403
        assert proxy.connects == []
        assert [r.target for r in proxy.requests] == [f"127.0.0.1:{server.port}"]


async def test_refusing_proxy_from_environment(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with ConnectProxy(refuse=True) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ProxyError) as caught:
                await connect(f"ws://127.0.0.1:{server.port}")
        assert caught.value.status == 403


async def test_proxy_refuses_non_loopback_target(proxy: ConnectProxy) -> None:
    # The proxy never resolves this name; it answers 403, the client raises ProxyError.
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ProxyError) as caught:
            await connect("ws://ws.example.invalid:8080/", proxy=proxy.url)
    assert caught.value.status == 403
    assert proxy.requests[0].target == "ws.example.invalid:8080"


async def test_proxy_bad_gateway_502(proxy: ConnectProxy) -> None:
    # Nothing listens on the target: the proxy answers 502.
    async with serve(echo, "127.0.0.1", 0) as server:
        port = server.port
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ProxyError) as caught:
            await connect(f"ws://127.0.0.1:{port}", proxy=proxy.url)
    assert caught.value.status == 502


async def test_unreachable_proxy_raises_oserror(server: Server) -> None:
    async with ConnectProxy() as proxy:
        url = proxy.url
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(OSError):
            await connect(f"ws://127.0.0.1:{server.port}", proxy=url)
