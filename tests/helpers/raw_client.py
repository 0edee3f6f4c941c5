"""A WebSocket client on a plain socket with a small receive buffer, for tests of a
client that stops reading: it reads only when told to (a real client library keeps
draining its socket)."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any


class RawClient:
    """A client on a plain socket with a small receive buffer, to stall (it reads only
    when told to)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int, *, path: str = "/") -> RawClient:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, ("127.0.0.1", port))
        await client.loop.sock_sendall(
            sock,
            f"GET {path} HTTP/1.1\r\n".encode()
            + b"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await client._recv()
        client.buffer = client.buffer.split(b"\r\n\r\n", 1)[1]
        return client

    async def _recv(self) -> bytes:
        async with asyncio.timeout(10):
            data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            raise EOFError
        return data

    async def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += await self._recv()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def command(self, obj: dict[str, Any]) -> None:
        await self.send_text(json.dumps(obj))

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        # Masked with a zero key (allowed; the key is for proxies, not secrecy here).
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)]) + bytes(4)
        elif len(payload) < 65536:
            header = bytes([0x81, 0x80 | 126]) + len(payload).to_bytes(2, "big") + bytes(4)
        else:
            header = bytes([0x81, 0x80 | 127]) + len(payload).to_bytes(8, "big") + bytes(4)
        await self.loop.sock_sendall(self.sock, header + payload)

    async def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = await self._exactly(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await self._exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self._exactly(8), "big")
        return b0 & 0x0F, await self._exactly(length)

    async def read_until_close(self) -> list[tuple[int, bytes]]:
        frames = []
        for _ in range(100_000):
            frame = await self.read_frame()
            frames.append(frame)
            if frame[0] == 8:
                self.sock.close()
                return frames
        raise AssertionError("no close frame")
