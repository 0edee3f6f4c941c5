"""TLS: the client verifies the server's certificate and hostname by default."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest
import trustme

from backchannel.asyncio import Server, ServerConnection, connect, serve
from backchannel.exceptions import ConnectionClosedError, InvalidArgument, InvalidResponse

TIMEOUT = 10


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@pytest.fixture
async def tls_server(server_ssl: ssl.SSLContext) -> AsyncIterator[Server]:
    async with serve(echo, "127.0.0.1", 0, ssl=server_ssl) as server:
        yield server


async def test_untrusted_certificate_rejected_by_default(tls_server: Server) -> None:
    # The default context trusts the system's CAs, not our throwaway trustme CA.
    async with asyncio.timeout(TIMEOUT):
        # Raised as is, not wrapped in a backchannel exception.
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            await connect(f"wss://localhost:{tls_server.port}")
    assert caught.value.verify_code == 20  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY


async def test_untrusted_certificate_rejected_by_other_ca(
    tls_server: Server,
) -> None:
    context = ssl.create_default_context()
    trustme.CA().configure_trust(context)
    async with asyncio.timeout(TIMEOUT):
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(f"wss://localhost:{tls_server.port}", ssl=context)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_trusted_certificate_accepted(
    tls_server: Server, client_ssl: ssl.SSLContext, host: str
) -> None:
    async with asyncio.timeout(TIMEOUT):
        async with connect(f"wss://{host}:{tls_server.port}", ssl=client_ssl) as ws:
            await ws.send("over tls")
            assert await ws.recv() == "over tls"
            assert ws.transport is not None
            assert ws.transport.get_extra_info("ssl_object") is not None
        assert ws.close_code == 1000


async def test_hostname_mismatch_rejected(tls_ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    # A certificate for "localhost" only: reaching it as 127.0.0.1 must fail.
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(context)
    async with serve(echo, "127.0.0.1", 0, ssl=context) as server:
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ssl.SSLCertVerificationError) as caught:
                await connect(f"wss://127.0.0.1:{server.port}", ssl=client_ssl)
            assert caught.value.verify_code == 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
            # The same certificate is fine under its own name.
            async with connect(f"wss://localhost:{server.port}", ssl=client_ssl) as ws:
                await ws.send("ok")
                assert await ws.recv() == "ok"


async def test_server_hostname_overrides_uri_host(
    tls_ca: trustme.CA, client_ssl: ssl.SSLContext
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("ws.example").configure_cert(context)
    async with serve(echo, "127.0.0.1", 0, ssl=context) as server:
        uri = f"wss://127.0.0.1:{server.port}"
        async with asyncio.timeout(TIMEOUT):
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(uri, ssl=client_ssl)
            async with connect(uri, ssl=client_ssl, server_hostname="ws.example") as ws:
                await ws.send("sni")
                assert await ws.recv() == "sni"


async def test_sni_sent(tls_ca: trustme.CA, client_ssl: ssl.SSLContext) -> None:
    names: list[str | None] = []
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("localhost").configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    async with serve(echo, "127.0.0.1", 0, ssl=context) as server:
        async with asyncio.timeout(TIMEOUT):
            async with connect(f"wss://localhost:{server.port}", ssl=client_ssl) as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
    assert names == ["localhost"]


async def test_ssl_with_ws_uri_rejected(client_ssl: ssl.SSLContext) -> None:
    with pytest.raises(InvalidArgument):
        await connect("ws://127.0.0.1:1", ssl=client_ssl)


async def test_plain_client_against_tls_server_fails(tls_server: Server) -> None:
    async with asyncio.timeout(TIMEOUT):
        # The server reads our HTTP request as a broken TLS record and hangs up.
        with pytest.raises((ConnectionError, InvalidResponse)):
            await connect(f"ws://127.0.0.1:{tls_server.port}", open_timeout=5)


async def test_failure_close_over_tls_ends_with_the_peers_close_frame(
    server_ssl: ssl.SSLContext, client_ssl: ssl.SSLContext
) -> None:
    # TLS cannot half-close, so after failing the connection (1009) the server cannot
    # signal the end with a FIN; it reads on, dropping frames, until it sees the client's
    # close frame, and then closes at once. With close_timeout at 60 s on both sides, the
    # 10 s bound fails if either waits for the other.
    async with serve(
        echo, "127.0.0.1", 0, ssl=server_ssl, max_size=64 * 1024, close_timeout=60
    ) as server:
        async with asyncio.timeout(TIMEOUT):
            ws = await connect(f"wss://localhost:{server.port}", ssl=client_ssl, close_timeout=60)
            await ws.send(bytes(1024 * 1024))
            with pytest.raises(ConnectionClosedError) as exc_info:
                await ws.recv()
            assert exc_info.value.code == 1009
            await ws.wait_closed()
            for connection in list(server.connections):
                await connection.wait_closed()
