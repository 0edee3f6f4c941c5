"""The ``backchannel`` command line: ``serve``, ``token``, ``echo`` and ``connect``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib.resources
import json
import os
import secrets
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from cryptography.hazmat.primitives.serialization import load_pem_public_key

from . import __version__
from .app import App, Config, load_config
from .asyncio import ServerConnection, connect, serve
from .exceptions import (
    BackchannelError,
    BrokerUnavailable,
    ConnectionClosed,
    InvalidArgument,
    InvalidStatus,
)
from .hub.token import make_token
from .protocol.deflate import DeflateConfig
from .protocol.handshake import is_upgrade_request
from .protocol.http11 import Request, Response
from .protocol.limits import Limits

__all__ = ["main"]

T = TypeVar("T")


def _size(text: str) -> int:
    """A size like 1048576, 16MiB or 64KiB."""
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30}
    lower = text.lower()
    for suffix, factor in units.items():
        if lower.endswith(suffix):
            size = int(float(lower[: -len(suffix)]) * factor)
            break
    else:
        size = int(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size of at least 1 byte")
    return size


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: 0 to 65535 (0: any free one)")
    return port


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of processes: 1 or more")
    return count


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds: 0 or more")
    return seconds


CONNECT_HELP = """\
Each line of standard input is sent as a text message; each message received is printed
on standard output ("< text", or "< [binary N bytes] HEX"); notices go to standard error.
At the end of the input (Ctrl-D, or the end of a file or pipe), connect waits until it
has received at least as many messages as it sent lines, or until --wait seconds have
passed, then closes with 1000. Exit status: 0 after a normal close, 1 otherwise.

  printf 'hello\\nworld\\n' | backchannel connect ws://127.0.0.1:8765/
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backchannel",
        description="The backchannel command line: a hub server (serve), tokens for it "
        "(token), an echo server (echo) and a client (connect).",
    )
    parser.add_argument("--version", action="version", version=f"backchannel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "serve", help="run the hub: WebSocket, long polling, HTTP API (and the demo chat)"
    )
    run.add_argument("--config", help="TOML file (docs/config.md); BACKCHANNEL_* overrides it")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=_port, help="port (default 8000; 0: any free one)")
    run.add_argument("--tls-cert", help="PEM certificate chain; serves https:// and wss://")
    run.add_argument("--tls-key", help="PEM private key for --tls-cert")
    run.add_argument(
        "--demo",
        action="store_true",
        help="serve the demo chat page and /demo/token, which gives anyone a token for any "
        "name: for trying it out, never in production (server.demo)",
    )
    run.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    run.add_argument(
        "--workers",
        type=_count,
        default=1,
        help="N processes on one port (SO_REUSEPORT); needs the Redis broker",
    )
    # Set by --workers for its children: bind with SO_REUSEPORT, print no banner (the
    # parent prints one for all), and write it to this pipe once listening.
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    token = commands.add_parser("token", help="print a connection token (for testing)")
    token.add_argument("--sub", required=True, help="the user id")
    token.add_argument("--ttl", type=float, help="seconds until it expires (default: never)")
    token.add_argument("--info", help="JSON shown to others in presence")
    token.add_argument("--channel", help="make a channel token for this private channel")
    token.add_argument("--config", help="TOML file with [auth] secret")

    echo = commands.add_parser("echo", help="run an echo server (every message back)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    echo.add_argument("--tls-cert", help="PEM certificate chain; serves wss://")
    echo.add_argument("--tls-key", help="PEM private key for --tls-cert")
    echo.add_argument("--max-size", type=_size, default=2**20, help="message size limit")
    echo.add_argument(
        "--compress-all",
        action="store_true",
        help="compress every message, however small, when permessage-deflate is agreed",
    )
    echo.add_argument("--no-compression", action="store_true")
    echo.add_argument(
        "--compress-level",
        type=int,
        choices=range(1, 10),
        default=6,
        metavar="1-9",
        help="zlib level for permessage-deflate (default 6; 1 is several times faster)",
    )
    echo.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")

    client = commands.add_parser(
        "connect",
        help="a client, like wscat: interactive, or scripted from a file or pipe",
        description="Connect to a WebSocket server.",
        epilog=CONNECT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client.add_argument("url")
    client.add_argument("--header", action="append", default=[], metavar="K:V")
    client.add_argument("--subprotocol", action="append", default=[])
    client.add_argument("--insecure", action="store_true", help="don't verify certificates")
    client.add_argument(
        "--wait",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="at the end of the input, wait at most this long for replies (default 5)",
    )
    return parser


def _fail(message: str, status: int = 2) -> NoReturn:
    """One line on standard error and exit: 2 for a mistake in the command or the
    configuration, 1 for what went wrong while running."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


def _tls_context(cert: str, key: str | None, names: tuple[str, str]) -> ssl.SSLContext:
    """A server context from PEM files; a mistake in them (missing, swapped, mismatched)
    is one line naming the file and where it was set (``names``: cert's, key's)."""
    cert_name, key_name = names
    for name, path in ((cert_name, cert), (key_name, key)):
        if path is None:
            continue
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as exc:
            _fail(f"{name} {path}: cannot read it ({exc.strerror or exc})")
        if name == cert_name and "-----BEGIN CERTIFICATE-----" not in text:
            hint = "; is it the key?" if "PRIVATE KEY-----" in text else ""
            _fail(f"{name} {path}: no PEM certificate in it{hint} ({cert_name} takes the chain)")
        if name == key_name and "PRIVATE KEY-----" not in text:
            hint = "; is it the certificate?" if "-----BEGIN CERTIFICATE-----" in text else ""
            _fail(f"{name} {path}: no PEM private key in it{hint}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            _fail(f"{key_name} {key} is not the private key of {cert_name} {cert}")
        if key is None:
            _fail(f"{cert_name} {cert} holds no private key: give it with {key_name}")
        _fail(f"{cert_name} {cert} / {key_name} {key}: {exc.reason or exc}")
    return context


def _check_host(host: str, name: str) -> None:
    """Resolve the address to listen on now, to say which setting is wrong."""
    if not host:
        return
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        _fail(
            f"{name} {host}: cannot resolve it ({reason}); give a name or an address of "
            "this machine, e.g. 127.0.0.1 or 0.0.0.0"
        )


def _listen_error(exc: OSError, host: str, port: int) -> str:
    """Why a server cannot listen, in words that say what to do."""
    place = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {place}: the port is in use; stop what uses it, or choose "
            "another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {place}: no such address on this machine; check --host"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {place}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {place}: {exc.strerror or exc}"


def _check_loop(loop: str) -> None:
    if loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            _fail("--loop uvloop needs the uvloop package: pip install 'backchannel[uvloop]'")


def _static(name: str) -> bytes:
    return importlib.resources.files("backchannel").joinpath("static", name).read_bytes()


async def _echo_handler(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def _echo_page(connection: ServerConnection, request: Request) -> Response | None:
    """Serve the demo page at ``/``; let upgrades through."""
    if is_upgrade_request(request):
        return None
    if request.path in ("/", "/index.html") and request.method == "GET":
        response = Response(200, body=_static("echo.html"))
        response.headers.add("Content-Type", "text/html; charset=utf-8")
        return response
    return None


async def _run_echo(args: argparse.Namespace, context: ssl.SSLContext | None) -> None:
    try:
        async with serve(
            _echo_handler,
            args.host,
            args.port,
            ssl=context,
            compression=None
            if args.no_compression
            else DeflateConfig(compress_level=args.compress_level),
            compress_threshold=0 if args.compress_all else 128,
            limits=Limits(max_size=args.max_size),
            process_request=_echo_page,
        ) as server:
            scheme = "https" if context else "http"
            print(f"echo server on {scheme}://{args.host}:{server.port}/", flush=True)
            await _until_signal()
            print("shutting down", flush=True)
    except OSError as exc:  # listening failed: nothing else in here does I/O of its own
        _fail(_listen_error(exc, args.host, args.port), 1)


def _stdin_lines(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[bytes | None]:
    """Lines of standard input, then None at its end. A thread reads them: it works
    alike for a terminal, a pipe, a file and /dev/null (an event loop's pipe transport
    takes none of the last two), and as a daemon it never holds up the exit."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(item: bytes | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody reads anymore
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def read() -> None:
        stream = sys.stdin.buffer if sys.stdin is not None else None
        try:
            while stream is not None and (line := stream.readline()):
                put(line)
        except (OSError, ValueError):  # standard input closed or unreadable: its end
            pass
        put(None)

    threading.Thread(target=read, name="backchannel-stdin", daemon=True).start()
    return queue


async def _run_connect(args: argparse.Namespace) -> int:
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context()
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    headers = []
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            print(f"error: --header {header!r}: write it as NAME:VALUE", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    try:
        ws = await connect(
            args.url,
            ssl=context,
            additional_headers=headers,
            subprotocols=args.subprotocol or None,
        )
    except InvalidStatus as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.body:
            print(exc.body.decode(errors="replace").rstrip(), file=sys.stderr)
        return 1
    except (socket.gaierror, ConnectionRefusedError) as exc:
        # The system's words name neither the host nor the port: the URL does.
        print(f"error: cannot connect to {args.url}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except (BackchannelError, OSError, ValueError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    interactive = sys.stdin is not None and sys.stdin.isatty()
    hint = " (Ctrl-D to close)" if interactive else ""
    print(f"connected to {args.url}{hint}", file=sys.stderr, flush=True)

    received = 0
    progress = asyncio.Event()

    async def printer() -> None:
        nonlocal received
        async for message in ws:
            if isinstance(message, str):
                print(f"< {message}", flush=True)
            else:
                print(f"< [binary {len(message)} bytes] {message[:64].hex()}", flush=True)
            received += 1
            progress.set()

    loop = asyncio.get_running_loop()
    lines = _stdin_lines(loop)
    printing = asyncio.create_task(printer())
    sent = 0

    def answered() -> bool:
        return received >= sent

    try:
        while not printing.done():
            reading = asyncio.ensure_future(lines.get())
            await asyncio.wait({reading, printing}, return_when=asyncio.FIRST_COMPLETED)
            if not reading.done():  # the server closed
                reading.cancel()
                break
            line = reading.result()
            if line is None:
                await _replies(printing, progress, answered, args.wait)
                break
            with contextlib.suppress(ConnectionClosed):
                await ws.send(line.decode(errors="replace").rstrip("\r\n"))
                sent += 1
        await ws.close()
        await printing
    except ConnectionClosed:
        pass
    print(f"closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), file=sys.stderr)
    return 0 if ws.close_code in (1000, 1001, 1005) else 1


async def _replies(
    printing: asyncio.Task[None], progress: asyncio.Event, done: Callable[[], bool], seconds: float
) -> None:
    """Wait until ``done()``, the connection ends, or ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not done() and not printing.done() and loop.time() < deadline:
        progress.clear()
        waiting = asyncio.ensure_future(progress.wait())
        await asyncio.wait(
            {waiting, printing},
            timeout=deadline - loop.time(),
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiting.cancel()


def _load(args: argparse.Namespace) -> Config:
    """The configuration: file, environment, then flags; a mistake exits with one line."""
    try:
        config = load_config(args.config, os.environ)
    except InvalidArgument as exc:
        _fail(str(exc))
    for name in ("host", "port", "tls_cert", "tls_key"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config.server, name, value)
    if getattr(args, "demo", False):
        config.server.demo = True
    return config


def _check_serve(args: argparse.Namespace, config: Config) -> None:
    """What ``serve`` would otherwise find out with a traceback: the files it reads and
    the address it listens on, each named by the flag or the setting that gave it."""
    server = config.server

    def name(flag: str, setting: str) -> str:
        """The flag, unless the value came from the file or the environment."""
        from_config = getattr(args, flag) is None and getattr(server, flag)
        return setting if from_config else f"--{flag.replace('_', '-')}"

    if server.tls_key and not server.tls_cert:
        _fail(f"{name('tls_key', 'server.tls_key')} needs a certificate: give --tls-cert too")
    if server.tls_cert:
        _tls_context(
            server.tls_cert,
            server.tls_key or None,
            (name("tls_cert", "server.tls_cert"), name("tls_key", "server.tls_key")),
        )
    key_file = config.auth.public_key_file
    if key_file:
        try:
            load_pem_public_key(Path(key_file).read_bytes())
        except OSError as exc:
            _fail(f"auth.public_key_file {key_file}: cannot read it ({exc.strerror or exc})")
        except ValueError:
            _fail(f"auth.public_key_file {key_file}: no PEM public key in it (BEGIN PUBLIC KEY)")
    _check_host(server.host, name("host", "server.host"))
    _check_loop(args.loop)


async def _run_serve(
    config: Config, worker: bool = False, ready_fd: int | None = None, workers: int = 1
) -> None:
    app = App(config)
    async with app.run(reuse_port=worker) as server:
        lines = app.banner(server, workers=workers)
        if ready_fd is not None:
            # The parent of --workers prints the banner, once, when every worker listens.
            os.write(ready_fd, "\n".join(lines).encode())
            os.close(ready_fd)
        elif not worker:
            for line in lines:
                print(line, flush=True)
        await _until_signal()
        print("shutting down", flush=True)


def _serve_workers(args: argparse.Namespace, config: Config) -> int:
    """Run ``--workers N`` children of this command on one port, restart one that dies,
    and stop them all on SIGINT or SIGTERM."""
    if not config.broker.url:
        _fail(
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
        _fail(_listen_error(exc, host, port), 1)
    port = holder.getsockname()[1]
    command = [sys.executable, "-m", "backchannel", "serve", "--worker", "--port", str(port)]
    for flag in ("config", "host", "tls_cert", "tls_key"):
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
        banner = _wait_ready({pipe: child for child, pipe in started}, lambda: stopping)
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


def _wait_ready(
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


async def _until_signal() -> None:
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stopping() -> None:
        # A second signal during the shutdown (an orchestrator that repeats SIGTERM) is
        # the same request: not an error.
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopping)
    await stop


def _token(args: argparse.Namespace) -> int:
    config = _load(args)
    if not config.auth.secret:
        print(
            "error: no secret to sign with: set [auth] secret in --config, or "
            "BACKCHANNEL_AUTH_SECRET (the server must use the same one)",
            file=sys.stderr,
        )
        return 2
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except ValueError:
            print("error: --info must be JSON", file=sys.stderr)
            return 2
    print(make_token(config.auth.secret, args.sub, ttl=args.ttl, info=info, channel=args.channel))
    return 0


def _run(main: Coroutine[Any, Any, T], loop: str) -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``backchannel`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        config = _load(args)
        _check_serve(args, config)
        if args.workers > 1 and not args.worker:
            sys.exit(_serve_workers(args, config))
        try:
            _run(_run_serve(config, args.worker, args.ready_fd, args.workers), args.loop)
        except OSError as exc:
            # Files and the address were checked: this is listening that failed.
            _fail(_listen_error(exc, config.server.host, config.server.port), 1)
        except (BrokerUnavailable, InvalidArgument) as exc:
            # Redis down, the redis package missing: say so, no traceback.
            _fail(str(exc), 1)
    elif args.command == "token":
        sys.exit(_token(args))
    elif args.command == "echo":
        if args.tls_key and not args.tls_cert:
            _fail("--tls-key needs a certificate: give --tls-cert too")
        context = None
        if args.tls_cert:
            context = _tls_context(args.tls_cert, args.tls_key, ("--tls-cert", "--tls-key"))
        _check_host(args.host, "--host")
        _check_loop(args.loop)
        _run(_run_echo(args, context), args.loop)
    else:
        sys.exit(asyncio.run(_run_connect(args)))
