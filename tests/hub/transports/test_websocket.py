"""The WebSocket transport: straight through while the client keeps up; a backlog waits
in the session's outbox and goes out several texts to a frame."""

from __future__ import annotations

import asyncio
import json

from helpers.raw_client import RawClient

from backchannel.asyncio import connect, serve
from backchannel.hub.codes import Disconnect
from backchannel.hub.hooks import Hooks
from backchannel.hub.hub import Hub
from backchannel.hub.options import ChannelOptions, HubOptions
from backchannel.hub.session import Session
from backchannel.hub.transports.websocket import MAX_FRAME, websocket_handler

OPTIONS = HubOptions(
    anonymous=True,
    namespaces={"feed": ChannelOptions(history_size=1000)},
    max_data_size=200_000,
)


async def test_a_burst_to_a_subscriber_that_fell_behind_is_written_together() -> None:
    async with Hub(OPTIONS) as hub, serve(websocket_handler(hub), "127.0.0.1", 0) as server:
        ws = await RawClient.open(server.port)
        await ws.command({"id": 1, "method": "connect", "params": {}})
        await ws.command({"id": 2, "method": "subscribe", "params": {"channel": "feed:a"}})
        replies = [
            json.loads(line) for _ in range(2) for line in (await ws.read_frame())[1].split(b"\n")
        ]
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
            opcode, payload = await ws.read_frame()
            assert opcode == 1 and len(payload) <= MAX_FRAME + 100_200
            frame = payload.decode()
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


class DisconnectWatcher(Hooks):
    """Tells the test how each session ended: the hub's own account, not a guess."""

    def __init__(self) -> None:
        self.ended: asyncio.Queue[Disconnect | None] = asyncio.Queue()

    async def on_disconnect(self, session: Session, disconnect: Disconnect | None) -> None:
        self.ended.put_nowait(disconnect)


async def test_replies_to_a_client_that_never_reads_are_bounded_by_its_outbox() -> None:
    # Reply amplification: a few frames of commands with large replies (100 history
    # reads of ~100 KiB each per frame) from a client that never reads. The replies
    # count against the session's outbox like publications: past it the session is
    # cut with 3002, so the server holds at most about outbox_max_bytes for it.
    watcher = DisconnectWatcher()
    async with Hub(OPTIONS, hooks=watcher) as hub:
        async with serve(websocket_handler(hub), "127.0.0.1", 0) as server:
            for n in range(100):
                await hub.publish("feed:big", {"n": n, "pad": "x" * 1000})
            ws = await RawClient.open(server.port)
            await ws.command({"id": 1, "method": "connect", "params": {}})
            # History is read by subscribers.
            await ws.command({"id": 2, "method": "subscribe", "params": {"channel": "feed:big"}})
            history = {"method": "history", "params": {"channel": "feed:big", "limit": 100}}
            frame = "\n".join(json.dumps({"id": 3 + i, **history}) for i in range(100))
            for _ in range(5):  # bounded: one frame already asks for ~10 MiB of replies
                await ws.send_text(frame)
            async with asyncio.timeout(20):
                disconnect = await watcher.ended.get()
            assert disconnect is not None and disconnect.code == 3002
            assert hub.statistics().sessions == 0
            ws.sock.close()


async def test_a_slow_consumer_that_reads_only_after_the_close_timeout_still_learns_3002() -> None:
    options = HubOptions(
        anonymous=True,
        namespaces={"feed": ChannelOptions()},
        max_data_size=200_000,
    )
    close_timeout = 0.2
    async with (
        Hub(options) as hub,
        serve(websocket_handler(hub), "127.0.0.1", 0, close_timeout=close_timeout) as server,
    ):
        ws = await RawClient.open(server.port)
        await ws.command({"id": 1, "method": "connect", "params": {}})
        await ws.command({"id": 2, "method": "subscribe", "params": {"channel": "feed:a"}})
        replies = [
            json.loads(line) for _ in range(2) for line in (await ws.read_frame())[1].split(b"\n")
        ]
        assert [r["id"] for r in replies][:2] == [1, 2]
        (session,) = hub.sessions
        big = "x" * 100_000
        stalled = False
        for _ in range(2000):  # bounded: a stalled loopback socket holds a few MiB
            await hub.publish("feed:a", big)
            # One turn of the loop between publications, as a server has: the outbox
            # fills because the socket is full, not because of one turn's burst.
            await asyncio.sleep(0)
            stalled = stalled or not session.transport.connection.writable
            if session.closed:
                break
        assert stalled, "the outbox filled before the socket did"
        assert session.ended is not None and session.ended.code == 3002
        # The client goes on not reading for several close timeouts: this stall is the
        # case under test (a phone in a tunnel), not a wait for something to happen. The
        # server used to drop the connection once close_timeout passed after its close
        # frame, which was still behind the publications in its buffer, unread.
        await asyncio.sleep(5 * close_timeout)
        frames = await ws.read_until_close()
        opcode, payload = frames[-1]
        assert opcode == 8 and int.from_bytes(payload[:2], "big") == 3002
        last = json.loads(frames[-2][1].split(b"\n")[-1])
        assert last == {
            "push": "disconnect",
            "code": 3002,
            "reason": "slow consumer",
            "reconnect": True,
        }
        # Nothing after the outbox was dropped: every frame before the push holds whole
        # publications, in order, with no gap in what reached the socket.
        data = [json.loads(line) for _, p in frames[:-2] for line in p.split(b"\n")]
        assert all(d["push"] == "publication" for d in data)
