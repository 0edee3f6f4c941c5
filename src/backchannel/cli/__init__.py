"""The ``backchannel`` command line: ``serve``, ``token``, ``echo`` and ``connect``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from .. import __version__
from ..app import logs
from ..exceptions import (
    BrokerUnavailable,
    InvalidArgument,
)
from . import api, bench, config
from . import token as token_commands
from .args import count, port, seconds, size
from .checks import check_host, check_loop, tls_context
from .config import load
from .connect import CONNECT_HELP, run_connect
from .echo import run_echo
from .errors import fail, listen_error
from .runner import run
from .serve import check_serve, demo_notes, run_serve, serve_workers
from .token import token


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backchannel",
        description="The backchannel command line: a hub server (serve), its HTTP API "
        "(publish, broadcast, presence, history), a load test (bench), tokens (token, "
        "checktoken), config files (genconfig, checkconfig), an echo server (echo) and a "
        "client (connect). Each subcommand's --help says more.",
    )
    parser.add_argument("--version", action="version", version=f"backchannel {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "serve", help="run the hub: WebSocket, long polling, HTTP API (and the demo chat)"
    )
    run.add_argument("--config", help="TOML file (docs/config.md); BACKCHANNEL_* overrides it")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=port, help="port (default 8000; 0: any free one)")
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
        "--log-level", choices=logs.LEVELS, help="the least severe records logged (log.level)"
    )
    run.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        help="text, or json: one object per line, for log collectors (log.format)",
    )
    run.add_argument(
        "--workers",
        type=count,
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
    echo.add_argument("--port", type=port, default=8765, help="port (default 8765)")
    echo.add_argument("--tls-cert", help="PEM certificate chain; serves wss://")
    echo.add_argument("--tls-key", help="PEM private key for --tls-cert")
    echo.add_argument("--max-size", type=size, default=2**20, help="message size limit")
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
        type=seconds,
        default=5.0,
        metavar="SECONDS",
        help="at the end of the input, wait at most this long for replies (default 5)",
    )
    api.add_parsers(commands)
    bench.add_parsers(commands)
    config.add_parsers(commands)
    token_commands.add_parsers(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``backchannel`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        settings = load(args)
        check_serve(args, settings)
        # A worker of --workers gets the parent's secret and key in its environment.
        notes = [] if args.worker else demo_notes(settings, os.environ)
        if args.workers > 1 and not args.worker:
            sys.exit(serve_workers(args, settings, notes))
        try:
            run(run_serve(settings, args.worker, args.ready_fd, args.workers, notes), args.loop)
        except OSError as exc:
            # Files and the address were checked: this is listening that failed.
            fail(listen_error(exc, settings.server.host, settings.server.port), 1)
        except (BrokerUnavailable, InvalidArgument) as exc:
            # Redis down, the redis package missing: say so, no traceback.
            fail(str(exc), 1)
    elif args.command == "token":
        sys.exit(token(args))
    elif args.command == "echo":
        if args.tls_key and not args.tls_cert:
            fail("--tls-key needs a certificate: give --tls-cert too")
        context = None
        if args.tls_cert:
            context = tls_context(args.tls_cert, args.tls_key, ("--tls-cert", "--tls-key"))
        check_host(args.host, "--host")
        check_loop(args.loop)
        run(run_echo(args, context), args.loop)
    elif args.command == "connect":
        sys.exit(asyncio.run(run_connect(args)))
    else:
        sys.exit(args.handler(args))
