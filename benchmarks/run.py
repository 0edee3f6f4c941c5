"""Run every workload against every server and print the figures as Markdown tables.

``python -m benchmarks.run [--quick] [--only NAME,...] [--workloads NAME,...] [--repeat N]
[--json FILE]``. Each target (a server library on an event loop) runs as a fresh process
pinned to one CPU; the load generator runs here, on uvloop, pinned to another.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import contextlib
import json
import os
import platform
import random
import resource
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

from .loadgen import WORKLOADS, Context, Measurement, Progress, Sizes, WorkloadInfo

HOST = "127.0.0.1"
PORTS = range(18000, 19000)
SERVERS_DIR = Path(__file__).resolve().parent / "servers"
LOOPS = ("asyncio", "uvloop")
#: Servers in the order of the table's columns; websockets first, since it is the baseline.
#: ``backchannel-before`` (compiled) runs another checkout's ``src``, given with
#: ``--before``, so that a change is measured before and after in one run.
SERVERS = (
    "websockets",
    "backchannel-before",
    "backchannel-py",
    "backchannel-c",
    "aiohttp",
    "picows",
)
#: The ``src`` folder ``backchannel-before`` imports backchannel from (``--before``).
BEFORE_SRC: str | None = None
BASELINE = "websockets"
#: The load generator counts as the bottleneck from this share of its core on.
CLIENT_BOUND_PCT = 90.0
READY_TIMEOUT = 30.0
TIMES = "\u00d7"
PACKAGES = ("backchannel", "websockets", "aiohttp", "picows", "uvloop")


# --- targets and results ------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    server: str
    loop: str

    @property
    def name(self) -> str:
        return f"{self.server}-{self.loop}"

    @property
    def library(self) -> str:
        return self.server.split("-", 1)[0]

    @property
    def script(self) -> Path:
        return SERVERS_DIR / f"{self.library}_server.py"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("BACKCHANNEL_NO_EXTENSIONS", None)
        if self.server == "backchannel-py":
            env["BACKCHANNEL_NO_EXTENSIONS"] = "1"
        if self.server == "backchannel-before":
            assert BEFORE_SRC is not None
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [BEFORE_SRC, env.get("PYTHONPATH")]))
        return env


def all_targets() -> list[Target]:
    """Every target; ``backchannel-before`` only when ``--before`` names a checkout."""
    servers = [s for s in SERVERS if s != "backchannel-before" or BEFORE_SRC is not None]
    return [Target(server, loop) for loop in LOOPS for server in servers]


@dataclass
class Cell:
    """The outcome of one workload on one target."""

    status: str  # ok | timeout | error | skipped
    value: float | None = None
    wall: float = 0.0
    server_cpu_pct: float | None = None
    generator_cpu_pct: float | None = None
    detail: str = ""

    @property
    def client_bound(self) -> bool:
        return self.generator_cpu_pct is not None and self.generator_cpu_pct >= CLIENT_BOUND_PCT

    @classmethod
    def of(cls, m: Measurement) -> Cell:
        return cls("ok", m.value, m.wall, m.server_pct, m.gen_pct, m.detail)


@dataclass
class Report:
    machine: dict[str, Any]
    sizes: Sizes
    repeat: int
    targets: list[Target]
    workloads: list[WorkloadInfo]
    cells: dict[str, dict[str, Cell]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False

    def cell(self, target: Target, workload: WorkloadInfo) -> Cell | None:
        return self.cells.get(target.name, {}).get(workload.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "sizes": asdict(self.sizes),
            "repeat": self.repeat,
            "units": {w.name: w.unit for w in self.workloads},
            "results": {
                name: {w: asdict(c) for w, c in cells.items()} for name, cells in self.cells.items()
            },
            "notes": self.notes,
            "interrupted": self.interrupted,
        }


# --- formatting ---------------------------------------------------------------------------


def number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}".replace(",", " ")
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def short(cell: Cell) -> str:
    if cell.status != "ok" or cell.value is None:
        return cell.status
    return number(cell.value) + ("*" if cell.client_bound else "")


class Status:
    """The status line on stderr: rewritten in place on a terminal, else one line per
    finished workload."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.total = total
        self.index = 0
        self._width = 0

    def prefix(self, target: Target, workload: str) -> str:
        width = len(str(self.total))
        return f"[{self.index:>{width}}/{self.total}] {target.name:<22} {workload:<11}"

    def live(self, text: str) -> None:
        if self.tty:
            line = text[:150]
            self.stream.write("\r" + line + "\x1b[K")
            self.stream.flush()
            self._width = len(line)

    def clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._width = 0

    def line(self, text: str) -> None:
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finished(self, target: Target, workload: WorkloadInfo, cell: Cell) -> None:
        if self.tty:
            return
        text = f"{self.prefix(target, workload.name)} {short(cell)}"
        if cell.status == "ok":
            text += (
                f" {workload.unit}  (server {cell.server_cpu_pct:.0f}%,"
                f" generator {cell.generator_cpu_pct:.0f}%)"
            )
        elif cell.detail:
            text += f"  ({cell.detail})"
        self.line(text)

    async def tick(self, target: Target, workload: WorkloadInfo, progress: Progress) -> None:
        while True:
            rate = progress.rate()
            text = f"{self.prefix(target, workload.name)} {progress.phase:<10}"
            if rate is not None:
                text += f" {number(rate)} {progress.unit}"
            self.live(text)
            await asyncio.sleep(0.25)


# --- server processes ---------------------------------------------------------------------

_live: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
    _live.clear()


def free_port() -> int:
    """A port in PORTS that nothing listens on right now."""
    candidates = list(PORTS)
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


class ServerProcess:
    def __init__(self, target: Target, cpu: int | None) -> None:
        self.target = target
        self.cpu = cpu
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=40)
        self.info: str | None = None
        self._ready: asyncio.Future[None] | None = None
        self._info: asyncio.Future[str] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, attempts: int = 3) -> None:
        error: Exception | None = None
        for _ in range(attempts):
            try:
                await self._start_once(free_port())
                return
            except RuntimeError as exc:  # e.g. the port was taken in between
                error = exc
                await self.stop()
        raise RuntimeError(f"{self.target.name} did not start: {error}")

    async def _start_once(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.port = port
        self.info = None
        self.stderr_tail.clear()
        self._ready = loop.create_future()
        self._info = loop.create_future()
        self.proc = self._spawn(port)
        _live.add(self.proc)
        if self.cpu is not None:
            os.sched_setaffinity(self.proc.pid, {self.cpu})
        for reader in (self._read_stdout, self._read_stderr):
            threading.Thread(target=reader, args=(loop, self.proc), daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), READY_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(f"no READY within {READY_TIMEOUT:.0f} s") from None

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        command = [sys.executable, str(self.target.script), "--port", str(port)]
        command += ["--loop", self.target.loop]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,  # the server exits when this pipe closes
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.target.env(),
            start_new_session=True,  # Ctrl-C reaches the runner only; it stops the server
        )

    def _read_stdout(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(b"READY"):
                self._signal(loop, self._ready, None)
        proc.wait()
        tail = " | ".join(self.stderr_tail) or "no output"
        error = RuntimeError(f"server exited with {proc.returncode}: {tail[-600:]}")
        self._signal(loop, self._ready, error)
        self._signal(loop, self._info, error)

    def _read_stderr(self, loop: asyncio.AbstractEventLoop, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(line)
            if line.startswith("backchannel:"):
                self._signal(loop, self._info, line)

    @staticmethod
    def _signal(
        loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any] | None, value: object
    ) -> None:
        def settle() -> None:
            if future is None or future.done():
                return
            if isinstance(value, BaseException):
                future.set_exception(value)
                future.exception()  # nobody may be waiting: do not log it as unretrieved
            else:
                future.set_result(value)

        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle)

    async def backchannel_info(self) -> str:
        """The line the backchannel server prints about its speedups and broadcast."""
        assert self._info is not None
        if self.info is None:
            self.info = await asyncio.wait_for(asyncio.shield(self._info), 5.0)
        return self.info

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        _live.discard(proc)
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()
        if self._info is not None and not self._info.done():
            self._info.cancel()


# --- running ------------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


class Runner:
    def __init__(self, args: argparse.Namespace, report: Report, status: Status) -> None:
        self.args = args
        self.report = report
        self.status = status
        self.server_cpu: int | None = report.machine.get("server_cpu")

    def record(self, target: Target, workload: WorkloadInfo, cell: Cell) -> None:
        self.report.cells.setdefault(target.name, {})[workload.name] = cell

    def skip(self, target: Target, reason: str) -> None:
        for workload in self.report.workloads:
            self.status.index += 1
            self.record(target, workload, Cell("skipped", detail=reason))
        self.status.line(f"{target.name}: skipped ({reason})")

    async def run(self) -> None:
        for target in self.report.targets:
            await self.run_target(target)

    async def run_target(self, target: Target) -> None:
        server = ServerProcess(target, self.server_cpu)
        try:
            self.status.live(f"{target.name}: starting server")
            try:
                await server.start()
                if target.library == "backchannel":
                    reason = await self.check_backchannel(target, server)
                    if reason is not None:
                        self.skip(target, reason)
                        return
            except Exception as exc:
                text = error_text(exc)
                self.report.notes.append(f"{target.name}: server did not start: {text}")
                for workload in self.report.workloads:
                    self.status.index += 1
                    self.record(target, workload, Cell("error", detail=text))
                self.status.line(f"{target.name}: server did not start ({text})")
                return
            for workload in self.report.workloads:
                self.status.index += 1
                if not server.alive():
                    self.report.notes.append(
                        f"{target.name}: the server died before {workload.name}; restarted"
                    )
                    await server.stop()
                    await server.start()
                elif workload.fresh_server:
                    # A clean baseline: nothing left over from the earlier workloads.
                    await server.stop()
                    await server.start()
                cell = await self.run_workload(target, workload, server)
                self.record(target, workload, cell)
                self.status.finished(target, workload, cell)
            self.status.line(self.summary(target))
        finally:
            await server.stop()

    async def check_backchannel(self, target: Target, server: ServerProcess) -> str | None:
        info = await server.backchannel_info()
        active = "speedups=active" in info
        if target.server == "backchannel-c" and not active:
            note = "backchannel-c targets skipped: the accelerated path is not available"
            if note not in self.report.notes:
                self.report.notes.append(note)
            return "accelerated path not available (speedups.ACTIVE is false)"
        if target.server == "backchannel-py" and active:
            self.report.notes.append(
                f"{target.name}: BACKCHANNEL_NO_EXTENSIONS=1 did not disable the speedups"
            )
        return None

    async def run_workload(
        self, target: Target, workload: WorkloadInfo, server: ServerProcess
    ) -> Cell:
        best: Cell | None = None
        for _ in range(self.args.repeat):
            cell = await self.run_once(target, workload, server)
            if cell.status != "ok":
                if best is None:
                    best = cell
                continue
            assert cell.value is not None
            if best is None or best.status != "ok" or best.value is None:
                best = cell
            elif (cell.value < best.value) == workload.lower_is_better:
                best = cell
        assert best is not None
        return best

    async def run_once(self, target: Target, workload: WorkloadInfo, server: ServerProcess) -> Cell:
        progress = Progress()
        ctx = Context(HOST, server.port, server.pid, self.report.sizes, progress)
        ticker = asyncio.create_task(self.status.tick(target, workload, progress))
        try:
            measurement = await asyncio.wait_for(workload.run(ctx), self.args.timeout)
        except TimeoutError:
            return Cell("timeout", detail=f"no result within {self.args.timeout:.0f} s")
        except Exception as exc:
            return Cell("error", detail=error_text(exc))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self.status.clear()
        return Cell.of(measurement)

    def summary(self, target: Target) -> str:
        parts = []
        for workload in self.report.workloads:
            cell = self.report.cell(target, workload)
            if cell is not None:
                parts.append(f"{workload.name} {short(cell)}")
        return f"{target.name}: " + ", ".join(parts)


# --- machine info and tables --------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(server_cpu: int | None, generator_cpu: int | None) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "versions": {p: version(p) for p in PACKAGES},
        "server_cpu": server_cpu,
        "generator_cpu": generator_cpu,
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    align = ["---"] + ["--:"] * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def results_cell(report: Report, target: Target, workload: WorkloadInfo) -> str:
    cell = report.cell(target, workload)
    if cell is None:
        return "-"
    if cell.status != "ok" or cell.value is None:
        return cell.status
    text = short(cell)
    base = report.cell(Target(BASELINE, target.loop), workload)
    if base is not None and base.status == "ok" and base.value:
        text += f" ({cell.value / base.value:.2f}{TIMES})"
    return text


def cpu_cell(report: Report, target: Target, workload: WorkloadInfo) -> str:
    cell = report.cell(target, workload)
    if cell is None or cell.server_cpu_pct is None or cell.generator_cpu_pct is None:
        return "-" if cell is None else cell.status
    return f"{cell.server_cpu_pct:.0f} / {cell.generator_cpu_pct:.0f}"


def render(report: Report) -> str:
    m = report.machine
    shown = [
        t
        for t in report.targets
        if any(c.status != "skipped" for c in report.cells.get(t.name, {}).values())
    ]
    versions = ", ".join(f"{p} {v}" for p, v in m["versions"].items())
    if m["server_cpu"] is not None:
        pinning = f"server on CPU {m['server_cpu']}, load generator on CPU {m['generator_cpu']}"
    else:
        pinning = "not pinned"
    s = report.sizes
    out = [
        "## WebSocket server benchmarks",
        "",
        f"- Date: {m['date']}",
        f"- CPU: {m['cpu']}, {m['cores']} cores; pinning: {pinning}",
        f"- Python {m['python']} ({m['implementation']}), Linux {m['kernel']}",
        f"- Versions: {versions}",
        "- Load generator: raw asyncio protocols on uvloop, pre-encoded masked frames, "
        "replies counted by bytes",
        f"- Sizes: rtt {s.rtt_count} round trips; throughput {s.throughput_count} messages"
        f" over {s.throughput_connections} connections x {s.throughput_window} in flight;"
        f" bulk {s.bulk_count} x {s.bulk_size // 2**20} MiB; broadcast {s.broadcast_count}"
        f" x {s.broadcast_subscribers} subscribers, {s.broadcast_window} in flight;"
        f" memory {s.memory_connections} idle connections;"
        f" handshakes {s.handshake_count} from {s.handshake_loops} loops;"
        f" measured phases capped at {s.time_cap:.0f} s; best of {report.repeat}",
        "",
    ]
    if report.interrupted:
        out += ["**Interrupted: partial results.**", ""]
    if shown:
        out += [
            "### Results",
            "",
            "Each cell: figure (ratio to websockets on the same event loop).",
            "",
        ]
        header = ["workload", *(t.name for t in shown)]
        rows = []
        for w in report.workloads:
            label = f"{w.name} ({w.unit}{', lower is better' if w.lower_is_better else ''})"
            rows.append([label, *(results_cell(report, t, w) for t in shown)])
        out += [markdown_table(header, rows), ""]
        out += [
            f"`*` the load generator used at least {CLIENT_BOUND_PCT:.0f}% of its CPU core"
            " during that workload: the client may have been the bottleneck, so the figure"
            " is a lower bound for that server. MB = 10^6 bytes of payload echoed; memory is"
            " the growth of the server's RSS per idle connection (1 KiB = 1024 bytes).",
            "",
            "### CPU use",
            "",
            "Each cell: server / load generator, in % of one core during the measured phase.",
            "",
            markdown_table(
                ["workload", *(t.name for t in shown)],
                [[w.name, *(cpu_cell(report, t, w) for t in shown)] for w in report.workloads],
            ),
            "",
        ]
    problems = [
        f"- {t.name} {w.name}: {c.status}: {c.detail}"
        for t in shown
        for w in report.workloads
        if (c := report.cell(t, w)) is not None and c.status in ("error", "timeout")
    ]
    notes = [f"- {n}" for n in report.notes] + problems
    if notes:
        out += ["### Notes", "", *notes, ""]
    return "\n".join(out)


# --- entry point --------------------------------------------------------------------------


def parse_names(text: str | None, known: Sequence[str], what: str) -> list[str] | None:
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    targets = [t.name for t in all_targets()]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark backchannel against websockets, aiohttp and picows.",
    )
    parser.add_argument("--only", metavar="NAME[,NAME]", help="targets: " + ", ".join(targets))
    parser.add_argument(
        "--workloads", metavar="NAME[,NAME]", help="workloads: " + ", ".join(WORKLOADS)
    )
    parser.add_argument("--quick", action="store_true", help="about 5x less work (scale 0.2)")
    parser.add_argument("--scale", type=float, help="multiply every count by this factor")
    parser.add_argument("--repeat", type=int, default=1, help="best of N runs (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds per workload run (default 60)"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also run backchannel-before-*: backchannel imported from SRC (another "
        "checkout's src folder, with its accelerator built), for before/after in one run",
    )
    args = parser.parse_args(argv)
    if args.before is not None:
        global BEFORE_SRC
        if not (Path(args.before) / "backchannel" / "__init__.py").is_file():
            parser.error(f"--before {args.before}: no backchannel package there")
        BEFORE_SRC = str(Path(args.before).resolve())
        targets = [t.name for t in all_targets()]
    args.target_names = parse_names(args.only, targets, "target")
    args.workload_names = parse_names(args.workloads, list(WORKLOADS), "workload")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def describe_checkout(src: str) -> str:
    """``src`` and the commit its checkout is at (when git can tell)."""
    try:
        commit = subprocess.run(
            ["git", "-C", src, "log", "-1", "--format=%h %s"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return src
    return f"{src}, commit {commit[:100]}"


def raise_open_files(wanted: int = 20_000) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def pin(enabled: bool) -> tuple[int | None, int | None]:
    """Pin this process (the load generator) to the second CPU; servers go on the first."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return None, None
    os.sched_setaffinity(0, {cpus[1]})
    return cpus[0], cpus[1]


def main(argv: Sequence[str] | None = None) -> int:
    import uvloop

    args = parse_args(argv)
    sizes = Sizes()
    scale = args.scale if args.scale is not None else (0.2 if args.quick else 1.0)
    if scale != 1.0:
        sizes = sizes.scaled(scale)
    raise_open_files()
    server_cpu, generator_cpu = pin(not args.no_pin)
    targets = [t for t in all_targets() if args.target_names is None or t.name in args.target_names]
    workloads = [
        w
        for name, w in WORKLOADS.items()
        if args.workload_names is None or name in args.workload_names
    ]
    report = Report(machine_info(server_cpu, generator_cpu), sizes, args.repeat, targets, workloads)
    if BEFORE_SRC is not None:
        report.notes.append(f"backchannel-before: {describe_checkout(BEFORE_SRC)}")
    status = Status(sys.stderr, len(targets) * len(workloads))
    if server_cpu is not None:
        status.line(f"pinned: servers to CPU {server_cpu}, load generator to CPU {generator_cpu}")
    else:
        status.line("not pinned (fewer than 2 CPUs, or --no-pin)")
    runner = Runner(args, report, status)
    code = 0
    try:
        uvloop.run(runner.run())
    except KeyboardInterrupt:
        report.interrupted = True
        status.line("interrupted")
        code = 130
    finally:
        _kill_leftovers()
    print(render(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        status.line(f"results written to {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
