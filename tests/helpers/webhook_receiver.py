"""A webhook receiver, run as a process of its own: it verifies every request's signature
as docs/operations.md tells a backend to (stdlib only, none of backchannel's code), and
reports each request as one JSON line on stdout.

    python webhook_receiver.py --secret S [--fail-first N] [--slow-first SECONDS] [--hang]

The first line is ``listening PORT``. Then one line per request, ``{"kind": ...}``:

* ``accepted``: signature good, first time this delivery id is seen (answered 200;
  ``event`` is the body, ``headers`` the X-Backchannel-* headers);
* ``duplicate``: signature good, a delivery id already accepted (answered 200, dropped:
  what a receiver does with at-least-once delivery);
* ``failed``: signature good, answered 500 on purpose (the first N attempts of each
  delivery, with ``--fail-first N``);
* ``refused``: a bad or stale signature (answered 401, with the reason).

``--slow-first SECONDS`` accepts the first attempt of each delivery but answers it only
after SECONDS (the sender times out and sends it again); ``--hang`` never answers. The
process ends when its stdin closes, after printing ``done``.

:class:`Receiver` runs it from a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: Seconds of difference between the request's timestamp and now that are accepted.
TOLERANCE = 300
#: Seconds a test waits for one line of the receiver.
LINE_TIMEOUT = 30.0


def verify(secret: str, timestamp: str, signature: str, body: bytes) -> str:
    """Why the request is refused, or "" when it is good."""
    try:
        sent = int(timestamp)
    except ValueError:
        return "no timestamp"
    if abs(time.time() - sent) > TOLERANCE:
        return "stale timestamp"
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    for part in signature.split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1" and hmac.compare_digest(value, expected.hexdigest()):
            return ""
    return "bad signature"


class _State:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.attempts: dict[str, int] = {}
        self.seen: set[str] = set()

    def report(self, record: dict[str, Any]) -> None:
        with self.lock:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    args = state.args

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *items: Any) -> None:
            pass  # stdout is for records; stderr stays quiet

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k: v for k, v in self.headers.items() if k.lower().startswith("x-backch")}
            delivery = self.headers.get("X-Backchannel-Delivery", "")
            reason = verify(
                args.secret,
                self.headers.get("X-Backchannel-Timestamp", ""),
                self.headers.get("X-Backchannel-Signature", ""),
                body,
            )
            if not reason:
                event = json.loads(body)
                if event.get("id") != delivery:
                    reason = "the body's id is not the delivery header"
            if reason:
                state.report({"kind": "refused", "delivery": delivery, "reason": reason})
                self._answer(401)
                return
            if args.hang:
                threading.Event().wait()
            with state.lock:
                attempt = state.attempts[delivery] = state.attempts.get(delivery, 0) + 1
                duplicate = delivery in state.seen
                fail = attempt <= args.fail_first
                if not fail:
                    state.seen.add(delivery)
            record = {"delivery": delivery, "attempt": attempt, "event": event, "headers": headers}
            if fail:
                state.report({"kind": "failed", **record})
                self._answer(500)
                return
            state.report({"kind": "duplicate" if duplicate else "accepted", **record})
            if args.slow_first and attempt == 1:
                time.sleep(args.slow_first)
            self._answer(200)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--slow-first", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    args = parser.parse_args()
    state = _State(args)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with state.lock:
        sys.stdout.write(f"listening {server.server_address[1]}\n")
        sys.stdout.flush()
    sys.stdin.read()  # until the test closes it
    server.shutdown()
    with state.lock:
        sys.stdout.write("done\n")
        sys.stdout.flush()


class Receiver:
    """The receiver as a child process of a test.

    Its output is read as it comes (a receiver blocked on a full pipe would stall the
    sender under test): ``records`` holds every request's record so far, in order.
    :meth:`wait_accepted` waits for deliveries, :meth:`stop` for the end."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks"
        self.records: list[dict[str, Any]] = []
        self._changed = asyncio.Condition()
        self._reader = asyncio.get_running_loop().create_task(self._read_all())

    @classmethod
    async def start(cls, secret: str, *options: str) -> Receiver:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # not this folder first: its http.py would hide the standard library's
            __file__,
            "--secret",
            secret,
            *options,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        async with asyncio.timeout(LINE_TIMEOUT):
            line = (await process.stdout.readline()).decode()
        if not line.startswith("listening "):
            process.kill()
            await process.wait()
            raise AssertionError(f"the receiver did not start: {line!r}")
        return cls(process, int(line.split()[1]))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [record for record in self.records if record["kind"] == kind]

    async def _read_all(self) -> None:
        assert self.process.stdout is not None
        try:
            while True:
                line = (await self.process.stdout.readline()).decode()
                if not line or line == "done\n":
                    return
                async with self._changed:
                    self.records.append(json.loads(line))
                    self._changed.notify_all()
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def wait_accepted(self, count: int) -> list[dict[str, Any]]:
        """Until ``count`` deliveries were accepted (AssertionError after
        LINE_TIMEOUT seconds without news); the events accepted."""

        def enough() -> bool:
            return len(self.of_kind("accepted")) >= count or self._reader.done()

        while not enough():
            async with self._changed:
                try:
                    async with asyncio.timeout(LINE_TIMEOUT):
                        await self._changed.wait_for(enough)
                except TimeoutError:
                    raise AssertionError(f"{count} deliveries expected: {self.records}") from None
        if len(self.of_kind("accepted")) < count:
            raise AssertionError(f"the receiver ended: {self.records}")
        return [record["event"] for record in self.of_kind("accepted")]

    async def stop(self) -> list[dict[str, Any]]:
        """Stop it and read what it has left to say; every record."""
        assert self.process.stdin is not None
        if not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(LINE_TIMEOUT):
                await self._reader
        finally:
            await self.kill()
        return self.records

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if not self._reader.done():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


if __name__ == "__main__":
    main()
