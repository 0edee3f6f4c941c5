"""The command line (``serve``, ``token``, ``echo``, ``connect``), as processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.http import Http
from helpers.hub_client import HubClient

from backchannel.asyncio import ServerConnection, connect, serve
from backchannel.hub import TokenVerifier
from backchannel.protocol.http11 import Request, Response

CLI = [sys.executable, "-m", "backchannel"]


async def run_connect(url: str) -> tuple[int | None, bytes]:
    """Run ``backchannel connect URL`` with no input; return its status and stderr."""
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "connect",
        url,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "NO_PROXY": "*"},
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    return process.returncode, stderr


@pytest.fixture
def echo_server() -> Iterator[int]:
    with subprocess.Popen(
        [*CLI, "echo", "--host", "127.0.0.1", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r":(\d+)/", line)
            assert match, f"no port in {line!r}"
            yield int(match.group(1))
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=15)


async def test_echo_server_echoes_and_serves_its_page(echo_server: int) -> None:
    async with connect(f"ws://127.0.0.1:{echo_server}/") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x01\x02")
        assert await ws.recv() == b"\x01\x02"
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        page = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert page.startswith(b"HTTP/1.1 200 ")
    assert b"new WebSocket" in page


def test_connect_sends_lines_and_prints_messages(echo_server: int) -> None:
    with subprocess.Popen(
        [*CLI, "connect", f"ws://127.0.0.1:{echo_server}/", "--header", "X-Test: 1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("first line\n")
        process.stdin.flush()
        # The echo is printed before we end the input (Ctrl-D), which closes with 1000.
        assert process.stdout.readline() == "< first line\n"
        _, stderr = process.communicate(timeout=30)
    assert "connected to" in stderr
    assert "closed: 1000" in stderr
    assert process.returncode == 0, stderr


async def test_connect_reports_a_refused_handshake() -> None:
    def refuse(ws: ServerConnection, request: Request) -> Response | None:
        return Response.text(403, "go away")

    async def handler(ws: ServerConnection) -> None:
        pass

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as server:
        returncode, stderr = await run_connect(f"ws://127.0.0.1:{server.port}/")
    assert returncode == 1
    assert b"HTTP 403 Forbidden" in stderr
    assert b"go away" in stderr


async def test_connect_reports_an_invalid_handshake_response() -> None:
    async def bad_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # 101 without Upgrade, Connection or Sec-WebSocket-Accept.
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(bad_upgrade, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        returncode, stderr = await run_connect(f"ws://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    assert returncode == 1
    assert stderr.startswith(b"error: response lacks Upgrade: websocket"), stderr


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


async def test_serve_runs_the_hub_the_api_and_the_demo_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "backchannel.toml"
    config.write_text('[api]\nkey = "k-from-file"\n[channels.news]\nhistory_size = 5\n')
    env = {"BACKCHANNEL_AUTH_SECRET": "s" * 32}
    with _serve("--config", str(config), env=env) as process:
        assert process.stdout is not None
        banner = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", banner)
        assert match, banner
        port = int(match.group(1))
        making = await asyncio.create_subprocess_exec(
            *CLI,
            "token",
            "--sub",
            "alice",
            "--ttl",
            "60",
            stdout=subprocess.PIPE,
            env={**os.environ, **env},
        )
        async with asyncio.timeout(30):
            token = (await making.communicate())[0].decode().strip()
        client = await HubClient.open(port, path="/ws", token=token)
        assert client.info["user"] == "alice"
        await client.call("subscribe", channel="news:today")
        http = await Http.open(port)
        reply = await http.exchange(
            "POST",
            "/api/publish",
            '{"channel": "news:today", "data": "extra"}',
            [("Authorization", "apikey k-from-file")],
        )
        assert reply.status == 200, reply.text
        [publication] = await client.publications(1)
        assert publication["data"] == "extra"
        assert (await http.exchange("GET", "/")).status == 200  # the demo page
        await http.close()
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=15)
        # The hub tells its clients to come back later (3000) as it stops.
        assert await client.closed() == (3000, "server shutting down")
    assert "shutting down" in stdout
    assert process.returncode == 0


def test_serve_refuses_a_config_with_a_mistake(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[server]\nprot = 8000\n")
    with _serve("--config", str(config)) as process:
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 1
    assert "[server] prot: no such setting" in stderr


def test_token_prints_a_token_signed_with_the_configured_secret() -> None:
    secret = "t" * 32
    result = subprocess.run(
        [*CLI, "token", "--sub", "bob", "--ttl", "120", "--info", '{"name": "Bob"}'],
        capture_output=True,
        text=True,
        env={**os.environ, "BACKCHANNEL_AUTH_SECRET": secret},
        check=True,
    )
    claims = TokenVerifier(secret=secret).verify(result.stdout.strip())
    assert claims.user == "bob" and claims.info == {"name": "Bob"}
    assert claims.expires is not None and 100 < claims.expires - time.time() <= 120


def test_token_without_a_secret_says_where_to_set_one() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BACKCHANNEL_AUTH_SECRET"}
    result = subprocess.run(
        [*CLI, "token", "--sub", "bob"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert "BACKCHANNEL_AUTH_SECRET" in result.stderr


def test_serve_says_when_redis_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with _serve(env={"BACKCHANNEL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}) as process:
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.startswith("error: Redis is unreachable"), stderr
