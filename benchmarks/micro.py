"""Micro-benchmarks of the hot path: pure Python against the compiled accelerator.

``python -m benchmarks.micro [--quick]`` times masking, UTF-8 validation, frame encoding
and frame parsing with :mod:`timeit`, once in a child process on the pure-Python path
(``BACKCHANNEL_NO_EXTENSIONS=1``) and once in a child process with the accelerator, then
prints one Markdown table. Each figure is the best of several repeats, per call (per
frame for the 100-frame case).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MASK = b"\x12\x34\x56\x78"
KIB = 1024
MIB = 1024 * KIB
OP_TEXT = 0x1
OP_BINARY = 0x2
TIMES = "\u00d7"
MICRO = "\u00b5"
PATHS = ("pure", "compiled")


@dataclass(frozen=True)
class Settings:
    repeats: int
    #: Seconds one repeat should last at least; the loop count is chosen to reach it.
    target: float


FULL = Settings(repeats=5, target=0.1)
QUICK = Settings(repeats=3, target=0.05)


@dataclass(frozen=True)
class Case:
    function: str
    case: str
    #: Builds the callable to time, for the path of this process.
    build: Callable[[], Callable[[], object]]
    #: Calls per timed call: the figure is divided by it (frames per chunk).
    per: int = 1


# --- inputs ---------------------------------------------------------------------------


def _payload(size: int) -> bytes:
    """Deterministic binary data of ``size`` bytes."""
    return bytes(i * 7 % 251 for i in range(size))


def _ascii(size: int) -> bytes:
    text = b"The quick brown fox jumps over the lazy dog. "
    return (text * (size // len(text) + 1))[:size]


def _mixed(size: int) -> bytes:
    """UTF-8 text of exactly ``size`` bytes mixing 1-, 2-, 3- and 4-byte characters."""
    sample = "Gr\u00fc\u00dfe aus K\u00f6ln, \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 "
    sample += "\U0001f680\U0001f389 caf\u00e9 \u00bfqu\u00e9? "
    unit = sample.encode()
    data = unit * (size // len(unit))
    return data + b"x" * (size - len(data))


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


# --- the cases, on this process's path ---------------------------------------------------


def _cases(pure: bool) -> list[Case]:
    from backchannel.protocol import frames, speedups, utf8
    from backchannel.protocol.connection import SERVER, Connection
    from backchannel.protocol.events import BinaryMessage, Event, TextMessage
    from backchannel.protocol.limits import Limits

    compiled = speedups.compiled
    if pure:
        apply_mask = frames.apply_mask_py
        encode_frame = frames.encode_frame_py
        validator_type: type[utf8.TextValidator] = utf8.Utf8ValidatorPy
    else:
        if compiled is None:
            raise RuntimeError("the compiled accelerator is not active")
        apply_mask = compiled.apply_mask
        encode_frame = compiled.encode_frame
        validator_type = utf8.Utf8Validator
    limits = Limits(max_size=2 * MIB)

    def mask(size: int) -> Callable[[], object]:
        data = _payload(size)
        if apply_mask(data, MASK) != frames.apply_mask_py(data, MASK):
            raise RuntimeError("apply_mask disagrees with apply_mask_py")
        return lambda: apply_mask(data, MASK)

    def validate(data: bytes, chunk: int | None = None) -> Callable[[], object]:
        validator = validator_type()
        if chunk is None:

            def run() -> None:
                validator.feed(data)
                validator.finish()

        else:
            pieces = _chunks(data, chunk)

            def run() -> None:
                for piece in pieces:
                    validator.feed(piece)
                validator.finish()

        run()  # raises on invalid input
        return run

    def encode(size: int, masked: bool) -> Callable[[], object]:
        data = _payload(size)
        key = MASK if masked else None
        if encode_frame(OP_BINARY, data, mask=key) != frames.encode_frame_py(
            OP_BINARY, data, mask=key
        ):
            raise RuntimeError("encode_frame disagrees with encode_frame_py")
        return lambda: encode_frame(OP_BINARY, data, mask=key)

    def connection() -> Connection:
        conn = Connection(SERVER, limits=limits)
        if pure:
            conn._scan = None
        elif conn._scan is None:
            raise RuntimeError("the connection does not use the compiled scanner")
        return conn

    def parse(pieces: list[bytes], expected: int, kind: type[Event]) -> Callable[[], object]:
        conn = connection()
        receive = conn.receive_data
        if len(pieces) == 1:
            data = pieces[0]

            def run() -> object:
                return receive(data)

        else:

            def run() -> object:
                for piece in pieces:
                    receive(piece)
                return None

        events: list[Event] = []
        for piece in pieces:
            events += receive(piece)
        if len(events) != expected or not all(type(e) is kind for e in events):
            raise RuntimeError(f"parse check failed: {events[:3]!r}...")
        return run

    text_frame = frames.encode_frame_py(OP_TEXT, _ascii(32), mask=MASK)
    binary_64k = frames.encode_frame_py(OP_BINARY, _payload(64 * KIB), mask=MASK)
    binary_1m = frames.encode_frame_py(OP_BINARY, _payload(MIB), mask=MASK)
    mixed = _mixed(64 * KIB)

    return [
        Case("mask", "32 B", lambda: mask(32)),
        Case("mask", "1 KiB", lambda: mask(KIB)),
        Case("mask", "64 KiB", lambda: mask(64 * KIB)),
        Case("mask", "1 MiB", lambda: mask(MIB)),
        Case("utf8", "32 B ASCII", lambda: validate(_ascii(32))),
        Case("utf8", "64 KiB ASCII", lambda: validate(_ascii(64 * KIB))),
        Case("utf8", "64 KiB mixed", lambda: validate(mixed)),
        Case("utf8", "64 KiB mixed, 4 KiB chunks", lambda: validate(mixed, 4 * KIB)),
        Case("encode", "server 32 B", lambda: encode(32, False)),
        Case("encode", "server 64 KiB", lambda: encode(64 * KIB, False)),
        Case("encode", "client 32 B (masked)", lambda: encode(32, True)),
        Case("encode", "client 64 KiB (masked)", lambda: encode(64 * KIB, True)),
        Case("parse", "1 text frame, 32 B", lambda: parse([text_frame], 1, TextMessage)),
        Case(
            "parse",
            "100 text frames, 32 B (per frame)",
            lambda: parse([text_frame * 100], 100, TextMessage),
            per=100,
        ),
        Case("parse", "1 binary frame, 64 KiB", lambda: parse([binary_64k], 1, BinaryMessage)),
        Case(
            "parse",
            "1 binary frame, 1 MiB in 64 KiB chunks",
            lambda: parse(_chunks(binary_1m, 64 * KIB), 1, BinaryMessage),
        ),
    ]


def _time(func: Callable[[], object], settings: Settings) -> float:
    """Best time of one call in seconds: loop count grown 1, 2, 5, 10... to reach target."""
    timer = timeit.Timer(func)
    number = 1
    while True:
        for step in (1, 2, 5):
            count = number * step
            if timer.timeit(count) >= settings.target:
                best = min(timer.repeat(settings.repeats, count))
                return best / count
        number *= 10


def child(path: str, settings: Settings) -> None:
    """Time every case on one path; write the results to stdout as JSON."""
    from backchannel.protocol import speedups

    pure = path == "pure"
    report: dict[str, object] = {"path": path, "active": speedups.ACTIVE, "results": {}}
    if pure == speedups.ACTIVE:
        # The pure child must run without the accelerator; the compiled child with it.
        json.dump(report, sys.stdout)
        return
    results: dict[str, float] = {}
    for case in _cases(pure):
        seconds = _time(case.build(), settings)
        results[f"{case.function}|{case.case}"] = seconds / case.per
        print(f"  {path}: {case.function} {case.case}", file=sys.stderr, flush=True)
    report["results"] = results
    json.dump(report, sys.stdout)


# --- the parent: run both paths, print the table ----------------------------------------


def _run_child(path: str, quick: bool) -> dict[str, float] | None:
    env = dict(os.environ)
    if path == "pure":
        env["BACKCHANNEL_NO_EXTENSIONS"] = "1"
    else:
        env.pop("BACKCHANNEL_NO_EXTENSIONS", None)
    command = [sys.executable, "-m", "benchmarks.micro", "--child", path]
    if quick:
        command.append("--quick")
    out = subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE)
    report = json.loads(out.stdout)
    if report["active"] != (path == "compiled"):
        return None
    results: dict[str, float] = report["results"]
    return results


def _format_time(seconds: float) -> str:
    for unit, scale in (("ns", 1e9), (f"{MICRO}s", 1e6), ("ms", 1e3)):
        value = seconds * scale
        if value < 1000 or unit == "ms":
            break
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def table(pure: dict[str, float], compiled: dict[str, float] | None) -> str:
    lines = [
        "| function | case | pure | compiled | speed-up |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for key, seconds in pure.items():
        function, case = key.split("|", 1)
        if compiled is None or key not in compiled:
            fast, ratio = "n/a", "n/a"
        else:
            fast = _format_time(compiled[key])
            ratio = f"{seconds / compiled[key]:.1f}{TIMES}"
        lines.append(f"| {function} | {case} | {_format_time(seconds)} | {fast} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.micro", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--child", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.child:
        child(args.child, settings)
        return
    print("running the pure-Python path...", file=sys.stderr, flush=True)
    pure = _run_child("pure", args.quick)
    if pure is None:
        raise SystemExit("the pure-Python child ran with the accelerator active")
    print("running the compiled path...", file=sys.stderr, flush=True)
    compiled = _run_child("compiled", args.quick)
    if compiled is None:
        print("compiled accelerator unavailable: compiled column is n/a", file=sys.stderr)
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"CPU: {_cpu_model()}; best of {settings.repeats}, time per call"
    )
    print()
    print(table(pure, compiled))


if __name__ == "__main__":
    main()
