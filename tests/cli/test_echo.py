"""``backchannel echo``, as a process."""

from __future__ import annotations

import asyncio

from backchannel.asyncio import connect


async def test_echo_server_echoes_and_serves_its_page(echo_server: int) -> None:
    async with connect(f"ws://127.0.0.1:{echo_server}/") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x01\x02")
        assert await ws.recv() == b"\x01\x02"
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(5):
        page = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert page.startswith(b"HTTP/1.1 200 ")
    assert b"new WebSocket" in page
