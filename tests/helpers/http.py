"""A minimal HTTP/1.1 client on one kept-alive connection: what the long-polling, API
and server tests need to see exactly what goes on the wire (statuses, headers, bodies)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TIMEOUT = 10


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lowercased names; a repeated header keeps its last value
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)


class Http:
    """One kept-alive HTTP connection to 127.0.0.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def exchange(
        self,
        method: str,
        target: str,
        body: str | bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        *,
        wait: float | None = TIMEOUT,
    ) -> Reply:
        data = body.encode() if isinstance(body, str) else body
        head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers)
        self.writer.write(head.encode() + b"\r\n" + data)
        async with asyncio.timeout(wait):
            raw = await self.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            fields: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
            length = int(fields.get("content-length", "0"))
            return Reply(int(lines[0].split(" ")[1]), fields, await self.reader.readexactly(length))

    async def request(self, method: str, target: str, body: str | bytes = b"") -> tuple[int, str]:
        """Status and body text."""
        reply = await self.exchange(method, target, body)
        return reply.status, reply.text

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
