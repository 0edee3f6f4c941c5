"""Drive kosoku's fuzzingserver (the Autobahn TestSuite, client mode) with our client.

Usage::

    python tests/compliance/autobahn_client.py ws://127.0.0.1:9001 AGENT [--jobs N]

The flow is the suite's: read the case count from ``/getCaseCount``, open
``/runCase?case=i&agent=AGENT`` for every case and echo each message with its type
until the connection closes, then open ``/updateReports?agent=AGENT`` so the server
writes its reports and exits. ``--jobs N`` runs up to N cases at a time: the server
handles each case's connection on its own, and two at a time cut a run from about 400 s
to about 290 s on two cores with the same verdicts.

``AUTOBAHN_IMPL=websockets`` swaps our client for the ``websockets`` library, a known
implementation used to check this harness on its own.

Exit status: 0 when every case ran, 1 when a case raised something other than a
closed connection or timed out (its verdict in the report says more), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from urllib.parse import urlencode

Data = str | bytes
# Connect to a URI, echo every message (when asked) until the connection closes, and
# return the messages received: the one part that depends on the WebSocket library.
Session = Callable[[str, bool], Awaitable[list[Data]]]

# 9.1.6 and 9.2.6 send 16 MiB messages.
MAX_SIZE = 16 * 2**20
OPEN_TIMEOUT = 10.0
# The slowest case takes about 10 s; kosoku has no closing-handshake timeout of its
# own, so a case stuck on our side would otherwise stall the whole run.
CASE_TIMEOUT = 120.0


async def backchannel_session(uri: str, echo: bool) -> list[Data]:
    """Run one connection with backchannel's asyncio client."""
    from backchannel.asyncio import connect
    from backchannel.exceptions import ConnectionClosed
    from backchannel.protocol.deflate import DeflateOffer

    received: list[Data] = []
    ws = await connect(
        uri,
        max_size=MAX_SIZE,
        # The second offer adds client_no_context_takeover, without which the suite
        # reports 13.2.x, 13.5.x and 13.6.x as UNIMPLEMENTED (RFC 7692, section 5).
        compression=[
            DeflateOffer(client_max_window_bits=True),
            DeflateOffer(client_no_context_takeover=True, client_max_window_bits=True),
        ],
        # Compress every message: kosoku 0.1.0's 12.x/13.x cases crash on an
        # uncompressed text message ("Strings must be encoded before hashing": ERROR).
        compress_threshold=0,
        open_timeout=OPEN_TIMEOUT,
        # A ping would be an event the cases do not expect.
        ping_interval=None,
    )
    try:
        async for message in ws:
            received.append(message)
            if echo:
                await ws.send(message)
    except ConnectionClosed:
        # Many cases end with the suite dropping the TCP connection: not our failure.
        pass
    finally:
        # A no-op after a close; drops the connection when a case timed out.
        await ws.close()
    return received


async def websockets_session(uri: str, echo: bool) -> list[Data]:
    """Run one connection with the websockets library (the harness's stand-in)."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    received: list[Data] = []
    ws = await connect(
        uri,
        max_size=MAX_SIZE,
        # The same two offers as backchannel_session, so both meet the same cases.
        extensions=[
            ClientPerMessageDeflateFactory(client_max_window_bits=True),
            ClientPerMessageDeflateFactory(
                client_no_context_takeover=True, client_max_window_bits=True
            ),
        ],
        open_timeout=OPEN_TIMEOUT,
        ping_interval=None,
    )
    try:
        async for message in ws:
            received.append(message)
            if echo:
                await ws.send(message)
    except ConnectionClosed:
        pass
    finally:
        await ws.close()
    return received


IMPLEMENTATIONS: dict[str, Session] = {
    "backchannel": backchannel_session,
    "websockets": websockets_session,
}


async def run_case(session: Session, uri: str, label: str) -> bool:
    """Run one case; report anything but a closed connection on stderr."""
    try:
        async with asyncio.timeout(CASE_TIMEOUT):
            await session(uri, True)
    except TimeoutError:
        print(f"{label}: no close after {CASE_TIMEOUT:.0f} s", file=sys.stderr)
        return False
    except Exception:
        # Keep going: one broken case must not hide the verdicts of the others.
        print(f"{label}: {traceback.format_exc()}", file=sys.stderr)
        return False
    return True


async def run(base: str, agent: str, session: Session, jobs: int) -> int:
    """Run every case against the fuzzingserver at ``base``; return the exit status."""
    base = base.rstrip("/")
    started = time.monotonic()
    messages = await asyncio.wait_for(session(f"{base}/getCaseCount", False), CASE_TIMEOUT)
    count = int(messages[0])
    # The test reads this line to check that the report holds every case.
    print(f"case count: {count}", flush=True)

    cases = iter(range(1, count + 1))
    failures = 0

    async def worker() -> None:
        # The workers share one iterator, so each case runs exactly once.
        nonlocal failures
        for case in cases:
            query = urlencode({"case": case, "agent": agent})
            if not await run_case(session, f"{base}/runCase?{query}", f"case {case}"):
                failures += 1

    await asyncio.gather(*(worker() for _ in range(jobs)))

    # The server drops this connection without a close frame once it has the request.
    await run_case(session, f"{base}/updateReports?{urlencode({'agent': agent})}", "report")
    elapsed = time.monotonic() - started
    print(f"ran {count} cases in {elapsed:.1f} s, {failures} with errors", flush=True)
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    """Parse the command line and run the suite with the selected implementation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("uri", help="the fuzzingserver, e.g. ws://127.0.0.1:9001")
    parser.add_argument("agent", help="the name the reports are filed under")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cases run at a time")
    args = parser.parse_args(argv)
    impl = os.environ.get("AUTOBAHN_IMPL", "backchannel")
    if impl not in IMPLEMENTATIONS or args.jobs < 1:
        parser.error(f"AUTOBAHN_IMPL must be one of {sorted(IMPLEMENTATIONS)}; --jobs >= 1")
    return asyncio.run(run(args.uri, args.agent, IMPLEMENTATIONS[impl], args.jobs))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
