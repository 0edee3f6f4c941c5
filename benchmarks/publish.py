"""The hub's publish path: CPU per publication, before and after a change, in one run.

``python -m benchmarks.publish [--before SRC] [--rounds N] [--count N]`` publishes
``--count`` chat-sized publications to a channel with ten subscribers (in-process sinks:
no sockets, so only the hub's own work is measured) on the memory broker, with history
and an idempotency key each, two ways: through :meth:`Hub.publish` (what the HTTP API
calls) and through client frames (a ``publish`` command decoded by the hub's command
layer, as a WebSocket frame would be). Each variant runs in its own child process:

* ``before``: the source tree given by ``--before`` (default: /work/main/src, the branch
  point), with whatever JSON codec it has;
* ``after-stdlib`` and ``after-orjson``: this tree with ``BACKCHANNEL_JSON`` set.

Variants are interleaved round by round (the machine may be shared, so a slow moment
hits every variant alike), and the table gives the median over rounds of CPU time
(``time.process_time``) per publication, in microseconds, with ten deliveries each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBERS = 10
#: A chat message: about 200 bytes of JSON with a non-ASCII name.
DATA = {
    "user": "zoë",
    "text": "see you at the station at half past six, the train is late again",
    "sent": 1764780000123,
    "reply_to": {"id": "m-48213", "excerpt": "are you coming tonight?"},
    "tags": ["travel", "evening"],
}


class Sink:
    """A transport that keeps only the last text it was given."""

    name = "sink"

    def __init__(self) -> None:
        self.last = ""

    def attach(self, outbox: Any) -> None:
        pass

    def deliver(self, text: str) -> bool:
        self.last = text
        return True

    @classmethod
    def deliver_many(cls, transports: list[Sink], text: str) -> list[Sink]:
        for transport in transports:
            transport.last = text
        return []

    def wake(self) -> None:
        pass

    def close(self, disconnect: Any) -> None:
        pass


async def _measure(count: int) -> dict[str, float]:
    from backchannel.hub.commands import Commands
    from backchannel.hub.hub import Hub
    from backchannel.hub.options import ChannelOptions, HubOptions

    options = HubOptions(
        default=ChannelOptions(history_size=100),
        anonymous=True,
        publish_rate=1e9,
        publish_burst=10**9,
        command_rate=1e9,
        command_burst=10**9,
    )
    out: dict[str, float] = {}
    async with Hub(options) as hub:
        sinks = [Sink() for _ in range(SUBSCRIBERS)]
        for sink in sinks:
            session = hub.open_session(sink)  # type: ignore[arg-type]
            await hub.subscribe_session(session, "chat")
            hub.go_live(session, "chat")
        started = time.process_time()
        for i in range(count):
            await hub.publish("chat", DATA, idempotency_key=f"k{i}")
        out["Hub.publish"] = (time.process_time() - started) / count * 1e6

        commands = Commands(hub)
        publisher = hub.open_session(Sink())  # type: ignore[arg-type]
        await commands.handle(publisher, '{"id":1,"method":"connect","params":{}}')
        await commands.handle(
            publisher, '{"id":2,"method":"subscribe","params":{"channel":"chat"}}'
        )
        hub.go_live(publisher, "chat")
        frames = [
            json.dumps(
                {
                    "id": 10 + i,
                    "method": "publish",
                    "params": {"channel": "chat", "data": DATA, "idempotency_key": f"f{i}"},
                },
                ensure_ascii=False,
            )
            for i in range(count)
        ]
        started = time.process_time()
        for frame in frames:
            await commands.handle(publisher, frame)
        out["client frame"] = (time.process_time() - started) / count * 1e6
        assert json.loads(sinks[0].last.split("\n")[-1])["data"] == DATA, sinks[0].last[:300]
    return out


def _child(count: int) -> None:
    # A failed delivery is logged by the broker, not raised: make it fail the run.
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("backchannel.hub").addHandler(_Raise())
    result = asyncio.run(_measure(count))
    print(json.dumps(result))


class _Raise(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        raise SystemExit(f"the hub logged an error: {record.getMessage()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="/work/main/src", help="source tree to compare")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.count)
        return
    variants = {
        "before": (args.before, {}),
        "after-stdlib": (str(ROOT / "src"), {"BACKCHANNEL_JSON": "stdlib"}),
        "after-orjson": (str(ROOT / "src"), {"BACKCHANNEL_JSON": "orjson"}),
    }
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    for _ in range(args.rounds):
        for name, (src, extra) in variants.items():
            env = {**os.environ, **extra, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
            command = [sys.executable, "-m", "benchmarks.publish", "--child"]
            command += ["--count", str(args.count)]
            done = subprocess.run(
                command, env=env, cwd=ROOT, capture_output=True, text=True, check=True
            )
            for path, value in json.loads(done.stdout).items():
                figures[name].setdefault(path, []).append(value)
    paths = list(figures["before"])
    print(f"CPU per publication to {SUBSCRIBERS} subscribers, \u00b5s (median of {args.rounds})")
    print()
    print("| path | " + " | ".join(variants) + " |")
    print("| --- |" + " ---: |" * len(variants))
    for path in paths:
        cells = [f"{statistics.median(figures[name][path]):.1f}" for name in variants]
        print(f"| {path} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
