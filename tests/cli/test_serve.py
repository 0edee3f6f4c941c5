"""``backchannel serve``, as a process: one, or ``--workers`` N."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from helpers.cli import (
    CLI,
    banner_of,
    clean_env,
    get_status,
    one_line_error,
    post,
    run_cli,
    serve_process,
    serving,
)
from helpers.cluster import healthz
from helpers.http import Http
from helpers.hub_client import HubClient
from helpers.redis_server import RedisServer, require_redis


async def test_serve_runs_the_hub_the_api_and_the_demo_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "backchannel.toml"
    config.write_text('[api]\nkey = "k-from-file-0123456"\n[channels.news]\nhistory_size = 5\n')
    env = {"BACKCHANNEL_AUTH_SECRET": "s" * 32}
    with serve_process("--config", str(config), "--demo", env=env) as process:
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


def test_serve_says_when_redis_cannot_be_reached() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with serve_process(
            env={"BACKCHANNEL_BROKER_URL": f"redis://127.0.0.1:{port}/0"}
        ) as process:
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr.startswith("error: Redis is unreachable"), stderr


@pytest.mark.parametrize(
    ("scheme", "path", "problem"),
    [
        ("redis+cluster", "/", "no node of the Redis Cluster at 127.0.0.1:{port} answers"),
        ("redis+sentinel", "/main", "no sentinel at 127.0.0.1:{port} names a master 'main'"),
    ],
)
def test_serve_says_in_one_line_when_a_cluster_or_sentinel_cannot_be_reached(
    scheme: str, path: str, problem: str
) -> None:
    """redis-py raises a non-Redis exception for a cluster with no reachable node, and
    names every connection setting when no sentinel answers: both are one short line."""
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with serve_process(
            env={"BACKCHANNEL_BROKER_URL": f"{scheme}://127.0.0.1:{port}{path}"}
        ) as process:
            _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert stderr == f"error: Redis is unreachable: {problem.format(port=port)}\n", stderr


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
    assert lines[0].endswith("(hub at /ws, /sse and /lp)")
    assert lines[2].startswith("demo mode: /demo/token gives anyone a token")


def test_the_banner_names_the_transports_and_the_broker() -> None:
    with serving(env=clean_env(BACKCHANNEL_SERVER_WEBSOCKET="false")) as process:
        _, lines = banner_of(process, 3)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    assert lines[0].endswith("(hub at /sse and /lp)")
    assert lines[1] == (
        "transports: WebSocket off, SSE at /sse, long polling at /lp; "
        "broker: memory (this process only)"
    )
    assert lines[2].startswith("HTTP API key (made for this run; set api.key): ")


def test_workers_without_a_broker_is_one_line() -> None:
    result = run_cli("serve", "--workers", "2", "--port", "0")
    assert result.returncode == 2
    assert "BACKCHANNEL_BROKER_URL" in one_line_error(result)


async def test_workers_print_one_banner_with_the_demo_warning(tmp_path: Path) -> None:
    require_redis()
    with RedisServer(tmp_path) as redis:
        state = tmp_path / "state"
        env = clean_env(BACKCHANNEL_BROKER_URL=redis.url, XDG_STATE_HOME=str(state))
        with serving("--workers", "2", "--demo", env=env) as process:
            port, lines = banner_of(process, 5)
            assert await post(port, "/demo/token", '{"user": "alice"}') == 200
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=60)
    assert lines[0] == f"backchannel on http://127.0.0.1:{port}/ (2 workers)"
    assert lines[1] == (
        "transports: WebSocket at /ws, SSE at /sse, long polling at /lp; "
        f"broker: redis 127.0.0.1:{redis.port}/0, prefix 'backchannel' (single server)"
    )
    assert lines[2].startswith("demo mode: ")
    # The demo's secret and key are kept across restarts, one file for every worker.
    assert (
        lines[3]
        == f"demo secret and API key kept in {state}/backchannel/demo.toml (delete it for new ones)"
    )
    assert lines[4].startswith("HTTP API key (kept for the demo): ")
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
        # Warnings only: nobody reads the workers' standard error, and the access log of
        # the requests below would fill its pipe and block them.
        args = ("--workers", "2", "--log-level", "warning")
        with serving(*args, env=clean_env(BACKCHANNEL_BROKER_URL=redis.url)) as process:
            assert process.stdout is not None
            port, _ = banner_of(process, 3)
            first = await workers_answering(port)
            assert len(first) == 2
            dead = first.pop()
            os.kill(dead, signal.SIGKILL)
            line = await asyncio.to_thread(process.stdout.readline)
            assert line == f"worker {dead} exited (-9); restarting\n"
            # The new worker listens once it has connected to Redis: until then only the
            # survivor answers. Bounded: 400 rounds of up to 40 requests (a new Python
            # process on a loaded machine took more than 40 rounds to start).
            for _ in range(400):
                now = await workers_answering(port)
                if len(now) == 2:
                    break
            assert dead not in now and len(now - first) == 1, (first, now)
            process.send_signal(signal.SIGTERM)
            rest, _ = process.communicate(timeout=60)
    assert "backchannel on" not in rest and "Traceback" not in rest


async def test_log_flags_override_the_config_and_the_access_log_prints(tmp_path: Path) -> None:
    """The file says errors only, as text; the flags say info, as JSON lines: each HTTP
    request is then one JSON line of the access log on standard error."""
    config = tmp_path / "logs.toml"
    config.write_text('[log]\nlevel = "error"\nformat = "text"\n')
    args = ("--config", str(config), "--log-level", "info", "--log-format", "json")
    with serving(*args, env=clean_env()) as process:
        port, _ = banner_of(process, 3)
        assert await get_status(port, "/health?secret=1") == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [access] = [r for r in records if r["logger"] == "backchannel.access" and "path" in r]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/health", 200)


def test_serve_freezes_its_start_up_objects_out_of_the_collectors_way() -> None:
    """Once listening, the objects made while starting are frozen (gc.freeze), so a full
    collection with many held connections no longer walks them; the debug log says how
    many."""
    with serving("--log-level", "debug", env=clean_env()) as process:
        banner_of(process, 3)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    match = re.search(r"froze (\d+) start-up objects", stderr)
    assert match, stderr[-2000:]
    # The modules, classes and functions of the hub and its dependencies.
    assert int(match.group(1)) > 10_000
