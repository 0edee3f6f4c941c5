"""``backchannel publish``, ``broadcast``, ``presence`` and ``history``: the HTTP API of a
running server (docs/api.md), from the shell. httpx (the ``cli`` extra) is imported only
here and in the benchmark, so that the other subcommands run without it."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from ..app import load_config
from ..exceptions import InvalidArgument
from .args import positive_seconds
from .errors import fail, needs_extra

#: Where the API subcommands send their requests unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8000"
#: How long one API request may take, in seconds (``--timeout``).
DEFAULT_TIMEOUT = 10.0

API_EPILOG = """\
The key is --api-key, else BACKCHANNEL_API_KEY, else api.key of the --config file. The
answer is printed as JSON on standard output. Exit status: 0 when the server accepted
the request, 1 when it refused it or could not be reached (one line on standard error),
2 for a mistake in the command.
"""


def add_api_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that talks to the HTTP API takes."""
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the server's base URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", help="the HTTP API key (see below for the defaults)")
    parser.add_argument("--config", help="TOML file whose api.key to use")
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a request after this long (default {DEFAULT_TIMEOUT:g})",
    )


def api_key(args: argparse.Namespace) -> str:
    """The key from the flag, the environment or the config file; a one-line error
    (status 2) when none is given."""
    if args.api_key:
        return str(args.api_key)
    if os.environ.get("BACKCHANNEL_API_KEY"):
        return os.environ["BACKCHANNEL_API_KEY"]
    if args.config:
        try:
            key = load_config(args.config, {}).api.key
        except InvalidArgument as exc:
            fail(str(exc))
        if key:
            return key
    fail(
        "no API key: give --api-key, set BACKCHANNEL_API_KEY, or --config a file with "
        "[api] key (the server prints its key at start when it made one up)"
    )


def json_argument(text: str, flag: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        fail(f"{flag} {text!r} is not JSON (quote a string: '\"hello\"')")


def call(args: argparse.Namespace, method: str, body: dict[str, Any]) -> int:
    """POST ``body`` to ``/api/METHOD``, print the answer; the exit status."""
    key = api_key(args)
    try:
        import httpx
    except ImportError as exc:
        needs_extra(exc, "cli", f"backchannel {method}")
    url = f"{args.url.rstrip('/')}/api/{method}"
    try:
        response = httpx.post(
            url,
            json=body,
            headers={"Authorization": f"apikey {key}"},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        fail(f"cannot reach {url}: {exc or type(exc).__name__}", 1)
    try:
        answer = response.json()
    except ValueError:
        fail(f"{url} answered {response.status_code} without JSON: is it a backchannel?", 1)
    if response.status_code != 200:
        error = answer.get("error", {}) if isinstance(answer, dict) else {}
        message = error.get("message", response.reason_phrase) if isinstance(error, dict) else ""
        code = f" (code {error['code']})" if isinstance(error, dict) and "code" in error else ""
        fail(f"{method} refused: {response.status_code} {message}{code}", 1)
    print(json.dumps(answer, ensure_ascii=False, indent=2))
    return 0


def publish(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"channel": args.channel, "data": json_argument(args.data, "DATA")}
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    return call(args, "publish", body)


def broadcast(args: argparse.Namespace) -> int:
    data = json_argument(args.data, "DATA")
    return call(args, "broadcast", {"channels": args.channels, "data": data})


def presence(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"channel": args.channel}
    if args.count:
        body["count_only"] = True
    if args.limit is not None:
        body["limit"] = args.limit
    if args.cursor is not None:
        body["cursor"] = args.cursor
    return call(args, "presence", body)


def history(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"channel": args.channel}
    if args.limit is not None:
        body["limit"] = args.limit
    if args.since is not None:
        epoch, colon, offset = args.since.partition(":")
        if not colon or not offset.isdigit():
            fail(f"--since {args.since!r}: write it as EPOCH:OFFSET, as history prints them")
        body["epoch"], body["offset"] = epoch, int(offset)
    return call(args, "history", body)


def add_parsers(commands: Any) -> None:
    """The API subcommands, each with what it does and its options."""

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name,
            help=summary,
            description=f"{summary[0].upper()}{summary[1:]}, through the HTTP API.",
            epilog=API_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return parser

    parser = command("publish", "publish DATA (JSON) to a channel")
    parser.add_argument("channel", help="the channel, e.g. chat:lobby")
    parser.add_argument("data", help='the data, as JSON: \'{"text": "hi"}\' or \'"hi"\'')
    parser.add_argument(
        "--idempotency-key", help="publish once, however often it is sent with this key"
    )
    add_api_options(parser)
    parser.set_defaults(handler=publish)

    parser = command("broadcast", "publish the same DATA (JSON) to several channels")
    parser.add_argument("data", help="the data, as JSON")
    parser.add_argument("channels", nargs="+", metavar="CHANNEL", help="1 to 1000 channels")
    add_api_options(parser)
    parser.set_defaults(handler=broadcast)

    parser = command("presence", "print who is subscribed to a channel, on every node")
    parser.add_argument("channel")
    parser.add_argument(
        "--count", action="store_true", help="print only how many clients and users"
    )
    parser.add_argument(
        "--limit", type=int, help="at most this many clients (default: the server's page size)"
    )
    parser.add_argument(
        "--cursor", help="the page after this one: the next_cursor a previous page printed"
    )
    add_api_options(parser)
    parser.set_defaults(handler=presence)

    parser = command("history", "print a channel's recent publications, oldest first")
    parser.add_argument("channel")
    parser.add_argument("--limit", type=int, help="at most this many publications")
    parser.add_argument(
        "--since", metavar="EPOCH:OFFSET", help="only the publications after this position"
    )
    add_api_options(parser)
    parser.set_defaults(handler=history)
