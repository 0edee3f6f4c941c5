"""``backchannel serve``: the hub, in one process or ``--workers`` N."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from ..app import App, Config, logs
from .checks import check_host, check_loop, tls_context
from .demo import keep_credentials
from .errors import fail, listen_error
from .runner import until_signal

logger = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Move every object alive now out of the garbage collector's reach; return how many.

    What ``serve`` made while starting (modules, classes, functions, the app, its config
    and routes) lives as long as the process, yet each full collection walks it again:
    with 5 000 held long polls a full pass paused the event loop for 274 ms (issue 16).
    Frozen objects are never collected, so start-up garbage is collected first.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def check_serve(args: argparse.Namespace, config: Config) -> None:
    """What ``serve`` would otherwise find out with a traceback: the files it reads and
    the address it listens on, each named by the flag or the setting that gave it."""
    server = config.server

    def name(flag: str, setting: str) -> str:
        """The flag, unless the value came from the file or the environment."""
        from_config = getattr(args, flag) is None and getattr(server, flag)
        return setting if from_config else f"--{flag.replace('_', '-')}"

    if server.tls_key and not server.tls_cert:
        fail(f"{name('tls_key', 'server.tls_key')} needs a certificate: give --tls-cert too")
    if server.tls_cert:
        tls_context(
            server.tls_cert,
            server.tls_key or None,
            (name("tls_cert", "server.tls_cert"), name("tls_key", "server.tls_key")),
        )
    key_file = config.auth.public_key_file
    if key_file:
        try:
            load_pem_public_key(Path(key_file).read_bytes())
        except OSError as exc:
            fail(f"auth.public_key_file {key_file}: cannot read it ({exc.strerror or exc})")
        except ValueError:
            fail(f"auth.public_key_file {key_file}: no PEM public key in it (BEGIN PUBLIC KEY)")
    check_host(server.host, name("host", "server.host"))
    check_loop(args.loop)


async def run_serve(
    config: Config,
    worker: bool = False,
    ready_fd: int | None = None,
    workers: int = 1,
    notes: Sequence[str] = (),
) -> None:
    """Run the hub until a signal; ``notes`` are printed after the banner."""
    # Before the app exists, so that what it logs while starting is printed too.
    logs.configure(config.log.level, config.log.format)
    app = App(config)
    async with app.run(reuse_port=worker) as server:
        frozen = freeze_startup_objects()
        logger.debug("froze %d start-up objects out of the garbage collector's way", frozen)
        lines = [*app.banner(server, workers=workers), *notes]
        if ready_fd is not None:
            # The parent of --workers prints the banner, once, when every worker listens.
            os.write(ready_fd, "\n".join(lines).encode())
            os.close(ready_fd)
        elif not worker:
            for line in lines:
                print(line, flush=True)
        await until_signal()
        print("shutting down", flush=True)


def serve_workers(args: argparse.Namespace, config: Config, notes: Sequence[str] = ()) -> int:
    """Run ``--workers N`` children of this command on one port, restart one that dies,
    and stop them all on SIGINT or SIGTERM."""
    if not config.broker.url:
        fail(
            "--workers needs the Redis broker, or each process would be a hub of "
            "its own: set [broker] url, or BACKCHANNEL_BROKER_URL"
        )
    # One secret and one API key for all: a token or key must work on every worker.
    env = dict(os.environ)
    env["BACKCHANNEL_AUTH_SECRET"] = config.auth.secret or secrets.token_urlsafe(32)
    env["BACKCHANNEL_API_KEY"] = api_key = config.api.key or secrets.token_urlsafe(24)
    # The port is chosen here (when 0) and held with SO_REUSEPORT, so that every worker
    # binds the same one.
    host, port = config.server.host, config.server.port
    holder = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((host, port))
    except OSError as exc:
        holder.close()
        fail(listen_error(exc, host, port), 1)
    port = holder.getsockname()[1]
    command = [sys.executable, "-m", "backchannel", "serve", "--worker", "--port", str(port)]
    for flag in ("config", "host", "tls_cert", "tls_key", "log_level", "log_format"):
        value = getattr(args, flag)
        if value is not None:
            command += [f"--{flag.replace('_', '-')}", str(value)]
    command += ["--loop", args.loop, "--workers", str(args.workers)]
    if args.demo:
        command.append("--demo")
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    def start() -> tuple[subprocess.Popen[bytes], int]:
        """A worker that writes its banner to the pipe returned once it listens."""
        read_end, write_end = os.pipe()
        child = subprocess.Popen(
            [*command, "--ready-fd", str(write_end)], env=env, pass_fds=(write_end,)
        )
        os.close(write_end)
        return child, read_end

    def restart() -> subprocess.Popen[bytes]:
        """A worker in place of one that died: its banner is not printed again."""
        return subprocess.Popen(command, env=env)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = [start() for _ in range(args.workers)]
    children = [child for child, _ in started]
    status = 0
    try:
        banner = wait_ready({pipe: child for child, pipe in started}, lambda: stopping)
        if banner is None and not stopping:
            print(
                "error: a worker exited before it could listen (its error is above)",
                file=sys.stderr,
                flush=True,
            )
            status = 1
            stopping = True
        if banner is not None:
            print(banner, flush=True)
            if not config.api.key:
                print(f"HTTP API key (made for this run; set api.key): {api_key}", flush=True)
            for line in notes:
                print(line, flush=True)
        while not stopping:
            for i, child in enumerate(children):
                if child.poll() is not None and not stopping:
                    print(
                        f"worker {child.pid} exited ({child.returncode}); restarting",
                        flush=True,
                    )
                    children[i] = restart()
            time.sleep(0.5)
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        holder.close()
    print("shutting down", flush=True)
    return status


def wait_ready(
    pipes: dict[int, subprocess.Popen[bytes]], stopping: Callable[[], bool]
) -> str | None:
    """The banner of the first worker once every one has written its own (it listens);
    None if one exits first (nothing written), or once ``stopping()`` is true."""
    banners: dict[int, bytes] = {pipe: b"" for pipe in pipes}
    waiting = set(pipes)
    try:
        while waiting and not stopping():
            readable, _, _ = select.select(list(waiting), [], [], 0.5)
            for pipe in readable:
                chunk = os.read(pipe, 4096)
                banners[pipe] += chunk
                if not chunk:  # written and closed, or the worker died
                    waiting.discard(pipe)
                    if not banners[pipe]:
                        return None
    finally:
        for pipe in pipes:
            os.close(pipe)
    if waiting:
        return None
    return banners[next(iter(pipes))].decode()


def demo_notes(config: Config, environ: Mapping[str, str]) -> list[str]:
    """With the demo on: keep its secret and API key across restarts (cli/demo.py), and
    the banner lines that say where and what the key is."""
    if not config.server.demo:
        return []
    key_given = bool(config.api.key)
    path = keep_credentials(config, environ)
    if path is None:
        return []
    lines = [f"demo secret and API key kept in {path} (delete it for new ones)"]
    if not key_given:
        lines.append(f"HTTP API key (kept for the demo): {config.api.key}")
    return lines
