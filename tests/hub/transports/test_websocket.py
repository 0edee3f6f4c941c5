"""The WebSocket transport: straight through while the client keeps up; a backlog waits
in the session's outbox and goes out several texts to a frame."""

from __future__ import annotations

import asyncio
import json
import socket

from backchannel.asyncio import connect, serve
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.transports.websocket import MAX_FRAME, websocket_handler

OPTIONS = HubOptions(
    anonymous=True,
    namespaces={"feed": ChannelOptions(history_size=1000)},
    max_data_size=200_000,
)


class Stalling:
    """A WebSocket client on a plain socket with a small receive buffer, that reads only
    when told to (the asyncio client would keep draining its socket)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int) -> Stalling:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        client = cls(sock)
        await client.loop.sock_connect(sock, ("127.0.0.1", port))
        await client.loop.sock_sendall(
            sock,
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
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

    async def send(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 126
        mask = b"\x00\x00\x00\x00"  # a zero mask leaves the payload as is
        await self.loop.sock_sendall(self.sock, bytes([0x81, 0x80 | len(payload)]) + mask + payload)

    async def recv(self) -> str:
        b0, b1 = await self._exactly(2)
        assert b0 == 0x81, "one unfragmented text frame per message"
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(await self._exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self._exactly(8), "big")
        return (await self._exactly(length)).decode()


async def test_a_burst_to_a_subscriber_that_fell_behind_is_written_together() -> None:
    async with Hub(OPTIONS) as hub, serve(websocket_handler(hub), "127.0.0.1", 0) as server:
        ws = await Stalling.open(server.port)
        await ws.send('{"id":1,"method":"connect","params":{}}')
        await ws.send('{"id":2,"method":"subscribe","params":{"channel":"feed:a"}}')
        replies = [json.loads(line) for _ in range(2) for line in (await ws.recv()).split("\n")]
        assert [r["id"] for r in replies][:2] == [1, 2]
        (session,) = hub.sessions
        # Large publications until the socket's buffers are full and one waits.
        big = "x" * 100_000
        published = 0
        for _ in range(2000):  # bounded: a stalled loopback socket holds a few MiB
            await hub.publish("feed:a", big)
            published += 1
            if session.outbox:
                break
        assert session.outbox, "the connection never fell behind"
        # A burst of small ones: they wait behind it, in order.
        for n in range(20):
            await hub.publish("feed:a", n)
        assert len(session.outbox) == 21
        offsets: list[int] = []
        small_frames = 0
        while len(offsets) < published + 20:
            frame = await ws.recv()
            assert len(frame.encode()) <= MAX_FRAME + 100_200
            lines = frame.split("\n")
            offsets += [json.loads(line)["offset"] for line in lines]
            if any(len(line) < 1000 for line in lines):
                small_frames += 1
        assert offsets == list(range(1, published + 21))
        # Twenty publications, written together: one frame (which may also carry the
        # large one queued before them), not twenty.
        assert small_frames == 1
        assert not session.outbox and not session.closed
        ws.sock.close()


async def test_while_the_client_keeps_up_each_publication_is_its_own_frame() -> None:
    async with Hub(OPTIONS) as hub, serve(websocket_handler(hub), "127.0.0.1", 0) as server:
        async with connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send('{"id":1,"method":"connect","params":{}}')
            await ws.send('{"id":2,"method":"subscribe","params":{"channel":"feed:a"}}')
            for cid in (1, 2):
                assert json.loads(await ws.recv())["id"] == cid
            for n in range(5):
                await hub.publish("feed:a", n)
                frame = await ws.recv()
                assert isinstance(frame, str) and "\n" not in frame
                assert json.loads(frame)["data"] == n
            (session,) = hub.sessions
            assert not session.outbox
