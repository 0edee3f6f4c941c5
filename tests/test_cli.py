"""The command line (``serve``, ``token``, ``echo``, ``connect``), as processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from helpers.cluster import healthz
from helpers.http import Http
from helpers.hub_client import HubClient
from helpers.redis_server import RedisServer, require_redis

from backchannel import __version__
from backchannel.asyncio import ServerConnection, connect, serve
from backchannel.exceptions import ConnectionClosed
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
    config.write_text('[api]\nkey = "k-from-file-0123456"\n[channels.news]\nhistory_size = 5\n')
    env = {"BACKCHANNEL_AUTH_SECRET": "s" * 32}
    with _serve("--config", str(config), "--demo", env=env) as process:
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
            [("Authorization", "apikey k-from-file-0123456")],
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
    assert process.returncode == 2
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


@contextlib.contextmanager
def serving(*args: str, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``backchannel serve ARGS`` on a free port, stopped however the test ends: a
    failed assertion must not leave the test waiting for a server that runs on."""
    with subprocess.Popen(
        [*CLI, "serve", "--host", "127.0.0.1", "--port", "0", *args],
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


async def test_the_demo_is_off_unless_asked_for(tmp_path: Path) -> None:
    """A production config (secret and API key) gets no demo token endpoint; --demo
    turns it on and the banner says so."""
    config = tmp_path / "prod.toml"
    config.write_text(f'[auth]\nsecret = "{"s" * 32}"\n[api]\nkey = "{"k" * 24}"\n')
    with serving("--config", str(config), env=clean_env()) as process:
        port, lines = banner_of(process, 2)
        assert await post(port, "/demo/token", '{"user": "mallory"}') == 404
        assert (await get_status(port, "/")) == 404
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    assert "demo" not in "\n".join(lines) + rest
    with serving("--config", str(config), "--demo", env=clean_env()) as process:
        port, lines = banner_of(process, 3)
        assert await post(port, "/demo/token", '{"user": "alice"}') == 200
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lines[2].startswith("demo mode: /demo/token gives anyone a token")


async def get_status(port: int, target: str) -> int:
    http = await Http.open(port)
    try:
        return (await http.exchange("GET", target)).status
    finally:
        await http.close()


def test_the_banner_names_the_transports_and_the_broker() -> None:
    with serving(env=clean_env(BACKCHANNEL_SERVER_WEBSOCKET="false")) as process:
        _, lines = banner_of(process, 3)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lines[0].endswith("(hub at /lp)")
    assert lines[1] == (
        "transports: WebSocket off, long polling at /lp; broker: memory (this process only)"
    )
    assert lines[2].startswith("HTTP API key (made for this run; set api.key): ")


@pytest.fixture
def listening() -> Iterator[int]:
    """A port something already listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_one_line(listening: int) -> None:
    port = str(listening)
    url = "redis://127.0.0.1:1/0"  # the parent of --workers binds before any worker starts
    for args, env in [
        (["echo", "--host", "127.0.0.1", "--port", port], clean_env()),
        (["serve", "--host", "127.0.0.1", "--port", port], clean_env()),
        (["serve", "--port", port, "--workers", "2"], clean_env(BACKCHANNEL_BROKER_URL=url)),
    ]:
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (args, result.stderr)
        line = one_line_error(result)
        assert line.startswith(f"error: cannot listen on 127.0.0.1:{port}: the port is in use")


@pytest.mark.parametrize(
    ("command", "flag"), [("serve", "--port"), ("echo", "--port"), ("serve", "--workers")]
)
def test_out_of_range_flags_are_usage_errors(command: str, flag: str) -> None:
    for value in ("70000", "-1", "x") if flag == "--port" else ("0", "-3"):
        assert f"argument {flag}: '{value}' is not" in usage_error(run_cli(command, flag, value))


@pytest.mark.parametrize(
    ("file", "environ", "message"),
    [
        ("[server]\nport = 70000\n", {}, "[server] port: must be 0 to 65535, got 70000"),
        ("", {"BACKCHANNEL_SERVER_PORT": "65536"}, "BACKCHANNEL_SERVER_PORT: must be 0 to 65535"),
        ("", {"BACKCHANNEL_BROKER_URL": "127.0.0.1:6379"}, "BACKCHANNEL_BROKER_URL: not a Redis"),
        ('[broker]\nurl = "localhost"\n', {}, "[broker] url: not a Redis URL"),
        ("", {"BACKCHANNEL_SERVER_PROT": "9000"}, "did you mean BACKCHANNEL_SERVER_PORT?"),
        ("", {"BACKCHANNEL_AUTH_SECRET": "short"}, "BACKCHANNEL_AUTH_SECRET: too short"),
        ('[api]\nkey = "k"\n', {}, "[api] key: too short"),
        ('[auth]\npublic_key_file = "absent.pem"\n', {}, "auth.public_key_file absent.pem"),
        ('[auth]\npublic_key_file = "prod.toml"\n', {}, "no PEM public key in it"),
        ('[server]\nhost = "nowhere.invalid"\n', {}, "server.host nowhere.invalid: cannot"),
    ],
)
def test_config_mistakes_are_one_line_naming_the_setting(
    tmp_path: Path, file: str, environ: dict[str, str], message: str
) -> None:
    (tmp_path / "prod.toml").write_text(file)
    result = subprocess.run(
        [*CLI, "serve", "--port", "0", "--config", "prod.toml"],
        capture_output=True,
        text=True,
        env=clean_env(**environ),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert message in one_line_error(result)


def test_workers_without_a_broker_is_one_line() -> None:
    result = run_cli("serve", "--workers", "2", "--port", "0")
    assert result.returncode == 2
    assert "BACKCHANNEL_BROKER_URL" in one_line_error(result)


def test_a_host_that_does_not_resolve_is_named() -> None:
    for command in ("serve", "echo"):
        result = run_cli(command, "--host", "nowhere.invalid", "--port", "0")
        assert result.returncode == 2
        assert one_line_error(result).startswith("error: --host nowhere.invalid: cannot resolve")


@pytest.fixture
def pem_files(tmp_path: Path, tls_files: dict[str, Path], tls_ca: trustme.CA) -> dict[str, Path]:
    """The certificate and its key, and the key of another certificate."""
    other = tmp_path / "other-key.pem"
    tls_ca.issue_cert("other.example").private_key_pem.write_to_path(other)
    return {"cert": tls_files["cert"], "key": tls_files["key"], "other": other}


@pytest.mark.parametrize("command", ["serve", "echo"])
@pytest.mark.parametrize(
    ("cert", "key", "message"),
    [
        ("absent", "key", "error: --tls-cert {absent}: cannot read it (No such file"),
        ("cert", "absent", "error: --tls-key {absent}: cannot read it (No such file"),
        ("key", "cert", "error: --tls-cert {key}: no PEM certificate in it; is it the key?"),
        ("cert", "cert", "error: --tls-key {cert}: no PEM private key in it; is it the cert"),
        ("cert", "other", "error: --tls-key {other} is not the private key of --tls-cert {cert}"),
        (None, "key", "error: --tls-key needs a certificate: give --tls-cert too"),
    ],
)
def test_tls_file_mistakes_name_the_file_and_the_flag(
    command: str,
    cert: str | None,
    key: str,
    message: str,
    pem_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    files = {**{name: str(path) for name, path in pem_files.items()}}
    files["absent"] = str(tmp_path / "absent.pem")
    args = [command, "--host", "127.0.0.1", "--port", "0", "--tls-key", files[key]]
    if cert is not None:
        args += ["--tls-cert", files[cert]]
    result = run_cli(*args)
    assert result.returncode == 2
    assert one_line_error(result).startswith(message.format(**files))


def test_a_tls_file_from_the_config_is_named_by_its_setting(
    tmp_path: Path, pem_files: dict[str, Path]
) -> None:
    config = tmp_path / "tls.toml"
    config.write_text(f'[server]\ntls_cert = "{pem_files["cert"]}"\ntls_key = "{tmp_path}/x"\n')
    result = run_cli("serve", "--port", "0", "--config", str(config))
    assert result.returncode == 2
    assert one_line_error(result).startswith(f"error: server.tls_key {tmp_path}/x: cannot read")


def test_help_is_plain_text_and_there_is_a_version() -> None:
    for args in (["--help"], ["serve", "--help"], ["connect", "--help"]):
        result = run_cli(*args)
        assert result.returncode == 0 and "``" not in result.stdout, result.stdout
    assert "--demo" in run_cli("serve", "--help").stdout
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout == f"backchannel {__version__}\n"


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


# `backchannel connect` driven by a script: standard input a file, /dev/null or a pipe.


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


async def test_workers_print_one_banner_with_the_demo_warning(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        env = clean_env(BACKCHANNEL_BROKER_URL=redis.url)
        with serving("--workers", "2", "--demo", env=env) as process:
            port, lines = banner_of(process, 4)
            assert await post(port, "/demo/token", '{"user": "alice"}') == 200
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=60)
    assert lines[0] == f"backchannel on http://127.0.0.1:{port}/ (2 workers)"
    assert lines[1] == (
        "transports: WebSocket at /ws, long polling at /lp; "
        f"broker: redis 127.0.0.1:{redis.port}/0, prefix 'backchannel'"
    )
    assert lines[2].startswith("demo mode: ")
    assert lines[3].startswith("HTTP API key (made for this run; set api.key): ")
    # Nothing of the banner again: not per worker.
    assert "backchannel on" not in rest and "demo mode" not in rest, rest


async def workers_answering(port: int) -> set[int]:
    """The pids of the workers that answer /healthz, over a bounded number of tries."""
    pids: set[int] = set()
    for _ in range(40):
        pids.add(int((await healthz(port))["node"].rpartition(":")[2]))
        if len(pids) == 2:
            break
    return pids


async def test_workers_restart_one_that_dies(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        with serving("--workers", "2", env=clean_env(BACKCHANNEL_BROKER_URL=redis.url)) as process:
            assert process.stdout is not None
            port, _ = banner_of(process, 3)
            first = await workers_answering(port)
            assert len(first) == 2
            dead = first.pop()
            os.kill(dead, signal.SIGKILL)
            line = await asyncio.to_thread(process.stdout.readline)
            assert line == f"worker {dead} exited (-9); restarting\n"
            # The new worker listens once it has connected to Redis: until then only the
            # survivor answers. Bounded: 40 rounds of up to 40 requests.
            for _ in range(40):
                now = await workers_answering(port)
                if len(now) == 2:
                    break
            assert dead not in now and len(now - first) == 1, (first, now)
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=60)
    assert "backchannel on" not in rest and "Traceback" not in rest
