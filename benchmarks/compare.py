"""Hub fan-out before and after a change: ``benchmarks.fanout`` against two source trees.

``python -m benchmarks.compare --before /path/to/old/src --after /path/to/new/src``.
Runs this checkout's ``benchmarks/fanout.py`` with each tree first on ``PYTHONPATH``
(every process of a run: the driver, the hub server and the subscriber process),
interleaved, before then after, for ``--rounds`` rounds, so that what else the machine
does at the time weighs on both sides alike. Each round runs, for each tree, single
publications to each ``--subscribers`` count and bursts of ``--burst`` publications to
``--burst-subscribers``. Each run's median is one sample; the table gives the median of
the samples of each side, their range, and the ratio after / before.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MICRO = "\u00b5"


class CompareError(Exception):
    """A run failed; the message says which."""


@dataclass
class Side:
    """One source tree and the samples of its runs (one per run and measure)."""

    name: str
    src: Path
    samples: dict[str, list[float]] = field(default_factory=dict)
    machine: str = ""
    speedups: set[bool] = field(default_factory=set)

    def add(self, measure: str, value: float) -> None:
        self.samples.setdefault(measure, []).append(value)


def run_fanout(side: Side, options: Sequence[str], timeout: float) -> dict[str, Any]:
    """One ``benchmarks.fanout`` run on ``side``'s tree; its JSON figures."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(side.src), env.get("PYTHONPATH", "")) if part
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fanout.json"
        command = [sys.executable, "-m", "benchmarks.fanout", *options, "--json", str(out)]
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise CompareError(
                f"{side.name}: {' '.join(options)} failed ({proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        result: dict[str, Any] = json.loads(out.read_text())
    for run in result["runs"]:
        if Path(run["source"]) != side.src:
            raise CompareError(f"{side.name}: the run imported {run['source']}, not {side.src}")
        side.speedups.add(run["speedups"])
    side.machine = result["machine"]
    return result


def record_single(side: Side, result: dict[str, Any]) -> None:
    for run in result["runs"]:
        n = run["subscribers"]
        side.add(f"publish {n}", statistics.median(run["publish_ns"]) / 1e3)
        side.add(f"e2e {n}", statistics.median(run["end_to_end_ns"]) / 1e3)


def record_burst(side: Side, result: dict[str, Any]) -> None:
    for run in result["runs"]:
        deliveries = run["subscribers"] * run["burst"]
        rates = [deliveries / (ns / 1e9) for ns in run["burst_ns"]]
        side.add("burst rate", statistics.median(rates))
        side.add("burst cpu", statistics.median(run["server_cpu_ns"]) / deliveries)
        side.add("burst publish", statistics.median(run["publish_ns"]) / 1e6)
        side.add("burst frames", statistics.median(f / deliveries for f in run["frames"]))
        side.add(
            "burst subscriber cpu",
            100
            * statistics.median(
                c / w for c, w in zip(run["subscriber_cpu_ns"], run["burst_ns"], strict=True)
            ),
        )


def fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}".replace(",", " ")


def table(before: Side, after: Side, args: argparse.Namespace) -> str:
    counts = [int(c) for c in args.subscribers.split(",")]
    k, nb = args.burst, args.burst_subscribers
    # (measure key, label, digits)
    rows: list[tuple[str, str, int]] = []
    for n in counts:
        rows.append((f"publish {n}", f"1 publication to {n}: `hub.publish`, {MICRO}s", 0))
        rows.append((f"e2e {n}", f"1 publication to {n}: end to end, {MICRO}s", 0))
    if k > 1:
        rows += [
            ("burst rate", f"burst of {k} to {nb}: deliveries/s", 0),
            ("burst publish", f"burst of {k} to {nb}: {k} x `hub.publish`, ms", 1),
            ("burst cpu", f"burst of {k} to {nb}: server CPU / delivery, ns", 0),
            ("burst frames", f"burst of {k} to {nb}: frames / publication-subscriber", 3),
            ("burst subscriber cpu", f"burst of {k} to {nb}: subscriber process CPU, %", 0),
        ]
    lines = [
        "| measure | before (median) | after (median) | after / before "
        "| before, range of runs | after, range of runs |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label, digits in rows:
        b = before.samples.get(key)
        a = after.samples.get(key)
        if not a or not b:
            continue
        mb, ma = statistics.median(b), statistics.median(a)
        ratio = f"{ma / mb:.2f}" if mb else "n/a"
        lines.append(
            f"| {label} | {fmt(mb, digits)} | {fmt(ma, digits)} | {ratio} "
            f"| {fmt(min(b), digits)}-{fmt(max(b), digits)} "
            f"| {fmt(min(a), digits)}-{fmt(max(a), digits)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("--before", required=True, type=Path, help="source tree (src) before")
    parser.add_argument("--after", required=True, type=Path, help="source tree (src) after")
    parser.add_argument("--rounds", type=int, default=3, help="runs per side, interleaved (3)")
    parser.add_argument(
        "--subscribers", default="1000,10000", help="single publications to (1000,10000)"
    )
    parser.add_argument(
        "--publications", type=int, default=20, help="measured single publications per run (20)"
    )
    parser.add_argument("--burst", type=int, default=100, help="publications per burst (100)")
    parser.add_argument(
        "--burst-subscribers", type=int, default=1000, help="subscribers of the bursts (1000)"
    )
    parser.add_argument("--bursts", type=int, default=5, help="measured bursts per run (5)")
    parser.add_argument("--quick", action="store_true", help="5 publications, 2 bursts")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run (600)")
    args = parser.parse_args(argv)
    if args.quick:
        args.publications, args.bursts = 5, 2
    if args.rounds < 1 or args.publications < 1 or args.bursts < 1:
        parser.error("--rounds, --publications and --bursts must be >= 1")
    sides = [
        Side("before", args.before.resolve()),
        Side("after", args.after.resolve()),
    ]
    for side in sides:
        if not (side.src / "backchannel" / "__init__.py").is_file():
            parser.error(f"{side.src} has no backchannel package")

    single = ["--subscribers", args.subscribers, "--publications", str(args.publications)]
    single += ["--warmup", "3"]
    burst = ["--subscribers", str(args.burst_subscribers), "--burst", str(args.burst)]
    burst += ["--publications", str(args.bursts), "--warmup", "1"]
    loads: list[float] = []
    started = time.monotonic()
    try:
        for r in range(args.rounds):
            for side in sides:  # before, after, before, after, ...
                loads.append(os.getloadavg()[0])
                print(f"round {r + 1}/{args.rounds}: {side.name}", file=sys.stderr)
                record_single(side, run_fanout(side, single, args.timeout))
                if args.burst > 1:
                    record_burst(side, run_fanout(side, burst, args.timeout))
    except (CompareError, subprocess.TimeoutExpired) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("compare: interrupted", file=sys.stderr)
        sys.exit(130)
    loads.append(os.getloadavg()[0])
    before, after = sides
    print(before.machine)
    print(f"before: {before.src}; after: {after.src}")
    print(
        f"{args.rounds} rounds, before and after interleaved; each sample is one run's median "
        f"({args.publications} single publications after 3 warm-up; {args.bursts} bursts "
        f"after 1 warm-up); {time.monotonic() - started:.0f} s, "
        f"1-minute load average {min(loads):.1f}-{max(loads):.1f}"
    )
    if len(before.speedups | after.speedups) > 1:
        print("Warning: the compiled speedups were on for one side only")
    print()
    print(table(before, after, args))


if __name__ == "__main__":
    main()
