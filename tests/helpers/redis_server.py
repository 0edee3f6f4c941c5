"""A real Redis server (Debian's ``redis-server``) on a free loopback port, for tests.

    with RedisServer(tmp_path) as server:
        url = server.url          # redis://127.0.0.1:PORT/0
        server.restart()          # stop (saving to its append-only file) and start again

Outside CI a developer without ``redis-server`` may skip the tests that need it; in CI
(CI=true) they fail instead (``make test`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0
#: Ports tried when the one picked was taken before redis-server bound it.
PORT_ATTEMPTS = 5


def require_redis() -> None:
    """Skip (outside CI) when redis-server is not installed."""
    if not Path(REDIS_SERVER).exists() and os.environ.get("CI") != "true":
        pytest.skip("redis-server is not installed (apt-get install redis-server)")


def _pid_of(sock: socket.socket) -> int:
    """The process id of the redis-server at the other end (``INFO server``)."""
    sock.sendall(b"INFO server\r\n")
    reply = b""
    while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return -1
        reply += chunk
    for line in reply.decode().splitlines():
        if line.startswith("process_id:"):
            return int(line.split(":", 1)[1])
    return -1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, folder: Path, *, persistent: bool = False) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        # The port was free when picked, not reserved: under load another process (a
        # redis-server of a test run beside this one) may take it first. Then ours exits
        # and the other answers PONG: a test would share its keys. Until this process
        # listens itself, pick another port (not on a restart: its clients know it).
        for _ in range(PORT_ATTEMPTS):
            if self._launch():
                self._started = True
                return
            assert self.process is not None
            self.process.kill()  # it cannot listen: it exits, or is about to
            self.process.wait(timeout=10)
            if self._started:
                break
            self.port = _free_port()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _launch(self) -> bool:
        """Start redis-server on ``self.port``; whether it is the one answering there
        (False: it exited, the port was taken)."""
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.folder),
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.persistent:
            # Every write is in the append-only file before it is acknowledged, so a
            # restart loses nothing that was accepted.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return _pid_of(sock) == self.process.pid
            if self.process.poll() is not None:
                return False
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: an append-only file is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()
