"""Fixtures of the command line tests: servers for ``connect`` to talk to, and a
``backchannel serve`` with a known secret and API key for the API subcommands."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trustme
from helpers.cli import API_KEY, CLI, SECRET, banner_of, clean_env, serving

from backchannel.asyncio import ServerConnection, serve
from backchannel.exceptions import ConnectionClosed


@pytest.fixture(autouse=True)
def demo_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --demo`` keeps its secret in $XDG_STATE_HOME: a test's own, never the
    home of whoever runs the tests."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))


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


@pytest.fixture
async def late_echo() -> AsyncIterator[int]:
    """A slow server: it answers the messages of a connection only once the client has
    been quiet for half a second. A client that closes at the end of its input, not of
    the replies, gets none (the tests give --wait far longer than that half second)."""

    async def handler(ws: ServerConnection) -> None:
        received = []
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            while True:
                async with asyncio.timeout(0.5):
                    received.append(await ws.recv())
        with contextlib.suppress(ConnectionClosed):
            for message in received:
                await ws.send(message)
            async for _ in ws:
                pass

    async with serve(handler, "127.0.0.1", 0) as server:
        yield server.port


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.fixture
def pem_files(tmp_path: Path, tls_files: dict[str, Path], tls_ca: trustme.CA) -> dict[str, Path]:
    """The certificate and its key, and the key of another certificate."""
    other = tmp_path / "other-key.pem"
    tls_ca.issue_cert("other.example").private_key_pem.write_to_path(other)
    return {"cert": tls_files["cert"], "key": tls_files["key"], "other": other}


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    """A ``backchannel serve`` (the default channels: chat, typing, orders) with SECRET
    and API_KEY; its base URL. One per module: starting a server takes a while."""
    env = clean_env(BACKCHANNEL_AUTH_SECRET=SECRET, BACKCHANNEL_API_KEY=API_KEY)
    # Warnings only: nobody reads its standard error, which the access log would fill.
    with serving("--log-level", "warning", env=env) as process:
        port, _ = banner_of(process, 2)
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
