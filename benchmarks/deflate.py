"""Large compressed messages in small fragments: the Autobahn 12.x.15 workload, timed.

One client, the same for every server, sends ``--messages`` text messages of ``--size``
bytes, each compressed with permessage-deflate (context takeover, as Autobahn's client
does) and cut into ``--fragment``-byte frames, and waits for each echo before sending the
next. Every frame is built before the clock starts and echoes are only framed, not
inflated, so the time measured is the server's: inflating fragment by fragment,
validating, joining, compressing the echo and writing it.

    python -m benchmarks.deflate                     # our echo server and websockets
    python -m benchmarks.deflate --rounds 3 --only backchannel-c,backchannel-py

Each round runs every server once, interleaved; the report gives each server's median
and every round. ``--profile DIR`` runs our servers under cProfile and writes one
``.prof`` file per server there.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import zlib
from base64 import b64encode
from pathlib import Path

HOST = "127.0.0.1"
MAX_SIZE = 16 * 2**20
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RUN_TIMEOUT = 600.0

_WEBSOCKETS_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=2**24):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""

SERVERS = ("backchannel-c", "backchannel-py", "websockets")

# The client's offers of the Autobahn cases this reproduces (12.x.15 and 13.7.15).
OFFERS = {
    "12": "permessage-deflate; client_no_context_takeover; client_max_window_bits",
    "13.7": (
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover; server_max_window_bits=9, "
        "permessage-deflate; client_no_context_takeover; client_max_window_bits; "
        "server_no_context_takeover, "
        "permessage-deflate; client_no_context_takeover; client_max_window_bits"
    ),
}


def payload(size: int) -> bytes:
    """Text that deflate shrinks about as much as Autobahn's corpus (3 to 4 times)."""
    rng = random.Random(12)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        for _ in range(2000)
    ]
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(words) + rng.choice("      ,.\n")
        out.append(word)
        length += len(word)
    return "".join(out).encode()[:size]


def client_frames(
    message: bytes, count: int, fragment: int, client_bits: int, takeover: bool
) -> list[bytes]:
    """Every message as the masked frames a client sends: compressed (with context
    takeover unless the server asked otherwise), the empty-block tail removed (RFC 7692
    section 7.2.1), then fragmented."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -client_bits)
    mask = b"\x01\x02\x03\x04"
    out: list[bytes] = []
    for _ in range(count):
        if not takeover:
            deflater = zlib.compressobj(6, zlib.DEFLATED, -client_bits)
        data = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
        data = data[:-4]
        chunks: list[bytes] = []
        for pos in range(0, len(data), fragment):
            piece = data[pos : pos + fragment]
            first = pos == 0
            fin = pos + fragment >= len(data)
            b0 = (0x80 if fin else 0) | (0x41 if first else 0x00)
            n = len(piece)
            if n < 126:
                head = bytes((b0, 0x80 | n))
            else:
                head = bytes((b0, 0x80 | 126)) + n.to_bytes(2, "big")
            key = (mask * (n // 4 + 1))[:n]
            masked = (int.from_bytes(piece, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
            chunks.append(head + mask + masked)
        out.append(b"".join(chunks))
    return out


async def handshake(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int, offer: str
) -> tuple[int, bool]:
    key = b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: {offer}\r\n\r\n"
        ).encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
    if " 101 " not in head.split("\r\n")[0] + " " or "permessage-deflate" not in head:
        raise RuntimeError(f"handshake refused or without compression: {head!r}")
    bits = 15
    takeover = True
    for line in head.split("\r\n"):
        if not line.startswith("sec-websocket-extensions:"):
            continue
        if "client_max_window_bits=" in line:
            bits = int(line.split("client_max_window_bits=")[1].split(";")[0].split(",")[0])
        takeover = "client_no_context_takeover" not in line
    return bits, takeover


async def read_message(reader: asyncio.StreamReader) -> int:
    """Read one whole echoed message's frames; return its compressed size."""
    total = 0
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        await reader.readexactly(n)
        opcode = b0 & 0x0F
        if opcode >= 8:
            continue
        total += n
        if b0 & 0x80:
            return total


async def drive(port: int, message: bytes, count: int, fragment: int, offer: str) -> float:
    reader, writer = await asyncio.open_connection(HOST, port, limit=2**24)
    bits, takeover = await handshake(reader, writer, port, offer)
    frames = client_frames(message, count, fragment, bits, takeover)
    started = time.perf_counter()
    for data in frames:
        writer.write(data)
        await read_message(reader)
    elapsed = time.perf_counter() - started
    writer.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")
    writer.close()
    return elapsed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start(name: str, port: int, profile: Path | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("BACKCHANNEL_NO_EXTENSIONS", None)
    if name == "websockets":
        command = [sys.executable, "-c", _WEBSOCKETS_SERVER, str(port)]
    else:
        if name == "backchannel-py":
            env["BACKCHANNEL_NO_EXTENSIONS"] = "1"
        command = [sys.executable]
        if profile is not None:
            command += ["-m", "cProfile", "-o", str(profile / f"{name}.prof")]
        # The settings of tests/compliance/test_autobahn.py's echo server.
        command += ["-m", "backchannel", "echo", "--host", HOST, "--port", str(port)]
        command += ["--max-size", str(MAX_SIZE), "--compress-all", "--compress-level", "1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.stdout.readline():
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=128 * 1024)
    parser.add_argument("--fragment", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default=",".join(SERVERS))
    parser.add_argument("--offer", choices=sorted(OFFERS), default="13.7")
    parser.add_argument("--profile", type=Path)
    args = parser.parse_args()
    names = [name for name in args.only.split(",") if name]
    for name in names:
        if name not in SERVERS:
            parser.error(f"--only: unknown server {name!r} (one of {', '.join(SERVERS)})")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    message = payload(args.size)
    ratio = len(message) / len(zlib.compress(message, 6))
    print(
        f"{args.messages} messages of {args.size} bytes (deflate ratio {ratio:.1f}) "
        f"in {args.fragment}-byte fragments, offer of Autobahn {args.offer}.x, "
        f"{args.rounds} rounds"
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            port = free_port()
            proc = start(name, port, args.profile)
            try:
                coro = drive(port, message, args.messages, args.fragment, OFFERS[args.offer])
                elapsed = asyncio.run(asyncio.wait_for(coro, RUN_TIMEOUT))
            finally:
                stop(proc)
            times[name].append(elapsed)
            print(f"  {name:16} {elapsed:7.2f} s", flush=True)
    print("median:")
    for name in names:
        print(f"  {name:16} {statistics.median(times[name]):7.2f} s")


if __name__ == "__main__":
    main()
