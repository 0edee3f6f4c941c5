"""``backchannel bench``: load-test a running server.

N clients (the Python client, :mod:`backchannel.client`, over WebSocket or long
polling) subscribe to M channels; publications go through the HTTP API at a rate for a
duration, each carrying the time it was sent, so that every delivery gives a latency.
A live progress display (rich) runs on standard error; the summary (deliveries per
second, latency percentiles, errors) goes to standard output.

httpx and rich (the ``cli`` extra) are imported only when the benchmark runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..app import load_config
from ..exceptions import BackchannelError, InvalidArgument
from ..hub.token import make_token
from .api import DEFAULT_URL, api_key
from .errors import fail, needs_extra

#: Most clients one bench opens (``--clients``): each is a connection, and a task here.
MAX_CLIENTS = 1000
#: Highest publication rate, per second (``--rate``).
MAX_RATE = 10000.0
#: Longest run, in seconds (``--duration``).
MAX_DURATION = 3600.0
#: Latencies kept for the percentiles: the first this many deliveries (8 MB of floats).
MAX_SAMPLES = 1_000_000
#: Clients connecting at once: a burst of handshakes is not what is measured.
CONNECT_CONCURRENCY = 50
#: Seconds to wait, after the last publication, for the deliveries still on their way.
DRAIN_SECONDS = 5.0
#: Publications in flight at once: a server slower than the rate lowers the rate (the
#: summary shows the rate reached) instead of piling up requests here.
MAX_IN_FLIGHT = 100


@dataclass
class Tally:
    """What the run counted."""

    sent: int = 0
    errors: int = 0
    expected: int = 0
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, data: Any) -> None:
        self.delivered += 1
        if isinstance(data, dict) and isinstance(data.get("t"), int | float):
            if len(self.latencies) < MAX_SAMPLES:
                self.latencies.append(time.time() - data["t"])
        self.changed.set()


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (0.0 when empty)."""
    if not values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def summary(tally: Tally, seconds: float, clients: int, channels: int) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    return {
        "clients": clients,
        "channels": channels,
        "seconds": round(seconds, 3),
        "published": tally.sent,
        "errors": tally.errors,
        "deliveries": tally.delivered,
        "expected_deliveries": tally.expected,
        "deliveries_per_second": round(tally.delivered / seconds, 1) if seconds else 0.0,
        "latency_ms": {
            name: round(percentile(latencies, fraction) * 1000, 2)
            for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
        },
    }


def _hub_urls(base: str) -> tuple[str, str]:
    """The WebSocket and long-polling URLs of the server at ``base`` (http or https)."""
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https"):
        fail(f"--url {base!r}: give the server's http:// or https:// URL")
    ws = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, "/ws", "", ""))
    lp = urlunsplit((parts.scheme, parts.netloc, "/lp", "", ""))
    return ws, lp


def _secret(args: argparse.Namespace) -> str:
    """The secret that signs the clients' tokens: the server's own."""
    try:
        secret = load_config(args.config, os.environ).auth.secret
    except InvalidArgument as exc:
        fail(str(exc))
    if not secret:
        fail(
            "no secret to sign the clients' tokens: set BACKCHANNEL_AUTH_SECRET or "
            "--config a file with [auth] secret (the server's own)"
        )
    return secret


async def _run(args: argparse.Namespace, key: str, secret: str) -> dict[str, Any]:
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..client import Client, Publication

    ws_url, lp_url = _hub_urls(args.url)
    channels = [f"{args.channel_prefix}{i}" for i in range(args.channels)]
    tally = Tally()
    subscribers = [0] * len(channels)
    clients: list[Client] = []
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    def receiver() -> Callable[[Publication], None]:
        def on_publication(publication: Publication) -> None:
            tally.deliver(publication.data)

        return on_publication

    async def open_client(index: int) -> None:
        async with gate:
            token = make_token(secret, f"bench-{index}", ttl=args.duration + 600)
            client = Client(ws_url, token=token, longpoll_url=lp_url, transports=(args.transport,))
            clients.append(client)
            async with asyncio.timeout(args.connect_timeout):
                await client.connect()
                channel = index % len(channels)
                await client.subscribe(channels[channel], on_publication=receiver())
            subscribers[channel] += 1

    console = Console(stderr=True)
    try:
        try:
            await asyncio.gather(*(open_client(i) for i in range(args.clients)))
        except (BackchannelError, OSError, TimeoutError) as exc:
            fail(f"cannot connect {args.clients} clients to {ws_url}: {exc or 'timed out'}", 1)
        async with httpx.AsyncClient(
            headers={"Authorization": f"apikey {key}"}, timeout=10.0
        ) as http:
            started = time.monotonic()
            with Progress(
                TextColumn("[bold]bench"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task("bench", total=args.duration, status="")

                def show() -> None:
                    progress.update(
                        task,
                        completed=min(time.monotonic() - started, args.duration),
                        status=f"published {tally.sent}, delivered {tally.delivered}, "
                        f"errors {tally.errors}",
                    )

                await _publish(args, http, channels, subscribers, tally, started, show)
                await _drain(tally, show)
            elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)
    return summary(tally, elapsed, args.clients, args.channels)


async def _publish(
    args: argparse.Namespace,
    http: Any,
    channels: list[str],
    subscribers: list[int],
    tally: Tally,
    started: float,
    show: Callable[[], None],
) -> None:
    """Publish at ``args.rate`` per second for ``args.duration`` seconds, on a schedule
    (the n-th at ``n / rate``), so a slow answer does not lower the rate."""
    url = f"{args.url.rstrip('/')}/api/publish"
    pending: set[asyncio.Task[None]] = set()

    async def one(number: int) -> None:
        channel = number % len(channels)
        body = {"channel": channels[channel], "data": {"t": time.time(), "n": number}}
        try:
            response = await http.post(url, json=body)
            ok = response.status_code == 200
        except Exception:  # any failure of the request counts as an error, and goes on
            ok = False
        if ok:
            tally.sent += 1
            tally.expected += subscribers[channel]
        else:
            tally.errors += 1

    total = max(1, int(args.rate * args.duration))
    for number in range(total):
        delay = started + number / args.rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # the rate's schedule, not a synchronisation
        if len(pending) >= MAX_IN_FLIGHT:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(one(number))
        pending.add(task)
        task.add_done_callback(pending.discard)
        show()
    if pending:
        await asyncio.wait(pending)
    show()


async def _drain(tally: Tally, show: Callable[[], None]) -> None:
    """Wait for the deliveries still on their way, at most DRAIN_SECONDS."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_SECONDS
    while tally.delivered < tally.expected and loop.time() < deadline:
        tally.changed.clear()
        try:
            async with asyncio.timeout(deadline - loop.time()):
                await tally.changed.wait()
        except TimeoutError:
            break
        show()


def bench(args: argparse.Namespace) -> int:
    if args.channels > args.clients:
        fail(f"--channels {args.channels} is more than --clients {args.clients}")
    key = api_key(args)
    secret = _secret(args)
    try:
        import httpx  # noqa: F401
        import rich  # noqa: F401
    except ImportError as exc:
        needs_extra(exc, "cli", "backchannel bench")
    result = asyncio.run(_run(args, key, secret))
    if args.json:
        print(json.dumps(result))
    else:
        latency = result["latency_ms"]
        print(
            f"{result['clients']} clients in {result['channels']} channels, "
            f"{result['seconds']:.1f} s: {result['published']} published, "
            f"{result['errors']} errors\n"
            f"deliveries: {result['deliveries']} of {result['expected_deliveries']}, "
            f"{result['deliveries_per_second']:.1f}/s\n"
            f"latency: p50 {latency['p50']:.2f} ms, p90 {latency['p90']:.2f} ms, "
            f"p99 {latency['p99']:.2f} ms"
        )
    lost = result["deliveries"] < result["expected_deliveries"]
    return 1 if result["errors"] or lost else 0


def _bounded(kind: type[int] | type[float], low: float, high: float, what: str) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}: {low:g} to {high:g}")
        return value

    return parse


BENCH_EPILOG = """\
Each client is a user bench-N with a token signed by the server's secret
(BACKCHANNEL_AUTH_SECRET, or --config's auth.secret); publications go through the HTTP
API (--api-key, BACKCHANNEL_API_KEY or --config's api.key). The channels' namespace must
be configured on the server (the default configuration has typing). The progress goes to
standard error, the summary to standard output. Exit status: 0 when every publication
was accepted and delivered to every subscriber, 1 otherwise.

  backchannel bench --clients 100 --channels 10 --rate 50 --duration 30
"""


def add_parsers(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="load-test a running server: N clients in M channels, publications at a rate",
        description="Load-test a running server: N clients subscribe to M channels, "
        "publications are sent through the HTTP API at a rate for a duration, and each "
        "delivery's latency is measured. Prints deliveries per second, latency "
        "percentiles (p50, p90, p99) and errors.",
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"the server's base URL (default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", help="the HTTP API key")
    parser.add_argument("--config", help="TOML file with the server's auth.secret and api.key")
    parser.add_argument(
        "--clients",
        type=_bounded(int, 1, MAX_CLIENTS, "a number of clients"),
        default=10,
        metavar="N",
        help=f"clients to connect (default 10, at most {MAX_CLIENTS})",
    )
    parser.add_argument(
        "--channels",
        type=_bounded(int, 1, MAX_CLIENTS, "a number of channels"),
        default=1,
        metavar="M",
        help="channels the clients are spread over (default 1)",
    )
    parser.add_argument(
        "--rate",
        type=_bounded(float, 0.1, MAX_RATE, "a rate per second"),
        default=10.0,
        help="publications per second, over all channels (default 10)",
    )
    parser.add_argument(
        "--duration",
        type=_bounded(float, 0.1, MAX_DURATION, "a number of seconds"),
        default=10.0,
        metavar="SECONDS",
        help="how long to publish (default 10)",
    )
    parser.add_argument(
        "--transport",
        choices=["websocket", "longpoll"],
        default="websocket",
        help="the clients' transport (default websocket)",
    )
    parser.add_argument(
        "--channel-prefix",
        default="typing:bench-",
        metavar="PREFIX",
        help="channels are PREFIX0, PREFIX1, ... (default typing:bench-)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_bounded(float, 0.1, 600, "a number of seconds"),
        default=30.0,
        metavar="SECONDS",
        help="give up when the clients are not connected and subscribed by then (default 30)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(handler=bench)
