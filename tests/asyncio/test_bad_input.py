"""Hostile and malformed input against the asyncio server.

Each test speaks to an echo server over a raw TCP socket, sends something a conforming
client never would, and checks how the server answers: the close code of its close frame
(RFC 6455 section 7.4.1) or the HTTP status of its refusal. A second, well-behaved client
connected beforehand must keep working afterwards: one bad peer takes down only its own
connection.

The server runs in the test's event loop, so the raw client must yield to let it run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

import pytest

from backchannel.asyncio import ServerConnection, connect, serve
from backchannel.asyncio.server import Server
from backchannel.protocol.frames import Opcode, encode_frame

TIMEOUT = 5.0
KIB = 1024
MIB = 1024 * KIB


# Server and well-behaved client.


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@contextlib.asynccontextmanager
async def echo_server(**kwargs: Any) -> AsyncIterator[Server]:
    kwargs.setdefault("ping_interval", None)
    async with serve(echo, "127.0.0.1", 0, **kwargs) as server:
        yield server


@contextlib.asynccontextmanager
async def bystander(server: Server) -> AsyncIterator[Any]:
    """A well-behaved client, connected before the bad one; it must still echo after."""
    async with connect(f"ws://127.0.0.1:{server.port}/", proxy=None, ping_interval=None) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        yield ws
        async with asyncio.timeout(TIMEOUT):
            await ws.send("still alive")
            assert await ws.recv() == "still alive"


# Raw client.


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
    mask: bool = True,
) -> bytes:
    """A client frame, masked unless asked otherwise; opcode and RSV bits are not checked."""
    data = bytearray(
        encode_frame(opcode, payload, fin=fin, rsv1=rsv1, mask=os.urandom(4) if mask else None)
    )
    data[0] |= (0x20 if rsv2 else 0) | (0x10 if rsv3 else 0)
    return bytes(data)


async def raw_connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def upgrade_request(*, extensions: str | None = None, **overrides: str | None) -> bytes:
    """A valid upgrade request; ``overrides`` replace (or, with None, drop) a header."""
    headers: dict[str, str | None] = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    if extensions is not None:
        headers["Sec-WebSocket-Extensions"] = extensions
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    lines = [f"{name}: {value}" for name, value in headers.items() if value is not None]
    return ("\r\n".join(["GET / HTTP/1.1", *lines]) + "\r\n\r\n").encode()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def open_raw_websocket(
    port: int, *, extensions: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]]:
    """Do the opening handshake by hand; return the streams and the 101's headers."""
    reader, writer = await raw_connect(port)
    writer.write(upgrade_request(extensions=extensions))
    async with asyncio.timeout(TIMEOUT):
        head = await reader.readuntil(b"\r\n\r\n")
    status, headers = parse_head(head)
    assert status == 101, head
    return reader, writer, headers


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes TCP (a reset counts as closing)."""
    data = bytearray()
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                chunk = await reader.read(64 * KIB)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return bytes(data)


def parse_server_frames(data: bytes) -> list[tuple[bool, int, bytes]]:
    """Split what the server sent into (fin, opcode, payload); server frames are unmasked."""
    frames = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80, "the server masked a frame"
        length = b1 & 0x7F
        pos += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        payload = data[pos : pos + length]
        assert len(payload) == length, "truncated frame"
        pos += length
        frames.append((bool(b0 & 0x80), b0 & 0x0F, payload))
    return frames


def close_code_of(data: bytes) -> int:
    """The code of the close frame the server sent last; it must be the last frame."""
    frames = parse_server_frames(data)
    assert frames, "the server closed TCP without a close frame"
    fin, opcode, payload = frames[-1]
    assert fin and opcode == Opcode.CLOSE, frames[-1]
    assert len(payload) >= 2, payload
    return int.from_bytes(payload[:2], "big")


async def send_until_closed(
    writer: asyncio.StreamWriter, chunks: Iterable[bytes], closed: asyncio.Task[bytes]
) -> int:
    """Send ``chunks`` one by one until ``closed`` completes; return how many were sent."""
    sent = 0
    for chunk in chunks:
        if closed.done():
            break
        try:
            writer.write(chunk)
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        # drain() returns at once below the high-water mark: yield so that the server (in
        # this event loop) and the reading task get to run between chunks.
        await asyncio.sleep(0)
    return sent


def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.transport.abort()


async def assert_closes_with(
    server: Server, bad: bytes, code: int, *, extensions: str | None = None
) -> bytes:
    """Send ``bad`` after a hand-made handshake; check the close code; return all read."""
    async with bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port, extensions=extensions)
        try:
            writer.write(bad)
            data = await read_to_eof(reader)
        finally:
            close_writer(writer)
        frames = parse_server_frames(data)
        assert len(frames) == 1, f"expected only a close frame, got {frames}"
        assert close_code_of(data) == code
    return data


# Frame-level violations (RFC 6455 section 5).


async def test_unmasked_client_frame() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.TEXT, b"hello", mask=False), 1002)


@pytest.mark.parametrize("rsv", ["rsv1", "rsv2", "rsv3"])
async def test_reserved_bit_without_extension(rsv: str) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.TEXT, b"hello", **{rsv: True}), 1002)


@pytest.mark.parametrize("opcode", [3, 11])
async def test_reserved_opcode(opcode: int) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(opcode, b"hello"), 1002)


async def test_fragmented_ping() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.PING, b"ping", fin=False), 1002)


async def test_ping_too_long() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.PING, b"p" * 126), 1002)


async def test_length_with_top_bit_set() -> None:
    header = struct.pack("!BBQ", 0x80 | Opcode.BINARY, 0x80 | 127, 2**63 + 5)
    async with echo_server() as server:
        await assert_closes_with(server, header + os.urandom(4) + b"x" * 5, 1002)


@pytest.mark.parametrize("code", [999, 1005, 1006, 1016, 2999, 5000])
async def test_invalid_close_code(code: int) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.CLOSE, code.to_bytes(2, "big")), 1002)


# Invalid UTF-8 (section 8.1).


async def test_invalid_utf8_text() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.TEXT, b"caf\xc3 \xff"), 1007)


async def test_invalid_utf8_fails_before_message_ends() -> None:
    # The bad fragment is not the last one: the close must come while the message is
    # still incomplete, since the final fragment is never sent.
    fragments = frame(Opcode.TEXT, "café ".encode(), fin=False)
    fragments += frame(Opcode.CONTINUATION, b"\xed\xa0\x80", fin=False)  # a surrogate
    async with echo_server() as server:
        await assert_closes_with(server, fragments, 1007)


# Size limits.


async def test_message_too_big_refused_early() -> None:
    total = 1024  # 1 MiB in 1 KiB fragments, against a 64 KiB limit
    chunks = [frame(Opcode.BINARY, b"a" * KIB, fin=False)]
    chunks += [frame(Opcode.CONTINUATION, b"a" * KIB, fin=False) for _ in range(total - 2)]
    chunks += [frame(Opcode.CONTINUATION, b"a" * KIB)]
    async with echo_server(max_size=64 * KIB) as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port)
        closed = asyncio.create_task(read_to_eof(reader))
        try:
            sent = await send_until_closed(writer, chunks, closed)
            data = await closed
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1009
        assert sent < total


async def test_many_empty_fragments() -> None:
    count = 1_000_000
    empty = frame(Opcode.CONTINUATION, b"", fin=False)
    batch = empty * 100_000
    async with echo_server() as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port)
        try:
            writer.write(frame(Opcode.TEXT, b"", fin=False))
            for _ in range(count // 100_000):
                writer.write(batch)
                await writer.drain()
            writer.write(frame(Opcode.CONTINUATION, b""))
            await writer.drain()
            async with asyncio.timeout(20):
                header = await reader.readexactly(2)
            assert header == bytes([0x80 | Opcode.TEXT, 0])
            writer.write(frame(Opcode.CLOSE, (1000).to_bytes(2, "big")))
            assert close_code_of(await read_to_eof(reader)) == 1000
        finally:
            close_writer(writer)


async def test_many_one_byte_fragments() -> None:
    count = 200_000
    chunks = [frame(Opcode.TEXT, b"a", fin=False)]
    chunks += [frame(Opcode.CONTINUATION, b"a", fin=False) for _ in range(count - 2)]
    chunks += [frame(Opcode.CONTINUATION, b"a")]
    stream = b"".join(chunks)
    async with echo_server() as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port)
        try:
            writer.write(stream)
            await writer.drain()
            async with asyncio.timeout(20):
                header = await reader.readexactly(10)
                assert header[:2] == bytes([0x80 | Opcode.TEXT, 127])
                length = int.from_bytes(header[2:], "big")
                payload = await reader.readexactly(length)
            assert payload == b"a" * count
            writer.write(frame(Opcode.CLOSE, (1000).to_bytes(2, "big")))
            assert close_code_of(await read_to_eof(reader)) == 1000
        finally:
            close_writer(writer)


def deflate_bomb(size: int) -> bytes:
    """A permessage-deflate payload that inflates to ``size`` zero bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(MIB)
    parts = [compressor.compress(block) for _ in range(size // MIB)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    data = b"".join(parts)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


async def test_deflate_bomb() -> None:
    bomb = frame(Opcode.BINARY, deflate_bomb(50 * MIB), rsv1=True)
    async with echo_server(max_size=MIB) as server, bystander(server):
        reader, writer, headers = await open_raw_websocket(
            server.port, extensions="permessage-deflate"
        )
        assert headers.get("sec-websocket-extensions", "").startswith("permessage-deflate")
        tracemalloc.start()
        try:
            writer.write(bomb)
            data = await read_to_eof(reader)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            close_writer(writer)
        assert close_code_of(data) == 1009
        assert peak < 16 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"


# The opening handshake.


async def http_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request; return the status, headers and body of the answer."""
    reader, writer = await raw_connect(port)
    try:
        writer.write(request)
        data = await read_to_eof(reader)
    finally:
        close_writer(writer)
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    status, headers = parse_head(head)
    return status, headers, body


async def test_handshake_never_completes() -> None:
    async with echo_server(open_timeout=0.5) as server, bystander(server):
        reader, writer = await raw_connect(server.port)
        try:
            writer.write(b"GET /chat HT")
            data = await read_to_eof(reader)  # bounded: 5 s
        finally:
            close_writer(writer)
        assert data == b""


async def test_too_many_header_lines() -> None:
    lines = [b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n"]
    lines += [f"X-Filler-{i}: {i}\r\n".encode() for i in range(10_000)]
    lines.append(b"\r\n")
    chunks = [b"".join(lines[i : i + 100]) for i in range(0, len(lines), 100)]
    async with echo_server() as server, bystander(server):
        reader, writer = await raw_connect(server.port)
        closed = asyncio.create_task(read_to_eof(reader))
        try:
            await send_until_closed(writer, chunks, closed)
            data = await closed
        finally:
            close_writer(writer)
        status, headers = parse_head(data.partition(b"\r\n\r\n")[0])
        assert status in (431, 400), data[:200]
        assert headers.get("connection") == "close"


async def test_unsupported_version() -> None:
    async with echo_server() as server, bystander(server):
        request = upgrade_request(Sec_WebSocket_Version="8")
        status, headers, _ = await http_exchange(server.port, request)
    assert status == 426
    assert headers.get("sec-websocket-version") == "13"


async def test_http10_upgrade_is_refused() -> None:
    # RFC 6455 section 4.1: the handshake is an HTTP/1.1 or later request.
    async with echo_server() as server, bystander(server):
        request = upgrade_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1)
        status, headers, body = await http_exchange(server.port, request)
    assert status == 400
    assert headers.get("connection") == "close"
    assert b"HTTP/1.1" in body


async def test_complete_head_over_the_limit_in_one_write_is_refused() -> None:
    padding = "".join(f"X-Pad-{i}: {'p' * 4000}\r\n" for i in range(50))  # about 200 KB
    request = upgrade_request().replace(b"\r\n\r\n", ("\r\n" + padding + "\r\n").encode())
    async with echo_server() as server, bystander(server):
        status, headers, _ = await http_exchange(server.port, request)
    assert status == 431
    assert headers.get("connection") == "close"


async def test_refusal_reaches_a_client_still_sending_its_head() -> None:
    # 4 MiB of head, sent whole: the server refuses it after 64 KiB and must read and drop
    # the rest (RFC 9112 section 9.6) rather than reset the connection over the 431.
    padding = "".join(f"X-Pad-{i}: {'p' * 4000}\r\n" for i in range(1000))
    request = upgrade_request().replace(b"\r\n\r\n", ("\r\n" + padding + "\r\n").encode())
    async with echo_server() as server, bystander(server):
        reader, writer = await raw_connect(server.port)
        try:
            async with asyncio.timeout(TIMEOUT):
                writer.write(request)
                await writer.drain()
            data = await read_to_eof_strict(reader)
        finally:
            close_writer(writer)
    status, headers = parse_head(data.partition(b"\r\n\r\n")[0])
    assert status == 431
    assert headers.get("connection") == "close"


async def test_missing_key() -> None:
    async with echo_server() as server, bystander(server):
        request = upgrade_request(Sec_WebSocket_Key=None)
        status, _, _ = await http_exchange(server.port, request)
    assert status == 400


async def test_plain_get() -> None:
    async with echo_server() as server, bystander(server):
        request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        status, _, _ = await http_exchange(server.port, request)
    assert status == 426


async def test_origin_not_allowed() -> None:
    async with echo_server(origins=["https://good.example"]) as server:
        async with connect(
            f"ws://127.0.0.1:{server.port}/",
            proxy=None,
            ping_interval=None,
            origin="https://good.example",
        ) as good:
            request = upgrade_request(Origin="https://evil.example")
            status, _, _ = await http_exchange(server.port, request)
            await good.send("still alive")
            assert await good.recv() == "still alive"
    assert status == 403


# More frame-level violations, and the boundaries next to them.


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("!BBH", 0x80 | Opcode.BINARY, 0x80 | 126, 5),  # 16-bit length for 5
        struct.pack("!BBQ", 0x80 | Opcode.BINARY, 0x80 | 127, 5),  # 64-bit length for 5
        struct.pack("!BBQ", 0x80 | Opcode.BINARY, 0x80 | 127, 65535),
    ],
    ids=["16-bit", "64-bit-small", "64-bit-65535"],
)
async def test_length_not_minimally_encoded(header: bytes) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, header + os.urandom(4) + b"hello", 1002)


@pytest.mark.parametrize("opcode", [Opcode.PONG, Opcode.CLOSE])
async def test_fragmented_control_frame(opcode: int) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(opcode, b"", fin=False), 1002)


async def test_continuation_without_message() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.CONTINUATION, b"hello"), 1002)


async def test_new_message_inside_fragmented_message() -> None:
    bad = frame(Opcode.TEXT, b"hel", fin=False) + frame(Opcode.TEXT, b"lo")
    async with echo_server() as server:
        await assert_closes_with(server, bad, 1002)


async def test_close_with_one_byte_payload() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.CLOSE, b"\x03"), 1002)


async def test_close_reason_not_utf8() -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.CLOSE, b"\x03\xe8\xff"), 1007)


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1014, 3000, 4999])
async def test_valid_close_code_is_echoed(code: int) -> None:
    async with echo_server() as server:
        await assert_closes_with(server, frame(Opcode.CLOSE, code.to_bytes(2, "big")), code)


async def test_frame_header_past_size_limit() -> None:
    # Only the header is sent: the server must refuse on the announced length alone.
    header = struct.pack("!BBQ", 0x80 | Opcode.BINARY, 0x80 | 127, 64 * KIB + 1)
    async with echo_server(max_size=64 * KIB) as server:
        await assert_closes_with(server, header + os.urandom(4), 1009)


async def test_bad_frame_in_handshake_packet() -> None:
    # The bad frame arrives in the same TCP segment as the upgrade request.
    async with echo_server() as server, bystander(server):
        reader, writer = await raw_connect(server.port)
        try:
            writer.write(upgrade_request() + frame(Opcode.TEXT, b"hi", mask=False))
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            assert parse_head(head)[0] == 101
            data = await read_to_eof(reader)
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1002


async def test_bad_header_byte_by_byte() -> None:
    header = struct.pack("!BBQ", 0x80 | Opcode.BINARY, 0x80 | 127, 2**63) + os.urandom(4)
    async with echo_server() as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port)
        closed = asyncio.create_task(read_to_eof(reader))
        try:
            await send_until_closed(writer, [bytes([b]) for b in header], closed)
            data = await closed
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1002


async def test_message_before_violation_is_echoed() -> None:
    # Section 7.1.7 allows dropping it, but this server answers what came before.
    async with echo_server() as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port)
        try:
            writer.write(frame(Opcode.TEXT, b"first") + frame(3, b"bad"))
            data = await read_to_eof(reader)
        finally:
            close_writer(writer)
    frames = parse_server_frames(data)
    assert frames[0] == (True, Opcode.TEXT, b"first")
    assert close_code_of(data) == 1002


async def test_utf8_split_inside_code_point_is_accepted() -> None:
    encoded = "é€😀".encode()
    fragments = frame(Opcode.TEXT, encoded[:1], fin=False)
    fragments += frame(Opcode.CONTINUATION, encoded[1:4], fin=False)
    fragments += frame(Opcode.CONTINUATION, encoded[4:])
    async with echo_server() as server:
        reader, writer, _ = await open_raw_websocket(server.port)
        try:
            writer.write(fragments)
            async with asyncio.timeout(TIMEOUT):
                echoed = await reader.readexactly(2 + len(encoded))
        finally:
            close_writer(writer)
    assert echoed == bytes([0x80 | Opcode.TEXT, len(encoded)]) + encoded


async def test_ping_of_125_bytes_is_answered() -> None:
    async with echo_server() as server:
        reader, writer, _ = await open_raw_websocket(server.port)
        try:
            writer.write(frame(Opcode.PING, b"p" * 125))
            async with asyncio.timeout(TIMEOUT):
                pong = await reader.readexactly(2 + 125)
        finally:
            close_writer(writer)
    assert pong == bytes([0x80 | Opcode.PONG, 125]) + b"p" * 125


# permessage-deflate violations.


async def test_compressed_bomb_in_fragments() -> None:
    payload = deflate_bomb(50 * MIB)
    pieces = [payload[i : i + KIB] for i in range(0, len(payload), KIB)]
    chunks = [frame(Opcode.TEXT, pieces[0], fin=False, rsv1=True)]
    chunks += [frame(Opcode.CONTINUATION, piece, fin=False) for piece in pieces[1:]]
    async with echo_server(max_size=MIB) as server, bystander(server):
        reader, writer, _ = await open_raw_websocket(server.port, extensions="permessage-deflate")
        closed = asyncio.create_task(read_to_eof(reader))
        try:
            sent = await send_until_closed(writer, chunks, closed)
            data = await closed
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1009
        assert sent < len(chunks)


async def test_invalid_deflate_data() -> None:
    # Block type 3 is reserved in DEFLATE (RFC 1951 section 3.2.3).
    async with echo_server() as server:
        bad = frame(Opcode.BINARY, b"\xff\xff\xff\xff", rsv1=True)
        await assert_closes_with(server, bad, 1002, extensions="permessage-deflate")


@pytest.mark.parametrize("opcode", [Opcode.CONTINUATION, Opcode.PING])
async def test_rsv1_where_deflate_forbids_it(opcode: int) -> None:
    bad = frame(opcode, b"x", rsv1=True)
    if opcode == Opcode.CONTINUATION:
        bad = frame(Opcode.BINARY, b"x", fin=False) + bad
    async with echo_server() as server:
        await assert_closes_with(server, bad, 1002, extensions="permessage-deflate")


# Peers that send without reading.


async def flood_without_reading(port: int, chunk: bytes, server: Server) -> int:
    """Send ``chunk`` up to 32 times without reading; return the server's peak write buffer.

    A server that applies backpressure stops reading, and then drain() never returns: the
    timeout below ends the flood (it bounds the test, it does not synchronise anything).
    """
    _, writer, _ = await open_raw_websocket(port)
    peak = 0
    try:
        for _ in range(32):
            try:
                async with asyncio.timeout(1):
                    writer.write(chunk)
                    await writer.drain()
            except TimeoutError:
                break
            await asyncio.sleep(0)
            peak = max(peak, *(c.buffered_amount for c in server.connections))
    finally:
        close_writer(writer)
    return peak


async def test_message_flood_without_reading() -> None:
    chunk = frame(Opcode.BINARY, b"m" * KIB) * 1000
    async with echo_server() as server, bystander(server):
        peak = await flood_without_reading(server.port, chunk, server)
    assert peak < 4 * MIB


async def test_ping_flood_without_reading() -> None:
    chunk = frame(Opcode.PING, b"p" * 125) * 8000  # about 1 MiB
    async with echo_server() as server, bystander(server):
        peak = await flood_without_reading(server.port, chunk, server)
    assert peak < 4 * MIB


# More handshake refusals.


@pytest.mark.parametrize(
    ("overrides", "status"),
    [
        ({"Host": None}, 400),
        ({"Connection": "keep-alive"}, 400),
        ({"Sec_WebSocket_Key": "not base64!"}, 400),
        ({"Sec_WebSocket_Key": base64.b64encode(b"short").decode()}, 400),
        ({"Sec_WebSocket_Version": None}, 426),
        ({"Sec_WebSocket_Extensions": "permessage-deflate; ="}, 400),
        ({"X_Long": "x" * 9000}, 431),
    ],
    ids=[
        "no-host",
        "no-connection-upgrade",
        "key-not-base64",
        "key-short",
        "no-version",
        "bad-extension",
        "long-header",
    ],
)
async def test_bad_upgrade_request(overrides: dict[str, str | None], status: int) -> None:
    async with echo_server() as server, bystander(server):
        got, _, _ = await http_exchange(server.port, upgrade_request(**overrides))
    assert got == status


async def test_request_target_too_long() -> None:
    request = upgrade_request().replace(b"GET / ", b"GET /" + b"a" * 9000 + b" ", 1)
    async with echo_server() as server, bystander(server):
        status, _, _ = await http_exchange(server.port, request)
    assert status == 414


async def test_post_upgrade() -> None:
    request = upgrade_request().replace(b"GET ", b"POST ", 1)
    async with echo_server() as server, bystander(server):
        status, _, _ = await http_exchange(server.port, request)
    assert status == 405


async def test_not_http() -> None:
    async with echo_server() as server, bystander(server):
        status, _, _ = await http_exchange(server.port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    assert status == 400


async def test_origin_missing() -> None:
    async with echo_server(origins=["https://good.example"]) as server:
        status, _, _ = await http_exchange(server.port, upgrade_request())
    assert status == 403


async def test_declined_deflate_offer_makes_rsv1_invalid() -> None:
    # An offer with an invalid parameter value is declined (RFC 7692 section 7), not
    # refused: the handshake succeeds without the extension, so RSV1 is then a violation.
    async with echo_server() as server, bystander(server):
        offer = "permessage-deflate; server_max_window_bits=99"
        reader, writer, headers = await open_raw_websocket(server.port, extensions=offer)
        try:
            assert "sec-websocket-extensions" not in headers
            writer.write(frame(Opcode.BINARY, deflate_bomb(MIB), rsv1=True))
            data = await read_to_eof(reader)
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1002


# Closing after a failure (RFC 6455 section 7.1.1): the peer gets the close frame even
# when it is still sending.


async def read_to_eof_strict(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes TCP; a reset fails the test."""
    data = bytearray()
    async with asyncio.timeout(TIMEOUT):
        while chunk := await reader.read(64 * KIB):
            data += chunk
    return bytes(data)


def big_frame_header(size: int) -> bytes:
    """A masked client binary frame header announcing ``size`` bytes, all-zero mask."""
    return bytes([0x82, 0xFF]) + size.to_bytes(8, "big") + bytes(4)


@pytest.mark.parametrize(
    ("first", "code"),
    [
        # 1009 at the frame header: the 4 MiB upload is still arriving.
        (big_frame_header(4 * MIB), 1009),
        # 1002 (a reserved opcode) and 1007: the rest of a long frame follows the fault.
        (bytes([0x83, 0xFF]) + (4 * MIB).to_bytes(8, "big") + bytes(4), 1002),
        (bytes([0x81, 0xFF]) + (4 * MIB).to_bytes(8, "big") + bytes(4) + b"\xff", 1007),
    ],
)
async def test_peer_that_keeps_sending_gets_the_close_frame_intact(first: bytes, code: int) -> None:
    async with echo_server(max_size=4 * MIB + 1 if code != 1009 else 64 * KIB) as server:
        async with bystander(server):
            reader, writer, _ = await open_raw_websocket(server.port)
            try:
                writer.write(first)
                # The rest of the frame, 4 MiB, sent whole although the server failed the
                # connection at its start: it must read and drop it, not reset.
                chunk = bytes(64 * KIB)
                async with asyncio.timeout(TIMEOUT):
                    for _ in range(64):
                        writer.write(chunk)
                        await writer.drain()
                data = await read_to_eof_strict(reader)
            finally:
                close_writer(writer)
            frames = parse_server_frames(data)
            assert len(frames) == 1, frames
            assert close_code_of(data) == code


async def test_what_follows_a_failure_is_dropped_not_buffered() -> None:
    # 16 MiB after the failure, compressed and not: reading on costs no memory and no
    # inflating. The peak counts this process's allocations, client and server alike.
    async with echo_server(max_size=64 * KIB) as server:
        reader, writer, _ = await open_raw_websocket(server.port, extensions="permessage-deflate")
        chunk = os.urandom(64 * KIB)
        tracemalloc.start()
        try:
            # RSV1: a compressed message whose frame is refused at its header.
            writer.write(bytes([0xC2, 0xFF]) + (16 * MIB).to_bytes(8, "big") + bytes(4))
            async with asyncio.timeout(TIMEOUT):
                for _ in range(256):
                    writer.write(chunk)
                    await writer.drain()
            data = await read_to_eof_strict(reader)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            close_writer(writer)
        assert close_code_of(data) == 1009
        assert peak < 2 * MIB, peak


async def test_peer_that_never_stops_sending_is_dropped_after_close_timeout() -> None:
    async with echo_server(max_size=64 * KIB, close_timeout=0.5) as server:
        reader, writer, _ = await open_raw_websocket(server.port)
        reading = asyncio.create_task(read_to_eof(reader))
        try:
            writer.write(big_frame_header(2**40))
            chunk = bytes(64 * KIB)
            # Send until the server drops the connection: close_timeout after its close
            # frame, however long the peer goes on. The bound only stops a hang.
            async with asyncio.timeout(20):
                while True:
                    try:
                        writer.write(chunk)
                        await writer.drain()
                    except ConnectionError:
                        break
                    await asyncio.sleep(0)
                    if writer.transport.is_closing():
                        break
            data = await reading
        finally:
            close_writer(writer)
        assert close_code_of(data) == 1009
