"""``backchannel connect``, as a process: interactive, or scripted from a file or pipe."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

from helpers.cli import CLI, clean_env, one_line_error, run_cli

from backchannel.asyncio import ServerConnection, serve
from backchannel.protocol.http11 import Request, Response


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


def test_connect_names_the_url_it_cannot_reach() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        for url in ("ws://nowhere.invalid/", f"ws://127.0.0.1:{port}/"):
            result = run_cli("connect", url)
            assert result.returncode == 1
            assert one_line_error(result).startswith(f"error: cannot connect to {url}: ")


def test_connect_refuses_a_header_without_a_colon() -> None:
    result = run_cli("connect", "ws://127.0.0.1:1/", "--header", "X-Nothing")
    assert result.returncode == 2
    assert one_line_error(result) == "error: --header 'X-Nothing': write it as NAME:VALUE"


async def connect_with(port: int, stdin: Any, *args: str) -> tuple[int | None, str, str]:
    process = await asyncio.create_subprocess_exec(
        *CLI,
        "connect",
        f"ws://127.0.0.1:{port}/",
        *args,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    return process.returncode, stdout.decode(), stderr.decode()


async def test_connect_sends_a_file_and_prints_every_reply(late_echo: int, tmp_path: Path) -> None:
    script = tmp_path / "lines.txt"
    script.write_text("one\ntwo\nthree\n")
    with script.open("rb") as stdin:
        status, stdout, stderr = await connect_with(late_echo, stdin, "--wait", "60")
    assert stdout == "< one\n< two\n< three\n", stderr
    assert "Traceback" not in stderr and "closed: 1000" in stderr
    assert status == 0


async def test_connect_from_a_pipe_waits_for_the_replies(late_echo: int) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"one\ntwo\nthree\n")
    os.close(write_end)  # the whole input is there, and its end, before connect starts
    try:
        status, stdout, stderr = await connect_with(late_echo, read_end, "--wait", "60")
    finally:
        os.close(read_end)
    assert stdout == "< one\n< two\n< three\n", stderr
    assert status == 0


async def test_connect_from_dev_null_closes_at_once(echo_server: int) -> None:
    status, stdout, stderr = await connect_with(echo_server, subprocess.DEVNULL)
    assert (status, stdout) == (0, "")
    assert "Traceback" not in stderr and "closed: 1000" in stderr


async def test_connect_stops_waiting_after_wait_seconds() -> None:
    """A server that never answers: --wait bounds the wait, and the close is normal."""

    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    async with serve(silent, "127.0.0.1", 0) as server:
        read_end, write_end = os.pipe()
        os.write(write_end, b"anyone there?\n")
        os.close(write_end)
        try:
            status, stdout, stderr = await connect_with(server.port, read_end, "--wait", "0.2")
        finally:
            os.close(read_end)
    assert (status, stdout) == (0, "")
    assert "closed: 1000" in stderr
