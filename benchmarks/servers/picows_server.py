"""Benchmark server on picows (echo, /sub and /pub broadcast)."""

from __future__ import annotations

import argparse
import asyncio

from _common import BACKLOG, MAX_SIZE, parse_args, ready, run
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    ws_create_server,
)

DATA_TYPES = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION)


def answer_close(transport: WSTransport, frame: WSFrame) -> None:
    transport.send_close(frame.get_close_code(), frame.get_close_message())
    transport.disconnect()


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in DATA_TYPES:
            transport.send(kind, frame.get_payload_as_memoryview(), frame.fin)
        elif kind == WSMsgType.CLOSE:
            answer_close(transport, frame)


class Subscriber(WSListener):
    def __init__(self, subscribers: set[WSTransport]) -> None:
        self.subscribers = subscribers

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.subscribers.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.subscribers.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.subscribers.discard(transport)
            answer_close(transport, frame)


class Publisher(WSListener):
    def __init__(self, subscribers: set[WSTransport]) -> None:
        self.subscribers = subscribers

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind in (WSMsgType.TEXT, WSMsgType.BINARY):
            payload = frame.get_payload_as_bytes()
            for subscriber in self.subscribers:
                subscriber.send(kind, payload)
            transport.send(WSMsgType.TEXT, b"ok")
        elif kind == WSMsgType.CLOSE:
            answer_close(transport, frame)


async def main(args: argparse.Namespace, stop: asyncio.Event) -> None:
    subscribers: set[WSTransport] = set()

    def route(request: WSUpgradeRequest) -> WSListener:
        path = request.path.split(b"?", 1)[0]
        if path == b"/sub":
            return Subscriber(subscribers)
        if path == b"/pub":
            return Publisher(subscribers)
        return Echo()

    server = await ws_create_server(
        route, args.host, args.port, max_frame_size=MAX_SIZE, backlog=BACKLOG
    )
    try:
        ready()
        await stop.wait()
    finally:
        server.close()


if __name__ == "__main__":
    run(main, parse_args(__doc__ or ""))
