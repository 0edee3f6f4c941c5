"""The hub against what a Python developer would otherwise deploy: python-socketio on
aiohttp and node's socket.io, with rooms as channels.

``python -m benchmarks.hub [--quick] [--only NAME[,NAME]] [--workloads NAME[,NAME]]``.
Each target is a fresh server process per workload, pinned to the first CPU; the load
generator (``benchmarks/hub_loadgen.mjs``, node and the ``ws`` library: the hub's wire
for backchannel, socket.io's for the others) runs on the second. Workloads:

* ``fanout``: one publication at a time, sent by one of the subscribers, to every client
  of one room: 1 000, then 10 000 subscribers (deliveries/s = N / median time to the last).
* ``chat``: 200 rooms x 10 clients publishing in their room at rising total rates; each
  delivery is stamped; msgs/s delivered, p50/p99; the ramp stops after the first rate with
  p99 >= 100 ms.
* ``storm``: 5 000 clients connect and subscribe, 100 at a time (connect + subscribe per
  second), and the server's RSS growth over them (memory per subscribed client).
* ``cluster`` (backchannel only): ``fanout`` against two nodes on one Redis, the clients
  spread over both.

It prints the machine and Markdown tables: figures with their ratio to python-socketio,
the server's and the generator's CPU, and each target's chat ramp; with ``--profile DIR``,
py-spy's view of the backchannel server during each measured phase. The npm packages are
in ``benchmarks/package.json`` (``make bench`` installs them). benchmarks/README.md has
the details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .cluster import BANNER, CONFIG_ENV, NODE_CONFIG, Process, Redis, _child_setup, free_port
from .fanout import BenchError, cpu_model, raise_open_files

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NODE = shutil.which("node") or "node"
LOADGEN = HERE / "hub_loadgen.mjs"
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
SERVER_CPU = 0
GENERATOR_CPU = 1
#: Rooms and clients per room of the chat workload.
CHAT_ROOMS = 200
CHAT_USERS = 10
#: Total publications per second of the chat ramp (each reaches 10 clients).
CHAT_RATES = (100, 250, 500, 1000, 2000, 3000, 4000, 6000, 8000, 12000)
#: Seconds a generator run may take in all (its phases have their own timeouts).
GENERATOR_LIMIT = 1800.0
#: A generator at this share of its core or more may have been the limit.
CLIENT_BOUND = 0.9


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    proto: str  # the generator's wire: "backchannel" or "socketio"


TARGETS = {
    t.name: t
    for t in (
        Target("backchannel", "backchannel", "backchannel"),
        Target("backchannel-py", "backchannel (pure Python)", "backchannel"),
        Target("backchannel-before", "backchannel before", "backchannel"),
        Target("python-socketio", "python-socketio", "socketio"),
        Target("node-socketio", "node socket.io", "socketio"),
        # Its consumer speaks the part of the hub's wire the generator uses.
        Target("django-channels", "Django Channels", "backchannel"),
    )
}
BASELINE = "python-socketio"
#: The ``src`` folder ``backchannel-before`` imports backchannel from (``--before``).
BEFORE_SRC: str | None = None
WORKLOADS = ("fanout", "chat", "storm", "cluster")
#: Backchannel nodes of the ``cluster`` workload, on one Redis.
CLUSTER_NODES = 2


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("python-socketio", "python-engineio", "aiohttp", "uvloop"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    # ws: the WebSocket library under node's socket.io (the generator has its own client).
    for pkg in ("socket.io", "ws"):
        with contextlib.suppress(OSError, ValueError):
            out[pkg] = json.loads((HERE / "node_modules" / pkg / "package.json").read_text())[
                "version"
            ]
    if BEFORE_SRC is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out["backchannel before"] = subprocess.run(
                ["git", "-C", BEFORE_SRC, "log", "-1", "--format=%h"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
    with contextlib.suppress(OSError):
        out["node"] = subprocess.run(
            [NODE, "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return out


# --- servers -------------------------------------------------------------------------------


async def start_server(
    target: Target,
    folder: Path,
    cpus: set[int] | None,
    limit: float,
    *,
    name: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Process, int]:
    """A fresh server for one workload: the process and its port."""
    name = name or target.name
    log = folder / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not CONFIG_ENV.match(k)}
    if target.name.startswith("backchannel"):
        config = folder / "backchannel.toml"
        config.write_text(NODE_CONFIG)
        argv = [sys.executable, "-m", "backchannel", "serve", "--config", str(config)]
        argv += ["--host", "127.0.0.1", "--port", "0", "--loop", "uvloop"]
        argv += ["--log-level", "warning"]
        env.update(
            BACKCHANNEL_AUTH_ANONYMOUS="true",
            BACKCHANNEL_AUTH_SECRET=secrets.token_urlsafe(32),
            BACKCHANNEL_API_KEY=secrets.token_urlsafe(24),
        )
        if target.name == "backchannel-py":
            env["BACKCHANNEL_NO_EXTENSIONS"] = "1"
        if target.name == "backchannel-before":
            # Another checkout's code (--before), compiled, for before/after in one run.
            assert BEFORE_SRC is not None
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [BEFORE_SRC, env.get("PYTHONPATH")]))
        env.update(extra_env or {})
        port = 0
    else:
        port = free_port()
        if target.name in ("python-socketio", "django-channels"):
            script = (
                "socketio_python.py" if target.name == "python-socketio" else "channels_django.py"
            )
            argv = [sys.executable, str(HERE / "servers" / script)]
            argv += ["--port", str(port), "--loop", "uvloop"]
        else:
            argv = [NODE, str(HERE / "servers" / "socketio_node.mjs"), "--port", str(port)]
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            # A pipe: the socket.io servers exit when it closes (so does the driver).
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup(cpus),
        )
    server = Process(name, proc, log)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(limit):
            line = await proc.stdout.readline()
        if port == 0:
            match = BANNER.match(line)
            if match is None:
                raise BenchError(f"{name}: expected the banner, got {line!r}{server.tail()}")
            port = int(match[1])
        elif line.strip() != b"READY":
            raise BenchError(f"{name}: expected READY, got {line!r}{server.tail()}")
    except TimeoutError:
        await server.stop()
        raise BenchError(f"{name}: not listening within {limit:g} s{server.tail()}") from None
    except BaseException:
        await server.stop()
        raise
    return server, port


class Profiler:
    """py-spy on the backchannel server during each measured phase (``--profile DIR``):
    one raw (collapsed stacks) file per phase, summarised by :func:`profile_summary`."""

    def __init__(self, folder: Path | None, target: Target, workload: str) -> None:
        self.folder = folder if target.name.startswith("backchannel") else None
        self.prefix = f"{target.name}-{workload}"
        self.pids: list[int] = []
        self.running: asyncio.subprocess.Process | None = None
        self.files: list[Path] = []

    async def phase(self, line: dict[str, Any]) -> None:
        if self.folder is None or not self.pids or PY_SPY is None:
            return
        if line["phase"] == "measure":
            await self.stop()
            out = self.folder / f"{self.prefix}-{line['label']}.txt"
            self.running = await asyncio.create_subprocess_exec(
                PY_SPY,
                "record",
                "--pid",
                str(self.pids[-1]),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--output",
                str(out),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            self.files.append(out)
        else:
            await self.stop()

    async def stop(self) -> None:
        """End a recording: py-spy writes its file on SIGINT."""
        proc, self.running = self.running, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def run_generator(
    config: dict[str, Any], cpus: set[int] | None, limit: float, profiler: Profiler
) -> list[dict[str, Any]]:
    """Run the node generator with ``config``; its result lines."""
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(LOADGEN),
        json.dumps(config),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=HERE,
        start_new_session=True,
        preexec_fn=_child_setup(cpus),
    )
    assert proc.stdout is not None and proc.stderr is not None
    lines: list[dict[str, Any]] = []

    async def read() -> bytes:
        assert proc.stdout is not None and proc.stderr is not None
        while raw := await proc.stdout.readline():
            if raw.startswith(b"{"):
                line = json.loads(raw)
                if "phase" in line:
                    await profiler.phase(line)
                else:
                    lines.append(line)
        err = await proc.stderr.read()
        await proc.wait()
        return err

    try:
        async with asyncio.timeout(limit):
            err = await read()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"the generator did not finish within {limit:g} s") from None
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    finally:
        await profiler.stop()
    for line in lines:
        if "error" in line:
            raise BenchError(str(line["error"]))
    if not lines or not lines[-1].get("done"):
        tail = err.decode(errors="replace").strip()[-800:]
        raise BenchError(f"the generator exited with {proc.returncode}: {tail}")
    return [line for line in lines if "workload" in line]


def profile_summary(path: Path, top: int = 25) -> str:
    """The functions of a py-spy raw profile with the most samples: own (the innermost
    frame) and total (anywhere on the stack), as a Markdown table."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for text in path.read_text(errors="replace").splitlines():
        stack, _, count_text = text.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        # A frame is "function (file:line)": the line is dropped, so a function is one row.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + count
    if samples == 0:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {samples} samples (the server busy; idle time is not sampled)", ""]
    out.append("| function (file) | own | total |")
    out.append("| --- | ---: | ---: |")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        name = frame.replace(str(ROOT) + "/", "").replace("|", "\\|")
        out.append(f"| `{name}` | {count / samples:.1%} | {total[frame] / samples:.1%} |")
    return "\n".join(out)


# --- one run -------------------------------------------------------------------------------


@dataclass
class Results:
    machine: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    #: target -> workload -> result lines
    figures: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    #: 1-minute load average before each workload run
    loads: list[float] = field(default_factory=list)
    #: py-spy files written (``--profile``)
    profiles: list[Path] = field(default_factory=list)


def workload_config(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name in ("fanout", "cluster"):
        return {
            "workload": "fanout",
            "counts": args.subscribers,
            "warmup": 1 if args.quick else 3,
            "publications": args.publications,
        }
    if name == "chat":
        return {
            "workload": "chat",
            "rooms": CHAT_ROOMS,
            "users": CHAT_USERS,
            "rates": args.rates,
            "step": args.step,
            "grace": 2.0,
        }
    return {
        "workload": "storm",
        "clients": args.clients,
        "rooms": CHAT_ROOMS,
        "settle": 1.0,
    }


async def start_cluster(
    target: Target, folder: Path, cpus: set[int] | None, limit: float
) -> tuple[list[Process], list[int]]:
    """Redis and two backchannel nodes on it (shared secret, a prefix of their own)."""
    redis = await Redis.start(folder, cpus, limit)
    processes: list[Process] = [redis]
    ports = []
    env = {
        "BACKCHANNEL_BROKER_URL": redis.url,
        "BACKCHANNEL_BROKER_PREFIX": f"bench-hub-{secrets.token_hex(4)}",
        "BACKCHANNEL_AUTH_SECRET": secrets.token_urlsafe(32),
    }
    try:
        for k in range(CLUSTER_NODES):
            node, port = await start_server(
                target, folder, cpus, limit, name=f"{target.name}-node{k}", extra_env=env
            )
            processes.append(node)
            ports.append(port)
    except BaseException:
        for process in reversed(processes):
            await process.stop()
        raise
    return processes, ports


async def run(args: argparse.Namespace) -> Results:
    raise_open_files()
    pinned = not args.no_pin and (os.cpu_count() or 1) >= 2
    server_cpus = {SERVER_CPU} if pinned else None
    generator_cpus = {GENERATOR_CPU} if pinned else None
    results = Results(machine=machine_line(pinned), versions=versions())
    with tempfile.TemporaryDirectory(prefix="bench-hub-") as tmp:
        folder = Path(tmp)
        for name in args.only:
            target = TARGETS[name]
            for workload in args.workloads:
                if workload == "cluster" and not target.name.startswith("backchannel"):
                    continue
                config = workload_config(workload, args)
                config.update(
                    proto=target.proto,
                    timeout=args.timeout,
                    profile=args.profile is not None,
                    serverCpu=SERVER_CPU if pinned else None,
                )
                results.loads.append(os.getloadavg()[0])
                started = time.monotonic()
                processes: list[Process] = []
                profiler = Profiler(args.profile, target, workload)
                try:
                    if workload == "cluster":
                        processes, ports = await start_cluster(
                            target, folder, server_cpus, args.timeout
                        )
                    else:
                        server, port = await start_server(target, folder, server_cpus, args.timeout)
                        processes, ports = [server], [port]
                    config.update(ports=ports, pids=[p.proc.pid for p in processes])
                    profiler.pids = [p.proc.pid for p in processes]
                    lines = await run_generator(config, generator_cpus, args.timeout * 6, profiler)
                    results.figures.setdefault(name, {})[workload] = lines
                except BenchError as exc:
                    tail = "".join(p.tail() for p in processes)
                    results.errors.setdefault(name, {})[workload] = f"{exc}{tail}"
                finally:
                    for process in reversed(processes):
                        await process.stop()
                print(
                    f"  {name} {workload}: {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                results.profiles.extend(profiler.files)
    return results


# --- report --------------------------------------------------------------------------------


def machine_line(pinned: bool) -> str:
    where = (
        f"servers pinned to CPU {SERVER_CPU}, the generator to CPU {GENERATOR_CPU}"
        if pinned
        else "not pinned"
    )
    return f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}; {where}"


def thousands(value: float) -> str:
    return f"{value:,.0f}".replace(",", " ")


def chat_best(lines: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The chat step with the highest delivered rate among those with p99 < 100 ms."""
    good = [x for x in lines if x["p99_ms"] is not None and x["p99_ms"] < 100]
    return max(good, key=lambda x: x["delivered_per_s"]) if good else None


@dataclass(frozen=True)
class Row:
    label: str
    workload: str
    higher_is_better: bool = True


def row_values(
    results: Results, workload: str, key: str
) -> dict[str, tuple[float, dict[str, Any]]]:
    """target -> (figure, the result line it comes from)."""
    out: dict[str, tuple[float, dict[str, Any]]] = {}
    for target, by_workload in results.figures.items():
        lines = by_workload.get(workload, [])
        if workload in ("fanout", "cluster"):
            for line in lines:
                if f"{workload}-{line['subscribers']}" == key:
                    out[target] = (line["deliveries_per_s"], line)
        elif workload == "chat":
            best = chat_best(lines)
            if best is not None:
                out[target] = (best["delivered_per_s"], best)
        elif lines:
            line = lines[0]
            out[target] = (line["opens_per_s"] if key == "storm" else line["kib_per_client"], line)
    return out


def rows(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """(label, workload, key, higher is better) of the main table."""
    out = []
    if "fanout" in args.workloads:
        for n in args.subscribers:
            out.append(
                (
                    f"one publication to {thousands(n)} subscribers, deliveries/s",
                    "fanout",
                    f"fanout-{n}",
                    True,
                )
            )
    if "chat" in args.workloads:
        out.append(
            (
                f"chat, {CHAT_ROOMS} rooms x {CHAT_USERS} users: msgs/s delivered, p99 < 100 ms",
                "chat",
                "chat",
                True,
            )
        )
    if "cluster" in args.workloads:
        for n in args.subscribers:
            out.append(
                (
                    f"{CLUSTER_NODES} nodes on Redis, one publication to {thousands(n)} "
                    "subscribers spread over them, deliveries/s",
                    "cluster",
                    f"cluster-{n}",
                    True,
                )
            )
    if "storm" in args.workloads:
        out.append(
            ("memory per subscribed client, KiB (lower is better)", "storm", "memory", False)
        )
        out.append(
            (
                f"connect + subscribe per second, {thousands(args.clients)} clients",
                "storm",
                "storm",
                True,
            )
        )
    return out


def report(results: Results, args: argparse.Namespace) -> str:
    targets = [t for t in args.only if t in results.figures or t in results.errors]
    out = [f"Machine: {results.machine}"]
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in results.versions.items()))
    if results.loads:
        out.append(
            f"1-minute load average before each run: {min(results.loads):.2f} to "
            f"{max(results.loads):.2f} (2 would be both CPUs busy with other work)"
        )
    out.append("")
    head = ["hub workload"] + [TARGETS[t].label for t in targets]
    out.append("| " + " | ".join(head) + " |")
    out.append("| --- |" + " ---: |" * len(targets))
    cpu_rows = []
    for label, workload, key, _higher in rows(args):
        values = row_values(results, workload, key)
        base = values.get(BASELINE, (0.0, {}))[0]
        cells, cpu_cells = [], []
        for t in targets:
            if t in values:
                value, line = values[t]
                text = f"{value:.1f}" if key == "memory" else thousands(value)
                if base > 0:
                    text += f" ({value / base:.2f}x)"
                if line.get("gen_cpu", 0) >= CLIENT_BOUND and key != "memory":
                    text += " *"
                cells.append(text)
                cell = f"{line['server_cpu']:.0%} / {line['gen_cpu']:.0%}"
                if "other_cpu" in line:
                    cell += f" / {line['other_cpu']:.0%}"
                cpu_cells.append(cell)
            else:
                err = results.errors.get(t, {}).get(workload)
                ran = bool(results.figures.get(t, {}).get(workload))
                # "none": the chat ramp ran, and no step had p99 < 100 ms.
                cells.append("error" if err else "none" if ran else "")
                cpu_cells.append("")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
        if key != "memory":
            cpu_rows.append(f"| {label} | " + " | ".join(cpu_cells) + " |")
    out.append("")
    out.append(
        f"Ratios are to {TARGETS[BASELINE].label}. `*`: the generator used "
        f"{CLIENT_BOUND:.0%} of its core or more."
    )
    out.append("")
    out.append(
        "CPU in % of one core over the measured window: server / generator / everything "
        "else on the server's CPU (other processes, steal: above 10%, the server did not "
        "have its core to itself and its figure is low):"
    )
    out.append("")
    out.append("| hub workload | " + " | ".join(TARGETS[t].label for t in targets) + " |")
    out.append("| --- |" + " ---: |" * len(targets))
    out.extend(cpu_rows)
    for t in targets:
        chat = results.figures.get(t, {}).get("chat")
        if not chat:
            continue
        out.append("")
        out.append(f"Chat ramp, {TARGETS[t].label}:")
        out.append("")
        out.append(
            "| publications/s offered | msgs/s delivered | p50 ms | p99 ms | delivered "
            "| server CPU | generator CPU | others on the server's CPU |"
        )
        out.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for x in chat:
            # None: infinite, a delivery that never came (JSON has no Infinity).
            p50 = f"{x['p50_ms']:.1f}" if x["p50_ms"] is not None else "lost"
            p99 = f"{x['p99_ms']:.1f}" if x["p99_ms"] is not None else "lost"
            other = f"{x['other_cpu']:.0%}" if "other_cpu" in x else ""
            out.append(
                f"| {thousands(x['rate'])} | {thousands(x['delivered_per_s'])} | "
                f"{p50} | {p99} | {x['received']}/{x['expected']} | "
                f"{x['server_cpu']:.0%} | {x['gen_cpu']:.0%} | {other} |"
            )
    for t, errs in results.errors.items():
        for workload, text in errs.items():
            out.append("")
            out.append(f"{TARGETS[t].label}, {workload}: {text}")
    return "\n".join(out)


def to_json(results: Results) -> dict[str, Any]:
    return {
        "machine": results.machine,
        "versions": results.versions,
        "figures": results.figures,
        "errors": results.errors,
        "loads": results.loads,
    }


def csv_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.hub", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"targets, of {','.join(TARGETS)} (default all; with --quick all but backchannel-py)",
    )
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"of {','.join(WORKLOADS)}"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fan-out to 1 000 and 3 000, fewer publications, 1 s chat steps, 1 000 storm clients",
    )
    parser.add_argument(
        "--subscribers",
        type=csv_ints,
        default=None,
        help="fan-out subscriber counts, rising (default 1000,10000; quick 1000,3000)",
    )
    parser.add_argument(
        "--publications",
        type=int,
        default=None,
        help="measured fan-out publications per count (default 20; quick 3)",
    )
    parser.add_argument(
        "--rates", type=csv_ints, default=None, help="chat ramp, total publications/s"
    )
    parser.add_argument(
        "--step", type=float, default=None, help="seconds per chat rate (default 5; quick 1)"
    )
    parser.add_argument(
        "--clients", type=int, default=None, help="storm clients (default 5000; quick 1000)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per phase (server start, a publication), and without any client "
        "opened while opening them",
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the backchannel servers with py-spy during each measured phase, "
        "write the raw profiles to DIR and print their busiest functions",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin the processes")
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="the backchannel-before target: backchannel imported from SRC (another "
        "checkout's src folder, with its accelerator built), for before/after in one run",
    )
    args = parser.parse_args(argv)
    if args.before is not None:
        global BEFORE_SRC
        if not (Path(args.before) / "backchannel" / "__init__.py").is_file():
            parser.error(f"--before {args.before}: no backchannel package there")
        BEFORE_SRC = str(Path(args.before).resolve())
    if args.profile is not None:
        if PY_SPY is None:
            parser.error("--profile needs py-spy (pip install py-spy)")
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.only is None:
        args.only = ",".join(
            t
            for t in TARGETS
            if not (args.quick and t == "backchannel-py")
            and (t != "backchannel-before" or BEFORE_SRC is not None)
        )
    args.only = [t for t in args.only.split(",") if t]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for t in args.only:
        if t not in TARGETS:
            parser.error(f"unknown target {t!r}; known: {', '.join(TARGETS)}")
        if t == "backchannel-before" and BEFORE_SRC is None:
            parser.error("the backchannel-before target needs --before SRC")
    for w in args.workloads:
        if w not in WORKLOADS:
            parser.error(f"unknown workload {w!r}; known: {', '.join(WORKLOADS)}")
    if args.subscribers is None:
        args.subscribers = [1000, 3000] if args.quick else [1000, 10000]
    if args.publications is None:
        args.publications = 3 if args.quick else 20
    if args.rates is None:
        args.rates = list(CHAT_RATES)
    if args.step is None:
        args.step = 1.0 if args.quick else 5.0
    if args.clients is None:
        args.clients = 1000 if args.quick else 5000
    need = max([*args.subscribers, args.clients, CHAT_ROOMS * CHAT_USERS]) + 100
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        parser.error(f"the open-files limit ({hard}) is below the {need} sockets needed")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not (HERE / "node_modules" / "socket.io").is_dir():
        sys.exit("benchmarks/node_modules is missing: run `cd benchmarks && npm ci` first")
    started = time.monotonic()
    results = asyncio.run(run(args))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results), indent=1))
    print(report(results, args))
    print(f"\n({time.monotonic() - started:.0f} s)")
    for path in results.profiles:
        if path.exists():
            print("\n" + profile_summary(path))
    if results.errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
