"""The command line: ``backchannel echo`` and ``backchannel connect``, as processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from backchannel.asyncio import ServerConnection, connect, serve
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
