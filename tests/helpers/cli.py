"""Running the ``backchannel`` command line as a process, and reading what it prints."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

from helpers.http import Http

CLI = [sys.executable, "-m", "backchannel"]

#: The secret and API key of the server of the ``hub`` fixture (tests/cli/conftest.py).
SECRET = "test-secret-" + "x" * 32
API_KEY = "api-key-0123456789abcdef"


# The environment of a CLI process: this one's, without BACKCHANNEL_* settings (only what
# a test gives counts), and no proxy for loopback.
def clean_env(**extra: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("BACKCHANNEL_") or name == "BACKCHANNEL_NO_EXTENSIONS"
    }
    return {**env, "NO_PROXY": "*", **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``backchannel ARGS`` to its end (bounded: a hang fails the test)."""
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a refused command prints (no traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def usage_error(result: subprocess.CompletedProcess[str]) -> str:
    """argparse's refusal: the usage, then one error line; status 2."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result
    last = result.stderr.splitlines()[-1]
    assert ": error: argument" in last, result.stderr
    return last


async def post(port: int, target: str, body: str) -> int:
    http = await Http.open(port)
    try:
        return (await http.exchange("POST", target, body)).status
    finally:
        await http.close()


async def get_status(port: int, target: str) -> int:
    http = await Http.open(port)
    try:
        return (await http.exchange("GET", target)).status
    finally:
        await http.close()


#: Warnings only, unless a test asks for more (a later --log-level wins): a server's
#: standard error is a pipe read at the end, which an access log line per request could
#: fill, blocking the server.
QUIET = ("--log-level", "warning")


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``backchannel serve ARGS`` on a free port, stopped however the test ends: a
    failed assertion must not leave the test waiting for a server that runs on."""
    with subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *QUIET, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its group: the workers of --workers go with it
    ) as process:
        try:
            yield process
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def banner_of(process: subprocess.Popen[str], count: int) -> tuple[int, list[str]]:
    """The first ``count`` lines a server prints, and the port its first names."""
    assert process.stdout is not None
    lines = [process.stdout.readline().rstrip("\n") for _ in range(count)]
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", lines[0])
    assert match, lines
    return int(match.group(1)), lines


def serve_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *QUIET, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
